//! gRPC awareness: recognising gRPC requests and answering the proxy's own errors
//! the way gRPC clients understand them (HTTP 200, `grpc-status`, `grpc-message`).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use crate::proxy::{LocalMessage, ProxyBody, FLAGS_HEADER};

/// gRPC status codes the proxy produces.
pub mod code {
    pub const INTERNAL: u32 = 13;
    pub const UNKNOWN: u32 = 2;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const UNAVAILABLE: u32 = 14;
    pub const UNAUTHENTICATED: u32 = 16;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
}

/// `content-type: application/grpc` or `application/grpc+proto` etc.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.strip_prefix("application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
        })
}

/// The gRPC status for an HTTP status made by the proxy.
pub fn status_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        404 => code::UNIMPLEMENTED,
        502 | 503 => code::UNAVAILABLE,
        504 => code::DEADLINE_EXCEEDED,
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        429 => code::RESOURCE_EXHAUSTED,
        _ => code::UNKNOWN,
    }
}

/// Percent-encodes a `grpc-message` (gRPC over HTTP/2 spec).
fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Turns a response made by the proxy into a gRPC trailers-only response.
pub fn error_response(local: Response<ProxyBody>) -> Response<ProxyBody> {
    let status = local.status();
    let message = local
        .extensions()
        .get::<LocalMessage>()
        .map(|m| m.0.trim_end())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or(""))
        .to_string();
    let mut response = Response::new(Either::Right(Full::new(Bytes::new())));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(status_for(status)));
    if let Ok(value) = HeaderValue::from_str(&encode_message(&message)) {
        headers.insert("grpc-message", value);
    }
    if let Some(flag) = local.headers().get(FLAGS_HEADER) {
        headers.insert(FLAGS_HEADER, flag.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_grpc_content_types() {
        for (ct, want) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&h), want, "{ct}");
        }
    }

    #[test]
    fn maps_statuses_and_encodes_messages() {
        assert_eq!(status_for(StatusCode::BAD_GATEWAY), 14);
        assert_eq!(status_for(StatusCode::SERVICE_UNAVAILABLE), 14);
        assert_eq!(status_for(StatusCode::GATEWAY_TIMEOUT), 4);
        assert_eq!(status_for(StatusCode::NOT_FOUND), 12);
        assert_eq!(encode_message("50% off\n"), "50%25 off%0A");
    }
}
