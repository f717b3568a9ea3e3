//! Request smuggling and request-line/header ambiguities over raw HTTP/1.1
//! sockets, against a backend that records exactly what it received.
//!
//! Each case either is refused with an exact status and nothing reaches the
//! backend (never forwarded ambiguously), or is legal and normalised, and then
//! the test asserts exactly what the backend saw. The tables are the ones
//! docs/reliability.md records.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::hostile::*;
use common::*;
use meshgate_proxy::runtime::Running;

const DEADLINE: Duration = Duration::from_secs(3);

/// Every status line in a raw reply, HTTP/1.0 or 1.1, also when a response
/// body without a final newline runs into the next status line.
fn statuses(reply: &RawReply) -> Vec<u16> {
    let text = reply.text();
    text.match_indices("HTTP/1.")
        .filter(|(i, _)| text.get(i + 8..i + 9) == Some(" "))
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// Routes `a` (host a.example) and `other` (host other.example, behind an API
/// key), both to the recorder; responses carry `x-route`.
async fn setup() -> (Running, SocketAddr, Recorder) {
    let recorder = Recorder::spawn().await;
    let routes = format!(
        "{}{}",
        tagged_route(
            "a",
            "[{path: {value: /}}]",
            "rec",
            "    hostnames: [a.example]\n"
        ),
        tagged_route(
            "other",
            "[{path: {value: /}}]",
            "rec",
            "    hostnames: [other.example]\n"
        ),
    );
    let policy = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: test}\nstringData: {ci: key-of-ci}\n---\napiVersion: meshgate.io/v1alpha1\nkind: ApiPolicy\nmetadata: {name: keys, namespace: test, creationTimestamp: \"2026-01-01T00:00:00Z\"}\nspec:\n  targetRefs: [{group: meshgate.io, kind: ApiGateway, name: gw, sectionName: other}]\n  authentication:\n    apiKey:\n      credentialRefs: [{name: keys}]\n      extractFrom: [{headers: [x-api-key]}]\n";
    let yaml = format!(
        "{}{}{policy}",
        gateway_yaml(&http_listener("http", 80), &routes),
        service_yaml("rec", recorder.addr, true)
    );
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    (proxy, addr, recorder)
}

/// What the backend must have received for a forwarded case.
struct Upstream {
    method: &'static str,
    target: &'static str,
    host: &'static str,
    body: &'static [u8],
}

enum Expect {
    /// Refused with this status; nothing reached the backend.
    Refused(u16),
    /// Refused with this status once the body turned out malformed; the
    /// backend may have seen the head, but never a complete body.
    BodyRefused(u16),
    /// Forwarded: these statuses on the connection, and exactly these requests
    /// at the backend (in order).
    Forwarded(Vec<u16>, Vec<Upstream>),
}

struct Case {
    name: &'static str,
    request: &'static [u8],
    expect: Expect,
}

const fn up(method: &'static str, target: &'static str, body: &'static [u8]) -> Upstream {
    Upstream {
        method,
        target,
        host: "a.example",
        body,
    }
}

async fn run(addr: SocketAddr, recorder: &Recorder, cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        recorder.clear();
        let reply = raw_exchange(addr, case.request, DEADLINE).await;
        // A refused body may reach the backend's recorder a little later.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = recorder.seen();
        let statuses = statuses(&reply);
        let ok = match &case.expect {
            Expect::Refused(status) => statuses == [*status] && seen.is_empty(),
            Expect::BodyRefused(status) => {
                statuses == [*status] && seen.iter().all(|s| s.body.is_err())
            }
            Expect::Forwarded(expected, upstream) => {
                statuses == *expected
                    && seen.len() == upstream.len()
                    && seen.iter().zip(upstream.iter()).all(|(s, u)| {
                        s.method == u.method
                            && s.target == u.target
                            && s.header("host") == [u.host]
                            && s.body.as_deref() == Ok(u.body)
                            && s.header("transfer-encoding").len() <= 1
                            && s.header("content-length").len() <= 1
                    })
            }
        };
        if !ok {
            failures.push(format!(
                "{}: statuses {statuses:?}, backend saw {seen:#?}\n{}",
                case.name,
                reply.text()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn content_length_and_transfer_encoding_conflicts() {
    let (_proxy, addr, recorder) = setup().await;
    use Expect::*;
    let cases = [
        Case {
            name: "CL.TE: Content-Length then chunked, smuggled request after the 0 chunk",
            request: b"POST /cl-te HTTP/1.1\r\nHost: a.example\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.example\r\n\r\n",
            // Transfer-Encoding wins (RFC 9112 6.3), the Content-Length is
            // dropped, and the connection is closed after the response: the
            // bytes after the chunked body are never read as a request.
            expect: Forwarded(vec![200], vec![up("POST", "/cl-te", b"")]),
        },
        Case {
            name: "TE.CL: chunked then a Content-Length shorter than the chunked body",
            request: b"POST /te-cl HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.example\r\n\r\n",
            expect: Forwarded(vec![200], vec![up("POST", "/te-cl", b"SMUGGLED")]),
        },
        Case {
            name: "two different Content-Length values",
            request: b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            expect: Refused(400),
        },
        Case {
            name: "Content-Length: 1, 2",
            request: b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1, 2\r\n\r\nab",
            expect: Refused(400),
        },
        Case {
            name: "Content-Length: 3, 3 (a list, even of equal values)",
            request: b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3, 3\r\n\r\nabc",
            expect: Refused(400),
        },
        Case {
            name: "the same Content-Length twice (legal: one length)",
            request: b"POST /same HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            expect: Forwarded(vec![200], vec![up("POST", "/same", b"abc")]),
        },
        Case {
            name: "Content-Length: +3",
            request: b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: +3\r\n\r\nabc",
            expect: Refused(400),
        },
        Case {
            name: "Content-Length: -1",
            request: b"POST / HTTP/1.1\r\nHost: a.example\r\nContent-Length: -1\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "Transfer-Encoding: chunked, identity",
            request: b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "Transfer-Encoding: chunked, then Transfer-Encoding: identity",
            request: b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "Transfer-Encoding: xchunked",
            request: b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "Transfer-Encoding: identity (no chunked at all)",
            request: b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: identity\r\nContent-Length: 3\r\n\r\nabc",
            expect: Refused(400),
        },
        Case {
            name: "Transfer-Encoding : chunked (space before the colon)",
            request: b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "Transfer-Encoding in HTTP/1.0",
            request: b"POST / HTTP/1.0\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "chunk size overflowing 64 bits",
            request: b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nabc\r\n0\r\n\r\n",
            expect: BodyRefused(400),
        },
        Case {
            name: "chunk size with a sign",
            request: b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
            expect: BodyRefused(400),
        },
        Case {
            name: "chunk extension with a bare LF",
            request: b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n3;x\nabc\r\n0\r\n\r\n",
            expect: BodyRefused(400),
        },
        Case {
            name: "chunk extensions (legal: dropped, the body re-chunked)",
            request: b"POST /ext HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n3;name=value;x=\"q\"\r\nabc\r\n0;last\r\n\r\n",
            expect: Forwarded(vec![200], vec![up("POST", "/ext", b"abc")]),
        },
    ];
    run(addr, &recorder, &cases).await;
}

#[tokio::test]
async fn header_line_ambiguities() {
    let (_proxy, addr, recorder) = setup().await;
    use Expect::*;
    let cases = [
        Case {
            name: "obs-fold: a continuation line starting with a space",
            request: b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Folded: a\r\n b\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "obs-fold: a continuation line starting with a tab",
            request: b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Folded: a\r\n\tTransfer-Encoding: chunked\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "obs-fold right after the request line",
            request: b"GET / HTTP/1.1\r\n Host: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "bare CR inside a header value",
            request: b"GET / HTTP/1.1\r\nHost: a.example\r\nX-A: a\rTransfer-Encoding: chunked\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "bare CR as a line terminator",
            request: b"GET / HTTP/1.1\rHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "bare LF line terminators (RFC 9112 2.2 allows them; forwarded with CRLF)",
            request: b"GET /lf HTTP/1.1\nHost: a.example\n\n",
            expect: Forwarded(vec![200], vec![up("GET", "/lf", b"")]),
        },
        Case {
            name: "bare LF inside a header value ends the line: two headers",
            request: b"GET /lf2 HTTP/1.1\r\nHost: a.example\r\nX-A: a\nX-B: b\r\n\r\n",
            expect: Forwarded(vec![200], vec![up("GET", "/lf2", b"")]),
        },
        Case {
            name: "NUL in a header value",
            request: b"GET / HTTP/1.1\r\nHost: a.example\r\nX-A: a\0b\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "NUL in a header name",
            request: b"GET / HTTP/1.1\r\nHost: a.example\r\nX-\0A: a\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "NUL in the Host value",
            request: b"GET / HTTP/1.1\r\nHost: a.example\0.evil\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "header name with a space inside",
            request: b"GET / HTTP/1.1\r\nHost: a.example\r\nX A: a\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "empty header name",
            request: b"GET / HTTP/1.1\r\nHost: a.example\r\n: a\r\n\r\n",
            expect: Refused(400),
        },
    ];
    run(addr, &recorder, &cases).await;
    // The split header of the bare-LF case reached the backend as two headers.
    recorder.clear();
    let reply = raw_exchange(
        addr,
        b"GET /lf2 HTTP/1.1\r\nHost: a.example\r\nX-A: a\nX-B: b\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert_eq!(statuses(&reply), [200]);
    let seen = recorder.seen();
    assert_eq!(seen[0].header("x-a"), ["a"]);
    assert_eq!(seen[0].header("x-b"), ["b"]);
}

#[tokio::test]
async fn host_ambiguities() {
    let (_proxy, addr, recorder) = setup().await;
    use Expect::*;
    let cases = [
        Case {
            name: "two Host headers (the first routes to the public host)",
            request: b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: other.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "two Host headers (the first routes to the protected host)",
            request: b"GET / HTTP/1.1\r\nHost: other.example\r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "two Host headers with the same value",
            request: b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "Host: a.example, other.example",
            request: b"GET / HTTP/1.1\r\nHost: a.example, other.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "absolute form naming the protected host, Host the public one",
            request: b"GET http://other.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
            // The authority wins (RFC 9112 3.2.2): the API key is required.
            expect: Refused(401),
        },
        Case {
            name: "absolute form naming the public host, Host the protected one",
            request: b"GET http://a.example/abs HTTP/1.1\r\nHost: other.example\r\n\r\n",
            // Routed by the authority, and the backend is told the same host.
            expect: Forwarded(vec![200], vec![up("GET", "/abs", b"")]),
        },
        Case {
            name: "absolute form with userinfo",
            request: b"GET http://a.example@other.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "absolute form with an https scheme on a plain listener",
            request: b"GET https://a.example/s HTTP/1.1\r\nHost: a.example\r\n\r\n",
            expect: Forwarded(vec![200], vec![up("GET", "/s", b"")]),
        },
        Case {
            name: "missing Host in HTTP/1.1",
            request: b"GET / HTTP/1.1\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "missing Host in HTTP/1.0 (nothing to route by)",
            request: b"GET / HTTP/1.0\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "empty Host",
            request: b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "Host with a path",
            request: b"GET / HTTP/1.1\r\nHost: a.example/x\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "Host with a non-numeric port",
            request: b"GET / HTTP/1.1\r\nHost: a.example:80x\r\n\r\n",
            expect: Refused(400),
        },
    ];
    run(addr, &recorder, &cases).await;
    // The API key still opens the protected host by its absolute form, and the
    // backend is told that host.
    recorder.clear();
    let reply = raw_exchange(
        addr,
        b"GET http://other.example/k HTTP/1.1\r\nHost: a.example\r\nx-api-key: key-of-ci\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert_eq!(statuses(&reply), [200], "{}", reply.text());
    assert!(reply.text().contains("x-route: other"), "{}", reply.text());
    let seen = recorder.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("host"), ["other.example"]);
    assert_eq!(seen[0].header("x-forwarded-host"), ["other.example"]);
}

#[tokio::test]
async fn request_line_oddities() {
    let (_proxy, addr, recorder) = setup().await;
    use Expect::*;
    let long_line = format!(
        "GET /{} HTTP/1.1\r\nHost: a.example\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let long_line: &'static [u8] = Box::leak(long_line.into_bytes().into_boxed_slice());
    let cases = [
        Case {
            name: "two spaces after the method",
            request: b"GET  / HTTP/1.1\r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "two spaces before the version",
            request: b"GET /  HTTP/1.1\r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "a tab between method and target",
            request: b"GET\t/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "leading space before the method",
            request: b" GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "trailing space after the version",
            request: b"GET / HTTP/1.1 \r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "unknown version HTTP/1.2",
            request: b"GET / HTTP/1.2\r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "no version (HTTP/0.9 style)",
            request: b"GET /\r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "lowercase method (methods are case-sensitive: forwarded as sent)",
            request: b"get /lower HTTP/1.1\r\nHost: a.example\r\n\r\n",
            expect: Forwarded(vec![200], vec![up("get", "/lower", b"")]),
        },
        Case {
            name: "method with a non-token character",
            request: b"G(T / HTTP/1.1\r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "'<' in the path",
            request: b"GET /a<b HTTP/1.1\r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "DEL in the path",
            request: b"GET /a\x7fb HTTP/1.1\r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "NUL in the path",
            request: b"GET /a\0b HTTP/1.1\r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "backtick in the path",
            request: b"GET /a`b HTTP/1.1\r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "target not starting with / (relative)",
            request: b"GET a/b HTTP/1.1\r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "asterisk form on GET",
            request: b"GET * HTTP/1.1\r\nHost: a.example\r\n\r\n",
            expect: Refused(400),
        },
        Case {
            name: "request line of 100 KiB (above the 64 KiB head limit)",
            request: long_line,
            expect: Refused(431),
        },
    ];
    run(addr, &recorder, &cases).await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_the_proxy_keeps_serving() {
    let (_proxy, addr, recorder) = setup().await;
    // Two well-formed pipelined requests, then a malformed one: the first two
    // are served, the third refused, and the connection closed.
    let reply = raw_exchange(
        addr,
        b"GET /1 HTTP/1.1\r\nHost: a.example\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a.example\r\nContent-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        DEADLINE,
    )
    .await;
    assert_eq!(statuses(&reply), [200, 200, 400], "{}", reply.text());
    assert!(reply.closed);
    let targets: Vec<String> = recorder.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(targets, ["/1", "/2"]);
    assert_eq!(recorder.seen()[1].body.as_deref(), Ok(&b"hi"[..]));
    // And the proxy still serves.
    assert_eq!(get(addr, "a.example", "/after").await.status, 200);
}

/// HTTP/2 requests that would become ambiguous HTTP/1.1 upstream (the h2 to
/// h1 downgrade): each is refused (the stream reset, or the whole connection
/// closed with GOAWAY PROTOCOL_ERROR when the h2 codec rejects a header field),
/// nothing complete reaches the backend, and the proxy keeps serving.
#[tokio::test]
async fn http2_downgrade_ambiguities() {
    use common::h2raw::{self, *};
    use tokio::io::AsyncWriteExt;
    let (_proxy, addr, recorder) = setup().await;
    let post = |extra: &[(&str, &str)]| {
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        literal_indexed_name(4, b"/h2", &mut block); // :path
        literal_indexed_name(1, b"a.example", &mut block); // :authority
        for (name, value) in extra {
            literal_new_name(name.as_bytes(), value.as_bytes(), &mut block);
        }
        block
    };
    // (case, header block, body DATA or None, outcome on the stream)
    type H2Case<'a> = (&'a str, Vec<u8>, Option<&'a [u8]>, &'a str);
    let cases: Vec<H2Case> = vec![
        (
            "transfer-encoding: chunked",
            post(&[("transfer-encoding", "chunked")]),
            Some(&b"3\r\nabc\r\n0\r\n\r\n"[..]),
            "rst 1",
        ),
        (
            "connection: keep-alive",
            post(&[("connection", "keep-alive")]),
            Some(&b"abc"[..]),
            "rst 1",
        ),
        (
            "content-length: 3 with 6 body bytes",
            post(&[("content-length", "3")]),
            Some(&b"abcdef"[..]),
            "rst 1",
        ),
        (
            "CR LF in a header value",
            post(&[("x-a", "a\r\nTransfer-Encoding: chunked")]),
            Some(&b"abc"[..]),
            "goaway 1",
        ),
        (
            "NUL in a header value",
            post(&[("x-a", "a\0b")]),
            Some(&b"abc"[..]),
            "goaway 1",
        ),
        (
            "upper-case header name",
            post(&[("X-A", "a")]),
            Some(&b"abc"[..]),
            "goaway 1",
        ),
        (
            "header name with a colon",
            post(&[("x:a", "a")]),
            Some(&b"abc"[..]),
            "goaway 1",
        ),
        (
            "space in :path",
            {
                let mut block = vec![0x82, 0x86];
                literal_indexed_name(4, b"/a b", &mut block);
                literal_indexed_name(1, b"a.example", &mut block);
                block
            },
            None,
            "rst 1",
        ),
        (
            "two host headers besides :authority",
            post(&[("host", "a.example"), ("host", "other.example")]),
            Some(&b"abc"[..]),
            "status 400",
        ),
    ];
    let mut failures = Vec::new();
    for (name, block, body, want) in &cases {
        recorder.clear();
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut out = h2raw::handshake();
        let flags = if body.is_some() {
            END_HEADERS
        } else {
            END_HEADERS | END_STREAM
        };
        out.extend(headers(1, block, flags));
        if let Some(body) = body {
            out.extend(frame(DATA, END_STREAM, 1, body));
        }
        tcp.write_all(&out).await.unwrap();
        let read = read_frames(&mut tcp, DEADLINE, |f| {
            f.stream == 1 && (f.kind == HEADERS || f.kind == RST_STREAM) || f.goaway().is_some()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got: Vec<String> = read
            .frames
            .iter()
            .filter(|f| f.stream == 1 || f.kind == GOAWAY)
            .map(|f| match (f.status(), f.rst_code(), f.goaway()) {
                (Some(s), _, _) => format!("status {s}"),
                (_, Some(c), _) => format!("rst {c}"),
                (_, _, Some((_, c))) => format!("goaway {c}"),
                _ => format!("frame {}", f.kind),
            })
            .collect();
        let seen = recorder.seen();
        if got != [*want] || seen.iter().any(|s| s.body.is_ok()) {
            failures.push(format!("{name}: {got:?}, backend saw {seen:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert_eq!(get(addr, "a.example", "/after").await.status, 200);
}
