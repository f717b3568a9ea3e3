//! HTTPS: certificate choice by SNI, ALPN (h2 and http/1.1), over real sockets
//! with a verifying rustls client.

mod common;

use bytes::Bytes;
use common::*;
use http::{StatusCode, Version};
use http_body_util::Full;
use meshgate_proxy::client::{self, Reply, Tls};
use meshgate_proxy::demo::spawn_echo;
use rustls::pki_types::CertificateDer;

struct Cert {
    der: CertificateDer<'static>,
    secret_yaml: String,
}

fn cert(secret: &str, names: &[&str]) -> Cert {
    let generated =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let secret_yaml = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {secret}, namespace: test}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: {:?}\n  tls.key: {:?}\n",
        generated.cert.pem(),
        generated.signing_key.serialize_pem()
    );
    Cert {
        der: generated.cert.der().clone(),
        secret_yaml,
    }
}

/// The DNS names in the subjectAltName of `der`.
fn san(der: &CertificateDer<'_>) -> Vec<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let san = parsed
        .subject_alternative_name()
        .unwrap()
        .expect("certificate has a SAN");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

struct Setup {
    proxy: meshgate_proxy::runtime::Running,
    a: Cert,
    b: Cert,
}

async fn setup() -> Setup {
    meshgate_proxy::install_crypto_provider();
    let echo = spawn_echo("echo").await.unwrap();
    let a = cert("cert-a", &["a.example.test"]);
    let b = cert("cert-b", &["*.b.example.test"]);
    let listeners = "  - name: https\n    port: 443\n    protocol: HTTPS\n    tls: {certificateRefs: [{name: cert-a}, {name: cert-b}]}";
    let yaml = gateway_yaml(listeners, &tagged_route("all", "[]", "echo", ""))
        + &service_yaml("echo", echo, true)
        + &a.secret_yaml
        + &b.secret_yaml;
    let proxy = start_yaml(&yaml, &["https"]).await;
    Setup { proxy, a, b }
}

async fn https_get(
    setup: &Setup,
    server_name: &str,
    alpn: &[&[u8]],
) -> Result<Reply, meshgate_proxy::Error> {
    https_get_host(setup, server_name, server_name, alpn).await
}

/// A GET over TLS with `server_name` as SNI and `host` as Host / :authority.
async fn https_get_host(
    setup: &Setup,
    server_name: &str,
    host: &str,
    alpn: &[&[u8]],
) -> Result<Reply, meshgate_proxy::Error> {
    let tls = Tls {
        server_name: server_name.to_string(),
        roots: vec![setup.a.der.clone(), setup.b.der.clone()],
        alpn: alpn.iter().map(|p| p.to_vec()).collect(),
    };
    let request = request("GET", host, "/tls")
        .body(Full::new(Bytes::new()))
        .unwrap();
    client::send(
        setup.proxy.listener_addr("https").unwrap(),
        request,
        Some(&tls),
    )
    .await
}

#[tokio::test]
async fn sni_chooses_between_certificates() {
    let setup = setup().await;
    let reply = https_get(&setup, "a.example.test", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let presented = reply.peer_certificate.as_ref().unwrap();
    assert_eq!(san(presented), vec!["a.example.test"]);
    assert_eq!(presented, &setup.a.der);

    let reply = https_get(&setup, "shop.b.example.test", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let presented = reply.peer_certificate.as_ref().unwrap();
    assert_eq!(san(presented), vec!["*.b.example.test"]);
    assert_eq!(
        reply.json().unwrap()["headers"]["x-forwarded-proto"],
        "https"
    );

    // An unknown name gets the first (default) certificate, which the client
    // then rejects as not valid for that name (rather than as untrusted).
    let err = https_get(&setup, "unknown.test", &[b"http/1.1"])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not valid for name") && err.contains("a.example.test"),
        "{err}"
    );
}

#[tokio::test]
async fn alpn_negotiates_h2_and_http11() {
    let setup = setup().await;
    let reply = https_get(&setup, "a.example.test", &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(reply.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.status, StatusCode::OK);
    let seen = reply.json().unwrap();
    assert_eq!(seen["path"], "/tls");
    // HTTP/2 carries the host as :authority; the upstream gets it as Host.
    assert_eq!(seen["headers"]["host"], "a.example.test");
    assert_eq!(reply.header("x-route"), Some("all"));

    let reply = https_get(&setup, "a.example.test", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(reply.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(reply.version, Version::HTTP_11);
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn host_outside_the_connections_certificate_is_misdirected() {
    let setup = setup().await;
    for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
        // A connection made for a.example.test reused for a host that another
        // certificate serves: 421, so the client opens a connection of its own.
        let reply = https_get_host(&setup, "a.example.test", "shop.b.example.test", &[alpn])
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::MISDIRECTED_REQUEST);
        assert_eq!(reply.header("x-meshgate-flags"), Some("MR"));

        // Another host the same (wildcard) certificate covers is served, as is
        // the same host with a port or in upper case.
        for host in ["cart.b.example.test", "SHOP.b.example.test:443"] {
            let reply = https_get_host(&setup, "shop.b.example.test", host, &[alpn])
                .await
                .unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{host}");
            assert_eq!(reply.header("x-route"), Some("all"));
        }
    }
}

/// A TLS HTTP/1.1 keep-alive connection to the `https` listener of `proxy`.
async fn keep_alive_client(
    proxy: &meshgate_proxy::runtime::Running,
    root: &CertificateDer<'static>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(proxy.listener_addr("https").unwrap())
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("a.example.test").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

/// `meshgate_parked_connections` of `proxy`.
async fn parked(proxy: &meshgate_proxy::runtime::Running) -> u64 {
    metric(proxy, "meshgate_parked_connections")
        .await
        .expect("the gauge is exported") as u64
}

/// Reads one HTTP/1.1 response with a Content-Length body; its status.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "response cut short"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().unwrap())
        })
        .expect("content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head[9..12].parse().unwrap()
}

/// After a second without a request an HTTP/1.1 connection over TLS is parked
/// (hyper's connection and buffers dropped, `meshgate_parked_connections`);
/// the client's next request on the same connection is served, also one that
/// arrives in pieces.
#[tokio::test]
async fn idle_http11_connections_are_parked_and_serve_again() {
    use tokio::io::AsyncWriteExt;
    let setup = setup().await;
    let mut client = keep_alive_client(&setup.proxy, &setup.a.der).await;
    let request = b"GET /tls HTTP/1.1\r\nHost: a.example.test\r\n\r\n";
    client.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut client).await, 200);
    assert_eq!(parked(&setup.proxy).await, 0);

    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(parked(&setup.proxy).await, 1);
    client.write_all(request).await.unwrap();
    assert_eq!(
        read_response(&mut client).await,
        200,
        "served after parking"
    );
    assert_eq!(parked(&setup.proxy).await, 0);

    // Parked again, then woken by the first half of a request.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(parked(&setup.proxy).await, 1);
    client.write_all(&request[..10]).await.unwrap();
    client.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    client.write_all(&request[10..]).await.unwrap();
    assert_eq!(
        read_response(&mut client).await,
        200,
        "a request split around the wake-up"
    );
}

/// `idleTimeout` closes a parked connection, with close_notify.
#[tokio::test]
async fn parked_connections_close_at_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    meshgate_proxy::install_crypto_provider();
    let echo = spawn_echo("echo").await.unwrap();
    let a = cert("cert-a", &["a.example.test"]);
    let listeners = "  - name: https\n    port: 443\n    protocol: HTTPS\n    tls: {certificateRefs: [{name: cert-a}]}";
    let yaml = gateway_yaml_with_client(
        listeners,
        &tagged_route("all", "[]", "echo", ""),
        "{idleTimeout: 2500ms}",
    ) + &service_yaml("echo", echo, true)
        + &a.secret_yaml;
    let proxy = start_yaml(&yaml, &["https"]).await;
    let mut client = keep_alive_client(&proxy, &a.der).await;
    client
        .write_all(b"GET /tls HTTP/1.1\r\nHost: a.example.test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut client).await, 200);
    let started = std::time::Instant::now();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(parked(&proxy).await, 1);
    // A clean end of stream (close_notify) at the idle timeout, not a reset.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.read_to_end(&mut rest),
    )
    .await
    .expect("closed in time");
    assert!(read.is_ok(), "{read:?}");
    assert!(rest.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(2300)
            && waited < std::time::Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(parked(&proxy).await, 0);
}
