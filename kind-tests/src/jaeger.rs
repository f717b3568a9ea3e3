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

/// The ports one Jaeger listens on.
struct Ports {
    otlp_grpc: u16,
    otlp_http: u16,
    query: u16,
    query_grpc: u16,
    health: u16,
}

impl Ports {
    fn free() -> Ports {
        Ports {
            otlp_grpc: free_port(),
            otlp_http: free_port(),
            query: free_port(),
            query_grpc: free_port(),
            health: free_port(),
        }
    }
}

/// Whether Jaeger's query API on `port` answers `GET /api/services` with 200
/// (blocking, 1 s at most).
fn query_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut conn) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let request = b"GET /api/services HTTP/1.1\r\nHost: jaeger\r\nConnection: close\r\n\r\n";
    let mut head = [0u8; 12];
    conn.write_all(request).is_ok()
        && conn.read_exact(&mut head).is_ok()
        && head.starts_with(b"HTTP/1.")
        && &head[9..12] == b"200"
}

/// How many times [`Jaeger::start`] tries new ports when one was taken.
const START_ATTEMPTS: u32 = 5;

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
    ///
    /// A port is picked free and released for Jaeger to bind, so another process
    /// can take it in between (an outgoing connection's ephemeral port, another
    /// test's server). Jaeger then exits with "address already in use"; it is
    /// started again on new ports, up to [`START_ATTEMPTS`] times.
    pub fn start(dir_root: &std::path::Path) -> Jaeger {
        let bin = std::env::var("JAEGER").unwrap_or_default();
        assert!(
            !bin.is_empty() && std::path::Path::new(&bin).exists(),
            "JAEGER is not set to a built jaeger binary ({bin:?}); run `bash kind-tests/scripts/build-tools.sh jaeger` and `source kind-tests/scripts/tools.env.sh`"
        );
        let mut attempt = 1;
        loop {
            let mut jaeger = Jaeger::spawn(&bin, dir_root, Ports::free());
            match jaeger.wait_ready() {
                Ok(()) => return jaeger,
                Err(log) if attempt < START_ATTEMPTS && log.contains("address already in use") => {
                    attempt += 1;
                }
                Err(log) => panic!("jaeger did not start (attempt {attempt}); log:\n{log}"),
            }
        }
    }

    fn spawn(bin: &str, dir_root: &std::path::Path, ports: Ports) -> Jaeger {
        let Ports {
            otlp_grpc,
            otlp_http,
            query,
            query_grpc,
            health,
        } = ports;
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
        let child = Command::new(bin)
            .arg(format!("--config={}", config_path.display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start jaeger");
        Jaeger {
            child,
            otlp_grpc,
            otlp_http,
            query,
            dir,
        }
    }

    /// Waits until the query API answers and the OTLP gRPC receiver accepts
    /// connections; `Err` with Jaeger's log if it exited or was not ready within
    /// 30 s. The query API must answer as Jaeger does: a port taken by another
    /// process would accept connections too.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(query_answers(self.query)
            && std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.otlp_grpc)).is_ok())
        {
            if Instant::now() >= deadline || !matches!(self.child.try_wait(), Ok(None)) {
                return Err(self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A query port another process holds: the start is seen to fail, with
    /// Jaeger's own reason, instead of passing for ready (that port accepts
    /// connections) or waiting 30 s; `start` then gets a Jaeger on new ports.
    #[test]
    fn a_taken_port_fails_the_start_and_start_tries_new_ports() {
        let bin = std::env::var("JAEGER").expect("JAEGER (source kind-tests/scripts/tools.env.sh)");
        let root = &std::env::temp_dir().join("meshgate-jaeger-test");
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let ports = Ports {
            query: taken.local_addr().expect("addr").port(),
            ..Ports::free()
        };
        let started = Instant::now();
        let mut jaeger = Jaeger::spawn(&bin, root, ports);
        let log = jaeger.wait_ready().expect_err("a taken port is not ready");
        assert!(log.contains("address already in use"), "{log}");
        assert!(started.elapsed() < Duration::from_secs(30));
        drop(jaeger);

        let jaeger = Jaeger::start(root);
        assert!(query_answers(jaeger.query));
    }
}
