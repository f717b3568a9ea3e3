//! Tokens already verified, so a client that sends the same token on every
//! request pays for one signature check (an ES256 verification costs about as
//! much as proxying the request). An entry is used only while the key set it was
//! verified with is still the provider's current one (a rotation or refresh
//! replaces the set, and so empties the cache in effect), and `exp`/`nbf` are
//! checked again on every hit.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use super::keys::KeySet;
use crate::policy::Claims;

const SHARDS: usize = 16;
/// Entries per shard; a full shard is emptied (simple, and bounded).
const SHARD_CAPACITY: usize = 512;

struct Entry {
    keys: Arc<KeySet>,
    claims: Claims,
    exp: Option<i64>,
    nbf: Option<i64>,
}

/// Verified tokens of one provider.
pub(super) struct TokenCache {
    shards: Vec<Mutex<HashMap<Box<str>, Entry>>>,
    hasher: std::collections::hash_map::RandomState,
    leeway: i64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCache")
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn number(claims: &Claims, name: &str) -> Option<i64> {
    claims
        .0
        .get(name)
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
}

impl TokenCache {
    pub(super) fn new(leeway_secs: u64) -> TokenCache {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            leeway: i64::try_from(leeway_secs).unwrap_or(i64::MAX),
        }
    }

    fn shard(&self, token: &str) -> &Mutex<HashMap<Box<str>, Entry>> {
        &self.shards[(self.hasher.hash_one(token) as usize) % SHARDS]
    }

    /// The claims of `token` if it was verified with `keys` and its time
    /// claims still hold.
    pub(super) fn get(&self, token: &str, keys: &Arc<KeySet>) -> Option<Claims> {
        let shard = self.shard(token).lock().unwrap_or_else(|e| e.into_inner());
        let entry = shard.get(token)?;
        if !Arc::ptr_eq(&entry.keys, keys) {
            return None;
        }
        let now = now();
        if entry
            .exp
            .is_some_and(|exp| now > exp.saturating_add(self.leeway))
            || entry
                .nbf
                .is_some_and(|nbf| now.saturating_add(self.leeway) < nbf)
        {
            return None;
        }
        Some(entry.claims.clone())
    }

    pub(super) fn insert(&self, token: &str, keys: &Arc<KeySet>, claims: &Claims) {
        let mut shard = self.shard(token).lock().unwrap_or_else(|e| e.into_inner());
        if shard.len() >= SHARD_CAPACITY {
            shard.clear();
        }
        shard.insert(
            token.into(),
            Entry {
                keys: Arc::clone(keys),
                claims: claims.clone(),
                exp: number(claims, "exp"),
                nbf: number(claims, "nbf"),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: serde_json::Value) -> Claims {
        Claims(Arc::new(v.as_object().cloned().unwrap()))
    }

    #[test]
    fn hits_need_the_same_key_set_and_valid_times() {
        let cache = TokenCache::new(0);
        let keys = Arc::new(KeySet::default());
        let other = Arc::new(KeySet::default());
        cache.insert("a", &keys, &claims(json!({"sub": "x", "exp": now() + 60})));
        assert!(cache.get("a", &keys).is_some());
        assert!(cache.get("a", &other).is_none(), "another key set");
        assert!(cache.get("b", &keys).is_none());
        cache.insert("old", &keys, &claims(json!({"exp": now() - 1})));
        assert!(cache.get("old", &keys).is_none(), "expired since");
        cache.insert("later", &keys, &claims(json!({"nbf": now() + 60})));
        assert!(cache.get("later", &keys).is_none(), "not yet valid");
        let lenient = TokenCache::new(120);
        lenient.insert("old", &keys, &claims(json!({"exp": now() - 60})));
        assert!(lenient.get("old", &keys).is_some(), "within the skew");
    }

    #[test]
    fn a_full_shard_is_emptied_not_grown() {
        let cache = TokenCache::new(0);
        let keys = Arc::new(KeySet::default());
        for i in 0..(SHARDS * SHARD_CAPACITY * 3) {
            cache.insert(&format!("t{i}"), &keys, &claims(json!({})));
        }
        let total: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= SHARDS * SHARD_CAPACITY, "{total}");
    }
}
