//! Local buckets: per-proxy token buckets in sharded maps.
//!
//! Memory is bounded: at most `max_local_buckets` buckets live at once. A bucket
//! that has refilled to full is the same as no bucket, so dropping it loses
//! nothing; shards drop those when they grow (amortised over insertions, no
//! background task) and [`RateLimitRegistry::sweep_idle`] drops them all. When a
//! shard is at its share of the cap and no bucket is full, the buckets nearest to
//! full are evicted: their keys get a fresh bucket later, i.e. at most a few
//! extra requests for each. The other choices are worse: refusing new keys
//! would let a flood of distinct client addresses lock out every new legitimate
//! client, and growing without bound lets the same flood exhaust memory.
//!
//! [`RateLimitRegistry::sweep_idle`]: super::RateLimitRegistry::sweep_idle

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::{KeyValue, Rate, RateLimitStats, Rule, MAX_RAW_KEY};

/// Local times are nanoseconds (since the registry's epoch).
pub(super) const TICKS_PER_SEC: u64 = 1_000_000_000;

/// Shards of the bucket map: enough that 2 to 64 cores rarely contend.
const SHARDS: usize = 64;

/// A token bucket; `tokens` scaled as described in [`Rate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bucket {
    tokens: u128,
    /// Time of the last refill.
    last: u64,
    /// When the bucket will be full again: from then on it can be dropped.
    full_at: u64,
}

impl Bucket {
    fn full(rate: &Rate, now: u64) -> Bucket {
        Bucket {
            tokens: rate.full(TICKS_PER_SEC),
            last: now,
            full_at: now,
        }
    }

    /// Adds what was earned since `last`; a clock that did not move adds nothing.
    fn refill(&mut self, rate: &Rate, now: u64) {
        if now > self.last {
            let earned = u128::from(now - self.last) * u128::from(rate.requests);
            self.tokens = (self.tokens + earned).min(rate.full(TICKS_PER_SEC));
            self.last = now;
        }
    }

    fn update_full_at(&mut self, rate: &Rate) {
        let ticks = rate.ticks_until(self.tokens, rate.full(TICKS_PER_SEC));
        self.full_at = self
            .last
            .saturating_add(u64::try_from(ticks).unwrap_or(u64::MAX));
    }

    /// Takes one token if there is one; returns whether it did.
    fn take(&mut self, rate: &Rate, now: u64) -> bool {
        self.refill(rate, now);
        let token = rate.token(TICKS_PER_SEC);
        let ok = self.tokens >= token;
        if ok {
            self.tokens -= token;
            self.update_full_at(rate);
        }
        ok
    }

    fn give_back(&mut self, rate: &Rate, now: u64) {
        self.refill(rate, now);
        self.tokens = (self.tokens + rate.token(TICKS_PER_SEC)).min(rate.full(TICKS_PER_SEC));
        self.update_full_at(rate);
    }
}

struct Shard {
    buckets: HashMap<Vec<u8>, Bucket>,
    next_sweep: u64,
}

impl Shard {
    /// Drops the buckets that are full again; returns how many.
    fn sweep(&mut self, now: u64) -> usize {
        let before = self.buckets.len();
        self.buckets.retain(|_, b| b.full_at > now);
        before - self.buckets.len()
    }

    /// Drops the `count` buckets nearest to full (the least state lost).
    fn evict_nearest_full(&mut self, count: usize) -> usize {
        let Some(k) = count.min(self.buckets.len()).checked_sub(1) else {
            return 0;
        };
        let mut times: Vec<u64> = self.buckets.values().map(|b| b.full_at).collect();
        let (_, &mut threshold, _) = times.select_nth_unstable(k);
        let before = self.buckets.len();
        let mut left = count;
        self.buckets.retain(|_, b| {
            let evict = left > 0 && b.full_at <= threshold;
            left -= usize::from(evict);
            !evict
        });
        before - self.buckets.len()
    }
}

pub(super) struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    shard_cap: usize,
    sweep_every: u64,
}

impl LocalStore {
    pub(super) fn new(max_buckets: usize, sweep_interval: Duration) -> LocalStore {
        let max_buckets = max_buckets.max(1);
        // Fewer shards than buckets, so the per-shard caps add up to at most the cap.
        let shards = SHARDS.min(max_buckets);
        LocalStore {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::new(),
                        next_sweep: 0,
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            shard_cap: max_buckets / shards,
            sweep_every: u64::try_from(sweep_interval.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    fn shard(&self, key: &[u8]) -> std::sync::MutexGuard<'_, Shard> {
        // Truncating the hash to usize is fine: it only picks a shard.
        let i = self.hasher.hash_one(key) as usize % self.shards.len();
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one token from the bucket of `key` (a full one if new); returns
    /// whether it did and the tokens (scaled) left.
    pub(super) fn take(
        &self,
        key: &[u8],
        rate: &Rate,
        now: u64,
        stats: &RateLimitStats,
    ) -> (bool, u128) {
        let mut shard = self.shard(key);
        if let Some(b) = shard.buckets.get_mut(key) {
            let ok = b.take(rate, now);
            return (ok, b.tokens);
        }
        self.make_room(&mut shard, now, stats);
        let mut b = Bucket::full(rate, now);
        let ok = b.take(rate, now);
        let tokens = b.tokens;
        shard.buckets.insert(key.to_vec(), b);
        stats.local_buckets.fetch_add(1, Ordering::Relaxed);
        (ok, tokens)
    }

    /// Returns a token taken by a request another rule then limited.
    pub(super) fn refund(&self, key: &[u8], rate: &Rate, now: u64) {
        if let Some(b) = self.shard(key).buckets.get_mut(key) {
            b.give_back(rate, now);
        }
    }

    /// Before a new bucket: drop idle ones when due or when the shard is full,
    /// then, if it still is, evict a batch (1/16 of the shard) so that a flood
    /// of new keys pays for the scans once per batch, not once per request.
    fn make_room(&self, shard: &mut Shard, now: u64, stats: &RateLimitStats) {
        if now >= shard.next_sweep || shard.buckets.len() >= self.shard_cap {
            shard.next_sweep = now.saturating_add(self.sweep_every);
            let dropped = shard.sweep(now) as u64;
            stats.local_buckets.fetch_sub(dropped, Ordering::Relaxed);
            stats.buckets_expired.fetch_add(dropped, Ordering::Relaxed);
        }
        if shard.buckets.len() >= self.shard_cap {
            let excess = shard.buckets.len() + 1 - self.shard_cap;
            let batch = excess.max(self.shard_cap / 16);
            let evicted = shard.evict_nearest_full(batch) as u64;
            stats.local_buckets.fetch_sub(evicted, Ordering::Relaxed);
            stats.buckets_evicted.fetch_add(evicted, Ordering::Relaxed);
        }
    }

    pub(super) fn sweep_all(&self, now: u64, stats: &RateLimitStats) {
        for shard in self.shards.iter() {
            let dropped = shard
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sweep(now) as u64;
            stats.local_buckets.fetch_sub(dropped, Ordering::Relaxed);
            stats.buckets_expired.fetch_add(dropped, Ordering::Relaxed);
        }
    }
}

/// The map key of a rule's bucket: the rule id, then the value (addresses as
/// octets, long values as their SHA-1, tagged so the forms never collide).
pub(super) fn encode_key(out: &mut Vec<u8>, rule: &Rule, value: &KeyValue<'_>) {
    out.extend_from_slice(&rule.id);
    match value {
        KeyValue::Ip(std::net::IpAddr::V4(a)) => {
            out.push(b'4');
            out.extend_from_slice(&a.octets());
        }
        KeyValue::Ip(std::net::IpAddr::V6(a)) => {
            out.push(b'6');
            out.extend_from_slice(&a.octets());
        }
        KeyValue::Route => out.push(b'r'),
        other => {
            let bytes = other.bytes();
            if bytes.len() <= MAX_RAW_KEY {
                out.push(b'=');
                out.extend_from_slice(bytes);
            } else {
                out.push(b'#');
                out.extend_from_slice(&sha1_smol::Sha1::from(bytes).digest().bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use http::{HeaderMap, HeaderValue};
    use meshgate_crds::policy::{
        RateLimit, RateLimitKey, RateLimitKeyType, RateLimitRule, RateLimitType, RateLimitUnit,
        RateLimitValue,
    };

    use super::super::{
        Quota, RateDecision, RateKeyInput, RateLimitRegistry, RateLimiter, RegistryOptions,
    };
    use super::*;

    const SEC: u64 = TICKS_PER_SEC;

    fn rate(requests: u64, unit_secs: u64, capacity: u64) -> Rate {
        Rate {
            requests,
            unit_secs,
            capacity,
        }
    }

    #[test]
    fn exact_n_then_refill_after_one_interval() {
        // 3 per second: a token every 333_333_333.33 ns, never rounded up.
        let r = rate(3, 1, 3);
        let mut b = Bucket::full(&r, 1_000);
        for i in 0..3 {
            assert!(b.take(&r, 1_000), "request {i} of 3");
        }
        assert!(!b.take(&r, 1_000), "the 4th is limited");
        // One token needs 1e9 / 3 ns; 333_333_333 ns is a hair short.
        assert!(!b.take(&r, 1_000 + 333_333_333));
        assert!(b.take(&r, 1_000 + 333_333_334));
        assert!(!b.take(&r, 1_000 + 333_333_334));
        // A long idle time refills to the cap, not beyond.
        let later = 1_000 + 100 * SEC;
        for _ in 0..3 {
            assert!(b.take(&r, later));
        }
        assert!(!b.take(&r, later));
    }

    #[test]
    fn burst_above_rate() {
        // 1 per minute with a burst of 5.
        let r = rate(1, 60, 5);
        let mut b = Bucket::full(&r, 0);
        for _ in 0..5 {
            assert!(b.take(&r, 0));
        }
        assert!(!b.take(&r, 0));
        assert!(!b.take(&r, 60 * SEC - 1));
        assert!(b.take(&r, 60 * SEC));
        assert!(!b.take(&r, 60 * SEC));
        // Full again (and so droppable) 5 minutes after the last take.
        assert_eq!(b.full_at, 60 * SEC + 5 * 60 * SEC);
    }

    #[test]
    fn quota_numbers() {
        let r = rate(2, 1, 4);
        let registry = RateLimitRegistry::new();
        let limiter = RateLimiter::compile(
            &spec(RateLimitKeyType::Route, None, 2, Some(4)),
            "s",
            &registry,
        )
        .unwrap();
        let rule = &limiter.rules[0];
        let mut b = Bucket::full(&r, 0);
        assert!(b.take(&r, 0));
        let q = r.quota(rule, b.tokens, TICKS_PER_SEC);
        // 3 left; 1 token missing at 2/s: full in 0.5 s, reported as 1 s.
        assert_eq!((q.limit(), q.remaining(), q.reset_secs()), (4, 3, 1));
        for _ in 0..3 {
            assert!(b.take(&r, 0));
        }
        assert!(!b.take(&r, 0));
        let q = r.quota(rule, b.tokens, TICKS_PER_SEC);
        assert_eq!(
            (q.remaining(), q.reset_secs(), q.retry_after_secs()),
            (0, 2, 1)
        );
    }

    fn spec(
        kind: RateLimitKeyType,
        name: Option<&str>,
        requests: i64,
        burst: Option<i64>,
    ) -> RateLimit {
        RateLimit {
            kind: RateLimitType::Local,
            rules: vec![RateLimitRule {
                name: Some("r".into()),
                key: Some(RateLimitKey {
                    kind,
                    name: name.map(str::to_string),
                }),
                limit: RateLimitValue {
                    requests,
                    unit: RateLimitUnit::Hour,
                    burst,
                },
            }],
            global: None,
        }
    }

    fn input<'a>(
        ip: [u8; 4],
        headers: &'a HeaderMap,
        consumer: Option<&'a str>,
    ) -> RateKeyInput<'a> {
        RateKeyInput {
            client: IpAddr::V4(Ipv4Addr::from(ip)),
            headers,
            claims: None,
            consumer,
        }
    }

    async fn allowed(l: &RateLimiter, i: &RateKeyInput<'_>) -> bool {
        match l.check(i).await {
            RateDecision::Allowed(_) => true,
            RateDecision::Limited(_) => false,
            RateDecision::Unavailable => panic!("a local limit is always available"),
        }
    }

    #[tokio::test]
    async fn per_key_isolation_and_absent_keys() {
        let registry = RateLimitRegistry::new();
        let h = HeaderMap::new();
        let by_ip = RateLimiter::compile(
            &spec(RateLimitKeyType::ClientIP, None, 2, None),
            "ns/p/a",
            &registry,
        )
        .unwrap();
        for _ in 0..2 {
            assert!(allowed(&by_ip, &input([10, 0, 0, 1], &h, None)).await);
        }
        assert!(!allowed(&by_ip, &input([10, 0, 0, 1], &h, None)).await);
        assert!(
            allowed(&by_ip, &input([10, 0, 0, 2], &h, None)).await,
            "another client has its own bucket"
        );
        let mapped = RateKeyInput {
            client: "::ffff:10.0.0.1".parse().unwrap(),
            ..input([0, 0, 0, 0], &h, None)
        };
        assert!(
            !allowed(&by_ip, &mapped).await,
            "an IPv4-mapped address is that IPv4 client"
        );

        // Header keys: one bucket per value; no header, no limit.
        let by_header = RateLimiter::compile(
            &spec(RateLimitKeyType::Header, Some("x-tenant"), 1, None),
            "ns/p/a",
            &registry,
        )
        .unwrap();
        let mut a = HeaderMap::new();
        a.insert("x-tenant", HeaderValue::from_static("a"));
        let mut b = HeaderMap::new();
        b.insert("x-tenant", HeaderValue::from_static("b"));
        assert!(allowed(&by_header, &input([10, 0, 0, 1], &a, None)).await);
        assert!(!allowed(&by_header, &input([10, 0, 0, 9], &a, None)).await);
        assert!(allowed(&by_header, &input([10, 0, 0, 1], &b, None)).await);
        for _ in 0..5 {
            match by_header.check(&input([10, 0, 0, 1], &h, None)).await {
                RateDecision::Allowed(None) => {}
                other => panic!("no header must mean no limit, got {other:?}"),
            }
        }

        // Long values are hashed, and still told apart.
        let long_a = "a".repeat(500);
        let long_b = format!("{}b", "a".repeat(499));
        let mut la = HeaderMap::new();
        la.insert("x-tenant", HeaderValue::from_str(&long_a).unwrap());
        let mut lb = HeaderMap::new();
        lb.insert("x-tenant", HeaderValue::from_str(&long_b).unwrap());
        assert!(allowed(&by_header, &input([1, 1, 1, 1], &la, None)).await);
        assert!(!allowed(&by_header, &input([1, 1, 1, 1], &la, None)).await);
        assert!(allowed(&by_header, &input([1, 1, 1, 1], &lb, None)).await);

        // Consumer keys apply only to requests with a consumer.
        let by_consumer = RateLimiter::compile(
            &spec(RateLimitKeyType::Consumer, None, 1, None),
            "ns/p/a",
            &registry,
        )
        .unwrap();
        assert!(allowed(&by_consumer, &input([1, 1, 1, 1], &h, Some("alice"))).await);
        assert!(!allowed(&by_consumer, &input([1, 1, 1, 2], &h, Some("alice"))).await);
        assert!(allowed(&by_consumer, &input([1, 1, 1, 1], &h, Some("bob"))).await);
        assert!(matches!(
            by_consumer.check(&input([1, 1, 1, 1], &h, None)).await,
            RateDecision::Allowed(None)
        ));

        // The same scope and rule compiled again (a reload) finds the same
        // buckets; another scope does not.
        let again = RateLimiter::compile(
            &spec(RateLimitKeyType::ClientIP, None, 2, None),
            "ns/p/a",
            &registry,
        )
        .unwrap();
        assert!(!allowed(&again, &input([10, 0, 0, 1], &h, None)).await);
        let elsewhere = RateLimiter::compile(
            &spec(RateLimitKeyType::ClientIP, None, 2, None),
            "ns/p/b",
            &registry,
        )
        .unwrap();
        assert!(allowed(&elsewhere, &input([10, 0, 0, 1], &h, None)).await);
    }

    #[tokio::test]
    async fn claim_keys() {
        let registry = RateLimitRegistry::new();
        let h = HeaderMap::new();
        let l = RateLimiter::compile(
            &spec(RateLimitKeyType::Claim, Some("realm.tenant"), 1, None),
            "s",
            &registry,
        )
        .unwrap();
        let claims =
            |v: serde_json::Value| super::super::Claims(Arc::new(v.as_object().cloned().unwrap()));
        let acme = claims(serde_json::json!({"realm": {"tenant": "acme"}}));
        let other = claims(serde_json::json!({"realm": {"tenant": "other"}}));
        let none = claims(serde_json::json!({"sub": "x"}));
        let with = |c| RateKeyInput {
            claims: Some(c),
            ..input([1, 1, 1, 1], &h, None)
        };
        assert!(allowed(&l, &with(&acme)).await);
        assert!(!allowed(&l, &with(&acme)).await);
        assert!(allowed(&l, &with(&other)).await);
        assert!(matches!(
            l.check(&with(&none)).await,
            RateDecision::Allowed(None)
        ));
    }

    #[tokio::test]
    async fn several_rules_all_or_nothing() {
        let registry = RateLimitRegistry::new();
        let h = HeaderMap::new();
        let mut s = spec(RateLimitKeyType::Route, None, 3, None);
        s.rules.push(RateLimitRule {
            name: Some("per-ip".into()),
            key: None,
            limit: RateLimitValue {
                requests: 1,
                unit: RateLimitUnit::Hour,
                burst: None,
            },
        });
        let l = RateLimiter::compile(&s, "s", &registry).unwrap();
        // The route allows 3, each client 1: client 1's second request is
        // limited by "per-ip" and must not use up the route's tokens.
        let q = match l.check(&input([1, 0, 0, 1], &h, None)).await {
            RateDecision::Allowed(Some(q)) => q,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (q.rule(), q.remaining()),
            ("per-ip", 0),
            "the tightest rule is reported"
        );
        for _ in 0..5 {
            match l.check(&input([1, 0, 0, 1], &h, None)).await {
                RateDecision::Limited(q) => assert_eq!(q.rule(), "per-ip"),
                other => panic!("{other:?}"),
            }
        }
        assert!(allowed(&l, &input([1, 0, 0, 2], &h, None)).await);
        assert!(allowed(&l, &input([1, 0, 0, 3], &h, None)).await);
        match l.check(&input([1, 0, 0, 4], &h, None)).await {
            RateDecision::Limited(q) => assert_eq!(q.rule(), "r"),
            other => panic!("{other:?}"),
        }
        let st = registry.stats().snapshot();
        assert_eq!((st.allowed, st.limited), (3, 6));
    }

    #[tokio::test]
    async fn eviction_under_the_cap() {
        let registry = RateLimitRegistry::with_options(RegistryOptions {
            max_local_buckets: 200,
            sweep_interval: Duration::from_secs(3600),
            ..RegistryOptions::default()
        });
        let h = HeaderMap::new();
        let l = RateLimiter::compile(
            &spec(RateLimitKeyType::ClientIP, None, 1, None),
            "s",
            &registry,
        )
        .unwrap();
        for i in 0..2_000u32 {
            let ip = i.to_be_bytes();
            assert!(
                allowed(&l, &input(ip, &h, None)).await,
                "a new client is never refused for lack of memory"
            );
        }
        let st = registry.stats().snapshot();
        assert!(st.local_buckets <= 200, "{st:?}");
        assert_eq!(st.local_buckets + st.buckets_evicted, 2_000, "{st:?}");
        assert_eq!(st.buckets_expired, 0);
        let live: usize = registry
            .local
            .shards
            .iter()
            .map(|s| s.lock().unwrap().buckets.len())
            .sum();
        assert_eq!(live as u64, st.local_buckets);
    }

    #[test]
    fn eviction_picks_the_buckets_nearest_to_full() {
        let mut shard = Shard {
            buckets: HashMap::new(),
            next_sweep: 0,
        };
        for (key, full_at) in [(b"a", 50), (b"b", 10), (b"c", 30), (b"d", 20)] {
            let b = Bucket {
                tokens: 0,
                last: 0,
                full_at,
            };
            shard.buckets.insert(key.to_vec(), b);
        }
        assert_eq!(shard.evict_nearest_full(2), 2);
        let mut left: Vec<_> = shard.buckets.keys().cloned().collect();
        left.sort();
        assert_eq!(left, vec![b"a".to_vec(), b"c".to_vec()]);
        assert_eq!(shard.sweep(30), 1, "c is full at 30");
        assert_eq!(shard.evict_nearest_full(5), 1);
        assert_eq!(shard.evict_nearest_full(1), 0);
    }

    #[tokio::test]
    async fn idle_buckets_are_swept() {
        let registry = RateLimitRegistry::new();
        let h = HeaderMap::new();
        // 1000 per second with a burst of 1: full again after 1 ms.
        let mut s = spec(RateLimitKeyType::ClientIP, None, 1000, Some(1));
        s.rules[0].limit.unit = RateLimitUnit::Second;
        let l = RateLimiter::compile(&s, "s", &registry).unwrap();
        for i in 0..50u32 {
            l.check(&input(i.to_be_bytes(), &h, None)).await;
        }
        assert_eq!(registry.stats().snapshot().local_buckets, 50);
        tokio::time::sleep(Duration::from_millis(5)).await;
        registry.sweep_idle();
        let st = registry.stats().snapshot();
        assert_eq!(
            (st.local_buckets, st.buckets_expired, st.buckets_evicted),
            (0, 50, 0)
        );
    }

    #[test]
    fn quota_headers() {
        let registry = RateLimitRegistry::new();
        let l = RateLimiter::compile(
            &spec(RateLimitKeyType::Route, None, 10, Some(20)),
            "s",
            &registry,
        )
        .unwrap();
        let rule = &l.rules[0];
        let r = rule.rate;
        let token = r.token(TICKS_PER_SEC);
        // 20-token bucket at 10/hour with 7 whole tokens and a bit left.
        let q: Quota = r.quota(rule, 7 * token + 5, TICKS_PER_SEC);
        let mut h = HeaderMap::new();
        q.write_headers(&mut h, false);
        assert_eq!(h["ratelimit-limit"], "20");
        assert_eq!(h["ratelimit-remaining"], "7");
        // 13 tokens minus a sliver at 360 s each: 4680 s, rounded up.
        assert_eq!(h["ratelimit-reset"], "4680");
        assert_eq!(h["ratelimit-policy"], "10;w=3600;burst=20;comment=\"r\"");
        assert!(!h.contains_key("retry-after"));

        let q = r.quota(rule, token - 1, TICKS_PER_SEC);
        let mut h = HeaderMap::new();
        q.write_headers(&mut h, true);
        assert_eq!(h["ratelimit-remaining"], "0");
        // One scaled unit short of a token: 1 ns away, rounded up to 1 s.
        assert_eq!(h["retry-after"], "1");
        let q = r.quota(rule, 0, TICKS_PER_SEC);
        let mut h = HeaderMap::new();
        q.write_headers(&mut h, true);
        assert_eq!(h["retry-after"], "360");
        assert_eq!(h["ratelimit-reset"], "7200");
    }
}
