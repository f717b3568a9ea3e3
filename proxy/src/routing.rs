//! Route matching: per listener, an index from request host and path to candidate
//! route rules, searched in Gateway API precedence order.
//!
//! Lookup never scans all routes: the host picks a [`PathTable`] (exact host, then
//! wildcard suffixes longest first, then routes without hostname), and in it the
//! path is looked up in the Exact map, then in the PathPrefix map once per `/`
//! boundary of the path (longest first); regular expressions are tried last.
//! Candidates under one key are pre-sorted by the remaining precedence rules
//! (method match, more header matches, more query matches, declaration order), so
//! the first whose conditions hold wins.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

use http::header::HeaderName;
use http::{HeaderMap, Method};
use regex::Regex;

use crate::routes::Route;

/// A compiled path condition.
#[derive(Clone, Debug)]
pub enum PathRule {
    Exact(String),
    /// The prefix without trailing `/` (so `/` is the empty string).
    Prefix(String),
    /// Anchored.
    Regex(Regex),
}

/// A compiled header or query value condition.
#[derive(Clone, Debug)]
pub enum ValueRule {
    Exact(String),
    /// Anchored.
    Regex(Regex),
}

impl ValueRule {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValueRule::Exact(v) => v == value,
            ValueRule::Regex(re) => re.is_match(value),
        }
    }
}

#[derive(Clone, Debug)]
pub struct HeaderRule {
    pub name: HeaderName,
    pub value: ValueRule,
}

#[derive(Clone, Debug)]
pub struct QueryRule {
    pub name: String,
    pub value: ValueRule,
}

/// One compiled `RouteMatch`: every condition must hold.
#[derive(Clone, Debug)]
pub struct MatchRule {
    pub path: PathRule,
    pub method: Option<Method>,
    pub headers: Vec<HeaderRule>,
    pub query: Vec<QueryRule>,
}

/// The parts of a request that routing looks at.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// Normalised: lower case, no port, no trailing dot.
    pub host: &'a str,
    /// Normalised with [`normalize_path`].
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

impl MatchRule {
    /// Method, header and query conditions (the path was matched by the index).
    fn conditions_hold(&self, req: &RequestView<'_>) -> bool {
        if self.method.as_ref().is_some_and(|m| m != req.method) {
            return false;
        }
        let headers_hold = self.headers.iter().all(|rule| {
            req.headers
                .get_all(&rule.name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| rule.value.matches(v)))
        });
        headers_hold
            && self.query.iter().all(|rule| {
                req.query
                    .and_then(|q| query_value(q, &rule.name))
                    .is_some_and(|v| rule.value.matches(&v))
            })
    }
}

/// The route chosen for a request.
#[derive(Debug)]
pub struct RouteMatch<'a> {
    pub route: &'a Arc<Route>,
    /// The matched PathPrefix (without trailing `/`), for `ReplacePrefixMatch`.
    pub prefix: Option<&'a str>,
}

#[derive(Debug)]
struct Candidate {
    route: Arc<Route>,
    rule: usize,
    /// (index of the route in the gateway, index of the match in the route)
    order: (usize, usize),
}

impl Candidate {
    fn rule(&self) -> Option<&MatchRule> {
        self.route.matches.get(self.rule)
    }

    fn holds(&self, req: &RequestView<'_>) -> bool {
        self.rule().is_some_and(|r| r.conditions_hold(req))
    }

    fn precedence(&self) -> impl Ord {
        let (method, headers, query) = self.rule().map_or((false, 0, 0), |r| {
            (r.method.is_some(), r.headers.len(), r.query.len())
        });
        (
            Reverse(method),
            Reverse(headers),
            Reverse(query),
            self.order,
        )
    }
}

/// The routes of one hostname key, by path.
#[derive(Debug, Default)]
pub struct PathTable {
    exact: HashMap<String, Vec<Candidate>>,
    prefix: HashMap<String, Vec<Candidate>>,
    regex: Vec<Candidate>,
}

impl PathTable {
    fn insert(&mut self, candidate: Candidate) {
        match candidate.rule().map(|r| &r.path) {
            Some(PathRule::Exact(p)) => self.exact.entry(p.clone()).or_default().push(candidate),
            Some(PathRule::Prefix(p)) => self.prefix.entry(p.clone()).or_default().push(candidate),
            Some(PathRule::Regex(_)) => self.regex.push(candidate),
            None => {}
        }
    }

    fn sort(&mut self) {
        for list in self.exact.values_mut().chain(self.prefix.values_mut()) {
            list.sort_by_cached_key(|c| c.precedence());
            // Most paths have one candidate; the first push reserved four.
            list.shrink_to_fit();
        }
        self.regex.sort_by_cached_key(|c| c.precedence());
    }

    fn find<'a>(&'a self, req: &RequestView<'_>) -> Option<RouteMatch<'a>> {
        if let Some(c) = self
            .exact
            .get(req.path)
            .and_then(|list| list.iter().find(|c| c.holds(req)))
        {
            return Some(RouteMatch {
                route: &c.route,
                prefix: None,
            });
        }
        if !self.prefix.is_empty() {
            for key in prefix_keys(req.path) {
                if let Some((key, list)) = self.prefix.get_key_value(key) {
                    if let Some(c) = list.iter().find(|c| c.holds(req)) {
                        return Some(RouteMatch {
                            route: &c.route,
                            prefix: Some(key),
                        });
                    }
                }
            }
        }
        self.regex
            .iter()
            .find(|c| {
                matches!(c.rule().map(|r| &r.path), Some(PathRule::Regex(re)) if re.is_match(req.path))
                    && c.holds(req)
            })
            .map(|c| RouteMatch { route: &c.route, prefix: None })
    }
}

/// The routes attached to one listener.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact_hosts: HashMap<String, PathTable>,
    /// `*.example.com` is stored as `example.com`.
    wildcard_hosts: HashMap<String, PathTable>,
    any_host: Option<PathTable>,
    /// Names of the routes attached, in declaration order.
    pub attached: Vec<String>,
}

impl RouteTable {
    /// Indexes the `routes` (in declaration order) that attach to this listener.
    pub fn build(
        listener: &str,
        listener_hostname: Option<&str>,
        routes: &[Arc<Route>],
    ) -> RouteTable {
        let mut table = RouteTable::default();
        for (route_index, route) in routes.iter().enumerate() {
            if !route.listeners.is_empty() && !route.listeners.iter().any(|l| l == listener) {
                continue;
            }
            let mut hosts: Vec<Option<String>> = if route.hostnames.is_empty() {
                vec![listener_hostname.map(str::to_string)]
            } else {
                route
                    .hostnames
                    .iter()
                    .filter_map(|h| intersect_hostnames(listener_hostname, h))
                    .map(Some)
                    .collect()
            };
            hosts.sort();
            hosts.dedup();
            if hosts.is_empty() {
                continue;
            }
            table.attached.push(route.name.clone());
            for host in hosts {
                let paths = match host {
                    None => table.any_host.get_or_insert_with(PathTable::default),
                    Some(h) => match h.strip_prefix("*.") {
                        Some(suffix) => table.wildcard_hosts.entry(suffix.to_string()).or_default(),
                        None => table.exact_hosts.entry(h).or_default(),
                    },
                };
                for rule in 0..route.matches.len() {
                    paths.insert(Candidate {
                        route: route.clone(),
                        rule,
                        order: (route_index, rule),
                    });
                }
            }
        }
        for paths in table
            .exact_hosts
            .values_mut()
            .chain(table.wildcard_hosts.values_mut())
            .chain(table.any_host.as_mut())
        {
            paths.sort();
        }
        table
    }

    /// The route for a request, by Gateway API precedence: exact host, then the
    /// longest matching wildcard, then routes for any host; within a host, see
    /// [`PathTable`].
    pub fn find<'a>(&'a self, req: &RequestView<'_>) -> Option<RouteMatch<'a>> {
        if let Some(m) = self.exact_hosts.get(req.host).and_then(|t| t.find(req)) {
            return Some(m);
        }
        if !self.wildcard_hosts.is_empty() {
            for (dot, _) in req.host.match_indices('.') {
                if dot == 0 {
                    continue;
                }
                let suffix = &req.host[dot + 1..];
                if let Some(m) = self.wildcard_hosts.get(suffix).and_then(|t| t.find(req)) {
                    return Some(m);
                }
            }
        }
        self.any_host.as_ref().and_then(|t| t.find(req))
    }
}

/// The hostname a route serves on a listener: the more specific of the two when
/// one covers the other, `None` when they do not intersect (Gateway API rules).
pub fn intersect_hostnames(listener: Option<&str>, route: &str) -> Option<String> {
    let Some(listener) = listener else {
        return Some(route.to_string());
    };
    if listener == route {
        return Some(route.to_string());
    }
    match (listener.strip_prefix("*."), route.strip_prefix("*.")) {
        (None, None) => None,
        (Some(l), None) => host_in_wildcard(route, l).then(|| route.to_string()),
        (None, Some(r)) => host_in_wildcard(listener, r).then(|| listener.to_string()),
        (Some(l), Some(r)) => {
            if host_in_wildcard(r, l) {
                Some(route.to_string())
            } else if host_in_wildcard(l, r) {
                Some(listener.to_string())
            } else {
                None
            }
        }
    }
}

/// Whether `host` is matched by the wildcard `*.{suffix}` (one or more labels).
pub fn host_in_wildcard(host: &str, suffix: &str) -> bool {
    host.len() > suffix.len() + 1
        && host.ends_with(suffix)
        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
}

/// The PathPrefix keys a path can match, longest first: the whole path (unless it
/// ends in `/`), then the path before each `/`. `/a/b` gives `/a/b`, `/a`, ``.
/// A `;` (RFC 3986 segment parameters, which servlet containers strip) ends a
/// key too, so that `/admin;x=1` is matched by PathPrefix `/admin` as the
/// backend will read it.
pub fn prefix_keys(path: &str) -> impl Iterator<Item = &str> {
    let whole = (!path.ends_with(['/', ';'])).then_some(path);
    whole.into_iter().chain(
        path.rmatch_indices(['/', ';'])
            .map(move |(i, _)| &path[..i]),
    )
}

/// The host of a request without port or trailing dot, in lower case; `None` when
/// empty. IPv6 literals keep their brackets.
pub fn normalize_host(authority: &str) -> Option<Cow<'_, str>> {
    let digits = |port: &str| port.bytes().all(|b| b.is_ascii_digit());
    let host = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        match &authority[end..] {
            "" => &authority[..end],
            rest => rest
                .strip_prefix(':')
                .filter(|p| digits(p))
                .map(|_| &authority[..end])?,
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) if digits(port) => host,
            Some(_) => return None,
            None => authority,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    // An empty label (`a..b`, `.a`, `a..`) is no hostname: refused rather than
    // matched by a catch-all route while a backend might read it as `a.b`.
    if host.is_empty()
        || host.contains(['/', '@', ' ', '\\'])
        || host.starts_with('.')
        || host.ends_with('.')
        || host.contains("..")
    {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

/// The path routing matches and the upstream receives (they are always the same
/// string, so that a matcher and a backend cannot read one path two ways):
/// `.` and `..` segments removed (RFC 3986 5.2.4), runs of `/` merged into one,
/// and percent-encoded unreserved characters decoded (RFC 3986 6.2.2.2: `/%61dmin`
/// is `/admin`). `None` (answered 400) for a path that does not start with `/`,
/// or that a backend could read as a different path than the matcher:
/// percent-encoded dot segments (`%2e%2e`, also fullwidth `%EF%BC%8E`), dot
/// segments with parameters (`..;`), an encoded `/` that makes an empty or dot
/// segment (`..%2f`, `%2fadmin`), a backslash (raw or `%5C`), an encoded NUL,
/// and escapes that do not decode to UTF-8 (overlong `%C0%AE`).
pub fn normalize_path(path: &str) -> Option<Cow<'_, str>> {
    // A `%` that starts no valid escape is refused too (as nginx does): with it,
    // decoding `%36%31` in `/%%36%31dmin` would make a new escape, `/%61dmin`,
    // which the matcher reads as it is and a backend decodes to `/admin`
    // (found by the `normalize_path` fuzz target).
    if !path.starts_with('/') || path.contains('\\') || has_malformed_escape(path) {
        return None;
    }
    let mut rewrite = path.contains("//");
    for segment in path.split('/') {
        match segment {
            "." | ".." => rewrite = true,
            s => {
                if ambiguous_segment(s) {
                    return None;
                }
                rewrite |= has_unreserved_escape(s);
            }
        }
    }
    if !rewrite {
        return Some(Cow::Borrowed(path));
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let mut out: Vec<Cow<'_, str>> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." => {}
            ".." => {
                out.pop();
            }
            // An empty segment is a repeated `/`, or the trailing one.
            "" if !last => {}
            s => out.push(decode_unreserved(s)),
        }
        if last && matches!(*segment, "." | "..") {
            out.push(Cow::Borrowed(""));
        }
    }
    Some(Cow::Owned(format!("/{}", out.join("/"))))
}

/// Characters that some backends fold into `.`, `/` or `\\` (Unicode
/// normalisation NFKC): fullwidth full stop, solidus and reverse solidus.
const LOOKALIKES: [(char, char); 3] = [('\u{ff0e}', '.'), ('\u{ff0f}', '/'), ('\u{ff3c}', '\\')];

/// Whether a segment (not `.` or `..` itself) could be read as a dot segment
/// or as more than one segment once decoded, or holds an encoded NUL or bytes
/// that are not UTF-8; see [`normalize_path`].
fn ambiguous_segment(segment: &str) -> bool {
    let plain = !segment.contains('%') && segment.is_ascii();
    let decoded = if plain {
        Cow::Borrowed(segment)
    } else {
        let bytes = percent_decode_bytes(segment);
        if bytes.contains(&0) {
            return true;
        }
        match String::from_utf8(bytes) {
            Ok(mut s) => {
                for (from, to) in LOOKALIKES {
                    if s.contains(from) {
                        s = s.replace(from, &to.to_string());
                    }
                }
                Cow::Owned(s)
            }
            Err(_) => return true,
        }
    };
    if decoded.contains('\\') {
        return true;
    }
    let split = decoded.contains('/');
    decoded.split('/').any(|piece| {
        let name = piece.split(';').next().unwrap_or(piece);
        matches!(name, "." | "..") || (split && piece.is_empty())
    })
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_byte(h: u8, l: u8) -> Option<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    Some((hex(h)? * 16 + hex(l)?) as u8)
}

/// Whether `s` holds a `%XX` escape of an unreserved character.
fn has_unreserved_escape(s: &str) -> bool {
    let b = s.as_bytes();
    (0..b.len()).any(|i| {
        b[i] == b'%'
            && b.get(i + 1)
                .zip(b.get(i + 2))
                .and_then(|(h, l)| hex_byte(*h, *l))
                .is_some_and(is_unreserved)
    })
}

/// `s` with escapes of unreserved characters decoded, other escapes kept.
fn decode_unreserved(s: &str) -> Cow<'_, str> {
    if !has_unreserved_escape(s) {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let decoded = (b[i] == b'%')
            .then(|| b.get(i + 1).zip(b.get(i + 2)))
            .flatten()
            .and_then(|(h, l)| hex_byte(*h, *l))
            .filter(|c| is_unreserved(*c));
        match decoded {
            Some(c) => {
                out.push(char::from(c));
                i += 3;
            }
            None if b[i] == b'%' => {
                out.push('%');
                i += 1;
            }
            None => {
                // Copy up to the next `%` (keeps multi-byte characters whole).
                let next = s[i..].find('%').map_or(s.len(), |j| i + j);
                out.push_str(&s[i..next]);
                i = next;
            }
        }
    }
    Cow::Owned(out)
}

/// The first value of query parameter `name` (names and values percent-decoded).
pub fn query_value<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes; invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    Cow::Owned(String::from_utf8_lossy(&percent_decode_bytes(s)).into_owned())
}

/// The bytes `s` stands for, `%XX` escapes decoded (invalid escapes kept).
/// Whether a `%` in `s` is not followed by two hex digits.
fn has_malformed_escape(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.iter().enumerate().any(|(i, b)| {
        *b == b'%'
            && !matches!(
                (bytes.get(i + 1), bytes.get(i + 2)),
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit()
            )
    })
}

fn percent_decode_bytes(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1).zip(bytes.get(i + 2)))
            .flatten()
            .and_then(|(h, l)| hex_byte(*h, *l));
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_keys_are_segment_boundaries_longest_first() {
        assert_eq!(
            prefix_keys("/a/b").collect::<Vec<_>>(),
            vec!["/a/b", "/a", ""]
        );
        assert_eq!(
            prefix_keys("/a/b/").collect::<Vec<_>>(),
            vec!["/a/b", "/a", ""]
        );
        assert_eq!(prefix_keys("/").collect::<Vec<_>>(), vec![""]);
        assert_eq!(
            prefix_keys("/a;x=1/b").collect::<Vec<_>>(),
            vec!["/a;x=1/b", "/a;x=1", "/a", ""]
        );
        // "/foo" is never a key of "/foobar": no segment boundary there.
        assert!(!prefix_keys("/foobar").any(|k| k == "/foo"));
    }

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize_path("/a/b").as_deref(), Some("/a/b"));
        assert!(matches!(normalize_path("/a/b"), Some(Cow::Borrowed(_))));
        assert_eq!(normalize_path("/a/./b").as_deref(), Some("/a/b"));
        assert_eq!(normalize_path("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(
            normalize_path("/public/../admin").as_deref(),
            Some("/admin")
        );
        assert_eq!(normalize_path("/..").as_deref(), Some("/"));
        assert_eq!(normalize_path("/../../x").as_deref(), Some("/x"));
        assert_eq!(normalize_path("/a/.").as_deref(), Some("/a/"));
        assert_eq!(normalize_path("/a..b/.c").as_deref(), Some("/a..b/.c"));
        assert_eq!(normalize_path("/a/%2e%2E/b"), None);
        assert_eq!(normalize_path("/a/.%2e"), None);
        assert_eq!(normalize_path("/a/%41").as_deref(), Some("/a/A"));
        assert_eq!(
            normalize_path("/%61dmin/x%2Fy").as_deref(),
            Some("/admin/x%2Fy")
        );
        assert_eq!(normalize_path("//admin//x/").as_deref(), Some("/admin/x/"));
        assert_eq!(normalize_path("/a%C3%A9"), Some(Cow::Borrowed("/a%C3%A9")));
        assert_eq!(normalize_path("/é%41").as_deref(), Some("/éA"));
        // Malformed escapes are refused: decoding around them could make new ones.
        assert_eq!(normalize_path("/%zz"), None);
        assert_eq!(normalize_path("/a%"), None);
        assert_eq!(normalize_path("/a%4"), None);
        assert_eq!(normalize_path("/%%36%31dmin"), None);
        assert_eq!(
            normalize_path("/group%2Fproject").as_deref(),
            Some("/group%2Fproject")
        );
        for bad in [
            "/public/..%2fadmin",
            "/public%2f..%2fadmin",
            "/%2fadmin",
            "/public/..;/admin",
            "/public/.;x/admin",
            "/admin%00",
            "/%C0%AE%C0%AE/admin",
            "/public/%EF%BC%8E%EF%BC%8E/admin",
            "/public/\u{ff0e}\u{ff0e}/admin",
            "/\\admin",
            "/%5cadmin",
            "/a%5C..",
            "/%ff",
        ] {
            assert_eq!(normalize_path(bad), None, "{bad}");
        }
        assert_eq!(normalize_path("*"), None);
        assert_eq!(normalize_path(""), None);
    }

    #[test]
    fn normalizes_hosts() {
        assert_eq!(
            normalize_host("Example.COM:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            normalize_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host("[::1]:443").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(normalize_host(""), None);
        assert_eq!(normalize_host(":80"), None);
        assert_eq!(normalize_host("[::1"), None);
        assert_eq!(normalize_host("[::1]junk"), None);
        assert_eq!(normalize_host("a.test:x"), None);
        assert_eq!(normalize_host("a.test:80:80"), None);
        assert_eq!(normalize_host("a.test:").as_deref(), Some("a.test"));
        assert_eq!(normalize_host("a.test.."), None);
        assert_eq!(normalize_host(".a.test"), None);
        assert_eq!(normalize_host("a..test"), None);
    }

    #[test]
    fn hostname_intersection() {
        let i = |l: Option<&str>, r: &str| intersect_hostnames(l, r);
        assert_eq!(i(None, "a.example.com").as_deref(), Some("a.example.com"));
        assert_eq!(
            i(Some("a.example.com"), "a.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(i(Some("a.example.com"), "b.example.com"), None);
        assert_eq!(
            i(Some("*.example.com"), "a.b.example.com").as_deref(),
            Some("a.b.example.com")
        );
        assert_eq!(i(Some("*.example.com"), "example.com"), None);
        assert_eq!(
            i(Some("a.example.com"), "*.example.com").as_deref(),
            Some("a.example.com")
        );
        assert_eq!(
            i(Some("*.example.com"), "*.a.example.com").as_deref(),
            Some("*.a.example.com")
        );
        assert_eq!(
            i(Some("*.a.example.com"), "*.example.com").as_deref(),
            Some("*.a.example.com")
        );
        assert_eq!(i(Some("*.example.com"), "*.example.org"), None);
    }

    #[test]
    fn wildcard_needs_a_label() {
        assert!(host_in_wildcard("a.example.com", "example.com"));
        assert!(host_in_wildcard("a.b.example.com", "example.com"));
        assert!(!host_in_wildcard("example.com", "example.com"));
        assert!(!host_in_wildcard("aexample.com", "example.com"));
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(query_value("a=1&b=x%20y", "b").as_deref(), Some("x y"));
        assert_eq!(query_value("a=1&a=2", "a").as_deref(), Some("1"));
        assert_eq!(query_value("flag&a=1", "flag").as_deref(), Some(""));
        assert_eq!(query_value("a=1", "b"), None);
        assert_eq!(percent_decode("100%").as_ref(), "100%");
        assert_eq!(percent_decode("%zz%41").as_ref(), "%zzA");
    }
}
