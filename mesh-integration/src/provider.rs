//! Where workload identities come from, and the loop that keeps them fresh.
//!
//! Two providers sit behind [`IdentityProvider`]: [`IstioCaProvider`] (a CSR to
//! istiod with the projected service-account token, renewed at half-life) and
//! [`SidecarFilesProvider`] (the files an istio-proxy sidecar writes with
//! `OUTPUT_CERTS`, polled). [`IdentityManager::spawn`] runs either: it publishes
//! each new identity on a watch channel, and on failure keeps the identity it
//! has (still valid for a while) and retries with exponential backoff.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ca_client::{CaConfig, IstioCaClient};
use crate::identity::{IdentityWatch, WorkloadIdentity};
use crate::{certs, now_unix, Error, SpiffeId};

/// First retry delay after a failed refresh.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(150);

/// When to load again after a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// At the certificate's half-life, less up to 10% of its lifetime (jitter).
    HalfLife,
    /// Every interval (files that can change at any time).
    Poll(Duration),
}

/// A source of workload identities.
pub trait IdentityProvider: Send + Sync + 'static {
    /// For logs.
    fn describe(&self) -> String;
    fn schedule(&self) -> Schedule;
    /// One attempt at getting the current identity.
    fn load(&self) -> impl Future<Output = Result<WorkloadIdentity, Error>> + Send;
}

/// Counters of a provider, for `/metrics`.
#[derive(Debug, Default)]
pub struct ProviderMetrics {
    /// Loads that succeeded (whether or not the identity changed).
    pub loads_ok: AtomicU64,
    /// Loads that failed.
    pub loads_failed: AtomicU64,
    /// Identities published (the first one and every rotation).
    pub rotations: AtomicU64,
    /// Expiry of the identity being presented (Unix seconds), 0 when none.
    pub expiry_unix: AtomicI64,
}

/// A running provider and the channel it publishes on. Dropping it stops it.
#[derive(Debug)]
pub struct IdentityManager {
    pub watch: IdentityWatch,
    pub metrics: Arc<ProviderMetrics>,
    task: JoinHandle<()>,
}

impl Drop for IdentityManager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The delay before retry number `failures` (1, 2, ...): 1 s doubling, capped at
/// [`MAX_BACKOFF`], with up to 10% jitter taken off.
pub fn backoff(failures: u32) -> Duration {
    let base = INITIAL_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let capped = base.min(MAX_BACKOFF);
    capped.mul_f64(1.0 - fastrand::f64() * 0.1)
}

/// How long to wait before renewing `identity`: its half-life from now, less
/// up to 10% of its lifetime, at least 100 ms.
pub fn renew_after(identity: &WorkloadIdentity, now_unix: i64) -> Duration {
    let lifetime = (identity.not_after_unix - identity.not_before_unix).max(0) as f64;
    let secs = identity.half_life_from_now(now_unix) as f64 - fastrand::f64() * 0.1 * lifetime;
    Duration::from_secs_f64(secs.max(0.1))
}

impl IdentityManager {
    /// Starts `provider`: loads at once, then on its schedule.
    pub fn spawn<P: IdentityProvider>(provider: P) -> IdentityManager {
        let (tx, rx) = watch::channel(None);
        let metrics = Arc::new(ProviderMetrics::default());
        let task = tokio::spawn(run(provider, tx, metrics.clone()));
        IdentityManager {
            watch: rx,
            metrics,
            task,
        }
    }

    /// Waits until an identity is available, at most `timeout`.
    pub async fn ready(&self, timeout: Duration) -> Result<(), Error> {
        let mut rx = self.watch.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::NoIdentity),
        }
    }
}

async fn run<P: IdentityProvider>(
    provider: P,
    tx: watch::Sender<Option<Arc<WorkloadIdentity>>>,
    metrics: Arc<ProviderMetrics>,
) {
    let mut failures = 0u32;
    loop {
        let delay = match provider.load().await {
            Ok(identity) => {
                metrics.loads_ok.fetch_add(1, Relaxed);
                failures = 0;
                let delay = match provider.schedule() {
                    Schedule::HalfLife => renew_after(&identity, now_unix()),
                    Schedule::Poll(every) => every,
                };
                let changed = tx
                    .borrow()
                    .as_ref()
                    .is_none_or(|current| !current.same_as(&identity));
                if changed {
                    tracing::info!(
                        source = %provider.describe(),
                        identity = %identity.id,
                        not_after = identity.not_after_unix,
                        "workload identity published"
                    );
                    metrics.expiry_unix.store(identity.not_after_unix, Relaxed);
                    metrics.rotations.fetch_add(1, Relaxed);
                    tx.send_replace(Some(Arc::new(identity)));
                }
                delay
            }
            Err(error) => {
                metrics.loads_failed.fetch_add(1, Relaxed);
                failures = failures.saturating_add(1);
                let delay = match provider.schedule() {
                    Schedule::HalfLife => backoff(failures),
                    Schedule::Poll(every) => every,
                };
                tracing::warn!(
                    source = %provider.describe(),
                    %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "loading the workload identity failed; keeping the current one"
                );
                delay
            }
        };
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(delay).await;
    }
}

/// Identities from the Istio CA. The service-account token and the root file
/// are re-read at every request (the kubelet rotates the token; the root
/// ConfigMap changes during a root rotation).
pub struct IstioCaProvider {
    config: CaConfig,
    root_path: Option<PathBuf>,
    identity: SpiffeId,
}

impl IstioCaProvider {
    /// `config.root_pem` is used when `root_path` is `None`.
    pub fn new(config: CaConfig, root_path: Option<PathBuf>, identity: SpiffeId) -> Self {
        IstioCaProvider {
            config,
            root_path,
            identity,
        }
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::Files {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

impl IdentityProvider for IstioCaProvider {
    fn describe(&self) -> String {
        format!("istio-ca {}", self.config.address)
    }

    fn schedule(&self) -> Schedule {
        Schedule::HalfLife
    }

    async fn load(&self) -> Result<WorkloadIdentity, Error> {
        let mut config = self.config.clone();
        if let Some(path) = &self.root_path {
            config.root_pem = read(path)?;
        }
        let mut roots = certs::parse_pem_chain(&config.root_pem)?;
        let client = IstioCaClient::new(config)?;
        let issued = client.issue(&self.identity).await?;
        if !roots.contains(&issued.root) {
            roots.push(issued.root.clone());
        }
        let key = rustls::pki_types::pem::PemObject::from_pem_slice(issued.key_pem.as_bytes())
            .map_err(|e| Error::Certificate(format!("private key: {e}")))?;
        WorkloadIdentity::new(issued.chain, key, roots)
    }
}

/// Identities from the files istio-proxy writes with `OUTPUT_CERTS`:
/// `cert-chain.pem`, `key.pem` and `root-cert.pem`. A load reads all three and
/// publishes only a consistent set (the key matches the leaf, every file
/// parses), so a half-written rotation is ignored until it is complete.
pub struct SidecarFilesProvider {
    dir: PathBuf,
    interval: Duration,
}

impl SidecarFilesProvider {
    pub const CERT_CHAIN: &'static str = "cert-chain.pem";
    pub const KEY: &'static str = "key.pem";
    pub const ROOT_CERT: &'static str = "root-cert.pem";

    pub fn new(dir: impl Into<PathBuf>, interval: Duration) -> Self {
        SidecarFilesProvider {
            dir: dir.into(),
            interval,
        }
    }
}

impl IdentityProvider for SidecarFilesProvider {
    fn describe(&self) -> String {
        format!("sidecar files {}", self.dir.display())
    }

    fn schedule(&self) -> Schedule {
        Schedule::Poll(self.interval)
    }

    async fn load(&self) -> Result<WorkloadIdentity, Error> {
        let dir = self.dir.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let chain = read(&dir.join(Self::CERT_CHAIN))?;
            let key = read(&dir.join(Self::KEY))?;
            let roots = read(&dir.join(Self::ROOT_CERT))?;
            WorkloadIdentity::from_pem(&chain, &key, &roots).map_err(|e| Error::Files {
                path: dir.display().to_string(),
                message: e.to_string(),
            })
        })
        .await;
        loaded.map_err(|e| Error::Io(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let secs = |n| backoff(n).as_secs_f64();
        assert!((0.9..=1.0).contains(&secs(1)));
        assert!((1.8..=2.0).contains(&secs(2)));
        assert!((7.2..=8.0).contains(&secs(4)));
        assert!((135.0..=150.0).contains(&secs(9)));
        assert!((135.0..=150.0).contains(&secs(40)));
    }
}
