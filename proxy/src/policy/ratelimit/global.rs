//! Global buckets: token buckets in Redis, shared by every proxy replica.
//!
//! One request is one `EVALSHA` of [`SCRIPT`] with the buckets of all its rules:
//! one round trip, atomic (Redis runs a script alone), all or nothing. The
//! script reads the clock with Redis `TIME`, so replicas with skewed clocks
//! agree. `redis::Script` sends `EVALSHA` and, when Redis answers NOSCRIPT (first
//! use, or a restarted server), `SCRIPT LOAD` then `EVALSHA` again.
//!
//! Connections: one `ConnectionManager` per Redis URL, kept by the registry for
//! the life of the proxy (reloads reuse it). It multiplexes concurrent requests
//! on one connection and reconnects after errors by itself, so a limiter works
//! again when Redis is back without being rebuilt. Every call is bounded by the
//! registry's `redis_timeout`; then the failure mode decides.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use meshgate_crds::policy::{FailureMode, GlobalRateLimit};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{
    tighter, KeyValue, Quota, Rate, RateDecision, RateKeyInput, RateLimitRegistry, RateLimitStats,
    Rule, MAX_RAW_KEY,
};

/// Redis `TIME` is read in microseconds.
const TICKS_PER_SEC: u64 = 1_000_000;

/// Bucket names: `meshgate:rl:<rule id hex>:<value>`.
const KEY_PREFIX: &[u8] = b"meshgate:rl:";

/// KEYS[i]: the bucket of rule i, a hash {t: tokens, at: time of t}.
/// ARGV[3i-2], ARGV[3i-1], ARGV[3i]: requests per unit, unit in µs, bucket size.
///
/// Tokens are scaled (one token = the unit in µs; a bucket gains `requests` per
/// µs), so every value is an integer below 2^53 (checked at compile) and Lua's
/// doubles hold it exactly; `%.0f` writes it back without exponent. Nothing is
/// written unless every bucket has a token (a limited request costs nothing).
/// A bucket expires when it would be full again: a missing key is a full bucket.
/// Returns {1 if allowed else 0, tokens of bucket 1 after the request, ...}.
const LUA: &str = r"
local now_t = redis.call('TIME')
local now = tonumber(now_t[1]) * 1000000 + tonumber(now_t[2])
local n = #KEYS
local tokens = {}
local ok = 1
for i = 1, n do
  local req = tonumber(ARGV[3 * i - 2])
  local unit = tonumber(ARGV[3 * i - 1])
  local full = tonumber(ARGV[3 * i]) * unit
  local t = full
  local state = redis.call('HMGET', KEYS[i], 't', 'at')
  if state[1] and state[2] then
    t = tonumber(state[1])
    local last = tonumber(state[2])
    -- A clock that went back earns nothing.
    if now > last then
      local earned = (now - last) * req
      if earned >= full - t then t = full else t = t + earned end
    end
  end
  tokens[i] = t
  if t < unit then ok = 0 end
end
if ok == 1 then
  for i = 1, n do
    local req = tonumber(ARGV[3 * i - 2])
    local unit = tonumber(ARGV[3 * i - 1])
    local full = tonumber(ARGV[3 * i]) * unit
    local t = tokens[i] - unit
    tokens[i] = t
    redis.call('HSET', KEYS[i], 't', string.format('%.0f', t), 'at', string.format('%.0f', now))
    local ttl_ms = math.floor((full - t) / req / 1000) + 1
    redis.call('PEXPIRE', KEYS[i], string.format('%.0f', ttl_ms))
  end
end
return {ok, unpack(tokens)}
";

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(LUA));

/// Lua numbers are doubles: a full bucket (scaled) must stay below 2^53.
pub(super) fn check_range(rate: &Rate) -> Result<(), String> {
    let max = 1u128 << 53;
    if rate.full(TICKS_PER_SEC) > max {
        return Err(format!(
            "a bucket of {} per {} s is too large for a Global limit (at most {} tokens)",
            rate.capacity,
            rate.unit_secs,
            max / rate.token(TICKS_PER_SEC)
        ));
    }
    Ok(())
}

/// A lazily connecting manager: retries a lost connection a few times with a
/// short backoff; once those fail, the next request starts another attempt.
pub(super) fn connection_manager(
    client: redis::Client,
    timeout: Duration,
) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        // Requests of a stalled server are dropped from the pipeline rather than
        // queued; callers have given up on them by then anyway.
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}

pub(super) struct Global {
    registry: Arc<RateLimitRegistry>,
    url: String,
    client: redis::Client,
    conn: OnceLock<ConnectionManager>,
    fail_closed: bool,
    /// Whether the last call failed: errors are logged on the change only, not
    /// once per request during an outage.
    down: AtomicBool,
}

impl Global {
    pub(super) fn new(
        spec: &GlobalRateLimit,
        registry: Arc<RateLimitRegistry>,
    ) -> Result<Global, String> {
        // Parses the URL (scheme, host, db, credentials); connects later.
        let client = redis::Client::open(spec.redis_url.as_str())
            .map_err(|e| format!("rateLimit redis URL: {e}"))?;
        Ok(Global {
            registry,
            url: spec.redis_url.clone(),
            client,
            conn: OnceLock::new(),
            fail_closed: spec.failure_mode == Some(FailureMode::FailClosed),
            down: AtomicBool::new(false),
        })
    }

    fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let c = self.registry.redis_connection(&self.url, &self.client)?;
        Ok(self.conn.get_or_init(|| c).clone())
    }

    pub(super) async fn check(&self, rules: &[Rule], input: &RateKeyInput<'_>) -> RateDecision {
        let mut invocation = SCRIPT.prepare_invoke();
        let mut applied: Vec<&Rule> = Vec::with_capacity(rules.len());
        for rule in rules {
            let Some(value) = rule.key_value(input) else {
                continue;
            };
            invocation
                .key(redis_key(rule, &value))
                .arg(rule.rate.requests)
                .arg(rule.rate.unit_secs * TICKS_PER_SEC)
                .arg(rule.rate.capacity);
            applied.push(rule);
        }
        if applied.is_empty() {
            return RateDecision::Allowed(None);
        }
        let timeout = self.registry.options.redis_timeout;
        let reply = match self.connection() {
            Ok(mut conn) => {
                // No lock is held here: the manager is a cheap clone.
                match tokio::time::timeout(timeout, invocation.invoke_async::<Vec<i64>>(&mut conn))
                    .await
                {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let decision = reply.and_then(|v| decide(&applied, &v));
        match decision {
            Ok(d) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("rate limits: Redis answers again");
                }
                let stats = &self.registry.stats;
                match &d {
                    RateDecision::Limited(_) => RateLimitStats::bump(&stats.limited),
                    _ => RateLimitStats::bump(&stats.allowed),
                }
                d
            }
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&self, error: &str) -> RateDecision {
        let stats = &self.registry.stats;
        RateLimitStats::bump(&stats.redis_errors);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error,
                fail_closed = self.fail_closed,
                "rate limits: Redis call failed; applying the failure mode until it answers"
            );
        }
        if self.fail_closed {
            RateLimitStats::bump(&stats.fail_closed_refused);
            RateDecision::Unavailable
        } else {
            RateLimitStats::bump(&stats.fail_open_allowed);
            RateDecision::Allowed(None)
        }
    }
}

/// Turns the script's reply into a decision: the tightest quota when allowed,
/// the limited rule with the longest wait when not.
fn decide(applied: &[&Rule], reply: &[i64]) -> Result<RateDecision, String> {
    let (Some(&ok), tokens) = (reply.first(), reply.get(1..).unwrap_or_default()) else {
        return Err("empty reply from the rate-limit script".into());
    };
    if tokens.len() != applied.len() {
        return Err(format!(
            "rate-limit script answered for {} buckets, asked for {}",
            tokens.len(),
            applied.len()
        ));
    }
    let quotas = applied.iter().zip(tokens).map(|(rule, &t)| {
        let t = u128::try_from(t).unwrap_or(0);
        let limited = t < rule.rate.token(TICKS_PER_SEC);
        (limited, rule.rate.quota(rule, t, TICKS_PER_SEC))
    });
    if ok == 1 {
        let best = quotas.map(|(_, q)| q).reduce(tighter);
        Ok(RateDecision::Allowed(best))
    } else {
        quotas
            .filter(|(limited, _)| *limited)
            .map(|(_, q)| q)
            .max_by_key(Quota::retry_after_secs)
            .map(RateDecision::Limited)
            .ok_or_else(|| "rate-limit script refused with every bucket holding a token".into())
    }
}

/// `meshgate:rl:<rule id hex>:<value>`: addresses in text, short values as they
/// are after `=`, long ones as `#` and their SHA-1, so a key's size is bounded.
fn redis_key(rule: &Rule, value: &KeyValue<'_>) -> Vec<u8> {
    use std::io::Write;
    let mut key = Vec::with_capacity(KEY_PREFIX.len() + 17 + MAX_RAW_KEY + 1);
    key.extend_from_slice(KEY_PREFIX);
    for b in rule.id {
        // Writing to a Vec cannot fail.
        let _ = write!(key, "{b:02x}");
    }
    key.push(b':');
    match value {
        KeyValue::Ip(ip) => {
            let _ = write!(key, "{ip}");
        }
        KeyValue::Route => key.extend_from_slice(b"route"),
        other => {
            let bytes = other.bytes();
            if bytes.len() <= MAX_RAW_KEY {
                key.push(b'=');
                key.extend_from_slice(bytes);
            } else {
                key.push(b'#');
                key.extend_from_slice(sha1_smol::Sha1::from(bytes).digest().to_string().as_bytes());
            }
        }
    }
    key
}
