//! Starting and stopping a proxy: the first snapshot, the admin listener, the
//! gateway listeners and the reloader.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use meshgate_crds::manifests::Manifests;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{self, ClusterSource};
use crate::listeners::{BindPlan, Supervisor};
use crate::server;
use crate::snapshot::{compile, GatewayRef};
use crate::state::State;
use crate::upstream::MeshRuntime;
use crate::{admin, reload, Error};
use meshgate_mesh::IdentityManager;

/// Where the configuration comes from.
#[derive(Debug)]
pub enum Source {
    /// A directory of manifests, watched for changes.
    Dir(PathBuf),
    /// Fixed manifests (the demo).
    Manifests(Box<Manifests>),
    /// The ApiGateway and the objects it refers to, watched in a cluster.
    Cluster(ClusterSource),
}

#[derive(Debug)]
pub struct Options {
    pub source: Source,
    pub gateway: Option<GatewayRef>,
    /// Admin listener address; none to run without.
    pub admin: Option<SocketAddr>,
    /// Address listeners bind to, with their manifest port.
    pub bind_ip: IpAddr,
    /// Per listener name, an address to bind instead (port 0: any free port).
    pub listen: HashMap<String, SocketAddr>,
    pub poll_interval: Duration,
    /// The mesh identity channel and the HBONE port.
    pub mesh: MeshRuntime,
    /// A running identity source; its channel is used when `mesh.identity` is
    /// unset, and it is stopped with the proxy.
    pub identity: Option<IdentityManager>,
    /// Where access log lines go (stdout by default).
    pub access_log: crate::access_log::AccessLog,
    /// CA certificates trusted for remote JWKS besides the system's.
    pub jwks_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl Options {
    pub fn new(source: Source) -> Options {
        Options {
            source,
            gateway: None,
            admin: None,
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            listen: HashMap::new(),
            poll_interval: reload::POLL_INTERVAL,
            mesh: MeshRuntime::default(),
            identity: None,
            access_log: Default::default(),
            jwks_roots: Vec::new(),
        }
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct Running {
    pub state: Arc<State>,
    admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _identity: Option<IdentityManager>,
}

impl Running {
    /// Loads the first snapshot (failing if it cannot be), binds every listener and
    /// starts serving.
    pub async fn start(mut options: Options) -> Result<Running, Error> {
        crate::install_crypto_provider();
        let identity = options.identity.take();
        let mut mesh = options.mesh.clone();
        if let (None, Some(manager)) = (&mesh.identity, &identity) {
            mesh.identity = Some(manager.watch.clone());
        }
        let mut roots = crate::policy::jwt::JwksRegistry::system_roots();
        roots.add_parsable_certificates(options.jwks_roots.iter().cloned());
        let policy = crate::policy::PolicyRuntime::new(roots);
        let state = State::build(mesh, options.access_log.clone(), policy);
        if let Some(manager) = &identity {
            let _ = state.metrics.identity.set(manager.metrics.clone());
        }
        let gateway = options.gateway.clone();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();

        // The admin listener comes first: /healthz answers (and /ready says no)
        // while the first snapshot is awaited.
        let admin_listener = options
            .admin
            .map(|addr| server::bind(addr, "admin"))
            .transpose()?;
        let admin_addr = admin_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;
        if let Some(listener) = admin_listener {
            tasks.push(tokio::spawn(admin::serve(
                listener,
                state.clone(),
                shutdown_rx.clone(),
            )));
        }
        let stop_all = |tasks: Vec<JoinHandle<()>>| {
            let _ = shutdown.send(true);
            for task in tasks {
                task.abort();
            }
        };

        let mut fingerprint = None;
        let first = match &options.source {
            Source::Dir(dir) => {
                let (dir, gw, st) = (dir.clone(), gateway.clone(), state.clone());
                tokio::task::spawn_blocking(move || {
                    let fp = reload::fingerprint(&dir);
                    (fp, reload::load_snapshot(&dir, gw.as_ref(), 1, &st))
                })
                .await
                .map_err(|e| Error::Config(e.to_string()))
                .and_then(|(fp, snapshot)| {
                    fingerprint = Some(fp);
                    snapshot
                })
                .map(Some)
            }
            Source::Manifests(m) => {
                compile(m, gateway.as_ref(), 1, &state.metrics, &state.policy).map(Some)
            }
            Source::Cluster(source) => {
                // The watcher publishes snapshots itself; wait for the first one.
                let (applied, mut applied_rx) = watch::channel(0u64);
                tasks.push(tokio::spawn(cluster::run(
                    source.clone(),
                    state.clone(),
                    applied,
                    shutdown_rx.clone(),
                )));
                tracing::info!(gateway = ?source, "waiting for the first configuration from the cluster");
                let waited = applied_rx.wait_for(|v| *v > 0).await.map(|_| None);
                waited.map_err(|_| Error::Kube("cluster watch ended".into()))
            }
        };
        let first = match first {
            Ok(first) => first,
            Err(e) => {
                stop_all(tasks);
                return Err(e);
            }
        };
        if let Some(snapshot) = first {
            reload::apply(&state, snapshot);
        }
        let snapshot = state.snapshot.load_full();
        if let Some(limit) = snapshot.client.max_connections {
            let _ = state
                .connection_limit
                .set(Arc::new(tokio::sync::Semaphore::new(limit)));
        }
        // Bind every listener before serving any, so a failure leaves nothing running.
        let plan = BindPlan {
            ip: options.bind_ip,
            overrides: options.listen.clone(),
        };
        let supervisor = match plan
            .bind_all(&snapshot)
            .and_then(|bound| Supervisor::start(state.clone(), plan, bound))
        {
            Ok(supervisor) => supervisor,
            Err(e) => {
                stop_all(tasks);
                return Err(e);
            }
        };
        tasks.push(tokio::spawn(supervisor.run(shutdown_rx.clone())));
        if let (Source::Dir(dir), Some(fingerprint)) = (options.source, fingerprint) {
            tasks.push(tokio::spawn(reload::watch_dir(
                state.clone(),
                dir,
                gateway,
                options.poll_interval,
                fingerprint,
                shutdown_rx.clone(),
            )));
        }
        state.ready.store(true, Ordering::Relaxed);
        if let Some(addr) = admin_addr {
            tracing::info!(address = %addr, "admin listening");
        }
        Ok(Running {
            state,
            admin_addr,
            shutdown,
            tasks,
            _identity: identity,
        })
    }

    /// The address listener `name` is bound to.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.state
            .bound
            .load()
            .iter()
            .find(|b| b.name == name)
            .map(|b| b.address)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`, and
    /// reports whether everything finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.state.ready.store(false, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        let aborts: Vec<_> = self.tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = async {
            for task in self.tasks {
                let _ = task.await;
            }
        };
        let drained = tokio::time::timeout(grace, all).await.is_ok();
        if !drained {
            tracing::warn!("shutdown grace period over; closing remaining connections");
            for abort in aborts {
                abort.abort();
            }
        }
        drained
    }
}
