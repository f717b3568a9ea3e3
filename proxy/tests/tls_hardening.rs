//! TLS hardening of HTTPS listeners over real sockets on 127.0.0.1: legacy
//! protocol versions and weak cipher suites refused (raw ClientHello records,
//! since no maintained client library still speaks TLS 1.0), what a normal
//! client negotiates, renegotiation, the handshake timeout, and a listener
//! without a usable certificate.
//!
//! Certificate choice by SNI (and the default certificate for unknown names)
//! is asserted in `tls.rs`, not repeated here. The API has no client
//! certificate validation on listeners (`ListenerTls` has `certificateRefs` and
//! `minVersion` only), so there is no mTLS-at-the-edge test.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use meshgate_proxy::demo::spawn_echo;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "a.example.test";

// TLS record content types, alert descriptions and cipher suites (IANA).
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const SERVER_HELLO: u8 = 2;
const HANDSHAKE_FAILURE: u8 = 40;
const ACCESS_DENIED: u8 = 49;
const PROTOCOL_VERSION: u8 = 70;

const TLS10: u16 = 0x0301;
const TLS11: u16 = 0x0302;
const TLS12: u16 = 0x0303;

/// Suites no modern server should accept: static RSA key exchange (no forward
/// secrecy), CBC, RC4, 3DES, NULL, export, anonymous and finite-field DHE.
const WEAK_SUITES: &[(u16, &str)] = &[
    (0x0000, "TLS_NULL_WITH_NULL_NULL"),
    (0x0003, "TLS_RSA_EXPORT_WITH_RC4_40_MD5"),
    (0x0005, "TLS_RSA_WITH_RC4_128_SHA"),
    (0x000a, "TLS_RSA_WITH_3DES_EDE_CBC_SHA"),
    (0x0018, "TLS_DH_anon_WITH_RC4_128_MD5"),
    (0x002f, "TLS_RSA_WITH_AES_128_CBC_SHA"),
    (0x0033, "TLS_DHE_RSA_WITH_AES_128_CBC_SHA"),
    (0x0035, "TLS_RSA_WITH_AES_256_CBC_SHA"),
    (0x003c, "TLS_RSA_WITH_AES_128_CBC_SHA256"),
    (0x009c, "TLS_RSA_WITH_AES_128_GCM_SHA256"),
    (0x009e, "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256"),
    (0xc007, "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA"),
    (0xc008, "TLS_ECDHE_ECDSA_WITH_3DES_EDE_CBC_SHA"),
    (0xc009, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"),
    (0xc00a, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"),
    (0xc013, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"),
    (0xc023, "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"),
    (0xc024, "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384"),
    (0xc027, "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256"),
];

/// The TLS 1.2 suites that are fine: ECDHE key exchange and an AEAD cipher.
const ECDHE_ECDSA_AEAD: &[u16] = &[0xc02b, 0xc02c, 0xcca9];
const ECDHE_RSA_AEAD: &[u16] = &[0xc02f, 0xc030, 0xcca8];

struct Setup {
    proxy: meshgate_proxy::runtime::Running,
    addr: SocketAddr,
    root: CertificateDer<'static>,
}

fn secret_yaml(name: &str, hosts: &[&str]) -> (String, CertificateDer<'static>) {
    // rcgen's default key is ECDSA P-256.
    let generated =
        rcgen::generate_simple_self_signed(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap();
    let yaml = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: test}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: {:?}\n  tls.key: {:?}\n",
        generated.cert.pem(),
        generated.signing_key.serialize_pem()
    );
    (yaml, generated.cert.der().clone())
}

/// An HTTPS listener (certificate for `a.example.test`) with `tls_extra` in its
/// `tls` mapping and `client_traffic` as the gateway's `clientTraffic`.
async fn setup(tls_extra: &str, client_traffic: &str) -> Setup {
    meshgate_proxy::install_crypto_provider();
    let echo = spawn_echo("echo").await.unwrap();
    let (secret, root) = secret_yaml("cert-a", &[HOST]);
    let listeners = format!(
        "  - name: https\n    port: 443\n    protocol: HTTPS\n    tls: {{certificateRefs: [{{name: cert-a}}]{tls_extra}}}"
    );
    let yaml = gateway_yaml_with_client(
        &listeners,
        &tagged_route("all", "[]", "echo", ""),
        client_traffic,
    ) + &service_yaml("echo", echo, true)
        + &secret;
    let proxy = start_yaml(&yaml, &["https"]).await;
    let addr = proxy.listener_addr("https").unwrap();
    Setup { proxy, addr, root }
}

/// A ClientHello record. `legacy_version` goes in the record and the hello;
/// no supported_versions extension is sent, so this is a TLS 1.2-or-lower hello.
fn client_hello(legacy_version: u16, suites: &[u16], renegotiation_info: Option<&[u8]>) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut exts = Vec::new();
    // server_name
    let mut sni = Vec::new();
    sni.extend_from_slice(&((HOST.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(HOST.len() as u16).to_be_bytes());
    sni.extend_from_slice(HOST.as_bytes());
    ext(&mut exts, 0, &sni);
    // supported_groups: x25519, secp256r1, secp384r1
    ext(&mut exts, 10, &[0, 6, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]);
    // ec_point_formats: uncompressed
    ext(&mut exts, 11, &[1, 0]);
    // signature_algorithms
    let schemes: [u16; 8] = [
        0x0403, 0x0503, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601,
    ];
    let mut sigs = ((schemes.len() * 2) as u16).to_be_bytes().to_vec();
    for s in schemes {
        sigs.extend_from_slice(&s.to_be_bytes());
    }
    ext(&mut exts, 13, &sigs);
    // extended_master_secret
    ext(&mut exts, 23, &[]);
    if let Some(info) = renegotiation_info {
        let mut body = vec![info.len() as u8];
        body.extend_from_slice(info);
        ext(&mut exts, 0xff01, &body);
    }

    let mut hello = legacy_version.to_be_bytes().to_vec();
    hello.extend((0..32).map(|_| fastrand::u8(..)));
    hello.push(32);
    hello.extend((0..32).map(|_| fastrand::u8(..)));
    hello.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        hello.extend_from_slice(&s.to_be_bytes());
    }
    hello.extend_from_slice(&[1, 0]); // compression: null only
    hello.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    hello.extend(exts);

    let mut handshake = vec![1]; // client_hello
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    let mut record = vec![HANDSHAKE];
    record.extend_from_slice(&legacy_version.to_be_bytes());
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// The server's first answer to a ClientHello.
#[derive(Debug, PartialEq)]
enum Answer {
    /// A fatal (level 2) alert with this description.
    Alert(u8, u8),
    ServerHello {
        version: u16,
        suite: u16,
        /// The renegotiation_info extension's body, if present.
        renegotiation_info: Option<Vec<u8>>,
        /// Extension types in order.
        extensions: Vec<u16>,
    },
    /// The connection closed without a record.
    Closed,
    Other(Vec<u8>),
}

/// Sends `hello` and parses the first record that comes back.
async fn exchange(addr: SocketAddr, hello: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(hello).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        if buf.len() >= 5 {
            let len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
            if buf.len() >= 5 + len {
                return parse_record(buf[0], &buf[5..5 + len]);
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Answer::Closed,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no answer to the ClientHello within 5 s"),
        }
    }
}

fn parse_record(kind: u8, body: &[u8]) -> Answer {
    if kind == ALERT && body.len() == 2 {
        return Answer::Alert(body[0], body[1]);
    }
    if kind != HANDSHAKE || body.first() != Some(&SERVER_HELLO) {
        return Answer::Other(body.to_vec());
    }
    let hello = &body[4..];
    let version = u16::from_be_bytes([hello[0], hello[1]]);
    let sid_len = hello[34] as usize;
    let mut p = &hello[35 + sid_len..];
    let suite = u16::from_be_bytes([p[0], p[1]]);
    p = &p[3..]; // suite, compression method
    let mut extensions = Vec::new();
    let mut renegotiation_info = None;
    if p.len() >= 2 {
        let total = u16::from_be_bytes([p[0], p[1]]) as usize;
        let mut e = &p[2..2 + total];
        while e.len() >= 4 {
            let kind = u16::from_be_bytes([e[0], e[1]]);
            let len = u16::from_be_bytes([e[2], e[3]]) as usize;
            if kind == 0xff01 {
                renegotiation_info = Some(e[4..4 + len].to_vec());
            }
            extensions.push(kind);
            e = &e[4 + len..];
        }
    }
    Answer::ServerHello {
        version,
        suite,
        renegotiation_info,
        extensions,
    }
}

const GOOD_TLS12: &[u16] = &[0xc02b, 0xc02c, 0xcca9, 0xc02f, 0xc030, 0xcca8];

#[tokio::test]
async fn tls10_and_tls11_hellos_get_a_protocol_version_alert() {
    let setup = setup("", "{}").await;
    for version in [TLS10, TLS11] {
        // Even offering good suites: the version alone is refused.
        let answer = exchange(setup.addr, &client_hello(version, GOOD_TLS12, Some(&[]))).await;
        assert_eq!(
            answer,
            Answer::Alert(2, PROTOCOL_VERSION),
            "version {version:#06x}"
        );
    }
    // The same hello as TLS 1.2 is served (the raw hello itself is valid).
    let answer = exchange(setup.addr, &client_hello(TLS12, GOOD_TLS12, Some(&[]))).await;
    assert!(
        matches!(answer, Answer::ServerHello { version: TLS12, .. }),
        "{answer:?}"
    );
    drop(setup.proxy);
}

#[tokio::test]
async fn tls13_only_listener_refuses_a_tls12_hello() {
    let setup = setup(", minVersion: \"1.3\"", "{}").await;
    let answer = exchange(setup.addr, &client_hello(TLS12, GOOD_TLS12, None)).await;
    assert_eq!(answer, Answer::Alert(2, PROTOCOL_VERSION));
    // And a rustls client limited to TLS 1.2 fails; TLS 1.3 is served.
    assert!(connect(&setup, &[&rustls::version::TLS12]).await.is_err());
    let (version, _) = connect(&setup, &[&rustls::version::TLS13]).await.unwrap();
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
    drop(setup.proxy);
}

#[tokio::test]
async fn weak_suites_get_a_handshake_failure_and_only_ecdhe_aead_is_accepted() {
    let setup = setup("", "{}").await;
    // All weak suites at once.
    let weak: Vec<u16> = WEAK_SUITES.iter().map(|(s, _)| *s).collect();
    let answer = exchange(setup.addr, &client_hello(TLS12, &weak, None)).await;
    assert_eq!(answer, Answer::Alert(2, HANDSHAKE_FAILURE));

    // One suite at a time: every weak one is refused; of the ECDHE AEAD ones,
    // exactly those matching the certificate's key (ECDSA) are accepted.
    for (suite, name) in WEAK_SUITES {
        let answer = exchange(setup.addr, &client_hello(TLS12, &[*suite], None)).await;
        assert_eq!(answer, Answer::Alert(2, HANDSHAKE_FAILURE), "{name}");
    }
    for suite in ECDHE_ECDSA_AEAD {
        match exchange(setup.addr, &client_hello(TLS12, &[*suite], None)).await {
            Answer::ServerHello {
                version,
                suite: chosen,
                ..
            } => {
                assert_eq!((version, chosen), (TLS12, *suite));
            }
            other => panic!("{suite:#06x}: {other:?}"),
        }
    }
    for suite in ECDHE_RSA_AEAD {
        let answer = exchange(setup.addr, &client_hello(TLS12, &[*suite], None)).await;
        assert_eq!(answer, Answer::Alert(2, HANDSHAKE_FAILURE), "{suite:#06x}");
    }
    // Weak suites listed first do not win over a good one listed last.
    let mut mixed = weak.clone();
    mixed.push(0xc02b);
    match exchange(setup.addr, &client_hello(TLS12, &mixed, None)).await {
        Answer::ServerHello { suite, .. } => assert_eq!(suite, 0xc02b),
        other => panic!("{other:?}"),
    }
    drop(setup.proxy);
}

/// A rustls handshake limited to `versions`; the negotiated version and suite.
async fn connect(
    setup: &Setup,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<(rustls::ProtocolVersion, rustls::CipherSuite), std::io::Error> {
    connect_with(
        setup,
        versions,
        rustls::crypto::aws_lc_rs::default_provider(),
    )
    .await
}

/// [`connect`] offering `provider`'s cipher suites, in its order.
async fn connect_with(
    setup: &Setup,
    versions: &[&'static rustls::SupportedProtocolVersion],
    provider: rustls::crypto::CryptoProvider,
) -> Result<(rustls::ProtocolVersion, rustls::CipherSuite), std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(setup.root.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(setup.addr).await?;
    let tls = connector
        .connect(ServerName::try_from(HOST).unwrap(), tcp)
        .await?;
    let conn = tls.get_ref().1;
    Ok((
        conn.protocol_version().unwrap(),
        conn.negotiated_cipher_suite().unwrap().suite(),
    ))
}

#[tokio::test]
async fn normal_clients_negotiate_tls13_or_tls12_ecdhe_aead() {
    use rustls::CipherSuite as S;
    let setup = setup("", "{}").await;
    let (version, suite) = connect(&setup, &[&rustls::version::TLS13, &rustls::version::TLS12])
        .await
        .unwrap();
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_3);
    assert!(
        [
            S::TLS13_AES_128_GCM_SHA256,
            S::TLS13_AES_256_GCM_SHA384,
            S::TLS13_CHACHA20_POLY1305_SHA256
        ]
        .contains(&suite),
        "{suite:?}"
    );
    let (version, suite) = connect(&setup, &[&rustls::version::TLS12]).await.unwrap();
    assert_eq!(version, rustls::ProtocolVersion::TLSv1_2);
    assert!(
        [
            S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        ]
        .contains(&suite),
        "{suite:?}"
    );
    eprintln!("FIGURE negotiated: TLS 1.3 and TLS 1.2 {suite:?}");
    drop(setup.proxy);
}

/// The server's suite order, not the client's: AES-128-GCM, then ChaCha20, then
/// AES-256-GCM, with ChaCha20 first for a client whose first AEAD it is.
#[tokio::test]
async fn server_prefers_aes128_unless_the_client_puts_chacha_first() {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    use rustls::CipherSuite as S;
    let setup = setup("", "{}").await;
    let offering = |suites: &[rustls::SupportedCipherSuite]| rustls::crypto::CryptoProvider {
        cipher_suites: suites.to_vec(),
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let tls13 = &[&rustls::version::TLS13];
    for (offered, chosen) in [
        // OpenSSL's default order.
        (
            vec![
                cs::TLS13_AES_256_GCM_SHA384,
                cs::TLS13_CHACHA20_POLY1305_SHA256,
                cs::TLS13_AES_128_GCM_SHA256,
            ],
            S::TLS13_AES_128_GCM_SHA256,
        ),
        (
            vec![
                cs::TLS13_CHACHA20_POLY1305_SHA256,
                cs::TLS13_AES_256_GCM_SHA384,
                cs::TLS13_AES_128_GCM_SHA256,
            ],
            S::TLS13_CHACHA20_POLY1305_SHA256,
        ),
        (
            vec![
                cs::TLS13_AES_256_GCM_SHA384,
                cs::TLS13_CHACHA20_POLY1305_SHA256,
            ],
            S::TLS13_CHACHA20_POLY1305_SHA256,
        ),
        (
            vec![cs::TLS13_AES_256_GCM_SHA384],
            S::TLS13_AES_256_GCM_SHA384,
        ),
    ] {
        let (version, suite) = connect_with(&setup, tls13, offering(&offered))
            .await
            .unwrap();
        assert_eq!(
            (version, suite),
            (rustls::ProtocolVersion::TLSv1_3, chosen),
            "{offered:?}"
        );
    }
    // TLS 1.2 (raw hellos): the same order.
    for (offered, chosen) in [
        (&[0xc02c, 0xcca9, 0xc02b][..], 0xc02b),
        (&[0xcca9, 0xc02c, 0xc02b][..], 0xcca9),
        (&[0xc02c][..], 0xc02c),
    ] {
        match exchange(setup.addr, &client_hello(TLS12, offered, None)).await {
            Answer::ServerHello { suite, .. } => assert_eq!(suite, chosen, "{offered:x?}"),
            other => panic!("{offered:x?}: {other:?}"),
        }
    }
    drop(setup.proxy);
}

#[tokio::test]
async fn tls12_renegotiation_is_never_offered() {
    let setup = setup("", "{}").await;
    // A client signalling RFC 5746 secure renegotiation (empty
    // renegotiation_info) gets the empty extension back: the server signals
    // that it is not vulnerable to the 2009 renegotiation attack...
    match exchange(setup.addr, &client_hello(TLS12, GOOD_TLS12, Some(&[]))).await {
        Answer::ServerHello {
            renegotiation_info, ..
        } => assert_eq!(renegotiation_info, Some(vec![0])),
        other => panic!("{other:?}"),
    }
    // ...and a client that does not signal it gets no extension at all.
    match exchange(setup.addr, &client_hello(TLS12, GOOD_TLS12, None)).await {
        Answer::ServerHello {
            renegotiation_info,
            extensions,
            ..
        } => {
            assert_eq!(renegotiation_info, None, "{extensions:?}");
        }
        other => panic!("{other:?}"),
    }
    // A first handshake claiming to be a renegotiation (non-empty
    // renegotiation_info): RFC 5746 3.6 says to abort; rustls goes on and
    // answers with the empty extension, i.e. treats it as a first handshake.
    // Harmless, since rustls implements no renegotiation at all: after the
    // handshake a ClientHello or HelloRequest is an unexpected message.
    let answer = exchange(
        setup.addr,
        &client_hello(TLS12, GOOD_TLS12, Some(&[0xaa; 12])),
    )
    .await;
    match answer {
        Answer::ServerHello {
            version,
            renegotiation_info,
            ..
        } => assert_eq!((version, renegotiation_info), (TLS12, Some(vec![0]))),
        other => panic!("{other:?}"),
    }
    drop(setup.proxy);
}

/// Reads until the proxy closes the connection or `deadline` passes: (closed,
/// bytes received, time to the close).
async fn wait_closed(stream: &mut TcpStream, deadline: Duration) -> (bool, Vec<u8>, Duration) {
    let start = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (true, bytes, start.elapsed()),
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => return (false, bytes, start.elapsed()),
        }
    }
}

#[tokio::test]
async fn stalled_handshakes_are_closed_at_the_header_timeout() {
    let setup = setup("", "{requestHeaderTimeout: 1s}").await;
    let hello = client_hello(TLS12, GOOD_TLS12, None);
    // Silent, half a ClientHello, and a ClientHello dribbled a byte every
    // 100 ms (never idle, never complete in time).
    let mut silent = TcpStream::connect(setup.addr).await.unwrap();
    let mut half = TcpStream::connect(setup.addr).await.unwrap();
    half.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let silent_task = async { wait_closed(&mut silent, Duration::from_secs(8)).await };
    let half_task = async { wait_closed(&mut half, Duration::from_secs(8)).await };
    let dribble_task = async {
        let mut s = TcpStream::connect(setup.addr).await.unwrap();
        let start = Instant::now();
        for byte in &hello {
            if s.write_all(&[*byte]).await.is_err() {
                break;
            }
            let (closed, bytes, _) = wait_closed(&mut s, Duration::from_millis(100)).await;
            if closed {
                return (true, bytes, start.elapsed());
            }
        }
        (false, Vec::new(), start.elapsed())
    };
    let (silent, half, dribble) = tokio::join!(silent_task, half_task, dribble_task);
    for (what, (closed, bytes, elapsed)) in [
        ("silent", silent),
        ("half hello", half),
        ("dribble", dribble),
    ] {
        assert!(closed, "{what}: still open after {elapsed:?}");
        assert_eq!(bytes, Vec::<u8>::new(), "{what}: the proxy answered");
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
            "{what}: closed after {elapsed:?}"
        );
        eprintln!("FIGURE stalled TLS handshake ({what}): closed after {elapsed:?}");
    }
    // A normal handshake still works.
    assert!(connect(&setup, &[&rustls::version::TLS13]).await.is_ok());
    drop(setup.proxy);
}

#[tokio::test]
async fn listener_without_a_usable_certificate_refuses_every_handshake() {
    meshgate_proxy::install_crypto_provider();
    let echo = spawn_echo("echo").await.unwrap();
    // The only certificate Secret does not exist.
    let listeners = "  - name: https\n    port: 443\n    protocol: HTTPS\n    tls: {certificateRefs: [{name: missing}]}";
    let yaml = gateway_yaml(listeners, &tagged_route("all", "[]", "echo", ""))
        + &service_yaml("echo", echo, true);
    let proxy = start_yaml(&yaml, &["https"]).await;
    let addr = proxy.listener_addr("https").unwrap();
    // No certificate to choose: access_denied, no ServerHello.
    let answer = exchange(addr, &client_hello(TLS12, GOOD_TLS12, None)).await;
    assert_eq!(answer, Answer::Alert(2, ACCESS_DENIED));
    drop(proxy);
}
