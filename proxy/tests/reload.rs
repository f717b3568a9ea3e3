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
    let dir = TestDir::new(name);
    let echo = spawn_echo("echo").await.unwrap();
    dir.write("backend.yaml", &service_yaml("echo", echo, true));
    dir.write(
        "gateway.yaml",
        &gateway_yaml(&http_listener("http", 80), &routes(&["one"])),
    );
    let proxy = start_dir(dir.path(), &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    (dir, proxy, addr)
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
