//! The gateway's listeners as the current snapshot declares them. They are bound
//! at start (a failure there fails the start), then a supervisor task follows
//! every reload: a new listener is bound, a removed one stops accepting and
//! drains, and one whose port, protocol or TLS versions changed is replaced —
//! all without a restart. A port that cannot be bound is reported and retried;
//! the listener it replaces keeps serving meanwhile.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::server::{self, ListenerSpec};
use crate::snapshot::Snapshot;
use crate::state::{BoundListener, State};
use crate::Error;

/// How often a listener that could not be bound is tried again.
const BIND_RETRY: Duration = Duration::from_secs(5);

/// How long a re-bind on the same port waits for the old socket to close.
const SAME_PORT_WAIT: Duration = Duration::from_secs(2);

/// Where listeners bind.
#[derive(Clone, Debug)]
pub struct BindPlan {
    /// Address listeners bind to, with their manifest port.
    pub ip: IpAddr,
    /// Per listener name, an address to bind instead (port 0: any free port).
    pub overrides: HashMap<String, SocketAddr>,
}

/// What a listener needs to be bound as: everything that cannot change on a
/// bound socket. Routes and certificates follow the snapshot without a re-bind.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Wanted {
    name: String,
    port: u16,
    protocol: meshgate_crds::gateway::ListenerProtocol,
    tls13_only: bool,
}

/// The listeners a snapshot declares.
fn wanted(snapshot: &Snapshot) -> Vec<Wanted> {
    snapshot
        .listeners
        .iter()
        .map(|l| Wanted {
            name: l.name.clone(),
            port: l.port,
            protocol: l.protocol,
            tls13_only: l.tls.as_ref().is_some_and(|t| t.tls13_only),
        })
        .collect()
}

/// A socket bound for a listener, not yet serving.
pub struct Bound {
    wanted: Wanted,
    socket: TcpListener,
    address: SocketAddr,
    /// The port clients use: the manifest's, or the bound one when overridden.
    public_port: u16,
}

impl BindPlan {
    fn bind(&self, wanted: &Wanted) -> Result<Bound, Error> {
        let overridden = self.overrides.get(&wanted.name).copied();
        let addr = overridden.unwrap_or(SocketAddr::new(self.ip, wanted.port));
        let socket = server::bind(addr, &format!("listener {}", wanted.name))?;
        let address = socket.local_addr()?;
        Ok(Bound {
            public_port: if overridden.is_some() {
                address.port()
            } else {
                wanted.port
            },
            wanted: wanted.clone(),
            socket,
            address,
        })
    }

    /// Binds every listener of `snapshot`, all or none.
    pub fn bind_all(&self, snapshot: &Snapshot) -> Result<Vec<Bound>, Error> {
        wanted(snapshot).iter().map(|w| self.bind(w)).collect()
    }
}

/// A listener that is accepting connections.
struct Serving {
    wanted: Wanted,
    address: SocketAddr,
    /// Set to true to stop accepting and drain this listener's connections.
    stop: watch::Sender<bool>,
}

/// Owns the serving listeners and follows the snapshot.
pub struct Supervisor {
    state: Arc<State>,
    plan: BindPlan,
    serving: HashMap<String, Serving>,
    /// Accept loops, including those draining after a removal or replacement.
    tasks: JoinSet<()>,
}

impl Supervisor {
    /// Starts serving the listeners bound at start.
    pub fn start(state: Arc<State>, plan: BindPlan, bound: Vec<Bound>) -> Result<Self, Error> {
        let mut supervisor = Supervisor {
            state,
            plan,
            serving: HashMap::new(),
            tasks: JoinSet::new(),
        };
        for b in bound {
            supervisor.serve(b)?;
        }
        supervisor.publish();
        Ok(supervisor)
    }

    fn serve(&mut self, bound: Bound) -> Result<(), Error> {
        let spec = ListenerSpec {
            name: bound.wanted.name.clone(),
            protocol: bound.wanted.protocol,
            public_port: bound.public_port,
            tls13_only: bound.wanted.tls13_only,
        };
        let (stop, stop_rx) = watch::channel(false);
        let accept = server::accept_loop(bound.socket, spec, self.state.clone(), stop_rx)?;
        self.tasks.spawn(accept);
        tracing::info!(listener = %bound.wanted.name, address = %bound.address, "listening");
        self.serving.insert(
            bound.wanted.name.clone(),
            Serving {
                wanted: bound.wanted,
                address: bound.address,
                stop,
            },
        );
        Ok(())
    }

    fn retire(&mut self, name: &str) {
        if let Some(old) = self.serving.remove(name) {
            // Stops accepting now; open connections finish their requests
            // (HTTP/2 gets GOAWAY) and the task ends when they are gone.
            let _ = old.stop.send(true);
            tracing::info!(listener = %name, address = %old.address, "listener closed");
        }
    }

    /// The listeners as bound, for `/config` and tests.
    fn publish(&self) {
        let mut bound: Vec<BoundListener> = self
            .serving
            .iter()
            .map(|(name, s)| BoundListener {
                name: name.clone(),
                address: s.address,
            })
            .collect();
        bound.sort_by(|a, b| a.name.cmp(&b.name));
        self.state.bound.store(Arc::new(bound));
    }

    /// Brings the serving listeners in line with `snapshot`; returns whether a
    /// listener could not be bound (and should be tried again).
    async fn sync(&mut self, snapshot: &Snapshot) -> bool {
        let wanted = wanted(snapshot);
        let gone: Vec<String> = self
            .serving
            .keys()
            .filter(|name| !wanted.iter().any(|w| &w.name == *name))
            .cloned()
            .collect();
        for name in gone {
            self.retire(&name);
        }
        let mut failed = false;
        for w in wanted {
            let same_port = match self.serving.get(&w.name) {
                Some(s) if s.wanted == w => continue,
                Some(s) => s.wanted.port == w.port && !self.plan.overrides.contains_key(&w.name),
                None => false,
            };
            // A new port is bound before the old one closes, so a failure leaves
            // the old listener serving. The same port has to be given up first.
            if same_port {
                self.retire(&w.name);
            }
            match self.bind_patiently(&w, same_port).await {
                Ok(bound) => {
                    self.retire(&w.name);
                    if let Err(e) = self.serve(bound) {
                        failed = true;
                        self.bind_failed(&w, &e);
                    }
                }
                Err(e) => {
                    failed = true;
                    self.bind_failed(&w, &e);
                }
            }
        }
        self.publish();
        failed
    }

    /// Binds `w`; on its old listener's port, waits briefly for that socket to close.
    async fn bind_patiently(&self, w: &Wanted, same_port: bool) -> Result<Bound, Error> {
        let deadline = tokio::time::Instant::now() + SAME_PORT_WAIT;
        loop {
            match self.plan.bind(w) {
                Err(_) if same_port && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                result => return result,
            }
        }
    }

    fn bind_failed(&self, w: &Wanted, e: &Error) {
        self.state
            .metrics
            .listener_bind_failures
            .fetch_add(1, Relaxed);
        tracing::error!(listener = %w.name, port = w.port, error = %e,
            "cannot bind listener; retrying every {}s", BIND_RETRY.as_secs());
    }

    /// Follows applied snapshots until `shutdown`, then drains every listener.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut applied = self.state.applied.subscribe();
        let mut retry = false;
        loop {
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(BIND_RETRY), if retry => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
                // Reap accept loops that finished draining.
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => continue,
            }
            let snapshot = self.state.snapshot.load_full();
            retry = self.sync(&snapshot).await;
        }
        let names: Vec<String> = self.serving.keys().cloned().collect();
        for name in names {
            self.retire(&name);
        }
        while self.tasks.join_next().await.is_some() {}
    }
}
