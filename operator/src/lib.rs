//! meshgate-operator: reconciles ApiGateway and ApiPolicy.
//!
//! Every reconcile is a pipeline (see docs/operator.md):
//! [`dereference`] → [`validate`] → [`build`] (pure) → [`apply`] (server-side
//! apply) → [`status`] (pure, written only when it changed). The proxies read
//! their configuration from the API themselves; the operator runs their
//! workloads and reports status.

pub mod apply;
pub mod build;
pub mod conditions;
pub mod controller;
pub mod dereference;
pub mod error;
pub mod lease;
pub mod metrics;
pub mod policy;
pub mod status;
pub mod telemetry;
pub mod validate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use tokio::sync::{oneshot, watch};

pub use build::BuildOptions;
pub use error::{Error, Result};
pub use lease::LeaseConfig;

/// `reportingController` of the operator's Events.
pub const CONTROLLER: &str = "meshgate-operator";

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub build: BuildOptions,
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    pub lease: LeaseConfig,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; None: not at all.
    pub metrics_addr: Option<SocketAddr>,
}

/// A replica identity: the pod (host) name plus a random suffix, so two
/// processes on one host never share it.
pub fn default_identity() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "meshgate-operator".into());
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{host}_{:08x}", h.finish() as u32)
}

/// Runs the operator until `shutdown` resolves: leader election, and while
/// leading, the controllers. On shutdown in-flight reconciles finish (up to
/// 10 s), then the lease is released so a standby takes over at once.
pub async fn run(
    client: Client,
    opts: Options,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let metrics = Arc::new(metrics::Metrics::default());
    let server = match opts.metrics_addr {
        Some(addr) => {
            let (local, fut) = metrics::serve(addr, metrics.clone()).await?;
            tracing::info!(%local, "serving /metrics, /healthz, /readyz");
            Some(tokio::spawn(fut))
        }
        None => None,
    };
    let version = client.apiserver_version().await?;
    tracing::info!(
        apiserver = %version.git_version,
        identity = %opts.lease.identity,
        namespaces = ?opts.namespaces,
        "meshgate-operator starting"
    );
    metrics.set_ready(true);

    let (lead_tx, mut lead_rx) = watch::channel(false);
    let (lease_stop_tx, lease_stop_rx) = oneshot::channel::<()>();
    let lease_task = tokio::spawn(lease::run(
        client.clone(),
        opts.lease.clone(),
        lead_tx,
        lease_stop_rx.map(|_| ()),
    ));
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER.into(),
            instance: Some(opts.lease.identity.clone()),
        },
    );
    let all = if opts.namespaces.is_empty() {
        apply::Scope::All
    } else {
        apply::Scope::Namespaces(opts.namespaces.clone())
    };
    let scopes: Vec<Option<String>> = if opts.namespaces.is_empty() {
        vec![None]
    } else {
        opts.namespaces.iter().cloned().map(Some).collect()
    };

    tokio::pin!(shutdown);
    'outer: loop {
        while !*lead_rx.borrow_and_update() {
            tokio::select! {
                _ = &mut shutdown => break 'outer,
                r = lead_rx.changed() => if r.is_err() { break 'outer },
            }
        }
        metrics.set_leader(true);
        tracing::info!("leading: starting controllers");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let stop = stop_rx.map(|_| ()).shared();
        let controllers = futures::future::join_all(scopes.iter().map(|ns| {
            controller::run_scope(
                client.clone(),
                ns.clone(),
                all.clone(),
                opts.build.clone(),
                recorder.clone(),
                metrics.clone(),
                stop.clone(),
            )
        }));
        tokio::pin!(controllers);
        enum End {
            Finished,
            Lost,
            Shutdown,
        }
        let end = tokio::select! {
            _ = &mut controllers => End::Finished,
            _ = lead_rx.wait_for(|l| !*l) => End::Lost,
            _ = &mut shutdown => End::Shutdown,
        };
        match end {
            End::Finished => tracing::warn!("controllers ended unexpectedly; restarting them"),
            // Dropping the controllers aborts in-flight reconciles: another
            // replica may already be leading.
            End::Lost => tracing::warn!("lost the leader lease: controllers stopped"),
            End::Shutdown => {
                let _ = stop_tx.send(());
                if tokio::time::timeout(Duration::from_secs(10), &mut controllers)
                    .await
                    .is_err()
                {
                    tracing::warn!("in-flight reconciles did not finish within 10s");
                }
                metrics.set_leader(false);
                break 'outer;
            }
        }
        metrics.set_leader(false);
    }
    let _ = lease_stop_tx.send(());
    let _ = lease_task.await;
    if let Some(s) = server {
        s.abort();
    }
    tracing::info!("meshgate-operator stopped");
    Ok(())
}
