//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::error::{Error, Result};

const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    reconciles: BTreeMap<&'static str, u64>,
    errors: BTreeMap<(&'static str, &'static str), u64>,
    durations: BTreeMap<&'static str, Histogram>,
}

/// Operator metrics, shared by the controllers and the HTTP endpoint.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    leader: AtomicBool,
    ready: AtomicBool,
}

impl Metrics {
    /// Counts one reconcile of `kind` that took `took`.
    pub fn reconciled(&self, kind: &'static str, took: Duration) {
        let Ok(mut m) = self.inner.lock() else { return };
        *m.reconciles.entry(kind).or_default() += 1;
        let h = m.durations.entry(kind).or_default();
        let secs = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// Counts one failed reconcile by error kind.
    pub fn failed(&self, kind: &'static str, reason: &'static str) {
        if let Ok(mut m) = self.inner.lock() {
            *m.errors.entry((kind, reason)).or_default() += 1;
        }
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Ready once the operator has reached the API server (standbys included,
    /// so a rolling update of the operator is not blocked by the election).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let Ok(m) = self.inner.lock() else { return s };
        let _ = writeln!(
            s,
            "# HELP meshgate_operator_reconciles_total Reconciles run, by kind."
        );
        let _ = writeln!(s, "# TYPE meshgate_operator_reconciles_total counter");
        for (k, v) in &m.reconciles {
            let _ = writeln!(s, "meshgate_operator_reconciles_total{{kind=\"{k}\"}} {v}");
        }
        let _ = writeln!(s, "# HELP meshgate_operator_reconcile_errors_total Failed reconciles, by kind and reason.");
        let _ = writeln!(s, "# TYPE meshgate_operator_reconcile_errors_total counter");
        for ((k, r), v) in &m.errors {
            let _ = writeln!(
                s,
                "meshgate_operator_reconcile_errors_total{{kind=\"{k}\",reason=\"{r}\"}} {v}"
            );
        }
        let _ = writeln!(
            s,
            "# HELP meshgate_operator_reconcile_duration_seconds Reconcile duration."
        );
        let _ = writeln!(
            s,
            "# TYPE meshgate_operator_reconcile_duration_seconds histogram"
        );
        for (k, h) in &m.durations {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "meshgate_operator_reconcile_duration_seconds_bucket{{kind=\"{k}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                s,
                "meshgate_operator_reconcile_duration_seconds_bucket{{kind=\"{k}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                s,
                "meshgate_operator_reconcile_duration_seconds_sum{{kind=\"{k}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                s,
                "meshgate_operator_reconcile_duration_seconds_count{{kind=\"{k}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            s,
            "# HELP meshgate_operator_leader 1 while this replica holds the leader lease."
        );
        let _ = writeln!(s, "# TYPE meshgate_operator_leader gauge");
        let _ = writeln!(s, "meshgate_operator_leader {}", u8::from(self.is_leader()));
        s
    }
}

fn respond(code: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r
}

fn route(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {
            let mut r = respond(StatusCode::OK, metrics.render());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/healthz" => respond(StatusCode::OK, "ok\n".into()),
        "/readyz" if metrics.is_ready() => respond(StatusCode::OK, "ok\n".into()),
        "/readyz" => respond(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        _ => respond(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// Binds `addr`; the returned future serves until dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::MetricsServer { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| Error::MetricsServer { addr, source })?;
    let fut = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let r = route(&metrics, &req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    };
    Ok((local, fut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.reconciled("ApiGateway", Duration::from_millis(30));
        m.reconciled("ApiGateway", Duration::from_secs(3));
        m.failed("ApiGateway", "conflict");
        let text = m.render();
        assert!(text.contains("meshgate_operator_reconciles_total{kind=\"ApiGateway\"} 2"));
        assert!(text.contains(
            "meshgate_operator_reconcile_errors_total{kind=\"ApiGateway\",reason=\"conflict\"} 1"
        ));
        assert!(text.contains(
            "meshgate_operator_reconcile_duration_seconds_bucket{kind=\"ApiGateway\",le=\"0.05\"} 1"
        ));
        assert!(text.contains(
            "meshgate_operator_reconcile_duration_seconds_bucket{kind=\"ApiGateway\",le=\"+Inf\"} 2"
        ));
        assert!(text.contains("meshgate_operator_leader 0"));
    }

    #[tokio::test]
    async fn serves_health_and_metrics_on_loopback() {
        let m = Arc::new(Metrics::default());
        let (addr, fut) = serve("127.0.0.1:0".parse().unwrap(), m.clone())
            .await
            .unwrap();
        let server = tokio::spawn(fut);
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        m.set_ready(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/metrics").await.contains("meshgate_operator_leader"));
        server.abort();
    }
}
