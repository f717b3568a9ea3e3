//! Live reloads of a manifest directory, over real sockets.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshgate_proxy::demo::spawn_echo;
use meshgate_proxy::runtime::Options;

const WAIT: Duration = Duration::from_secs(10);

fn routes(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| tagged_route(n, &format!("[{{path: {{value: /{n}}}}}]"), "echo", ""))
        .collect()
}

async fn setup(
    name: &str,
) -> (
    TestDir,
    meshgate_proxy::runtime::Running,
    std::net::SocketAddr,
) {
    let (dir, proxy, addr, _echo) = setup_with(name, |_| {}).await;
    (dir, proxy, addr)
}

/// An echo backend and a gateway with route `/one`, served by a proxy started
/// with `adjust`ed options; also returns the echo backend's address.
async fn setup_with(
    name: &str,
    adjust: impl FnOnce(&mut Options),
) -> (
    TestDir,
    meshgate_proxy::runtime::Running,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let dir = TestDir::new(name);
    let echo = spawn_echo("echo").await.unwrap();
    dir.write("backend.yaml", &service_yaml("echo", echo, true));
    dir.write(
        "gateway.yaml",
        &gateway_yaml(&http_listener("http", 80), &routes(&["one"])),
    );
    let proxy = start_dir_with(dir.path(), &["http"], adjust).await;
    let addr = proxy.listener_addr("http").unwrap();
    (dir, proxy, addr, echo)
}

async fn status(addr: std::net::SocketAddr, path: &str) -> StatusCode {
    get(addr, "a.test", path).await.status
}

#[tokio::test]
async fn hot_reload_without_failed_requests() {
    let (dir, proxy, addr) = setup("hot-reload").await;
    assert_eq!(status(addr, "/two").await, StatusCode::NOT_FOUND);

    // A client looping on keep-alive connections for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let looping = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let uri: http::Uri = format!("http://{addr}/one").parse().unwrap();
            let (mut ok, mut failures) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match client.get(uri.clone()).await {
                    Ok(response) => {
                        let (status, route) = (
                            response.status(),
                            response.headers().get("x-route").cloned(),
                        );
                        let body = response.into_body().collect().await;
                        if status == StatusCode::OK
                            && route.as_ref().is_some_and(|r| r == "one")
                            && body.is_ok()
                        {
                            ok += 1;
                        } else {
                            failures.push(format!("{status} {route:?}"));
                        }
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (ok, failures)
        })
    };

    tokio::time::sleep(Duration::from_millis(200)).await;
    dir.write(
        "gateway.yaml",
        &gateway_yaml(&http_listener("http", 80), &routes(&["one", "two"])),
    );
    assert!(
        eventually(WAIT, || async {
            status(addr, "/two").await == StatusCode::OK
        })
        .await,
        "route two never served"
    );

    dir.write(
        "gateway.yaml",
        &gateway_yaml(&http_listener("http", 80), &routes(&["one", "three"])),
    );
    assert!(
        eventually(WAIT, || async {
            status(addr, "/three").await == StatusCode::OK
        })
        .await,
        "route three never served"
    );
    assert_eq!(status(addr, "/two").await, StatusCode::NOT_FOUND);

    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = looping.await.unwrap();
    assert_eq!(
        failures,
        Vec::<String>::new(),
        "requests failed during reloads"
    );
    assert!(ok > 20, "only {ok} requests in the loop");

    let config = config(&proxy).await;
    assert_eq!(config["version"], 3);
    assert_eq!(
        metric(&proxy, "meshgate_config_reloads_total{result=\"ok\"}").await,
        Some(2.0)
    );
    assert_eq!(metric(&proxy, "meshgate_config_version").await, Some(3.0));
}

#[tokio::test]
async fn invalid_change_keeps_the_last_good_snapshot() {
    let (dir, proxy, addr) = setup("invalid-change").await;
    let failed = |n: f64| {
        let proxy = &proxy;
        async move { metric(proxy, "meshgate_config_reloads_total{result=\"failed\"}").await == Some(n) }
    };

    // Not YAML.
    dir.write(
        "gateway.yaml",
        "apiVersion: meshgate.io/v1alpha1\nkind: ApiGateway\nmetadata: {name: gw\nspec: [\n",
    );
    assert!(
        eventually(WAIT, || failed(1.0)).await,
        "broken YAML not rejected"
    );
    assert_eq!(status(addr, "/one").await, StatusCode::OK);
    assert_eq!(config(&proxy).await["version"], 1);

    // Valid YAML, but no usable gateway (two listeners on one port).
    let listeners = format!(
        "{}\n{}",
        http_listener("http", 80),
        http_listener("other", 80)
    );
    dir.write(
        "gateway.yaml",
        &gateway_yaml(&listeners, &routes(&["one", "two"])),
    );
    assert!(
        eventually(WAIT, || failed(2.0)).await,
        "bad gateway not rejected"
    );
    assert_eq!(status(addr, "/one").await, StatusCode::OK);
    assert_eq!(status(addr, "/two").await, StatusCode::NOT_FOUND);

    // The directory disappears.
    let moved = dir.path().with_extension("moved");
    std::fs::rename(dir.path(), &moved).unwrap();
    assert!(
        eventually(WAIT, || failed(3.0)).await,
        "missing directory not rejected"
    );
    assert_eq!(status(addr, "/one").await, StatusCode::OK);
    std::fs::rename(&moved, dir.path()).unwrap();

    // Fixed: applied as version 2.
    dir.write(
        "gateway.yaml",
        &gateway_yaml(&http_listener("http", 80), &routes(&["one", "two"])),
    );
    assert!(
        eventually(WAIT, || async {
            status(addr, "/two").await == StatusCode::OK
        })
        .await
    );
    assert_eq!(config(&proxy).await["version"], 2);
}

#[tokio::test]
async fn bad_route_is_dropped_and_reported_while_others_work() {
    let (dir, proxy, addr) = setup("bad-route").await;
    let bad = "  - {name: bad, matches: [{path: {type: RegularExpression, value: \"/bad/(\"}}], backendRefs: [{name: echo, port: 80}]}\n";
    let gone = "  - {name: gone, matches: [{path: {value: /gone}}], backendRefs: [{name: missing, port: 80}]}\n";
    let all = format!("{}{bad}{gone}{}", routes(&["one"]), routes(&["two"]));
    dir.write(
        "gateway.yaml",
        &gateway_yaml(&http_listener("http", 80), &all),
    );
    assert!(
        eventually(WAIT, || async {
            status(addr, "/two").await == StatusCode::OK
        })
        .await
    );
    assert_eq!(status(addr, "/one").await, StatusCode::OK);
    assert_eq!(status(addr, "/bad/x").await, StatusCode::NOT_FOUND);

    let config = config(&proxy).await;
    let names: Vec<&str> = config["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, vec!["one", "two"]);
    let errors = config["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0]["object"], "route/bad");
    assert!(errors[0]["message"]
        .as_str()
        .unwrap()
        .contains("invalid regular expression"));
    assert_eq!(errors[1]["object"], "route/gone");
    assert!(errors[1]["message"]
        .as_str()
        .unwrap()
        .contains("test/missing not found"));
}

/// A proxy on `dir` whose safety-net poll never runs during the test: a change
/// it serves was seen through the directory watch.
/// Only the watch reloads: the safety-net poll waits an hour.
fn poll_off(options: &mut Options) {
    options.poll_interval = Duration::from_secs(3600);
}

async fn start_watch_only(
    dir: &TestDir,
) -> (meshgate_proxy::runtime::Running, std::net::SocketAddr) {
    let proxy = start_dir_with(dir.path(), &["http"], poll_off).await;
    let addr = proxy.listener_addr("http").unwrap();
    (proxy, addr)
}

async fn reloads_ok(proxy: &meshgate_proxy::runtime::Running) -> f64 {
    metric(proxy, "meshgate_config_reloads_total{result=\"ok\"}")
        .await
        .unwrap_or(0.0)
}

/// Generous: the watch applies a change in milliseconds; the poll would take an hour.
const WATCH_WAIT: Duration = Duration::from_secs(2);

#[tokio::test]
async fn watched_change_is_applied_without_waiting_for_a_poll() {
    let (dir, proxy, addr, echo) = setup_with("watch-rename", poll_off).await;
    assert_eq!(status(addr, "/two").await, StatusCode::NOT_FOUND);

    // Replaced by rename (TestDir::write).
    let started = std::time::Instant::now();
    dir.write(
        "gateway.yaml",
        &gateway_yaml(&http_listener("http", 80), &routes(&["one", "two"])),
    );
    assert!(
        eventually(WATCH_WAIT, || async {
            status(addr, "/two").await == StatusCode::OK
        })
        .await,
        "a file replaced by rename was not applied"
    );
    eprintln!("renamed file applied after {:?}", started.elapsed());

    // Written in place (truncate and write).
    std::fs::write(
        dir.path().join("gateway.yaml"),
        gateway_yaml(&http_listener("http", 80), &routes(&["one", "three"])),
    )
    .unwrap();
    assert!(
        eventually(WATCH_WAIT, || async {
            status(addr, "/three").await == StatusCode::OK
        })
        .await,
        "a file written in place was not applied"
    );
    assert_eq!(status(addr, "/two").await, StatusCode::NOT_FOUND);

    // A new file, then a broken one: the last good snapshot stays.
    dir.write("more.yaml", &service_yaml("other", echo, true));
    assert!(
        eventually(WATCH_WAIT, || async {
            config(&proxy).await["version"] == 4
        })
        .await
    );
    dir.write("broken.yaml", "kind: [\n");
    assert!(
        eventually(WATCH_WAIT, || async {
            metric(&proxy, "meshgate_config_reloads_total{result=\"failed\"}").await == Some(1.0)
        })
        .await,
        "a broken file was not rejected"
    );
    assert_eq!(status(addr, "/three").await, StatusCode::OK);
    assert_eq!(config(&proxy).await["version"], 4);
}

/// A Kubernetes ConfigMap volume: `NAME.yaml -> ..data/NAME.yaml`, `..data ->
/// ..<timestamp>`, and an update swaps `..data` by renaming a new symlink over it.
#[cfg(unix)]
#[tokio::test]
async fn configmap_symlink_swap_is_applied() {
    use std::os::unix::fs::symlink;
    let dir = TestDir::new("watch-configmap");
    let echo = spawn_echo("echo").await.unwrap();
    let version = |n: u32, names: &[&str]| {
        let data = format!("..2026_12_07_00_00_0{n}.000000{n}");
        std::fs::create_dir(dir.path().join(&data)).unwrap();
        std::fs::write(
            dir.path().join(&data).join("backend.yaml"),
            service_yaml("echo", echo, true),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(&data).join("gateway.yaml"),
            gateway_yaml(&http_listener("http", 80), &routes(names)),
        )
        .unwrap();
        data
    };
    let first = version(1, &["one"]);
    symlink(&first, dir.path().join("..data")).unwrap();
    for name in ["backend.yaml", "gateway.yaml"] {
        symlink(format!("..data/{name}"), dir.path().join(name)).unwrap();
    }
    let (_proxy, addr) = start_watch_only(&dir).await;
    assert_eq!(status(addr, "/one").await, StatusCode::OK);
    assert_eq!(status(addr, "/two").await, StatusCode::NOT_FOUND);

    // What the kubelet does: a new timestamped directory, `..data_tmp` pointing
    // at it renamed over `..data`, the old directory removed.
    let second = version(2, &["one", "two"]);
    symlink(&second, dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    std::fs::remove_dir_all(dir.path().join(&first)).unwrap();
    assert!(
        eventually(WATCH_WAIT, || async {
            status(addr, "/two").await == StatusCode::OK
        })
        .await,
        "the ..data symlink swap was not applied"
    );
}

#[tokio::test]
async fn directory_rewritten_all_the_time_is_still_applied() {
    let (dir, proxy, addr, _echo) = setup_with("watch-busy", poll_off).await;
    let gateway = |i: usize| {
        gateway_yaml(
            &http_listener("http", 80),
            &routes(&["one", &format!("gen{i}")]),
        )
    };

    // Every 100 ms for 2 s (scenario 9's cadence): reloads are applied while the
    // writes go on, not only once they stop.
    let before = reloads_ok(&proxy).await;
    let mut during = 0.0;
    for i in 0..20 {
        dir.write("gateway.yaml", &gateway(i));
        tokio::time::sleep(Duration::from_millis(100)).await;
        if i == 19 {
            during = reloads_ok(&proxy).await - before;
        }
    }
    assert!(
        during >= 2.0,
        "{during} reloads while rewritten every 100 ms"
    );

    // Never quiet (a write every 2 ms for 1 s): the maximum delay still applies.
    let before = reloads_ok(&proxy).await;
    let writer = {
        let path = dir.path().to_path_buf();
        let gateway: Vec<String> = (100..600).map(gateway).collect();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let mut i = 0;
            while started.elapsed() < Duration::from_secs(1) {
                let tmp = path.join(".gateway.yaml.tmp");
                std::fs::write(&tmp, &gateway[i % gateway.len()]).unwrap();
                std::fs::rename(&tmp, path.join("gateway.yaml")).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    writer.await.unwrap();
    let during = reloads_ok(&proxy).await - before;
    assert!(during >= 1.0, "no reload while rewritten every 2 ms");

    // The last state is served in the end.
    dir.write("gateway.yaml", &gateway(1000));
    assert!(
        eventually(WATCH_WAIT, || async {
            status(addr, "/gen1000").await == StatusCode::OK
        })
        .await
    );
    assert_eq!(
        metric(&proxy, "meshgate_config_reloads_total{result=\"failed\"}").await,
        Some(0.0)
    );
}
