//! Global rate limits against a real `redis-server` (one child process per test,
//! on a free port of 127.0.0.1; kind-tests/scripts/install-deps.sh installs it).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use meshgate_crds::policy::{
    FailureMode, GlobalRateLimit, RateLimit, RateLimitKey, RateLimitKeyType, RateLimitRule,
    RateLimitType, RateLimitUnit, RateLimitValue,
};
use meshgate_proxy::policy::ratelimit::{
    RateDecision, RateKeyInput, RateLimitRegistry, RateLimiter, RegistryOptions,
};

mod common;

use common::redis::Redis;

fn registry() -> Arc<RateLimitRegistry> {
    RateLimitRegistry::with_options(RegistryOptions {
        redis_timeout: Duration::from_millis(200),
        ..RegistryOptions::default()
    })
}

fn rule(
    name: &str,
    kind: RateLimitKeyType,
    key: Option<&str>,
    requests: i64,
    unit: RateLimitUnit,
) -> RateLimitRule {
    RateLimitRule {
        name: Some(name.into()),
        key: Some(RateLimitKey {
            kind,
            name: key.map(str::to_string),
        }),
        limit: RateLimitValue {
            requests,
            unit,
            burst: None,
        },
    }
}

fn global(redis: &Redis, rules: Vec<RateLimitRule>, mode: FailureMode) -> RateLimit {
    RateLimit {
        kind: RateLimitType::Global,
        rules,
        global: Some(GlobalRateLimit {
            redis_url: redis.url(),
            failure_mode: Some(mode),
        }),
    }
}

fn input<'a>(headers: &'a HeaderMap, last_octet: u8) -> RateKeyInput<'a> {
    RateKeyInput {
        client: IpAddr::V4(Ipv4Addr::new(192, 0, 2, last_octet)),
        headers,
        claims: None,
        consumer: None,
    }
}

/// Some(remaining) when Redis allowed, None when it limited; panics otherwise.
async fn verdict(l: &RateLimiter, i: &RateKeyInput<'_>) -> Option<u64> {
    match l.check(i).await {
        RateDecision::Allowed(Some(q)) => Some(q.remaining()),
        RateDecision::Limited(q) => {
            assert!(q.retry_after_secs() >= 1);
            None
        }
        other => panic!("expected a verdict from Redis, got {other:?}"),
    }
}

#[tokio::test]
async fn global_limit_is_exact() {
    let redis = Redis::start();
    let reg = registry();
    let h = HeaderMap::new();
    // 5 per hour: no token comes back during the test.
    let spec = global(
        &redis,
        vec![rule(
            "ip",
            RateLimitKeyType::ClientIP,
            None,
            5,
            RateLimitUnit::Hour,
        )],
        FailureMode::FailClosed,
    );
    let l = RateLimiter::compile(&spec, "ns/p/gw", &reg).unwrap();
    for left in (0..5).rev() {
        assert_eq!(verdict(&l, &input(&h, 1)).await, Some(left));
    }
    for _ in 0..3 {
        assert_eq!(
            verdict(&l, &input(&h, 1)).await,
            None,
            "the 6th and later are limited"
        );
    }
    assert_eq!(
        verdict(&l, &input(&h, 2)).await,
        Some(4),
        "another client has its own bucket"
    );
    let st = reg.stats().snapshot();
    assert_eq!((st.allowed, st.limited, st.redis_errors), (6, 3, 0));

    // Per second: 3 at once, then a token every 1/3 s.
    let spec = global(
        &redis,
        vec![rule(
            "fast",
            RateLimitKeyType::Route,
            None,
            3,
            RateLimitUnit::Second,
        )],
        FailureMode::FailClosed,
    );
    let l = RateLimiter::compile(&spec, "ns/p/gw", &reg).unwrap();
    for left in (0..3).rev() {
        assert_eq!(verdict(&l, &input(&h, 1)).await, Some(left));
    }
    assert_eq!(verdict(&l, &input(&h, 1)).await, None);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        verdict(&l, &input(&h, 1)).await,
        Some(0),
        "one token back after 1/3 s"
    );
    assert_eq!(verdict(&l, &input(&h, 1)).await, None);

    // Bucket names: prefixed, hashed rule id, bounded, with a TTL.
    let mut admin = redis.admin().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(keys.len(), 3, "{keys:?}");
    for k in &keys {
        assert!(k.starts_with("meshgate:rl:"), "{k}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut admin)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 3_600_000, "{k}: TTL {ttl} ms");
    }
    assert!(keys.iter().any(|k| k.ends_with(":192.0.2.1")), "{keys:?}");
}

#[tokio::test]
async fn two_proxies_share_one_limit() {
    let redis = Redis::start();
    let (reg_a, reg_b) = (registry(), registry());
    let h = HeaderMap::new();
    let spec = global(
        &redis,
        vec![rule(
            "route",
            RateLimitKeyType::Route,
            None,
            7,
            RateLimitUnit::Hour,
        )],
        FailureMode::FailOpen,
    );
    let a = RateLimiter::compile(&spec, "ns/p/gw", &reg_a).unwrap();
    let b = RateLimiter::compile(&spec, "ns/p/gw", &reg_b).unwrap();
    // Concurrent requests through both "replicas".
    let (ra, rb) = tokio::join!(
        async {
            let mut n = 0;
            for _ in 0..10 {
                n += u64::from(verdict(&a, &input(&h, 1)).await.is_some());
            }
            n
        },
        async {
            let mut n = 0;
            for _ in 0..10 {
                n += u64::from(verdict(&b, &input(&h, 2)).await.is_some());
            }
            n
        }
    );
    assert_eq!(ra + rb, 7, "together exactly the limit (a: {ra}, b: {rb})");
    let (sa, sb) = (reg_a.stats().snapshot(), reg_b.stats().snapshot());
    assert_eq!((sa.allowed + sb.allowed, sa.limited + sb.limited), (7, 13));
}

#[tokio::test]
async fn redis_down_then_back() {
    let mut redis = Redis::start();
    let reg = registry();
    let h = HeaderMap::new();
    let rules = vec![rule(
        "route",
        RateLimitKeyType::Route,
        None,
        3,
        RateLimitUnit::Hour,
    )];
    let open = RateLimiter::compile(
        &global(&redis, rules.clone(), FailureMode::FailOpen),
        "ns/p/open",
        &reg,
    )
    .unwrap();
    let closed = RateLimiter::compile(
        &global(&redis, rules, FailureMode::FailClosed),
        "ns/p/closed",
        &reg,
    )
    .unwrap();
    assert_eq!(verdict(&open, &input(&h, 1)).await, Some(2));
    assert_eq!(verdict(&closed, &input(&h, 1)).await, Some(2));

    redis.kill();
    for _ in 0..5 {
        let start = Instant::now();
        match open.check(&input(&h, 1)).await {
            RateDecision::Allowed(None) => {}
            other => panic!("FailOpen lets requests through, got {other:?}"),
        }
        match closed.check(&input(&h, 1)).await {
            RateDecision::Unavailable => {}
            other => panic!("FailClosed refuses, got {other:?}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "bounded by the Redis timeout: {:?}",
            start.elapsed()
        );
    }
    let st = reg.stats().snapshot();
    assert_eq!(
        (
            st.fail_open_allowed,
            st.fail_closed_refused,
            st.redis_errors
        ),
        (5, 5, 10)
    );
    assert_eq!((st.allowed, st.limited), (2, 0));

    // Back on the same port, empty: the same limiters work again.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match open.check(&input(&h, 1)).await {
            RateDecision::Allowed(Some(q)) => {
                assert_eq!(q.remaining(), 2, "a fresh bucket on the new server");
                break;
            }
            RateDecision::Allowed(None) => {}
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "the limiter never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(verdict(&open, &input(&h, 1)).await, Some(1));
    assert_eq!(verdict(&open, &input(&h, 1)).await, Some(0));
    assert_eq!(
        verdict(&open, &input(&h, 1)).await,
        None,
        "limiting resumed"
    );
    // The FailClosed limiter shares the connection: it is back too.
    assert_eq!(verdict(&closed, &input(&h, 1)).await, Some(2));
}

#[tokio::test]
async fn several_rules_one_round_trip() {
    let redis = Redis::start();
    let reg = registry();
    let mut h = HeaderMap::new();
    h.insert("x-tenant", http::HeaderValue::from_static("acme"));
    let spec = global(
        &redis,
        vec![
            rule(
                "route",
                RateLimitKeyType::Route,
                None,
                100,
                RateLimitUnit::Hour,
            ),
            rule(
                "ip",
                RateLimitKeyType::ClientIP,
                None,
                4,
                RateLimitUnit::Hour,
            ),
            rule(
                "tenant",
                RateLimitKeyType::Header,
                Some("x-tenant"),
                50,
                RateLimitUnit::Minute,
            ),
        ],
        FailureMode::FailClosed,
    );
    let l = RateLimiter::compile(&spec, "ns/p/gw", &reg).unwrap();
    // The first call loads the script (NOSCRIPT, SCRIPT LOAD, EVALSHA).
    assert_eq!(verdict(&l, &input(&h, 1)).await, Some(3));
    let mut admin = redis.admin().await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut admin)
        .await
        .unwrap();

    assert_eq!(
        verdict(&l, &input(&h, 1)).await,
        Some(2),
        "the per-IP rule is the tightest"
    );
    assert_eq!(verdict(&l, &input(&h, 1)).await, Some(1));
    assert_eq!(verdict(&l, &input(&h, 1)).await, Some(0));
    assert_eq!(verdict(&l, &input(&h, 1)).await, None);
    match l.check(&input(&h, 1)).await {
        RateDecision::Limited(q) => assert_eq!(q.rule(), "ip"),
        other => panic!("{other:?}"),
    }

    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin)
        .await
        .unwrap();
    let calls = |cmd: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    assert_eq!(calls("evalsha"), 5, "one EVALSHA per request:\n{info}");
    assert_eq!(calls("eval"), 0, "{info}");
    assert_eq!(calls("script|load"), 0, "{info}");
    // Inside those 5 scripts: 3 bucket reads each, 3 writes for each of the 3
    // allowed requests, none for the 2 limited ones.
    assert_eq!(calls("hmget"), 15, "{info}");
    assert_eq!(calls("hset"), 9, "{info}");

    // The limited requests took nothing from the other rules: another client
    // sees 100 - 4 route tokens used.
    let quota_route = match l.check(&input(&h, 9)).await {
        RateDecision::Allowed(Some(q)) => q,
        other => panic!("{other:?}"),
    };
    assert_eq!(quota_route.rule(), "ip");
    assert_eq!(quota_route.remaining(), 3);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("meshgate:rl:*")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        keys.len(),
        4,
        "route, tenant and two client buckets: {keys:?}"
    );
    let route_key = keys
        .iter()
        .find(|k| k.ends_with(":route"))
        .expect("route bucket");
    let tokens: i64 = redis::cmd("HGET")
        .arg(route_key)
        .arg("t")
        .query_async(&mut admin)
        .await
        .unwrap();
    // Scaled: one token is 3600 s in µs; the bucket has earned a little since.
    assert_eq!(
        tokens / 3_600_000_000,
        95,
        "5 allowed requests took 5 route tokens ({tokens})"
    );
}

#[tokio::test]
async fn stalled_redis_times_out() {
    let redis = Redis::start();
    let reg = RateLimitRegistry::with_options(RegistryOptions {
        redis_timeout: Duration::from_millis(150),
        ..RegistryOptions::default()
    });
    let h = HeaderMap::new();
    let rules = vec![rule(
        "route",
        RateLimitKeyType::Route,
        None,
        2,
        RateLimitUnit::Hour,
    )];
    let l = RateLimiter::compile(&global(&redis, rules, FailureMode::FailOpen), "s", &reg).unwrap();
    assert_eq!(verdict(&l, &input(&h, 1)).await, Some(1));

    // A server that accepts but never answers (stopped): the timeout decides.
    redis.signal("STOP");
    let start = Instant::now();
    let d = l.check(&input(&h, 1)).await;
    let took = start.elapsed();
    redis.signal("CONT");
    assert!(matches!(d, RateDecision::Allowed(None)), "{d:?}");
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_millis(600),
        "waited {took:?} for a 150 ms timeout"
    );
    let st = reg.stats().snapshot();
    assert_eq!((st.fail_open_allowed, st.redis_errors), (1, 1));

    // Running again, the server answers. The stalled EVALSHA had been sent, so
    // Redis normally runs it on waking and it takes the last token (a sent
    // command cannot be recalled; FailOpen let that request through anyway).
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        match l.check(&input(&h, 1)).await {
            RateDecision::Allowed(None) => {}
            d => break d,
        }
        assert!(Instant::now() < deadline, "the limiter never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    match first {
        RateDecision::Limited(_) => {}
        // Only if the stalled command never reached the server.
        RateDecision::Allowed(Some(q)) => {
            assert_eq!(q.remaining(), 0);
            assert_eq!(verdict(&l, &input(&h, 1)).await, None);
        }
        other => panic!("{other:?}"),
    }
}
