//! Compiling manifests, and route precedence on the compiled tables.

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::*;
use crate::routing::{normalize_host, normalize_path, RequestView};

const BACKEND: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: test}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: svc-1, namespace: test, labels: {kubernetes.io/service-name: svc}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [127.0.0.1]}]
"#;

fn gateway(listeners: &str, routes: &str) -> String {
    format!(
        "apiVersion: meshgate.io/v1alpha1\nkind: ApiGateway\nmetadata: {{name: gw, namespace: test}}\nspec:\n  listeners:\n{listeners}\n  routes:\n{routes}\n{BACKEND}"
    )
}

fn policies() -> crate::policy::PolicyRuntime {
    crate::policy::PolicyRuntime::new(rustls::RootCertStore::empty())
}

fn compile_yaml(yaml: &str) -> Result<Snapshot, Error> {
    let loaded = meshgate_crds::manifests::load_str("test", yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    compile(&loaded.manifests, None, 1, &Metrics::default(), &policies())
}

/// The name of the route `listener` picks for a request.
fn route_for(
    snapshot: &Snapshot,
    listener: &str,
    host: &str,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
) -> Option<String> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let host = normalize_host(host).unwrap();
    let path = normalize_path(path).unwrap();
    let view = RequestView {
        host: &host,
        path: &path,
        query,
        method: &method,
        headers: &map,
    };
    snapshot
        .listener(listener)?
        .routes
        .find(&view)
        .map(|m| m.route.name.clone())
}

const PRECEDENCE_ROUTES: &str = r#"
  - {name: wild, hostnames: ["*.example.com"], backendRefs: [{name: svc, port: 80}]}
  - name: exact-host
    hostnames: [api.example.com]
    matches: [{path: {type: PathPrefix, value: /only-exact}}]
    backendRefs: [{name: svc, port: 80}]
  - {name: any, backendRefs: [{name: svc, port: 80}]}
  - {name: prefix-x, matches: [{path: {value: /x}}], backendRefs: [{name: svc, port: 80}]}
  - {name: prefix-xy, matches: [{path: {value: /x/y/}}], backendRefs: [{name: svc, port: 80}]}
  - {name: exact-xyz, matches: [{path: {type: Exact, value: /x/y/z}}], backendRefs: [{name: svc, port: 80}]}
  - name: regex-r
    hostnames: [regex.test]
    matches: [{path: {type: RegularExpression, value: "/r/[0-9]+"}}]
    backendRefs: [{name: svc, port: 80}]
  - {name: m-plain, hostnames: [m.test], matches: [{path: {value: /m}}], backendRefs: [{name: svc, port: 80}]}
  - {name: m-get, hostnames: [m.test], matches: [{path: {value: /m}, method: GET}], backendRefs: [{name: svc, port: 80}]}
  - name: h-one
    hostnames: [h.test]
    matches: [{path: {value: /h}, headers: [{name: x-a, value: "1"}]}]
    backendRefs: [{name: svc, port: 80}]
  - name: h-two
    hostnames: [h.test]
    matches: [{path: {value: /h}, headers: [{name: x-a, value: "1"}, {name: X-B, value: "2"}]}]
    backendRefs: [{name: svc, port: 80}]
  - name: h-regex
    hostnames: [h.test]
    matches: [{path: {type: Exact, value: /hr}, headers: [{type: RegularExpression, name: x-v, value: "v[0-9]+"}]}]
    backendRefs: [{name: svc, port: 80}]
  - name: q-one
    hostnames: [q.test]
    matches: [{path: {value: /q}, queryParams: [{name: a, value: "1"}]}]
    backendRefs: [{name: svc, port: 80}]
  - name: q-two
    hostnames: [q.test]
    matches: [{path: {value: /q}, queryParams: [{name: a, value: "1"}, {name: b, value: "2"}]}]
    backendRefs: [{name: svc, port: 80}]
  - name: mh-headers
    hostnames: [mh.test]
    matches: [{path: {value: /p}, headers: [{name: x-a, value: "1"}, {name: x-b, value: "1"}]}]
    backendRefs: [{name: svc, port: 80}]
  - {name: mh-method, hostnames: [mh.test], matches: [{path: {value: /p}, method: GET}], backendRefs: [{name: svc, port: 80}]}
  - {name: o-first, hostnames: [o.test], matches: [{path: {value: /o}}], backendRefs: [{name: svc, port: 80}]}
  - {name: o-second, hostnames: [o.test], matches: [{path: {value: /o}}], backendRefs: [{name: svc, port: 80}]}
"#;

/// (host, method, path and query, headers, route expected)
type Case<'a> = (
    &'a str,
    Method,
    &'a str,
    &'a [(&'a str, &'a str)],
    Option<&'a str>,
);

#[test]
fn precedence_table() {
    let snapshot = compile_yaml(&gateway(
        "  - {name: http, port: 80, protocol: HTTP}",
        PRECEDENCE_ROUTES,
    ))
    .unwrap();
    assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
    let get = Method::GET;
    #[rustfmt::skip]
    let table: &[Case] = &[
        // Host: exact beats wildcard beats any; an exact host without a matching
        // path falls back to the wildcard.
        ("api.example.com", get.clone(), "/only-exact/a", &[], Some("exact-host")),
        ("API.Example.com:8080", get.clone(), "/only-exact", &[], Some("exact-host")),
        ("api.example.com", get.clone(), "/other", &[], Some("wild")),
        ("www.example.com", get.clone(), "/x/y/z", &[], Some("wild")),
        ("a.b.example.com", get.clone(), "/", &[], Some("wild")),
        ("example.com", get.clone(), "/x", &[], Some("prefix-x")),
        // Path: Exact > longest PathPrefix (on segment boundaries) > regex.
        ("other.test", get.clone(), "/x/y/z", &[], Some("exact-xyz")),
        ("other.test", get.clone(), "/x/y/z/", &[], Some("prefix-xy")),
        ("other.test", get.clone(), "/x/y/z/w", &[], Some("prefix-xy")),
        ("other.test", get.clone(), "/x/y", &[], Some("prefix-xy")),
        ("other.test", get.clone(), "/x/yz", &[], Some("prefix-x")),
        ("other.test", get.clone(), "/xy", &[], Some("any")),
        ("other.test", get.clone(), "/x/./y/../y/z", &[], Some("exact-xyz")),
        ("regex.test", get.clone(), "/r/123", &[], Some("regex-r")),
        ("regex.test", get.clone(), "/r/123/4", &[], Some("any")),
        ("regex.test", get.clone(), "/r/abc", &[], Some("any")),
        // Method match beats declaration order.
        ("m.test", get.clone(), "/m", &[], Some("m-get")),
        ("m.test", Method::POST, "/m", &[], Some("m-plain")),
        // More header matches win; all must hold; names are case-insensitive.
        ("h.test", get.clone(), "/h", &[("x-a", "1"), ("x-b", "2")], Some("h-two")),
        ("h.test", get.clone(), "/h", &[("x-a", "1"), ("x-b", "3")], Some("h-one")),
        ("h.test", get.clone(), "/h", &[], Some("any")),
        ("h.test", get.clone(), "/hr", &[("x-v", "v12")], Some("h-regex")),
        ("h.test", get.clone(), "/hr", &[("x-v", "v12x")], Some("any")),
        // More query matches win.
        ("q.test", get.clone(), "/q?a=1&b=2", &[], Some("q-two")),
        ("q.test", get.clone(), "/q?b=2&a=1&c", &[], Some("q-two")),
        ("q.test", get.clone(), "/q?a=1", &[], Some("q-one")),
        ("q.test", get.clone(), "/q?a=%31", &[], Some("q-one")),
        ("q.test", get.clone(), "/q?b=2", &[], Some("any")),
        // Gateway API order: a method match outranks header matches.
        ("mh.test", get.clone(), "/p", &[("x-a", "1"), ("x-b", "1")], Some("mh-method")),
        ("mh.test", Method::POST, "/p", &[("x-a", "1"), ("x-b", "1")], Some("mh-headers")),
        // Otherwise declaration order.
        ("o.test", get.clone(), "/o", &[], Some("o-first")),
    ];
    for (host, method, target, headers, want) in table {
        let got = route_for(&snapshot, "http", host, method.clone(), target, headers);
        assert_eq!(got.as_deref(), *want, "{method} {host}{target} {headers:?}");
    }
}

#[test]
fn listener_hostname_limits_routes() {
    let snapshot = compile_yaml(&gateway(
        "  - {name: http, port: 80, protocol: HTTP, hostname: \"*.example.com\"}",
        r#"
  - {name: all, backendRefs: [{name: svc, port: 80}]}
  - {name: api, hostnames: [api.example.com], matches: [{path: {value: /api}}], backendRefs: [{name: svc, port: 80}]}
  - {name: elsewhere, hostnames: [other.org], backendRefs: [{name: svc, port: 80}]}
"#,
    ))
    .unwrap();
    let get = Method::GET;
    assert_eq!(
        route_for(&snapshot, "http", "www.example.com", get.clone(), "/", &[]).as_deref(),
        Some("all")
    );
    assert_eq!(
        route_for(
            &snapshot,
            "http",
            "api.example.com",
            get.clone(),
            "/api",
            &[]
        )
        .as_deref(),
        Some("api")
    );
    assert_eq!(
        route_for(&snapshot, "http", "example.com", get.clone(), "/", &[]),
        None
    );
    assert_eq!(
        route_for(&snapshot, "http", "other.org", get, "/", &[]),
        None
    );
    assert_eq!(
        snapshot.errors,
        vec![ConfigIssue::new(
            "route/elsewhere",
            "no listener accepts any of its hostnames; left out"
        )]
    );
    assert!(snapshot.routes.iter().all(|r| r.name != "elsewhere"));
}

#[test]
fn broken_routes_are_dropped_and_reported() {
    let snapshot = compile_yaml(&gateway(
        "  - {name: http, port: 80, protocol: HTTP}",
        r#"
  - {name: good, matches: [{path: {value: /good}}], backendRefs: [{name: svc, port: 80}]}
  - {name: bad-regex, matches: [{path: {type: RegularExpression, value: "/(unclosed"}}], backendRefs: [{name: svc, port: 80}]}
  - {name: no-service, backendRefs: [{name: missing, port: 80}]}
  - {name: no-port, backendRefs: [{name: svc, port: 81}]}
  - {name: no-listener, listeners: [https], backendRefs: [{name: svc, port: 80}]}
  - name: prefix-rewrite-on-exact
    matches: [{path: {type: Exact, value: /e}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /x}}}]
    backendRefs: [{name: svc, port: 80}]
  - {name: nothing-to-do}
  - {name: bad-timeout, timeouts: {request: 5 seconds}, backendRefs: [{name: svc, port: 80}]}
  - {name: good, backendRefs: [{name: svc, port: 80}]}
"#,
    ))
    .unwrap();
    let names: Vec<&str> = snapshot.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["good"]);
    let errors: Vec<(&str, &str)> = snapshot
        .errors
        .iter()
        .map(|e| (e.object.as_str(), e.message.as_str()))
        .collect();
    let expect = [
        ("route/bad-regex", "invalid regular expression"),
        ("route/no-service", "backend Service test/missing not found"),
        ("route/no-port", "has no port 81"),
        ("route/no-listener", "listener \"https\" does not exist"),
        (
            "route/prefix-rewrite-on-exact",
            "ReplacePrefixMatch needs every match to be a PathPrefix",
        ),
        (
            "route/nothing-to-do",
            "needs backendRefs or a RequestRedirect",
        ),
        ("route/bad-timeout", "invalid duration"),
        ("route/good", "duplicate route name"),
    ];
    assert_eq!(errors.len(), expect.len(), "{errors:?}");
    for ((object, message), (want_object, want_message)) in errors.iter().zip(expect) {
        assert_eq!(*object, want_object);
        assert!(message.contains(want_message), "{object}: {message}");
    }
    assert_eq!(
        route_for(&snapshot, "http", "a.test", Method::GET, "/good/1", &[]).as_deref(),
        Some("good")
    );
}

#[test]
fn gateway_selection() {
    let two = format!(
        "{}\n---\napiVersion: meshgate.io/v1alpha1\nkind: ApiGateway\nmetadata: {{name: other, namespace: prod}}\nspec:\n  listeners: [{{name: http, port: 81, protocol: HTTP}}]\n",
        gateway("  - {name: http, port: 80, protocol: HTTP}", "    []")
    );
    let loaded = meshgate_crds::manifests::load_str("test", &two);
    let m = &loaded.manifests;
    let err = compile(m, None, 1, &Metrics::default(), &policies())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("2 ApiGateways found (test/gw, prod/other)"),
        "{err}"
    );
    let pick = |s: &str| {
        compile(
            m,
            Some(&s.parse().unwrap()),
            1,
            &Metrics::default(),
            &policies(),
        )
        .map(|s| s.gateway)
    };
    assert_eq!(pick("prod/other").unwrap(), "prod/other");
    assert_eq!(pick("gw").unwrap(), "test/gw");
    assert!(pick("prod/gw")
        .unwrap_err()
        .to_string()
        .contains("not found"));
    assert!("a/b/c".parse::<GatewayRef>().is_err());
    assert!("/b".parse::<GatewayRef>().is_err());
}

#[test]
fn listener_problems() {
    let dup = compile_yaml(&gateway(
        "  - {name: a, port: 80, protocol: HTTP}\n  - {name: b, port: 80, protocol: HTTP}",
        "    []",
    ));
    assert!(dup
        .unwrap_err()
        .to_string()
        .contains("port 80 is used by another listener"));
    let no_tls = compile_yaml(&gateway(
        "  - {name: a, port: 443, protocol: HTTPS}",
        "    []",
    ));
    assert!(no_tls
        .unwrap_err()
        .to_string()
        .contains("needs tls.certificateRefs"));
    // A missing certificate Secret is reported; the gateway still compiles.
    let missing = compile_yaml(&gateway(
        "  - {name: a, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: nope}]}}",
        "  - {name: r, backendRefs: [{name: svc, port: 80}]}",
    ))
    .unwrap();
    assert_eq!(missing.errors[0].object, "listener/a");
    assert!(missing.errors[0]
        .message
        .contains("certificate Secret test/nope: not found"));
    assert_eq!(missing.routes.len(), 1);
}

#[test]
fn summary_shows_no_key_material() {
    let key = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
    let yaml = format!(
        "{}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: cert, namespace: test}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: {:?}\n  tls.key: {:?}\n",
        gateway(
            "  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}",
            "  - {name: r, backendRefs: [{name: svc, port: 80, weight: 3}], timeouts: {request: 2s, backendRequest: 500ms}}",
        ),
        key.cert.pem(),
        key.signing_key.serialize_pem(),
    );
    let snapshot = compile_yaml(&yaml).unwrap();
    assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
    let summary = snapshot.summary(&[]);
    let text = summary.to_string();
    assert!(!text.contains("PRIVATE KEY"));
    assert_eq!(
        summary["listeners"][0]["certificates"][0]["names"][0],
        "a.test"
    );
    assert_eq!(
        summary["routes"][0]["backends"][0]["endpoints"][0],
        "127.0.0.1:8080"
    );
    assert_eq!(summary["routes"][0]["backends"][0]["weight"], 3);
    assert_eq!(summary["routes"][0]["timeoutMs"], 500);
}

/// Compiles `yaml` after `previous`, with the registries of the proxy.
fn compile_after(previous: &Snapshot, yaml: &str, metrics: &Metrics) -> Snapshot {
    let loaded = meshgate_crds::manifests::load_str("test", yaml);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let policy = policies();
    compile_next(previous, &loaded.manifests, None, 2, metrics, &policy).expect("compiles")
}

/// Names of the routes of `next` that are the very same objects as in `previous`.
fn shared(previous: &Snapshot, next: &Snapshot) -> Vec<String> {
    next.routes
        .iter()
        .filter(|r| previous.routes.iter().any(|p| Arc::ptr_eq(p, r)))
        .map(|r| r.name.clone())
        .collect()
}

const LISTENER: &str = "  - {name: http, port: 8080, protocol: HTTP}";

fn three_routes(b_path: &str) -> String {
    format!(
        "  - {{name: a, matches: [{{path: {{type: PathPrefix, value: /a}}}}], backendRefs: [{{name: svc, port: 80}}]}}
  - {{name: b, matches: [{{path: {{type: PathPrefix, value: {b_path}}}}}], backendRefs: [{{name: svc, port: 80}}]}}
  - name: c
    matches: [{{path: {{type: PathPrefix, value: /c}}}}]
    filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: svc, port: 80}}}}}}]
    backendRefs: [{{name: svc, port: 80}}]"
    )
}

#[test]
fn unchanged_routes_are_taken_over_and_changed_ones_compiled() {
    let metrics = Metrics::default();
    let first = compile_after(
        &Snapshot::empty(),
        &gateway(LISTENER, &three_routes("/b")),
        &metrics,
    );
    assert!(shared(&Snapshot::empty(), &first).is_empty());

    let same = compile_after(&first, &gateway(LISTENER, &three_routes("/b")), &metrics);
    assert_eq!(shared(&first, &same), ["a", "b", "c"]);

    let changed = compile_after(&same, &gateway(LISTENER, &three_routes("/b2")), &metrics);
    assert_eq!(shared(&same, &changed), ["a", "c"]);
    assert_eq!(
        route_for(&changed, "http", "x", Method::GET, "/b2/x", &[]).as_deref(),
        Some("b")
    );
    assert_eq!(
        route_for(&changed, "http", "x", Method::GET, "/b/x", &[]),
        None
    );

    // A route added in front moves the others: their ids (which index the
    // per-listener policies) change, so they are copies with the new ids that
    // share the endpoints (and their counters) of the routes they copy.
    let front = format!(
        "  - {{name: z, matches: [{{path: {{type: Exact, value: /z}}}}], backendRefs: [{{name: svc, port: 80}}]}}\n{}",
        three_routes("/b2")
    );
    let moved = compile_after(&changed, &gateway(LISTENER, &front), &metrics);
    assert!(shared(&changed, &moved).is_empty());
    let ids: Vec<usize> = moved.routes.iter().map(|r| r.id).collect();
    assert_eq!(ids, [0, 1, 2, 3]);
    for (old, new) in changed.routes.iter().zip(&moved.routes[1..]) {
        assert_eq!(old.name, new.name);
        let endpoint = |r: &Route| r.backends.iter().next().unwrap().endpoints[0].clone();
        assert!(Arc::ptr_eq(&endpoint(old), &endpoint(new)), "{}", new.name);
        assert!(Arc::ptr_eq(&old.counters, &new.counters));
    }
    assert_eq!(
        route_for(&moved, "http", "x", Method::GET, "/c/x", &[]).as_deref(),
        Some("c")
    );

    // Another listener name: nothing is taken over.
    let renamed = compile_after(
        &moved,
        &gateway("  - {name: web, port: 8080, protocol: HTTP}", &front),
        &metrics,
    );
    assert!(shared(&moved, &renamed).is_empty());
}

#[test]
fn routes_are_compiled_again_when_their_endpoints_change() {
    let metrics = Metrics::default();
    let yaml = gateway(LISTENER, &three_routes("/b"));
    let first = compile_after(&Snapshot::empty(), &yaml, &metrics);
    let moved = compile_after(
        &first,
        &yaml.replace("[127.0.0.1]", "[127.0.0.2]"),
        &metrics,
    );
    assert!(shared(&first, &moved).is_empty());
    for route in &moved.routes {
        let addrs: Vec<String> = route
            .backends
            .iter()
            .chain(route.mirror.iter().flat_map(|m| m.backend.iter()))
            .flat_map(|b| b.endpoints.iter().map(|e| e.addr.to_string()))
            .collect();
        assert!(addrs.iter().all(|a| a == "127.0.0.2:8080"), "{addrs:?}");
    }

    // The Service's port turns to h2c: every route that uses it changes.
    let h2 = yaml.replace(
        "{name: http, port: 80}",
        "{name: http, port: 80, appProtocol: kubernetes.io/h2c}",
    );
    let upgraded = compile_after(&first, &h2, &metrics);
    assert!(shared(&first, &upgraded).is_empty());
    assert!(upgraded
        .routes
        .iter()
        .all(|r| r.backends.iter().all(|b| b.h2)));
}

/// What every route holds is sized for the many routes that use few features:
/// no spare match slots, no per-route copy of the default upstream settings.
#[test]
fn routes_hold_only_what_they_use() {
    let routes =
        "  - {name: plain, matches: [{path: {value: /p}}], backendRefs: [{name: svc, port: 80}]}
  - name: two-matches
    matches: [{path: {value: /m}}, {path: {type: Exact, value: /n}, method: GET}]
    backendRefs: [{name: svc, port: 80}]
  - name: timed
    matches: [{path: {value: /t}}]
    timeouts: {request: 2s}
    backendRefs: [{name: svc, port: 80}]";
    let snapshot = compile_yaml(&gateway(LISTENER, routes)).unwrap();
    let route = |name: &str| {
        snapshot
            .routes
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("route {name} compiled"))
            .clone()
    };
    let (plain, two, timed) = (route("plain"), route("two-matches"), route("timed"));
    assert_eq!(plain.matches.len(), 1);
    assert_eq!(two.matches.len(), 2);
    assert!(Arc::ptr_eq(&plain.upstream, &two.upstream));
    assert!(Arc::ptr_eq(
        &plain.upstream,
        &crate::routes::default_upstream()
    ));
    assert_eq!(plain.upstream.timeout, None);
    assert!(!Arc::ptr_eq(&plain.upstream, &timed.upstream));
    assert_eq!(
        timed.upstream.timeout,
        Some(std::time::Duration::from_secs(2))
    );
    // Filters are boxed: a route is a quarter kilobyte, not half of one.
    assert!(std::mem::size_of::<crate::routes::Route>() <= 256);
}
