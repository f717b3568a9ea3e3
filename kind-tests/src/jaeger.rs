//! A real Jaeger (v2, an OpenTelemetry Collector distribution built from Go
//! modules by kind-tests/scripts/build-tools.sh) with OTLP gRPC and HTTP
//! receivers and the query API, all on 127.0.0.1, for the trace tests.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A Jaeger process with OTLP gRPC and HTTP receivers and the query API.
pub struct Jaeger {
    child: Child,
    pub otlp_grpc: u16,
    pub otlp_http: u16,
    pub query: u16,
    dir: PathBuf,
}

impl Jaeger {
    /// Starts Jaeger on free loopback ports, its files under `dir_root`.
    pub fn start(dir_root: &std::path::Path) -> Jaeger {
        let bin = std::env::var("JAEGER").unwrap_or_default();
        assert!(
            !bin.is_empty() && std::path::Path::new(&bin).exists(),
            "JAEGER is not set to a built jaeger binary ({bin:?}); run `bash kind-tests/scripts/build-tools.sh jaeger` and `source kind-tests/scripts/tools.env.sh`"
        );
        let (otlp_grpc, otlp_http, query, query_grpc, health) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let dir = dir_root.join(format!("jaeger-{query}"));
        std::fs::create_dir_all(&dir).expect("jaeger dir");
        let config = format!(
            r#"service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 10000
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:{health}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
"#
        );
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.join("jaeger.log")).expect("log file");
        let child = Command::new(&bin)
            .arg(format!("--config={}", config_path.display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start jaeger");
        let jaeger = Jaeger {
            child,
            otlp_grpc,
            otlp_http,
            query,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, query)).is_err()
            || std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, otlp_grpc)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "jaeger did not start; log:\n{}",
                jaeger.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        jaeger
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("jaeger.log")).unwrap_or_default()
    }

    /// The spans of trace `id` once `want` of them arrived (Jaeger's JSON).
    pub async fn spans(&self, id: &str, want: usize) -> Vec<Value> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.query));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(reply) =
                meshgate_proxy::client::get(addr, "jaeger", &format!("/api/traces/{id}")).await
            {
                if reply.status == 200 {
                    let v: Value = reply.json().expect("JSON");
                    let spans = v["data"][0]["spans"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if spans.len() >= want {
                        return spans;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "trace {id}: fewer than {want} spans in Jaeger; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
