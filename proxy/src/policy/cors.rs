//! CORS: the proxy answers preflights itself and adds the CORS headers to the
//! responses of allowed origins (the proxy's own refusals included, so a browser
//! can read a 401 or 429). Origins match exactly (ASCII case-insensitive), by a
//! `https://*.example.com` wildcard (any subdomain, not the apex) or `*`.

use std::time::Duration;

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method};

#[derive(Debug, Clone)]
enum OriginRule {
    Any,
    Exact(String),
    /// `scheme://*.` + suffix: the scheme and `.suffix`.
    Subdomain {
        scheme: String,
        suffix: String,
    },
}

impl OriginRule {
    fn parse(s: &str) -> OriginRule {
        let s = s.trim().to_ascii_lowercase();
        if s == "*" {
            return OriginRule::Any;
        }
        if let Some((scheme, rest)) = s.split_once("://*.") {
            return OriginRule::Subdomain {
                scheme: format!("{scheme}://"),
                suffix: format!(".{rest}"),
            };
        }
        OriginRule::Exact(s)
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(o) => o.eq_ignore_ascii_case(origin),
            OriginRule::Subdomain { scheme, suffix } => {
                let origin = origin.to_ascii_lowercase();
                origin
                    .strip_prefix(scheme.as_str())
                    .and_then(|host| host.strip_suffix(suffix.as_str()))
                    .is_some_and(|label| !label.is_empty() && !label.contains('/'))
            }
        }
    }
}

/// Compiled `cors`.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<OriginRule>,
    any_origin: bool,
    /// `None`: `*` (echo what the preflight asks).
    methods: Option<HeaderValue>,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
}

/// The outcome of looking at a request's CORS headers.
#[derive(Debug)]
pub enum CorsRequest {
    /// Not a cross-origin request, or an origin not allowed: no CORS headers.
    None,
    /// A preflight from an allowed origin: answer it with these headers.
    Preflight(HeaderMap),
    /// A preflight from an origin not allowed: refuse it.
    PreflightRefused,
    /// An actual request from an allowed origin: add these to the response.
    Actual(HeaderMap),
}

fn joined(items: &[String]) -> Result<Option<HeaderValue>, String> {
    if items.is_empty() || items.iter().any(|i| i == "*") {
        return Ok(None);
    }
    HeaderValue::from_str(&items.join(", "))
        .map(Some)
        .map_err(|_| format!("invalid header value in {items:?}"))
}

impl Cors {
    pub fn compile(spec: &meshgate_crds::policy::Cors) -> Result<Cors, String> {
        let origins: Vec<OriginRule> = spec
            .allow_origins
            .iter()
            .map(|o| OriginRule::parse(o))
            .collect();
        let credentials = spec.allow_credentials.unwrap_or(false);
        let any_origin = origins.iter().any(|o| matches!(o, OriginRule::Any));
        if credentials && any_origin {
            return Err("cors: allowOrigins '*' cannot be combined with allowCredentials".into());
        }
        let methods = if spec.allow_methods.is_empty() {
            Some(HeaderValue::from_static("GET, HEAD, POST"))
        } else {
            joined(&spec.allow_methods)?
        };
        let max_age = spec
            .max_age
            .as_ref()
            .map(|d| d.to_std().map_err(|e| format!("cors.maxAge: {e}")))
            .transpose()?
            .map(|d: Duration| HeaderValue::from(d.as_secs()));
        Ok(Cors {
            origins,
            any_origin,
            methods,
            headers: joined(&spec.allow_headers)?,
            expose: if spec.expose_headers.is_empty() {
                None
            } else {
                joined(&spec.expose_headers)?.or(Some(HeaderValue::from_static("*")))
            },
            max_age,
            credentials,
        })
    }

    fn allowed(&self, origin: &str) -> bool {
        self.origins.iter().any(|o| o.matches(origin))
    }

    /// Headers common to preflight and actual responses.
    fn base(&self, origin: &HeaderValue) -> HeaderMap {
        let mut h = HeaderMap::new();
        // `*` only when any origin is allowed without credentials; otherwise echo
        // the origin, and say the answer varies with it (caches).
        if self.any_origin && !self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        h
    }

    pub fn inspect(&self, method: &Method, headers: &HeaderMap) -> CorsRequest {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return CorsRequest::None;
        };
        let allowed = origin.to_str().is_ok_and(|o| self.allowed(o));
        let preflight = method == Method::OPTIONS
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        match (preflight, allowed) {
            (true, false) => CorsRequest::PreflightRefused,
            (false, false) => CorsRequest::None,
            (true, true) => {
                let mut h = self.base(origin);
                let echo = |name: HeaderName| headers.get(name).cloned();
                let methods = self
                    .methods
                    .clone()
                    .or_else(|| echo(header::ACCESS_CONTROL_REQUEST_METHOD));
                if let Some(m) = methods {
                    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m);
                }
                let allow_headers = self
                    .headers
                    .clone()
                    .or_else(|| echo(header::ACCESS_CONTROL_REQUEST_HEADERS));
                if let Some(v) = allow_headers {
                    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
                }
                if let Some(age) = &self.max_age {
                    h.insert(header::ACCESS_CONTROL_MAX_AGE, age.clone());
                }
                CorsRequest::Preflight(h)
            }
            (false, true) => {
                let mut h = self.base(origin);
                if let Some(expose) = &self.expose {
                    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
                }
                CorsRequest::Actual(h)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors::compile(&meshgate_crds::policy::Cors {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_methods: vec!["GET".into(), "PUT".into()],
            allow_headers: vec!["x-token".into()],
            expose_headers: vec!["x-trace".into()],
            max_age: Some(meshgate_crds::Duration("10m".into())),
            allow_credentials: Some(credentials),
        })
        .unwrap()
    }

    fn req(origin: &str, preflight: bool) -> (Method, HeaderMap) {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        if preflight {
            h.insert(
                header::ACCESS_CONTROL_REQUEST_METHOD,
                HeaderValue::from_static("PUT"),
            );
            return (Method::OPTIONS, h);
        }
        (Method::GET, h)
    }

    #[test]
    fn origin_rules() {
        let c = cors(&["https://app.example.com", "https://*.example.org"], true);
        assert!(c.allowed("https://app.example.com"));
        assert!(c.allowed("HTTPS://APP.example.com"));
        assert!(!c.allowed("http://app.example.com"));
        assert!(c.allowed("https://a.example.org"));
        assert!(c.allowed("https://a.b.example.org"));
        assert!(!c.allowed("https://example.org"));
        assert!(!c.allowed("https://evilexample.org"));
        assert!(!c.allowed("https://a.example.org.evil.com"));
    }

    #[test]
    fn preflight_and_actual_headers() {
        let c = cors(&["https://app.example.com"], true);
        let (m, h) = req("https://app.example.com", true);
        let CorsRequest::Preflight(out) = c.inspect(&m, &h) else {
            panic!("expected a preflight answer")
        };
        assert_eq!(
            out[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(out[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, PUT");
        assert_eq!(out[header::ACCESS_CONTROL_ALLOW_HEADERS], "x-token");
        assert_eq!(out[header::ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(out[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(out[header::VARY], "Origin");
        let (m, h) = req("https://evil.example.com", true);
        assert!(matches!(c.inspect(&m, &h), CorsRequest::PreflightRefused));
        let (m, h) = req("https://app.example.com", false);
        let CorsRequest::Actual(out) = c.inspect(&m, &h) else {
            panic!("expected actual-request headers")
        };
        assert_eq!(out[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-trace");
        let (m, h) = req("https://evil.example.com", false);
        assert!(matches!(c.inspect(&m, &h), CorsRequest::None));
        assert!(matches!(
            c.inspect(&Method::GET, &HeaderMap::new()),
            CorsRequest::None
        ));
    }

    #[test]
    fn any_origin_without_credentials_is_a_star() {
        let c = cors(&["*"], false);
        let (m, h) = req("https://x.test", false);
        let CorsRequest::Actual(out) = c.inspect(&m, &h) else {
            panic!("expected actual-request headers")
        };
        assert_eq!(out[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(out.get(header::VARY).is_none());
        assert!(Cors::compile(&meshgate_crds::policy::Cors {
            allow_origins: vec!["*".into()],
            allow_credentials: Some(true),
            ..Default::default()
        })
        .is_err());
    }
}
