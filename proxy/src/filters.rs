//! Gateway API filters, compiled once and applied per request:
//! RequestHeaderModifier, ResponseHeaderModifier, URLRewrite and RequestRedirect.

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use meshgate_crds::route as api;

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Headers to set, add and remove, in that order.
#[derive(Clone, Debug, Default)]
pub struct HeaderModifier {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

fn header_pair(h: &meshgate_crds::HttpHeader) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(h.name.as_bytes())
        .map_err(|_| format!("invalid header name {:?}", h.name))?;
    let value = HeaderValue::from_str(&h.value)
        .map_err(|_| format!("invalid value for header {:?}", h.name))?;
    Ok((name, value))
}

impl HeaderModifier {
    pub fn compile(m: &api::HeaderModifier) -> Result<HeaderModifier, String> {
        Ok(HeaderModifier {
            set: m.set.iter().map(header_pair).collect::<Result<_, _>>()?,
            add: m.add.iter().map(header_pair).collect::<Result<_, _>>()?,
            remove: m
                .remove
                .iter()
                .map(|n| {
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| format!("invalid header name {n:?}"))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

/// A path replacement of URLRewrite or RequestRedirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    Full(String),
    Prefix(String),
}

impl PathModifier {
    pub fn compile(m: &api::PathModifier) -> Result<PathModifier, String> {
        let (value, make): (_, fn(String) -> PathModifier) = match m.kind {
            api::PathModifierType::ReplaceFullPath => (&m.replace_full_path, PathModifier::Full),
            api::PathModifierType::ReplacePrefixMatch => {
                (&m.replace_prefix_match, PathModifier::Prefix)
            }
        };
        let value = value
            .as_deref()
            .ok_or_else(|| format!("path modifier {:?} needs its value", m.kind))?;
        if !value.starts_with('/') || value.contains(['\r', '\n', '?', '#']) {
            return Err(format!("invalid replacement path {value:?}"));
        }
        Ok(make(value.to_string()))
    }

    /// The new path for `path`, which matched PathPrefix `prefix` (if any).
    pub fn apply(&self, path: &str, prefix: Option<&str>) -> String {
        match (self, prefix) {
            (PathModifier::Full(p), _) => p.clone(),
            (PathModifier::Prefix(replacement), Some(prefix)) => {
                replace_prefix(path, prefix, replacement)
            }
            // Compile rejects ReplacePrefixMatch on routes with non-prefix matches.
            (PathModifier::Prefix(_), None) => path.to_string(),
        }
    }
}

/// Gateway API `ReplacePrefixMatch`: `/foo/bar` with prefix `/foo` and replacement
/// `/xyz` gives `/xyz/bar`; replacement `/` gives `/bar`. `prefix` has no trailing `/`.
pub fn replace_prefix(path: &str, prefix: &str, replacement: &str) -> String {
    let rest = path.get(prefix.len()..).unwrap_or("");
    let replacement = replacement.trim_end_matches('/');
    let mut out = String::with_capacity(replacement.len() + rest.len() + 1);
    out.push_str(replacement);
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// `h` if it is a hostname (letters, digits, `-` and `.`: what the CRDs'
/// pattern allows, checked here too because standalone manifests are not
/// validated by an API server), so that it cannot put CR, LF or anything else
/// into a Host or Location header.
fn hostname(h: &str) -> Option<&str> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then_some(h)
}

/// URLRewrite: a new Host and/or path for the upstream request.
#[derive(Clone, Debug, Default)]
pub struct UrlRewrite {
    pub hostname: Option<HeaderValue>,
    pub path: Option<PathModifier>,
}

impl UrlRewrite {
    pub fn compile(r: &api::UrlRewrite) -> Result<UrlRewrite, String> {
        Ok(UrlRewrite {
            hostname: r
                .hostname
                .as_deref()
                .map(|h| {
                    hostname(h)
                        .and_then(|h| HeaderValue::from_str(h).ok())
                        .ok_or_else(|| format!("invalid hostname {h:?}"))
                })
                .transpose()?,
            path: r.path.as_ref().map(PathModifier::compile).transpose()?,
        })
    }
}

/// RequestRedirect: answer with a Location instead of proxying.
#[derive(Clone, Debug)]
pub struct Redirect {
    pub scheme: Option<Scheme>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    pub status: StatusCode,
}

/// What a redirect needs to know about the request.
#[derive(Debug)]
pub struct RedirectInput<'a> {
    pub scheme: Scheme,
    /// Normalised request host (no port).
    pub host: &'a str,
    /// Port of the listener that received the request.
    pub listener_port: u16,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub prefix: Option<&'a str>,
}

impl Redirect {
    pub fn compile(r: &api::RequestRedirect) -> Result<Redirect, String> {
        let status = r.status_code.unwrap_or(302);
        if ![301, 302, 303, 307, 308].contains(&status) {
            return Err(format!(
                "redirect statusCode {status} is not one of 301, 302, 303, 307, 308"
            ));
        }
        let port = r
            .port
            .map(|p| {
                u16::try_from(p)
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or(format!("invalid redirect port {p}"))
            })
            .transpose()?;
        Ok(Redirect {
            scheme: r.scheme.map(|s| match s {
                api::RedirectScheme::Http => Scheme::Http,
                api::RedirectScheme::Https => Scheme::Https,
            }),
            hostname: r
                .hostname
                .as_deref()
                .map(|h| {
                    hostname(h)
                        .map(str::to_string)
                        .ok_or_else(|| format!("invalid redirect hostname {h:?}"))
                })
                .transpose()?,
            path: r.path.as_ref().map(PathModifier::compile).transpose()?,
            port,
            status: StatusCode::from_u16(status as u16).map_err(|e| e.to_string())?,
        })
    }

    /// The Location header (Gateway API rules: without an explicit port, a redirect
    /// that changes the scheme uses the scheme's well-known port, otherwise the
    /// listener's; a well-known port is left out of the URL).
    pub fn location(&self, req: &RedirectInput<'_>) -> String {
        let scheme = self.scheme.unwrap_or(req.scheme);
        let host = self.hostname.as_deref().unwrap_or(req.host);
        let port = self.port.unwrap_or(match self.scheme {
            Some(s) => s.default_port(),
            None => req.listener_port,
        });
        let path = match &self.path {
            Some(modifier) => std::borrow::Cow::Owned(modifier.apply(req.path, req.prefix)),
            None => std::borrow::Cow::Borrowed(req.path),
        };
        location(scheme, host, port, &path, req.query)
    }
}

/// `scheme://host[:port]path[?query]`, leaving out the scheme's default port.
pub fn location(scheme: Scheme, host: &str, port: u16, path: &str, query: Option<&str>) -> String {
    let mut out = format!("{}://{host}", scheme.as_str());
    if port != scheme.default_port() {
        out.push(':');
        out.push_str(&port.to_string());
    }
    out.push_str(path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_prefix_follows_gateway_api_examples() {
        assert_eq!(replace_prefix("/foo/bar", "/foo", "/xyz"), "/xyz/bar");
        assert_eq!(replace_prefix("/foo", "/foo", "/xyz"), "/xyz");
        assert_eq!(replace_prefix("/foo/", "/foo", "/xyz"), "/xyz/");
        assert_eq!(replace_prefix("/foo/bar", "/foo", "/xyz/"), "/xyz/bar");
        assert_eq!(replace_prefix("/foo/bar", "/foo", "/"), "/bar");
        assert_eq!(replace_prefix("/foo", "/foo", "/"), "/");
        assert_eq!(replace_prefix("/bar", "", "/api"), "/api/bar");
        assert_eq!(replace_prefix("/", "", "/api"), "/api/");
    }

    #[test]
    fn header_modifier_sets_adds_and_removes() {
        let m = HeaderModifier::compile(&api::HeaderModifier {
            set: vec![meshgate_crds::HttpHeader {
                name: "X-Set".into(),
                value: "s".into(),
            }],
            add: vec![meshgate_crds::HttpHeader {
                name: "x-add".into(),
                value: "2".into(),
            }],
            remove: vec!["x-gone".into()],
        })
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-set", HeaderValue::from_static("old"));
        h.insert("x-add", HeaderValue::from_static("1"));
        h.insert("x-gone", HeaderValue::from_static("bye"));
        m.apply(&mut h);
        assert_eq!(h["x-set"], "s");
        assert_eq!(
            h.get_all("x-add").iter().collect::<Vec<_>>(),
            vec!["1", "2"]
        );
        assert!(h.get("x-gone").is_none());
    }

    #[test]
    fn invalid_header_is_a_compile_error() {
        let err = HeaderModifier::compile(&api::HeaderModifier {
            set: vec![meshgate_crds::HttpHeader {
                name: "bad name".into(),
                value: "v".into(),
            }],
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("invalid header name"), "{err}");
    }

    #[test]
    fn redirect_location_ports() {
        let input = RedirectInput {
            scheme: Scheme::Http,
            host: "example.com",
            listener_port: 8080,
            path: "/old/x",
            query: Some("a=1"),
            prefix: Some("/old"),
        };
        let mut r = Redirect {
            scheme: None,
            hostname: None,
            path: Some(PathModifier::Prefix("/new".into())),
            port: None,
            status: StatusCode::FOUND,
        };
        assert_eq!(r.location(&input), "http://example.com:8080/new/x?a=1");
        r.scheme = Some(Scheme::Https);
        assert_eq!(r.location(&input), "https://example.com/new/x?a=1");
        r.port = Some(8443);
        r.hostname = Some("other.example".into());
        r.path = Some(PathModifier::Full("/".into()));
        assert_eq!(r.location(&input), "https://other.example:8443/?a=1");
        let on_80 = RedirectInput {
            listener_port: 80,
            query: None,
            ..input
        };
        let plain = Redirect {
            scheme: None,
            hostname: None,
            path: None,
            port: None,
            status: StatusCode::FOUND,
        };
        assert_eq!(plain.location(&on_80), "http://example.com/old/x");
    }

    #[test]
    fn hostnames_with_control_characters_are_compile_errors() {
        for bad in [
            "a.test\r\nx-injected: 1",
            "a.test\0",
            "a b",
            "",
            "a/b",
            "a:80",
        ] {
            let err = Redirect::compile(&api::RequestRedirect {
                hostname: Some(bad.into()),
                ..Default::default()
            })
            .unwrap_err();
            assert!(err.contains("invalid redirect hostname"), "{err}");
            let err = UrlRewrite::compile(&api::UrlRewrite {
                hostname: Some(bad.into()),
                ..Default::default()
            })
            .unwrap_err();
            assert!(err.contains("invalid hostname"), "{err}");
        }
        assert!(Redirect::compile(&api::RequestRedirect {
            hostname: Some("new.example-1.test".into()),
            ..Default::default()
        })
        .is_ok());
    }

    #[test]
    fn redirect_rejects_bad_status() {
        let err = Redirect::compile(&api::RequestRedirect {
            status_code: Some(200),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.contains("statusCode 200"), "{err}");
    }
}
