//! `tls_stream`, the unbuffered rustls server stream, against tokio-rustls
//! clients over real loopback TCP: large transfers both ways, key updates,
//! records split into single bytes, close_notify and bare EOF, corrupt
//! records, and the promise that an idle connection holds no buffer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshgate_proxy::tls_stream::{self, TlsStream};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Pki {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn pki() -> Pki {
    pki_for(&[&rustls::version::TLS13, &rustls::version::TLS12], b"h2")
}

/// A self-signed "localhost" server offering h2 and http/1.1, and a client
/// trusting it that speaks `versions` and offers `alpn`.
fn pki_for(versions: &[&'static rustls::SupportedProtocolVersion], alpn: &[u8]) -> Pki {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let der = CertificateDer::from(cert.der().to_vec());
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![alpn.to_vec()];
    Pki {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

type Client = tokio_rustls::client::TlsStream<TcpStream>;

/// A listener, a client connected through `via` (a relay, or the listener
/// itself) and the server side of that connection.
async fn pair_via(pki: &Pki, relay: Option<fn(TcpStream, TcpStream)>) -> (Client, TlsStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connect_to = match relay {
        None => addr,
        Some(relay) => {
            let front = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
            let front_addr = front.local_addr().expect("addr");
            tokio::spawn(async move {
                let (inbound, _) = front.accept().await.expect("relay accept");
                let outbound = TcpStream::connect(addr).await.expect("relay connect");
                relay(inbound, outbound);
            });
            front_addr
        }
    };
    let server_config = pki.server.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        tls_stream::accept(tcp, |_| server_config).await
    });
    let client = connect(pki, connect_to).await;
    let accepted = server.await.expect("join").expect("server handshake");
    (client, accepted.stream)
}

/// A tokio-rustls client of `pki`, connected to `addr` as "localhost".
async fn connect(pki: &Pki, addr: std::net::SocketAddr) -> Client {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(pki.client.clone())
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("client handshake")
}

async fn pair(pki: &Pki) -> (Client, TlsStream) {
    pair_via(pki, None).await
}

/// Echoes until the peer's end of stream, then closes with close_notify.
/// Returns the bytes echoed.
async fn echo(mut server: TlsStream) -> std::io::Result<usize> {
    let mut buf = vec![0u8; 8192];
    let mut total = 0;
    loop {
        let n = server.read(&mut buf).await?;
        if n == 0 {
            server.shutdown().await?;
            return Ok(total);
        }
        server.write_all(&buf[..n]).await?;
        server.flush().await?;
        total += n;
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Writes `data` in `chunk`-sized writes while another task reads `data.len()`
/// bytes back; returns the client and what it read.
async fn round_trip(client: Client, data: &[u8], chunk: usize) -> (Client, Vec<u8>) {
    let (mut reader, mut writer) = tokio::io::split(client);
    let expect = data.len();
    let read_back = tokio::spawn(async move {
        let mut got = vec![0u8; expect];
        reader.read_exact(&mut got).await.map(|_| (reader, got))
    });
    for part in data.chunks(chunk) {
        writer.write_all(part).await.expect("write");
    }
    writer.flush().await.expect("flush");
    let (reader, got) = tokio::time::timeout(Duration::from_secs(20), read_back)
        .await
        .expect("echo in time")
        .expect("join")
        .expect("read back");
    (reader.unsplit(writer), got)
}

#[tokio::test]
async fn large_transfers_both_ways_and_key_updates() {
    let pki = pki();
    let (client, server) = pair(&pki).await;
    assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let echoed = tokio::spawn(echo(server));

    // Odd sizes: records and the server's 8 KiB reads never line up.
    let first = pattern(1 << 20, 7);
    let (mut client, got) = round_trip(client, &first, 3001).await;
    assert!(got == first, "first megabyte echoed wrong");

    // The client asks for new keys (TLS 1.3 KeyUpdate, update_requested):
    // the server must answer with its own and go on.
    client
        .get_mut()
        .1
        .refresh_traffic_keys()
        .expect("key update");
    let second = pattern(300_000, 99);
    let (mut client, got) = round_trip(client, &second, 17_000).await;
    assert!(got == second, "data after the key update echoed wrong");

    // close_notify from the client: the server reads its end of stream,
    // answers with its own close_notify, which the client reads as a clean end.
    client.shutdown().await.expect("close_notify");
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .await
        .expect("clean end of stream (the server's close_notify)");
    assert!(rest.is_empty());
    assert_eq!(
        echoed.await.expect("join").expect("server"),
        first.len() + second.len()
    );
}

/// Forwards the client's bytes one write each, pausing every 97, and the
/// server's as they come: records (handshake ones too) arrive in pieces.
fn trickle(inbound: TcpStream, outbound: TcpStream) {
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (mut in_read, mut in_write) = inbound.into_split();
    let (mut out_read, mut out_write) = outbound.into_split();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = in_read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            for (i, byte) in buf[..n].iter().enumerate() {
                if out_write
                    .write_all(std::slice::from_ref(byte))
                    .await
                    .is_err()
                {
                    return;
                }
                // A pause now and then lets the server read what came so far.
                if i % 97 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                } else {
                    tokio::task::yield_now().await;
                }
            }
        }
        let _ = out_write.shutdown().await;
    });
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
        let _ = in_write.shutdown().await;
    });
}

/// Echoes `data` through `server` in `chunk`-sized writes, then closes from
/// the client: the echo must match and the server count every byte.
async fn echo_and_close(client: Client, server: TlsStream, data: &[u8], chunk: usize) {
    let echoed = tokio::spawn(echo(server));
    let (mut client, got) = round_trip(client, data, chunk).await;
    assert!(got == data, "echo differs");
    client.shutdown().await.expect("close_notify");
    assert_eq!(echoed.await.expect("join").expect("server"), data.len());
}

#[tokio::test]
async fn records_arriving_byte_by_byte_are_put_together() {
    let pki = pki();
    let (client, server) = pair_via(&pki, Some(trickle)).await;
    echo_and_close(client, server, &pattern(20_000, 3), 20_000).await;
}

#[tokio::test]
async fn an_idle_connection_holds_no_buffer() {
    let pki = pki();
    let (mut client, mut server) = pair(&pki).await;
    assert_eq!(server.buffers_held(), 0, "after the handshake");
    client.write_all(&pattern(50_000, 1)).await.expect("write");
    client.flush().await.expect("flush");
    let mut buf = vec![0u8; 8192];
    let mut total = 0;
    while total < 50_000 {
        let n = server.read(&mut buf).await.expect("read");
        assert!(n > 0);
        total += n;
    }
    server.write_all(&pattern(30_000, 2)).await.expect("write");
    server.flush().await.expect("flush");
    let mut answer = vec![0u8; 30_000];
    client.read_exact(&mut answer).await.expect("read answer");
    // Nothing more comes: the read waits, and while it waits nothing is held.
    let waited = tokio::time::timeout(Duration::from_millis(100), server.read(&mut buf)).await;
    assert!(waited.is_err(), "nothing was sent, the read must wait");
    assert_eq!(server.buffers_held(), 0, "while waiting for the client");
    // And the connection still works after that.
    client.write_all(b"again").await.expect("write");
    client.flush().await.expect("flush");
    let n = server.read(&mut buf).await.expect("read");
    assert_eq!(&buf[..n], b"again");
}

#[tokio::test]
async fn a_corrupt_record_is_an_error_and_the_client_gets_an_alert() {
    let pki = pki();
    let (mut client, mut server) = pair(&pki).await;
    // An application-data record whose AEAD tag cannot verify.
    let mut record = vec![0x17, 0x03, 0x03, 0x00, 0x40];
    record.extend(pattern(0x40, 5));
    client
        .get_mut()
        .0
        .write_all(&record)
        .await
        .expect("raw write");
    let mut buf = [0u8; 64];
    let err = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf))
        .await
        .expect("in time")
        .expect_err("a record that does not decrypt");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
    let seen = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
        .await
        .expect("in time")
        .expect_err("the client reads the server's alert");
    assert!(seen.to_string().contains("BadRecordMac"), "{seen}");
}

#[tokio::test]
async fn end_of_stream_inside_a_record_is_an_error_and_between_records_an_end() {
    let pki = pki();
    // Half a record, then FIN.
    let (mut client, mut server) = pair(&pki).await;
    client
        .get_mut()
        .0
        .write_all(&[0x17, 0x03, 0x03, 0x01, 0x00, 1, 2, 3])
        .await
        .expect("raw write");
    client.get_mut().0.shutdown().await.expect("fin");
    let mut buf = [0u8; 64];
    let err = server.read(&mut buf).await.expect_err("truncated record");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");

    // FIN without close_notify, between records: the end of the stream.
    let (mut client, mut server) = pair(&pki).await;
    client.write_all(b"last words").await.expect("write");
    client.flush().await.expect("flush");
    client.get_mut().0.shutdown().await.expect("fin");
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.expect("a plain end");
    assert_eq!(got, b"last words");
}

#[tokio::test]
async fn the_config_is_chosen_from_the_client_hello() {
    let pki = pki();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // (SNI, number of cipher suites) of the ClientHello `choose` saw.
    type Seen = Option<(Option<String>, usize)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let server_config = pki.server.clone();
    let record = seen.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        tls_stream::accept(tcp, move |hello| {
            *record.lock().expect("lock") = Some((
                hello.server_name().map(str::to_owned),
                hello.cipher_suites().len(),
            ));
            server_config
        })
        .await
    });
    let _client = connect(&pki, addr).await;
    let accepted = server.await.expect("join").expect("server handshake");
    assert_eq!(accepted.sni.as_deref(), Some("localhost"));
    assert_eq!(accepted.stream.alpn_protocol(), Some(&b"h2"[..]));
    let (name, suites) = seen
        .lock()
        .expect("lock")
        .clone()
        .expect("choose was called");
    assert_eq!(name.as_deref(), Some("localhost"));
    assert!(suites > 0);
}

#[tokio::test]
async fn a_client_that_closes_mid_handshake_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let pki = pki();
    let config = pki.server.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        tls_stream::accept(tcp, |_| config).await.map(|_| ())
    });
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    // The first bytes of a ClientHello record, then FIN.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    tcp.shutdown().await.expect("fin");
    let err = server.await.expect("join").expect_err("no handshake");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
}

#[tokio::test]
async fn tls12_clients_are_served_too() {
    let pki = pki_for(&[&rustls::version::TLS12], b"http/1.1");
    let (client, server) = pair(&pki).await;
    assert_eq!(
        client.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
    echo_and_close(client, server, &pattern(200_000, 11), 5000).await;
}

#[tokio::test]
async fn tls13_sessions_resume_from_the_tickets_sent_after_the_handshake() {
    let pki = pki();
    let (client, server) = pair(&pki).await;
    assert_eq!(
        client.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    let echoed = tokio::spawn(echo(server));
    // Reading the echo also reads the tickets, sent after the handshake.
    let (mut client, got) = round_trip(client, b"ticket please", 64).await;
    assert_eq!(got, b"ticket please");
    client.shutdown().await.expect("close_notify");
    echoed.await.expect("join").expect("server");

    // The same client config (its session cache) connects again.
    let (client, _server) = pair(&pki).await;
    assert_eq!(
        client.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}
