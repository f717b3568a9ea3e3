//! Rate limits (ApiPolicy `rateLimit`): token buckets per (rule, key value).
//!
//! A rule allows `requests` per `unit` with a bucket of `burst` tokens (default
//! `requests`); a fresh bucket is full, so exactly `burst` requests pass at once and
//! the next is limited until the bucket refills at `requests / unit`.
//!
//! Buckets live in this proxy ([`local`], sharded in-memory maps) or in Redis
//! ([`global`], one Lua script per request shared by every replica). Both keep
//! tokens as integers scaled by the unit length (one token = `unit` ticks, a
//! bucket gains `requests` per tick), so refills never round.
//!
//! A rule whose key is absent from the request (no such header, claim or
//! consumer) does not apply, as in Envoy: no descriptor, no limit.

mod global;
mod local;

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::HeaderMap;
use meshgate_crds::policy::{RateLimit, RateLimitKeyType, RateLimitType, RateLimitUnit};

use super::Claims;
use global::Global;
use local::LocalStore;

/// Longest key value kept as it is; longer ones (headers, claims) are replaced
/// by their SHA-1, so a client cannot make bucket names as large as it likes.
const MAX_RAW_KEY: usize = 64;

/// Settings of a [`RateLimitRegistry`]; the defaults suit production, tests
/// shrink them.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Most local buckets kept at once (over all limiters of the proxy).
    pub max_local_buckets: usize,
    /// How long a request waits for Redis before the failure mode applies.
    pub redis_timeout: Duration,
    /// How often a local shard drops its idle (full again) buckets when it
    /// gets a new one.
    pub sweep_interval: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            max_local_buckets: 100_000,
            redis_timeout: Duration::from_millis(200),
            sweep_interval: Duration::from_secs(10),
        }
    }
}

/// Counters for metrics. `allowed` and `limited` count verdicts of requests some
/// rule applied to; requests let through or refused because Redis could not be
/// asked are counted in `fail_open_allowed` and `fail_closed_refused` instead.
#[derive(Debug, Default)]
pub struct RateLimitStats {
    pub allowed: AtomicU64,
    pub limited: AtomicU64,
    /// Redis calls that failed or timed out.
    pub redis_errors: AtomicU64,
    pub fail_open_allowed: AtomicU64,
    pub fail_closed_refused: AtomicU64,
    /// Local buckets in memory now (a gauge).
    pub local_buckets: AtomicU64,
    /// Local buckets dropped while not full because the bucket cap was reached
    /// (their keys start again with a full bucket).
    pub buckets_evicted: AtomicU64,
    /// Local buckets dropped because they were full again (nothing is lost).
    pub buckets_expired: AtomicU64,
}

/// A copy of [`RateLimitStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimitStatsSnapshot {
    pub allowed: u64,
    pub limited: u64,
    pub redis_errors: u64,
    pub fail_open_allowed: u64,
    pub fail_closed_refused: u64,
    pub local_buckets: u64,
    pub buckets_evicted: u64,
    pub buckets_expired: u64,
}

impl RateLimitStats {
    pub fn snapshot(&self) -> RateLimitStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RateLimitStatsSnapshot {
            allowed: get(&self.allowed),
            limited: get(&self.limited),
            redis_errors: get(&self.redis_errors),
            fail_open_allowed: get(&self.fail_open_allowed),
            fail_closed_refused: get(&self.fail_closed_refused),
            local_buckets: get(&self.local_buckets),
            buckets_evicted: get(&self.buckets_evicted),
            buckets_expired: get(&self.buckets_expired),
        }
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Shared by all snapshots (lives in the proxy State): buckets survive a config
/// reload, Redis connections are reused.
pub struct RateLimitRegistry {
    options: RegistryOptions,
    stats: RateLimitStats,
    /// Local clock origin: bucket times are nanoseconds since then (monotonic).
    epoch: Instant,
    local: LocalStore,
    /// One connection manager per Redis URL, made on first use (it needs the
    /// tokio runtime). Cloning one is an `Arc` clone; the lock is never held
    /// across an await.
    redis: Mutex<Vec<(String, redis::aio::ConnectionManager)>>,
}

impl fmt::Debug for RateLimitRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitRegistry")
            .field("options", &self.options)
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl RateLimitRegistry {
    pub fn new() -> Arc<RateLimitRegistry> {
        RateLimitRegistry::with_options(RegistryOptions::default())
    }

    pub fn with_options(options: RegistryOptions) -> Arc<RateLimitRegistry> {
        Arc::new(RateLimitRegistry {
            local: LocalStore::new(options.max_local_buckets, options.sweep_interval),
            options,
            stats: RateLimitStats::default(),
            epoch: Instant::now(),
            redis: Mutex::new(Vec::new()),
        })
    }

    pub fn stats(&self) -> &RateLimitStats {
        &self.stats
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.options
    }

    /// Drops every local bucket that is full again (the sweep also runs by
    /// itself, amortised over insertions).
    pub fn sweep_idle(&self) {
        self.local.sweep_all(self.now_ns(), &self.stats);
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The shared connection manager for `url`, made lazily (no I/O here: the
    /// manager connects on first use and reconnects after errors by itself).
    fn redis_connection(
        &self,
        url: &str,
        client: &redis::Client,
    ) -> redis::RedisResult<redis::aio::ConnectionManager> {
        let mut conns = self.redis.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, c)) = conns.iter().find(|(u, _)| u == url) {
            return Ok(c.clone());
        }
        let c = global::connection_manager(client.clone(), self.options.redis_timeout)?;
        conns.push((url.to_string(), c.clone()));
        Ok(c)
    }
}

/// What a request offers as bucket keys.
pub struct RateKeyInput<'a> {
    pub client: IpAddr,
    pub headers: &'a HeaderMap,
    pub claims: Option<&'a Claims>,
    pub consumer: Option<&'a str>,
}

/// The outcome of [`RateLimiter::check`].
#[derive(Clone, Debug)]
pub enum RateDecision {
    /// Let through; the quota of the most constraining rule, or `None` when no
    /// rule applied or Redis failed open.
    Allowed(Option<Quota>),
    /// Refused (429) by the rule whose quota is given.
    Limited(Quota),
    /// Redis unreachable and FailClosed → caller answers 503
    Unavailable,
}

/// One rule's standing after a request: what the rate-limit headers report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    limit: u64,
    remaining: u64,
    reset_secs: u64,
    retry_after_secs: u64,
    rule: Arc<str>,
    policy: HeaderValue,
}

impl Quota {
    /// Bucket size (tokens).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Whole tokens left.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Seconds until the bucket is full again (0 when it is).
    pub fn reset_secs(&self) -> u64 {
        self.reset_secs
    }

    /// Seconds until the next token (at least 1); meaningful when limited.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_secs
    }

    /// The rule's name, or `#<index>` for an unnamed rule.
    pub fn rule(&self) -> &str {
        &self.rule
    }

    /// RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset
    /// (draft-ietf-httpapi-ratelimit-headers, seconds), RateLimit-Policy
    /// (`10;w=1;burst=...` style), and Retry-After (whole seconds, ≥1) when limited.
    pub fn write_headers(&self, headers: &mut HeaderMap, limited: bool) {
        headers.insert(
            HeaderName::from_static("ratelimit-limit"),
            HeaderValue::from(self.limit),
        );
        headers.insert(
            HeaderName::from_static("ratelimit-remaining"),
            HeaderValue::from(self.remaining),
        );
        headers.insert(
            HeaderName::from_static("ratelimit-reset"),
            HeaderValue::from(self.reset_secs),
        );
        headers.insert(
            HeaderName::from_static("ratelimit-policy"),
            self.policy.clone(),
        );
        if limited {
            headers.insert(RETRY_AFTER, HeaderValue::from(self.retry_after_secs));
        }
    }
}

/// A compiled `rateLimit` of one attachment point.
pub struct RateLimiter {
    rules: Box<[Rule]>,
    backend: Backend,
}

enum Backend {
    Local(Arc<RateLimitRegistry>),
    // Boxed: the Redis client settings are large and this is one per limiter.
    Global(Box<Global>),
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = match &self.backend {
            Backend::Local(_) => "local",
            Backend::Global(_) => "global",
        };
        f.debug_struct("RateLimiter")
            .field("backend", &backend)
            .field("rules", &self.rules)
            .finish()
    }
}

/// One rule: where its key comes from, its rate, and its precomputed identity
/// and `RateLimit-Policy` value.
#[derive(Debug)]
struct Rule {
    /// Stable across reloads for the same scope, rule name (or position), key
    /// and limit: buckets are found again after a reload.
    id: [u8; 8],
    name: Arc<str>,
    key: KeySource,
    rate: Rate,
    policy: HeaderValue,
}

#[derive(Debug)]
enum KeySource {
    ClientIp,
    Header(HeaderName),
    Claim(String),
    Consumer,
    Route,
}

/// A key value of one request.
enum KeyValue<'a> {
    Ip(IpAddr),
    Bytes(&'a [u8]),
    Text(String),
    Route,
}

impl KeyValue<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            KeyValue::Bytes(b) => b,
            KeyValue::Text(s) => s.as_bytes(),
            KeyValue::Ip(_) | KeyValue::Route => &[],
        }
    }
}

impl Rule {
    fn key_value<'a>(&self, input: &RateKeyInput<'a>) -> Option<KeyValue<'a>> {
        match &self.key {
            // IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is the IPv4 client it stands for.
            KeySource::ClientIp => Some(KeyValue::Ip(input.client.to_canonical())),
            KeySource::Header(name) => input
                .headers
                .get(name)
                .map(|v| KeyValue::Bytes(v.as_bytes())),
            KeySource::Claim(name) => input.claims?.text(name).map(KeyValue::Text),
            KeySource::Consumer => input.consumer.map(|c| KeyValue::Bytes(c.as_bytes())),
            KeySource::Route => Some(KeyValue::Route),
        }
    }
}

/// A rule's rate in integer arithmetic. Tokens are scaled: one token is
/// `unit_secs * ticks_per_sec` units and a bucket gains `requests` units per
/// tick, exactly `requests` tokens per unit with no rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rate {
    requests: u64,
    unit_secs: u64,
    capacity: u64,
}

impl Rate {
    /// Scaled units of one token.
    fn token(&self, ticks_per_sec: u64) -> u128 {
        u128::from(self.unit_secs) * u128::from(ticks_per_sec)
    }

    /// Scaled units of a full bucket.
    fn full(&self, ticks_per_sec: u64) -> u128 {
        u128::from(self.capacity) * self.token(ticks_per_sec)
    }

    /// Ticks until `tokens` (scaled) grows to `target` (scaled).
    fn ticks_until(&self, tokens: u128, target: u128) -> u128 {
        target
            .saturating_sub(tokens)
            .div_ceil(u128::from(self.requests))
    }

    /// The standing of a bucket holding `tokens` (scaled), after the request.
    fn quota(&self, rule: &Rule, tokens: u128, ticks_per_sec: u64) -> Quota {
        let token = self.token(ticks_per_sec);
        let secs = |ticks: u128| {
            u64::try_from(ticks.div_ceil(u128::from(ticks_per_sec))).unwrap_or(u64::MAX)
        };
        Quota {
            limit: self.capacity,
            remaining: u64::try_from(tokens / token).unwrap_or(u64::MAX),
            reset_secs: secs(self.ticks_until(tokens, self.full(ticks_per_sec))),
            retry_after_secs: secs(self.ticks_until(tokens, token)).max(1),
            rule: rule.name.clone(),
            policy: rule.policy.clone(),
        }
    }
}

/// Of two quotas, the one a client should heed: fewest tokens left, then the
/// longest wait.
fn tighter(a: Quota, b: Quota) -> Quota {
    if (b.remaining, std::cmp::Reverse(b.reset_secs))
        < (a.remaining, std::cmp::Reverse(a.reset_secs))
    {
        b
    } else {
        a
    }
}

impl RateLimiter {
    /// `scope`: a stable identity of where the limit is attached, e.g.
    /// "ns/policy/target"; the same scope + rule across reloads keeps the same
    /// buckets (a changed limit value starts fresh buckets).
    pub fn compile(
        spec: &RateLimit,
        scope: &str,
        registry: &Arc<RateLimitRegistry>,
    ) -> Result<RateLimiter, String> {
        if spec.rules.is_empty() {
            return Err("rateLimit needs at least one rule".into());
        }
        let global = spec.kind == RateLimitType::Global;
        let rules = spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| compile_rule(r, i, scope, global))
            .collect::<Result<Vec<_>, _>>()?;
        let backend = match spec.kind {
            // A Local limit ignores `global` (a JSONMerge may leave it behind).
            RateLimitType::Local => Backend::Local(registry.clone()),
            RateLimitType::Global => {
                let g = spec
                    .global
                    .as_ref()
                    .ok_or("rateLimit type Global needs `global` (the Redis URL)")?;
                Backend::Global(Box::new(Global::new(g, registry.clone())?))
            }
        };
        Ok(RateLimiter {
            rules: rules.into_boxed_slice(),
            backend,
        })
    }

    /// Takes one token from every rule that applies. A rule whose key is absent
    /// from the request (Header/Claim/Consumer key missing) does not apply (as
    /// Envoy: no descriptor, no limit). All or nothing: a limited request takes
    /// no token from the other rules.
    pub async fn check(&self, input: &RateKeyInput<'_>) -> RateDecision {
        match &self.backend {
            Backend::Local(registry) => self.check_local(registry, input),
            Backend::Global(global) => global.check(&self.rules, input).await,
        }
    }

    fn check_local(&self, registry: &RateLimitRegistry, input: &RateKeyInput<'_>) -> RateDecision {
        let now = registry.now_ns();
        let stats = &registry.stats;
        // One buffer for every rule's key: the only allocation of a check besides
        // a Claim key's text (the store copies a key only for a new bucket).
        let mut key = Vec::new();
        let mut best: Option<Quota> = None;
        for (i, rule) in self.rules.iter().enumerate() {
            let Some(value) = rule.key_value(input) else {
                continue;
            };
            key.clear();
            local::encode_key(&mut key, rule, &value);
            let (ok, tokens) = registry.local.take(&key, &rule.rate, now, stats);
            let quota = rule.rate.quota(rule, tokens, local::TICKS_PER_SEC);
            if !ok {
                // Give back what this request took from the earlier rules.
                for earlier in &self.rules[..i] {
                    if let Some(value) = earlier.key_value(input) {
                        key.clear();
                        local::encode_key(&mut key, earlier, &value);
                        registry.local.refund(&key, &earlier.rate, now);
                    }
                }
                RateLimitStats::bump(&stats.limited);
                return RateDecision::Limited(quota);
            }
            best = Some(match best {
                Some(b) => tighter(b, quota),
                None => quota,
            });
        }
        if best.is_some() {
            RateLimitStats::bump(&stats.allowed);
        }
        RateDecision::Allowed(best)
    }
}

fn compile_rule(
    r: &meshgate_crds::policy::RateLimitRule,
    index: usize,
    scope: &str,
    global: bool,
) -> Result<Rule, String> {
    let label = r.name.clone().unwrap_or_else(|| format!("#{index}"));
    let requests = u64::try_from(r.limit.requests)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("rate limit {label}: requests must be at least 1"))?;
    let capacity = match r.limit.burst {
        None => requests,
        Some(b) => u64::try_from(b)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("rate limit {label}: burst must be at least 1"))?,
    };
    let (unit_secs, unit_name) = match r.limit.unit {
        RateLimitUnit::Second => (1, "Second"),
        RateLimitUnit::Minute => (60, "Minute"),
        RateLimitUnit::Hour => (3600, "Hour"),
    };
    let rate = Rate {
        requests,
        unit_secs,
        capacity,
    };
    if global {
        global::check_range(&rate).map_err(|e| format!("rate limit {label}: {e}"))?;
    }
    let key_spec = r.key.clone().unwrap_or_default();
    let name = key_spec.name.as_deref();
    let needs_name =
        |what: &str| name.ok_or_else(|| format!("rate limit {label}: a {what} key needs a name"));
    let key = match key_spec.kind {
        RateLimitKeyType::ClientIP => KeySource::ClientIp,
        RateLimitKeyType::Header => {
            let n = needs_name("Header")?;
            KeySource::Header(
                HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| format!("rate limit {label}: {n:?} is not a header name"))?,
            )
        }
        RateLimitKeyType::Claim => KeySource::Claim(needs_name("Claim")?.to_string()),
        RateLimitKeyType::Consumer => KeySource::Consumer,
        RateLimitKeyType::Route => KeySource::Route,
    };
    // The identity hashes everything that defines the bucket: a reload with the
    // same rule finds its buckets, a changed limit starts afresh.
    // An unnamed rule is known by its position; a named one may move.
    let position = if r.name.is_some() {
        String::new()
    } else {
        index.to_string()
    };
    let mut h = sha1_smol::Sha1::new();
    for part in [
        "meshgate-rl-1",
        scope,
        r.name.as_deref().unwrap_or(""),
        &position,
        &format!("{:?}", key_spec.kind),
        name.unwrap_or(""),
        &requests.to_string(),
        unit_name,
        &capacity.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    let digest = h.digest().bytes();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    Ok(Rule {
        id,
        policy: policy_header(&rate, r.name.as_deref())?,
        name: label.into(),
        key,
        rate,
    })
}

/// `RateLimit-Policy`: `<requests>;w=<unit seconds>`, `;burst=<n>` when the
/// bucket is larger than the rate, `;comment="<rule name>"` for a named rule.
fn policy_header(rate: &Rate, name: Option<&str>) -> Result<HeaderValue, String> {
    let mut s = format!("{};w={}", rate.requests, rate.unit_secs);
    if rate.capacity != rate.requests {
        s.push_str(&format!(";burst={}", rate.capacity));
    }
    if let Some(name) = name {
        // A structured-field string: printable ASCII, `"` and `\` escaped.
        s.push_str(";comment=\"");
        for c in name.chars() {
            match c {
                '"' | '\\' => {
                    s.push('\\');
                    s.push(c);
                }
                ' '..='~' => s.push(c),
                _ => s.push('?'),
            }
        }
        s.push('"');
    }
    HeaderValue::from_str(&s).map_err(|e| format!("RateLimit-Policy {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_crds::policy::{RateLimitKey, RateLimitRule, RateLimitValue};

    fn rule(
        name: Option<&str>,
        requests: i64,
        unit: RateLimitUnit,
        burst: Option<i64>,
    ) -> RateLimitRule {
        RateLimitRule {
            name: name.map(str::to_string),
            key: None,
            limit: RateLimitValue {
                requests,
                unit,
                burst,
            },
        }
    }

    #[test]
    fn limiter_and_its_check_future_are_send() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: &T) {}
        let registry = RateLimitRegistry::new();
        send_sync(&registry);
        let spec = RateLimit {
            kind: RateLimitType::Global,
            rules: vec![rule(None, 5, RateLimitUnit::Second, None)],
            global: Some(meshgate_crds::policy::GlobalRateLimit {
                redis_url: "redis://127.0.0.1:1/0".into(),
                failure_mode: None,
            }),
        };
        let limiter = RateLimiter::compile(&spec, "s", &registry).unwrap();
        send_sync(&limiter);
        let headers = HeaderMap::new();
        let input = RateKeyInput {
            client: IpAddr::from([127, 0, 0, 1]),
            headers: &headers,
            claims: None,
            consumer: None,
        };
        // Never polled: only its type is checked (hyper needs Send futures).
        let check = limiter.check(&input);
        send(&check);
    }

    #[test]
    fn policy_header_format() {
        let r = Rate {
            requests: 10,
            unit_secs: 1,
            capacity: 10,
        };
        assert_eq!(policy_header(&r, None).unwrap(), "10;w=1");
        let r = Rate {
            requests: 100,
            unit_secs: 60,
            capacity: 250,
        };
        assert_eq!(
            policy_header(&r, Some("per \"user\"")).unwrap(),
            "100;w=60;burst=250;comment=\"per \\\"user\\\"\""
        );
    }

    #[test]
    fn compile_errors() {
        let registry = RateLimitRegistry::new();
        let mut spec = RateLimit {
            kind: RateLimitType::Global,
            rules: vec![rule(None, 5, RateLimitUnit::Second, None)],
            global: None,
        };
        let err = RateLimiter::compile(&spec, "s", &registry).unwrap_err();
        assert!(err.contains("needs `global`"), "{err}");

        spec.global = Some(meshgate_crds::policy::GlobalRateLimit {
            redis_url: "http://nope".into(),
            failure_mode: None,
        });
        let err = RateLimiter::compile(&spec, "s", &registry).unwrap_err();
        assert!(err.contains("redis URL"), "{err}");

        // TLS is built in (rustls, the workspace's aws-lc-rs provider).
        spec.global = Some(meshgate_crds::policy::GlobalRateLimit {
            redis_url: "rediss://redis.infra.svc:6380/0".into(),
            failure_mode: None,
        });
        RateLimiter::compile(&spec, "s", &registry).expect("rediss:// is accepted");

        // Exact arithmetic in Redis's Lua needs scaled buckets below 2^53.
        spec.rules = vec![rule(None, 1, RateLimitUnit::Hour, Some(3_000_000))];
        let err = RateLimiter::compile(&spec, "s", &registry).unwrap_err();
        assert!(err.contains("too large"), "{err}");

        let mut spec = RateLimit {
            kind: RateLimitType::Local,
            rules: vec![rule(None, 0, RateLimitUnit::Second, None)],
            global: None,
        };
        let err = RateLimiter::compile(&spec, "s", &registry).unwrap_err();
        assert!(err.contains("at least 1"), "{err}");
        spec.rules = vec![RateLimitRule {
            key: Some(RateLimitKey {
                kind: RateLimitKeyType::Header,
                name: None,
            }),
            ..rule(None, 1, RateLimitUnit::Second, None)
        }];
        let err = RateLimiter::compile(&spec, "s", &registry).unwrap_err();
        assert!(err.contains("needs a name"), "{err}");
        spec.rules = vec![];
        assert!(RateLimiter::compile(&spec, "s", &registry).is_err());
    }

    #[test]
    fn rule_identity_is_stable_and_follows_the_limit() {
        let id =
            |scope: &str, r: &RateLimitRule, i: usize| compile_rule(r, i, scope, false).unwrap().id;
        let a = rule(Some("a"), 5, RateLimitUnit::Second, None);
        assert_eq!(
            id("ns/p/t", &a, 0),
            id("ns/p/t", &a, 3),
            "a named rule keeps its id when moved"
        );
        assert_ne!(id("ns/p/t", &a, 0), id("ns/p/u", &a, 0));
        let a10 = rule(Some("a"), 10, RateLimitUnit::Second, None);
        assert_ne!(id("ns/p/t", &a, 0), id("ns/p/t", &a10, 0));
        let unnamed = rule(None, 5, RateLimitUnit::Second, None);
        assert_ne!(id("s", &unnamed, 0), id("s", &unnamed, 1));
    }
}
