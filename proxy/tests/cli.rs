//! The `meshgate-proxy` binary: the demo self-check, start-up errors, and graceful
//! shutdown on SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_meshgate-proxy");

#[test]
fn demo_check_passes() {
    let output = Command::new(BIN)
        .args([
            "demo",
            "--check",
            "--http-port",
            "0",
            "--https-port",
            "0",
            "--admin",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_LOG")
        .output()
        .expect("run meshgate-proxy demo --check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("demo check: 8 passed, 0 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("curl -sk --resolve demo.meshgate.local:"),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
}

/// The binary allocates with jemalloc, with the options `main.rs` gives it (memory
/// freed by a reload goes back to the system within a second): jemalloc's own
/// statistics, printed at exit when asked, list them.
#[test]
fn the_binary_runs_on_jemalloc_with_its_options() {
    let output = Command::new(BIN)
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .expect("run meshgate-proxy --version");
    assert!(output.status.success(), "exit {:?}", output.status);
    let stats = String::from_utf8_lossy(&output.stderr);
    for option in [
        "opt.background_thread: true",
        "opt.dirty_decay_ms: 1000",
        "opt.muzzy_decay_ms: 0",
    ] {
        assert!(stats.contains(option), "{option:?} not in:\n{stats}");
    }
}

#[test]
fn unreadable_manifests_fail_at_start() {
    let dir = TestDir::new("cli-missing");
    let missing = dir.path().join("nope");
    let output = Command::new(BIN)
        .args([
            "--manifests",
            missing.to_str().unwrap(),
            "--admin",
            "127.0.0.1:0",
            "--bind-ip",
            "127.0.0.1",
        ])
        .output()
        .expect("run meshgate-proxy");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("loading manifests") && stderr.contains("nope"),
        "{stderr}"
    );

    // No ApiGateway at all.
    dir.write(
        "empty.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    );
    let output = Command::new(BIN)
        .args([
            "--manifests",
            dir.path().to_str().unwrap(),
            "--admin",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run meshgate-proxy");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no ApiGateway found"));

    let output = Command::new(BIN).output().expect("run meshgate-proxy");
    assert_eq!(output.status.code(), Some(2), "--manifests is required");
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    sigterm_drains(&[]).await;
}

/// One worker is tokio's current-thread runtime: the signal, the drain and the
/// in-flight request all share the one thread.
#[cfg(unix)]
#[tokio::test]
async fn sigterm_drains_in_flight_requests_with_one_worker() {
    sigterm_drains(&["--worker-threads", "1"]).await;
}

#[cfg(unix)]
async fn sigterm_drains(extra_args: &[&str]) {
    let slow = spawn_slow(Duration::from_millis(1500)).await;
    let port = closed_port().port();
    let dir = TestDir::new("cli-sigterm");
    dir.write("backend.yaml", &service_yaml("slow", slow, true));
    dir.write(
        "gateway.yaml",
        &gateway_yaml(
            &http_listener("http", port),
            &tagged_route("slow", "[]", "slow", ""),
        ),
    );
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "--manifests",
            dir.path().to_str().unwrap(),
            "--admin",
            "127.0.0.1:0",
            "--bind-ip",
            "127.0.0.1",
        ])
        .args(extra_args)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn meshgate-proxy");
    let addr = std::net::SocketAddr::from((LOCALHOST, port));
    let up = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    assert!(up, "proxy did not start listening on {addr}");

    let in_flight =
        tokio::spawn(async move { meshgate_proxy::client::get(addr, "a.test", "/slow").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().expect("pid").to_string();
    let signalled = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());

    let reply = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "slow");
    let status = tokio::time::timeout(Duration::from_secs(12), child.wait())
        .await
        .expect("exits")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(10));
    // Stopped accepting.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
