//! `meshgate-proxy demo`: the whole proxy in one process with nothing to set up —
//! a local mesh CA, an in-process echo backend that only accepts mesh mTLS (like
//! a pod with an Istio sidecar in STRICT mode), a self-signed edge certificate,
//! and an embedded ApiGateway with a few routes in mesh mode Istio. `--check`
//! sends the advertised requests itself over real sockets and exits 0 or 1.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use meshgate_mesh::fixtures::{Handler, LocalCa, PeerInfo, SidecarInbound};
use meshgate_mesh::identity::fixed;
use meshgate_mesh::{IdentityWatch, SpiffeId, WorkloadIdentity};
use rustls::pki_types::CertificateDer;
use serde_json::json;
use tokio::sync::watch;

use crate::client::{self, Tls};
use crate::runtime::{Options, Running, Source};
use crate::Error;

/// The hostname of the demo's certificate.
pub const DEMO_HOST: &str = "demo.meshgate.local";
/// The gateway's workload identity in the demo.
pub const GATEWAY_ID: &str = "spiffe://cluster.local/ns/demo/sa/meshgate-demo";
/// The echo backend's workload identity in the demo.
pub const ECHO_ID: &str = "spiffe://cluster.local/ns/demo/sa/echo";

#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// 0 picks a free port.
    pub http_port: u16,
    pub https_port: u16,
    pub admin: Option<SocketAddr>,
}

/// A running demo.
#[derive(Debug)]
pub struct Demo {
    pub running: Running,
    pub echo: SocketAddr,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub certificate: CertificateDer<'static>,
    /// Keeps the echo backend running.
    _echo: SidecarInbound,
    /// Keep the identity channels open.
    _identities: Vec<watch::Sender<Option<Arc<WorkloadIdentity>>>>,
}

/// Starts an HTTP echo server on 127.0.0.1 (any free port) that answers every
/// request with JSON describing it: backend name, method, path, query, headers and
/// body. It runs until the process ends.
pub async fn spawn_echo(name: &str) -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let name: std::sync::Arc<str> = name.into();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| echo(request, name.clone()));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Starts the demo's echo backend behind mesh mTLS on 127.0.0.1 (any free
/// port): only clients with a certificate of the mesh CA are served, and the
/// answer also names the client's SPIFFE ID and the ALPN it negotiated.
pub async fn spawn_mesh_echo(
    name: &str,
    identity: IdentityWatch,
    trust_domain: &str,
) -> Result<SidecarInbound, Error> {
    let name: Arc<str> = name.into();
    let handler: Handler = Arc::new(move |request, peer: PeerInfo| {
        let name = name.clone();
        Box::pin(async move {
            let Ok(mut response) = echo(request, name).await;
            let body = response.body_mut().collect().await.map(|b| b.to_bytes());
            let mut value: serde_json::Value = body
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            value["peer"] = json!({
                "spiffeId": peer.id.as_ref().map(ToString::to_string),
                "alpn": peer.alpn,
                "sni": peer.sni,
            });
            *response.body_mut() = Full::new(Bytes::from(value.to_string()));
            response
        })
    });
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    Ok(SidecarInbound::start_with(identity, trust_domain, addr, handler).await?)
}

async fn echo(
    request: Request<Incoming>,
    name: std::sync::Arc<str>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut headers: BTreeMap<&str, String> = BTreeMap::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes());
        headers
            .entry(k.as_str())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(&v)
            })
            .or_insert_with(|| v.into_owned());
    }
    let reply = json!({
        "backend": &*name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        // HTTP/2: `:authority`; HTTP/1.1 origin-form requests have none.
        "authority": parts.uri.authority().map(|a| a.as_str()),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let mut response = Response::new(Full::new(Bytes::from(reply.to_string())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

fn indent(text: &str, spaces: usize) -> String {
    let pad = " ".repeat(spaces);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

/// The demo's manifests: an ApiGateway, its TLS Secret, and the echo Service with
/// an EndpointSlice pointing at `echo_port` on 127.0.0.1.
pub fn manifests_yaml(
    echo_port: u16,
    http_port: u16,
    https_port: u16,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    format!(
        r#"apiVersion: meshgate.io/v1alpha1
kind: ApiGateway
metadata: {{name: demo, namespace: demo}}
spec:
  listeners:
  - {{name: http, port: {http_port}, protocol: HTTP}}
  - name: https
    port: {https_port}
    protocol: HTTPS
    tls: {{certificateRefs: [{{name: demo-tls}}]}}
  # Backends are reached over Istio mTLS; the echo pods must present the
  # identity of service account "echo" (spiffe://cluster.local/ns/demo/sa/echo).
  mesh:
    mode: Istio
    trustDomain: cluster.local
    backends: [{{name: echo, serviceAccounts: [echo]}}]
  routes:
  - name: echo
    matches: [{{path: {{type: PathPrefix, value: /echo}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{add: [{{name: x-meshgate-demo, value: hello}}]}}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{set: [{{name: x-meshgate-route, value: echo}}]}}
    backendRefs: [{{name: echo, port: 80}}]
    timeouts: {{request: 5s}}
  - name: old
    matches: [{{path: {{type: PathPrefix, value: /old}}}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        path: {{type: ReplacePrefixMatch, replacePrefixMatch: /echo}}
        statusCode: 301
  - name: v2
    matches: [{{path: {{type: PathPrefix, value: /v2}}}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        path: {{type: ReplacePrefixMatch, replacePrefixMatch: /api}}
    backendRefs: [{{name: echo, port: 80}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: demo-tls, namespace: demo}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{cert}  tls.key: |
{key}---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: demo}}
spec:
  ports: [{{name: http, port: 80, targetPort: {echo_port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-1
  namespace: demo
  labels: {{kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{{name: http, port: {echo_port}, protocol: TCP}}]
endpoints:
- addresses: [127.0.0.1]
  conditions: {{ready: true}}
"#,
        cert = indent(cert_pem, 4),
        key = indent(key_pem, 4),
    )
}

/// Starts the echo backend and the proxy with the demo configuration.
pub async fn start(options: DemoOptions) -> Result<Demo, Error> {
    crate::install_crypto_provider();
    // A local mesh CA (what istiod is in a cluster) and two workload identities.
    let ca = LocalCa::new("cluster.local")?;
    let gateway_id: SpiffeId = GATEWAY_ID.parse()?;
    let echo_id: SpiffeId = ECHO_ID.parse()?;
    let (gateway_tx, gateway_identity) = fixed(ca.identity(&gateway_id)?);
    let (echo_tx, echo_identity) = fixed(ca.identity(&echo_id)?);
    let echo_server = spawn_mesh_echo("echo", echo_identity, ca.trust_domain()).await?;
    let echo = echo_server.addr;
    let generated = rcgen::generate_simple_self_signed(vec![DEMO_HOST.to_string()])
        .map_err(|e| Error::Demo(format!("generating the certificate: {e}")))?;
    // Port 0 binds any free port; the manifest then carries a placeholder.
    let http_port = if options.http_port == 0 {
        8080
    } else {
        options.http_port
    };
    let https_port = if options.https_port == 0 {
        8443
    } else {
        options.https_port
    };
    let yaml = manifests_yaml(
        echo.port(),
        http_port,
        https_port,
        &generated.cert.pem(),
        &generated.signing_key.serialize_pem(),
    );
    let loaded = meshgate_crds::manifests::load_str("demo", &yaml);
    if let Some(e) = loaded.errors.first() {
        return Err(Error::Demo(e.to_string()));
    }
    let mut proxy = Options::new(Source::Manifests(Box::new(loaded.manifests)));
    proxy.admin = options.admin;
    proxy.mesh.identity = Some(gateway_identity);
    proxy.listen = HashMap::from([
        (
            "http".to_string(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, options.http_port)),
        ),
        (
            "https".to_string(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, options.https_port)),
        ),
    ]);
    let running = Running::start(proxy).await?;
    let snapshot = running.state.snapshot.load();
    if let Some(e) = snapshot.errors.first() {
        return Err(Error::Demo(format!("{}: {}", e.object, e.message)));
    }
    drop(snapshot);
    let (Some(http), Some(https)) = (
        running.listener_addr("http"),
        running.listener_addr("https"),
    ) else {
        return Err(Error::Demo("listeners were not bound".into()));
    };
    Ok(Demo {
        running,
        echo,
        http,
        https,
        certificate: generated.cert.der().clone(),
        _echo: echo_server,
        _identities: vec![gateway_tx, echo_tx],
    })
}

impl Demo {
    /// What to try, for people.
    pub fn banner(&self) -> String {
        let http = self.http;
        let https_port = self.https.port();
        let mut out = format!(
            "meshgate demo is running\n  \
             mesh CA         local (in process), trust domain cluster.local\n  \
             gateway         identity {GATEWAY_ID}\n  \
             echo backend    {echo} (in process, mesh mTLS only, identity {ECHO_ID})\n  \
             HTTP listener   http://{http}\n  \
             HTTPS listener  https://{DEMO_HOST}:{https_port} on 127.0.0.1 (self-signed certificate)\n",
            echo = self.echo,
        );
        if let Some(admin) = self.running.admin_addr() {
            out.push_str(&format!("  admin           http://{admin}\n"));
        }
        out.push_str(&format!(
            "\nTry:\n  \
             curl -s http://{http}/echo/hello\n  \
             curl -si http://{http}/old/path          # 301 to /echo/path\n  \
             curl -s http://{http}/v2/items           # rewritten to /api/items\n  \
             curl -sk --resolve {DEMO_HOST}:{https_port}:127.0.0.1 https://{DEMO_HOST}:{https_port}/echo\n"
        ));
        if let Some(admin) = self.running.admin_addr() {
            out.push_str(&format!(
                "  curl -s http://{admin}/config\n  curl -s http://{admin}/metrics\n"
            ));
        }
        out
    }

    /// Sends the advertised requests and prints one line per check; true when all pass.
    pub async fn check(&self) -> bool {
        let mut passed = 0;
        let mut failed = 0;
        for (name, result) in self.run_checks().await {
            match result {
                Ok(()) => {
                    passed += 1;
                    println!("ok    {name}");
                }
                Err(e) => {
                    failed += 1;
                    println!("FAIL  {name}: {e}");
                }
            }
        }
        println!("demo check: {passed} passed, {failed} failed");
        failed == 0
    }

    async fn run_checks(&self) -> Vec<(String, Result<(), String>)> {
        let mut results = Vec::new();
        let http = self.http;
        let host = http.to_string();

        let r = client::get(http, &host, "/echo/hello").await;
        results.push((
            format!("GET http://{http}/echo/hello"),
            r.map_err(|e| e.to_string()).and_then(|r| {
                expect_status(&r, StatusCode::OK)?;
                let body = r.json().map_err(|e| e.to_string())?;
                expect_eq("echoed path", body["path"].as_str(), Some("/echo/hello"))?;
                expect_eq(
                    "added request header",
                    body["headers"]["x-meshgate-demo"].as_str(),
                    Some("hello"),
                )?;
                expect_eq(
                    "x-forwarded-proto",
                    body["headers"]["x-forwarded-proto"].as_str(),
                    Some("http"),
                )?;
                expect_eq(
                    "gateway identity seen by the backend",
                    body["peer"]["spiffeId"].as_str(),
                    Some(GATEWAY_ID),
                )?;
                expect_eq(
                    "ALPN",
                    body["peer"]["alpn"].as_str(),
                    Some("istio-http/1.1"),
                )?;
                expect_eq(
                    "response header",
                    r.header("x-meshgate-route"),
                    Some("echo"),
                )
            }),
        ));

        let tls = Tls {
            server_name: DEMO_HOST.to_string(),
            roots: vec![self.certificate.clone()],
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        };
        let request = Request::get("/echo")
            .header(
                http::header::HOST,
                format!("{DEMO_HOST}:{}", self.https.port()),
            )
            .body(Full::new(Bytes::new()));
        let r = match request {
            Ok(request) => client::send(self.https, request, Some(&tls))
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        results.push((
            format!(
                "GET https://{DEMO_HOST}:{}/echo (HTTP/2, SNI)",
                self.https.port()
            ),
            r.and_then(|r| {
                expect_status(&r, StatusCode::OK)?;
                expect_eq("protocol", Some(r.version), Some(Version::HTTP_2))?;
                expect_eq(
                    "certificate",
                    r.peer_certificate.as_ref(),
                    Some(&self.certificate),
                )?;
                let body = r.json().map_err(|e| e.to_string())?;
                expect_eq(
                    "x-forwarded-proto",
                    body["headers"]["x-forwarded-proto"].as_str(),
                    Some("https"),
                )
            }),
        ));

        let r = client::get(http, &host, "/old/path").await;
        let expected = format!("http://127.0.0.1:{}/echo/path", http.port());
        results.push((
            format!("GET http://{http}/old/path (redirect)"),
            r.map_err(|e| e.to_string()).and_then(|r| {
                expect_status(&r, StatusCode::MOVED_PERMANENTLY)?;
                expect_eq("location", r.header("location"), Some(expected.as_str()))
            }),
        ));

        let r = client::get(http, &host, "/v2/items?page=2").await;
        results.push((
            format!("GET http://{http}/v2/items?page=2 (rewrite)"),
            r.map_err(|e| e.to_string()).and_then(|r| {
                expect_status(&r, StatusCode::OK)?;
                let body = r.json().map_err(|e| e.to_string())?;
                expect_eq("rewritten path", body["path"].as_str(), Some("/api/items"))?;
                expect_eq("query", body["query"].as_str(), Some("page=2"))
            }),
        ));

        let r = client::get(http, &host, "/nowhere").await;
        results.push((
            format!("GET http://{http}/nowhere (no route)"),
            r.map_err(|e| e.to_string()).and_then(|r| {
                expect_status(&r, StatusCode::NOT_FOUND)?;
                expect_eq("flags", r.header(crate::proxy::FLAGS_HEADER), Some("NR"))
            }),
        ));

        if let Some(admin) = self.running.admin_addr() {
            let host = admin.to_string();
            let r = client::get(admin, &host, "/ready").await;
            results.push((
                format!("GET http://{admin}/ready"),
                r.map_err(|e| e.to_string())
                    .and_then(|r| expect_status(&r, StatusCode::OK)),
            ));
            let r = client::get(admin, &host, "/config").await;
            results.push((
                format!("GET http://{admin}/config"),
                r.map_err(|e| e.to_string()).and_then(|r| {
                    expect_status(&r, StatusCode::OK)?;
                    let body = r.json().map_err(|e| e.to_string())?;
                    let routes: Vec<&str> = body["routes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r["name"].as_str())
                        .collect();
                    expect_eq("routes", Some(routes), Some(vec!["echo", "old", "v2"]))?;
                    expect_eq("errors", body["errors"].as_array().map(Vec::len), Some(0))?;
                    if r.text().contains("PRIVATE KEY") {
                        return Err("config shows key material".into());
                    }
                    Ok(())
                }),
            ));
            let r = client::get(admin, &host, "/metrics").await;
            results.push((
                format!("GET http://{admin}/metrics"),
                r.map_err(|e| e.to_string()).and_then(|r| {
                    expect_status(&r, StatusCode::OK)?;
                    let text = r.text();
                    let line = "meshgate_requests_total{route=\"echo\",code=\"2xx\"} 2";
                    if !text.contains(line) {
                        return Err(format!("expected {line:?} in the metrics"));
                    }
                    Ok(())
                }),
            ));
        }
        results
    }
}

fn expect_status(reply: &client::Reply, status: StatusCode) -> Result<(), String> {
    if reply.status == status {
        Ok(())
    } else {
        Err(format!(
            "status {} (expected {status}): {}",
            reply.status,
            reply.text().trim()
        ))
    }
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(
    what: &str,
    got: Option<T>,
    want: Option<T>,
) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, expected {want:?}"))
    }
}
