//! Leader election with a `coordination.k8s.io/v1` Lease: try to acquire or
//! renew every 2 s; a lease not renewed for 15 s (by our own clock, so clock
//! skew between replicas does not matter) may be taken over. Only the holder
//! reconciles. On shutdown the holder releases the lease so a standby takes
//! over at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;

use crate::error::Result;

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (pod name plus a random suffix).
    pub identity: String,
    pub lease_duration: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
        }
    }
}

struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    /// The lease's resourceVersion when we last saw it change, and when.
    observed: Option<(String, Instant)>,
    /// When we last renewed successfully, while leader.
    renewed: Option<Instant>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    fn lease_secs(&self) -> i32 {
        self.cfg.lease_duration.as_secs().clamp(1, i32::MAX as u64) as i32
    }

    /// One round: Ok(true) when we hold the lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(self.lease_secs()),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e.into()),
            };
        };
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let mut spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder == self.cfg.identity {
            spec.renew_time = Some(now);
            spec.lease_duration_seconds = Some(self.lease_secs());
        } else {
            if self.observed.as_ref().map(|(v, _)| v) != Some(&rv) {
                self.observed = Some((rv.clone(), Instant::now()));
            }
            let duration = spec
                .lease_duration_seconds
                .map(|s| Duration::from_secs(s.max(1) as u64))
                .unwrap_or(self.cfg.lease_duration);
            let expired = holder.is_empty()
                || self
                    .observed
                    .as_ref()
                    .is_some_and(|(_, seen)| seen.elapsed() > duration);
            if !expired {
                return Ok(false);
            }
            tracing::info!(previous = %holder, "taking over the leader lease");
            spec.holder_identity = Some(self.cfg.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.renew_time = Some(now);
            spec.lease_duration_seconds = Some(self.lease_secs());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the lease up if we hold it.
    async fn release(&self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        self.api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
}

/// Runs the election until `shutdown` resolves, publishing leadership on `tx`.
pub async fn run(
    client: Client,
    cfg: LeaseConfig,
    tx: watch::Sender<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let retry = cfg.retry_period;
    // Step down when renewals have failed for this long: a standby may
    // take over after the full lease duration, so stop well before.
    let renew_deadline = cfg.lease_duration.mul_f32(2.0 / 3.0);
    let mut e = Elector {
        api,
        cfg,
        observed: None,
        renewed: None,
    };
    tokio::pin!(shutdown);
    loop {
        let leader = match e.try_acquire_or_renew().await {
            Ok(true) => {
                e.renewed = Some(Instant::now());
                true
            }
            Ok(false) => {
                e.renewed = None;
                false
            }
            Err(err) => {
                tracing::warn!(error = %err, "leader lease: acquire/renew failed");
                e.renewed.is_some_and(|t| t.elapsed() < renew_deadline)
            }
        };
        if !leader {
            e.renewed = None;
        }
        tx.send_if_modified(|cur| {
            let changed = *cur != leader;
            if changed {
                tracing::info!(leader, identity = %e.cfg.identity, "leadership changed");
            }
            *cur = leader;
            changed
        });
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(retry) => {}
        }
    }
    tx.send_replace(false);
    if let Err(err) = e.release().await {
        tracing::warn!(error = %err, "releasing the leader lease failed");
    }
}
