//! Label cardinality of `/metrics` stays bounded: 10,000 distinct paths (matched
//! and unmatched, refused and proxied) add no series.

mod common;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use meshgate_proxy::demo::spawn_echo;

/// The series (sample lines) of `/metrics`.
async fn series(proxy: &meshgate_proxy::runtime::Running) -> Vec<String> {
    let admin = proxy.admin_addr().expect("admin");
    let text = get(admin, "admin", "/metrics").await.text();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_string()))
        .collect()
}

#[tokio::test]
async fn ten_thousand_distinct_paths_add_no_series() {
    let echo = spawn_echo("echo").await.unwrap();
    let routes = format!(
        "{}{}",
        tagged_route(
            "api",
            "[{path: {type: PathPrefix, value: /api}}]",
            "echo",
            ""
        ),
        tagged_route(
            "admin",
            "[{path: {type: PathPrefix, value: /admin}}]",
            "echo",
            ""
        )
    );
    let policy = "---\napiVersion: meshgate.io/v1alpha1\nkind: ApiPolicy\nmetadata: {name: deny, namespace: test}\nspec:\n  targetRefs: [{group: meshgate.io, kind: ApiGateway, name: gw, sectionName: admin}]\n  ipFilter: {deny: [127.0.0.0/8]}\n";
    let yaml = format!(
        "{}{}{policy}",
        gateway_yaml(&http_listener("http", 80), &routes),
        service_yaml("echo", echo, true)
    );
    let proxy = start_yaml(&yaml, &["http"]).await;
    let addr = proxy.listener_addr("http").unwrap();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let send = |path: String| {
        let client = client.clone();
        async move {
            let request = http::Request::get(format!("http://{addr}{path}"))
                .header("host", "a.test")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = client.request(request).await.expect("response");
            let status = response.status();
            let _ = response.into_body().collect().await;
            status
        }
    };
    // One request of each kind first, so every series that will exist exists.
    assert_eq!(send("/api/first".into()).await, 200);
    assert_eq!(send("/admin/first".into()).await, 403);
    assert_eq!(send("/nowhere/first".into()).await, 404);
    let before = series(&proxy).await;

    for i in 0..10_000u32 {
        let path = match i % 3 {
            0 => format!("/api/{i}/item?q={i}"),
            1 => format!("/admin/{i}"),
            _ => format!("/unknown-{i}"),
        };
        let status = send(path).await;
        assert!([200, 403, 404].contains(&status.as_u16()), "{status}");
    }
    let after = series(&proxy).await;
    assert_eq!(
        before.len(),
        after.len(),
        "series appeared: {:?}",
        after
            .iter()
            .filter(|s| !before.contains(s))
            .collect::<Vec<_>>()
    );
    assert_eq!(before, after);
    assert!(
        metric(
            &proxy,
            "meshgate_requests_total{route=\"api\",code=\"2xx\"}"
        )
        .await
            >= Some(3334.0),
        "the requests were counted"
    );
}
