//! Remote JWKS: fetched over HTTPS by the proxy, cached, and shared by every
//! snapshot through the [`JwksRegistry`] so a configuration reload does not
//! refetch keys.
//!
//! Refreshes are lazy: there is no timer task per URI (that would have to be
//! stopped when the configuration drops the URI). A request that finds keys
//! older than `cacheDuration` is served with them and starts a refresh in the
//! background; a request that finds no usable keys waits, boundedly, for the
//! fetch in flight. At most one fetch per URI is in flight at any time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::keys::{KeySet, MAX_JWKS_BYTES};

/// Refresh interval when `cacheDuration` is not set.
pub const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(5 * 60);
/// Lower bound of `cacheDuration`, so a tiny value cannot make the proxy poll the IdP.
pub const MIN_CACHE_DURATION: Duration = Duration::from_secs(1);
/// How long the last good keys are still used, past `cacheDuration`, while
/// refreshes fail: an IdP outage of a day does not lock every user out.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(24 * 60 * 60);
/// The least time between two refreshes triggered by unknown `kid`s, so a
/// client sending random `kid`s cannot make the proxy hammer the IdP.
pub const DEFAULT_REFRESH_COOLDOWN: Duration = Duration::from_secs(10);
/// The longest a fetch may take: connect, TLS, response and body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed fetch, the least time before the next scheduled attempt
/// (or `cacheDuration`, when shorter).
const FAILURE_RETRY: Duration = Duration::from_secs(5);

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct JwksStats {
    /// JWKS fetched and parsed.
    pub fetches_ok: AtomicU64,
    /// Fetches that failed (connection, TLS, HTTP status, size, timeout, bad JWKS).
    pub fetches_failed: AtomicU64,
    /// Refreshes started because a token named an unknown `kid`.
    pub unknown_kid_refreshes: AtomicU64,
    /// Unknown `kid`s that did not start a refresh because of the cooldown.
    pub unknown_kid_throttled: AtomicU64,
}

/// The remote JWKS of the process, by URI.
pub struct JwksRegistry {
    /// The TLS client config, or why none could be made.
    tls: Result<Arc<rustls::ClientConfig>, String>,
    /// Weak, so a URI no configuration uses any more is forgotten.
    sources: Mutex<HashMap<String, Weak<RemoteSource>>>,
    stats: JwksStats,
    max_stale_ms: AtomicU64,
    cooldown_ms: AtomicU64,
}

impl std::fmt::Debug for JwksRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksRegistry")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent at every unlock, so a panic elsewhere does not
    // make it unusable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl JwksRegistry {
    /// `roots`: CA certificates trusted for remote JWKS URIs (system roots plus
    /// any extra CA the operator configured; tests pass their own CA).
    pub fn new(roots: rustls::RootCertStore) -> Arc<JwksRegistry> {
        let tls = rustls::ClientConfig::builder_with_provider(crate::crypto_provider())
            .with_safe_default_protocol_versions()
            .map(|builder| {
                let mut config = builder.with_root_certificates(roots).with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(config)
            })
            .map_err(|e| format!("TLS client config: {e}"));
        Arc::new(JwksRegistry {
            tls,
            sources: Mutex::new(HashMap::new()),
            stats: JwksStats::default(),
            max_stale_ms: AtomicU64::new(millis(DEFAULT_MAX_STALE)),
            cooldown_ms: AtomicU64::new(millis(DEFAULT_REFRESH_COOLDOWN)),
        })
    }

    /// The system's trusted roots (certificates that cannot be read are skipped
    /// and logged).
    pub fn system_roots() -> rustls::RootCertStore {
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::warn!(%error, "reading the system CA certificates");
        }
        let mut roots = rustls::RootCertStore::empty();
        let (_, ignored) = roots.add_parsable_certificates(loaded.certs);
        if ignored > 0 {
            tracing::warn!(ignored, "unusable system CA certificates skipped");
        }
        roots
    }

    pub fn stats(&self) -> &JwksStats {
        &self.stats
    }

    /// How long the last good keys are used past `cacheDuration` while
    /// refreshes fail (default 24 h).
    pub fn set_max_stale(&self, max_stale: Duration) {
        self.max_stale_ms.store(millis(max_stale), Relaxed);
    }

    /// The least time between refreshes triggered by unknown `kid`s (default 10 s).
    pub fn set_refresh_cooldown(&self, cooldown: Duration) {
        self.cooldown_ms.store(millis(cooldown), Relaxed);
    }

    fn max_stale(&self) -> Duration {
        Duration::from_millis(self.max_stale_ms.load(Relaxed))
    }

    fn cooldown(&self) -> Duration {
        Duration::from_millis(self.cooldown_ms.load(Relaxed))
    }

    /// The source of `uri`, shared with every other provider of the process
    /// using it; its first fetch starts now (when there is a runtime), so the
    /// first request usually finds keys. The last `cache` set wins.
    pub(crate) fn source(
        self: &Arc<Self>,
        uri: &str,
        cache: Duration,
    ) -> Result<Arc<RemoteSource>, String> {
        let target = Target::parse(uri)?;
        let cache = cache.max(MIN_CACHE_DURATION);
        let mut sources = lock(&self.sources);
        sources.retain(|_, s| s.strong_count() > 0);
        let source = match sources.get(uri).and_then(Weak::upgrade) {
            Some(source) => {
                source.cache_ms.store(millis(cache), Relaxed);
                source
            }
            None => {
                let source = Arc::new(RemoteSource {
                    target,
                    registry: Arc::clone(self),
                    cache_ms: AtomicU64::new(millis(cache)),
                    state: Mutex::new(FetchState::default()),
                    fetched: watch::Sender::new(0),
                });
                sources.insert(uri.to_string(), Arc::downgrade(&source));
                source
            }
        };
        drop(sources);
        source.start_if_due(&mut lock(&source.state), Instant::now());
        Ok(source)
    }
}

/// Where a JWKS is fetched from.
#[derive(Debug)]
struct Target {
    uri: Uri,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

impl Target {
    fn parse(uri: &str) -> Result<Target, String> {
        let parsed: Uri = uri
            .parse()
            .map_err(|e| format!("remoteJWKS.uri {uri:?}: {e}"))?;
        if parsed.scheme_str() != Some("https") {
            return Err(format!("remoteJWKS.uri {uri:?} must be an https:// URL"));
        }
        let authority = parsed
            .authority()
            .ok_or_else(|| format!("remoteJWKS.uri {uri:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "remoteJWKS.uri {uri:?}: user info is not supported"
            ));
        }
        // `Uri::host` keeps the brackets of an IPv6 address.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| format!("remoteJWKS.uri {uri:?}: {e}"))?;
        Ok(Target {
            port: authority.port_u16().unwrap_or(443),
            uri: parsed,
            host,
            server_name,
        })
    }
}

/// One remote JWKS and its cache.
#[derive(Debug)]
pub(crate) struct RemoteSource {
    target: Target,
    registry: Arc<JwksRegistry>,
    cache_ms: AtomicU64,
    state: Mutex<FetchState>,
    /// Bumped (under the state lock) when a fetch ends, for waiting requests.
    fetched: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct FetchState {
    /// The last good keys, and when they were fetched.
    keys: Option<(Arc<KeySet>, Instant)>,
    in_flight: bool,
    last_attempt: Option<Instant>,
    last_kid_refresh: Option<Instant>,
}

/// What a request does after looking at the cache.
enum Next {
    Done(Result<Arc<KeySet>, &'static str>),
    Wait(watch::Receiver<u64>),
}

impl RemoteSource {
    fn cache_duration(&self) -> Duration {
        Duration::from_millis(self.cache_ms.load(Relaxed))
    }

    /// Starts a scheduled fetch when one is due: never fetched yet, or keys
    /// older than `cacheDuration`; never while one is in flight, and not again
    /// soon after a failed attempt.
    fn start_if_due(self: &Arc<Self>, state: &mut FetchState, now: Instant) {
        let cache = self.cache_duration();
        let expired = state
            .keys
            .as_ref()
            .is_none_or(|(_, at)| now.duration_since(*at) >= cache);
        let retry_ok = state
            .last_attempt
            .is_none_or(|at| now.duration_since(at) >= cache.min(FAILURE_RETRY));
        if expired && retry_ok && !state.in_flight {
            self.start(state, now);
        }
    }

    /// Spawns a fetch. Without a runtime (a compile outside one) nothing
    /// starts, and the first request does it.
    fn start(self: &Arc<Self>, state: &mut FetchState, now: Instant) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        state.in_flight = true;
        state.last_attempt = Some(now);
        runtime.spawn(Arc::clone(self).refresh());
        true
    }

    /// One fetch. The guard ends the in-flight state even if the task is
    /// cancelled (runtime shutdown).
    async fn refresh(self: Arc<Self>) {
        let guard = InFlight(&self);
        let result = match &self.registry.tls {
            Ok(tls) => tokio::time::timeout(FETCH_TIMEOUT, fetch(tls, &self.target))
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {FETCH_TIMEOUT:?}"))),
            Err(e) => Err(e.clone()),
        };
        let result = result.and_then(|body| KeySet::parse(&body));
        let stats = &self.registry.stats;
        match result {
            Ok(keys) => {
                stats.fetches_ok.fetch_add(1, Relaxed);
                tracing::debug!(uri = %self.target.uri, keys = keys.keys.len(), "JWKS fetched");
                lock(&self.state).keys = Some((Arc::new(keys), Instant::now()));
            }
            Err(error) => {
                stats.fetches_failed.fetch_add(1, Relaxed);
                tracing::warn!(uri = %self.target.uri, %error, "JWKS fetch failed; the last good keys stay in use");
            }
        }
        drop(guard);
    }

    /// The keys to verify a token with `kid`, waiting (boundedly) for a fetch
    /// when there are no usable keys yet, or when `kid` is unknown and a
    /// refresh is allowed. With an unknown `kid` the current keys are returned
    /// all the same: the caller finds the `kid` missing.
    pub(crate) async fn keys(
        self: &Arc<Self>,
        kid: Option<&str>,
    ) -> Result<Arc<KeySet>, &'static str> {
        let deadline = tokio::time::Instant::now() + FETCH_TIMEOUT;
        let mut refreshed_for_kid = false;
        loop {
            let next = self.look(kid, &mut refreshed_for_kid);
            let mut fetched = match next {
                Next::Done(result) => return result,
                Next::Wait(rx) => rx,
            };
            if tokio::time::timeout_at(deadline, fetched.changed())
                .await
                .is_err()
            {
                // Timed out: whatever the cache holds now decides.
                refreshed_for_kid = true;
                return match self.look(kid, &mut refreshed_for_kid) {
                    Next::Done(result) => result,
                    Next::Wait(_) => Err("keys_unavailable"),
                };
            }
        }
    }

    fn look(self: &Arc<Self>, kid: Option<&str>, refreshed_for_kid: &mut bool) -> Next {
        let registry = &self.registry;
        let now = Instant::now();
        let mut state = lock(&self.state);
        self.start_if_due(&mut state, now);
        let usable_for = self.cache_duration() + registry.max_stale();
        let usable = state
            .keys
            .as_ref()
            .filter(|(_, at)| now.duration_since(*at) <= usable_for)
            .map(|(keys, _)| Arc::clone(keys));
        match usable {
            Some(keys) => {
                if kid.is_none_or(|kid| keys.has_kid(kid)) || *refreshed_for_kid {
                    return Next::Done(Ok(keys));
                }
                *refreshed_for_kid = true;
                if !state.in_flight {
                    let cooling = state
                        .last_kid_refresh
                        .is_some_and(|at| now.duration_since(at) < registry.cooldown());
                    if cooling {
                        registry.stats.unknown_kid_throttled.fetch_add(1, Relaxed);
                        return Next::Done(Ok(keys));
                    }
                    if !self.start(&mut state, now) {
                        return Next::Done(Ok(keys));
                    }
                    state.last_kid_refresh = Some(now);
                    registry.stats.unknown_kid_refreshes.fetch_add(1, Relaxed);
                }
            }
            None if !state.in_flight => {
                // A fetch may just have been refused by the failure retry delay.
                return Next::Done(Err("keys_unavailable"));
            }
            None => {}
        }
        // Subscribed under the state lock, which the fetch holds when it ends:
        // no end of fetch can be missed.
        Next::Wait(self.fetched.subscribe())
    }
}

/// Marks the end of a fetch when dropped.
struct InFlight<'a>(&'a RemoteSource);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.in_flight = false;
        self.0.fetched.send_modify(|n| *n = n.wrapping_add(1));
        drop(state);
    }
}

/// GET over a connection of its own: fetches are minutes apart, a pool would
/// only hold idle connections to the IdP.
async fn fetch(tls: &Arc<rustls::ClientConfig>, target: &Target) -> Result<Bytes, String> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(target.server_name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let authority = target
        .uri
        .authority()
        .map_or(target.host.as_str(), |a| a.as_str());
    let path = target.uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::get(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json, application/jwk-set+json")
        .header(header::USER_AGENT, "meshgate-proxy")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let exchange = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        if response.status() != StatusCode::OK {
            return Err(format!("HTTP status {}", response.status()));
        }
        Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|e| format!("response body: {e}"))
    };
    // The connection is driven here rather than spawned, so it ends with the
    // fetch (a timeout drops both).
    tokio::pin!(exchange, connection);
    tokio::select! {
        biased;
        result = &mut exchange => result,
        ended = &mut connection => match ended {
            Ok(()) => exchange.await,
            Err(e) => Err(format!("connection: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("https://idp.example:8443/keys?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("idp.example", 8443));
        let t = Target::parse("https://[::1]/jwks").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 443));
        assert!(Target::parse("http://idp.example/jwks").is_err());
        assert!(Target::parse("https://user@idp.example/jwks").is_err());
        assert!(Target::parse("not a uri").is_err());
    }
}
