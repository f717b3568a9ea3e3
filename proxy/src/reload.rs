//! Standalone configuration: a directory of manifests, loaded, compiled, and
//! watched for changes.
//!
//! The directory is watched with inotify (through `notify`; kqueue or FSEvents
//! elsewhere). Events start a short quiet period: the change is applied once
//! [`QUIET`] passes without another event, so a file being written in place is
//! not read half-way ([`SETTLE`] only, when the last event completed a file: a
//! rename into the directory or a close after writing), but never later than
//! [`MAX_DELAY`] after the first event, so a directory rewritten all the time is
//! still applied. Any event
//! in the directory counts, not only those on `*.yaml` names: a Kubernetes
//! ConfigMap volume swaps its `..data` symlink, and the YAML names, symlinks
//! through it, then lead to new files (see [`fingerprint`]).
//!
//! A poll every `poll_interval` (default [`POLL_INTERVAL`]) stays as a safety net
//! for events that never come (network file systems, a directory replaced as a
//! whole); a change it finds is applied once the directory has looked the same for
//! one more poll. Without a watcher (e.g. no inotify instances left) the poll runs
//! every [`FALLBACK_POLL_INTERVAL`] at most.
//!
//! A change that cannot be loaded or compiled as a whole keeps the last good
//! snapshot; routes that fail on their own are dropped from the new snapshot and
//! reported.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use meshgate_crds::manifests::{load_dir, Manifests};
use tokio::sync::watch;

use crate::snapshot::{compile_next, GatewayRef, Snapshot};
use crate::state::State;
use crate::Error;

/// How often the directory is polled besides the watcher (a safety net).
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How often the directory is polled when it cannot be watched.
pub const FALLBACK_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A change is applied once the directory had no event for this long...
pub const QUIET: Duration = Duration::from_millis(15);

/// ...or for this long when the last event completed a file: a rename into the
/// directory (an atomic replacement, a ConfigMap's `..data` swap) or a close after
/// writing a manifest. Short, but enough to take files renamed in a row at once.
pub const SETTLE: Duration = Duration::from_millis(2);

/// ...or this long after its first event, whichever comes first.
pub const MAX_DELAY: Duration = Duration::from_millis(100);

/// Reads `dir`; any document that cannot be read fails the whole load, since a
/// broken file more likely means an edit in progress than an intent to delete.
pub fn load_manifests(dir: &Path) -> Result<Manifests, Error> {
    let loaded = load_dir(dir).map_err(|e| Error::Load(e.to_string()))?;
    if !loaded.errors.is_empty() {
        let messages: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        return Err(Error::Load(messages.join("; ")));
    }
    Ok(loaded.manifests)
}

/// Loads and compiles `dir` into snapshot number `version`.
pub fn load_snapshot(
    dir: &Path,
    gateway: Option<&GatewayRef>,
    version: u64,
    state: &State,
) -> Result<Snapshot, Error> {
    let started = Instant::now();
    let manifests = load_manifests(dir)?;
    let loaded = started.elapsed();
    // The routes that did not change are taken over from the snapshot served now.
    let snapshot = compile_next(
        &state.snapshot.load(),
        &manifests,
        gateway,
        version,
        &state.metrics,
        &state.policy,
    );
    drop(manifests);
    tracing::debug!(
        version,
        load_ms = loaded.as_secs_f64() * 1e3,
        compile_ms = (started.elapsed() - loaded).as_secs_f64() * 1e3,
        "configuration loaded"
    );
    snapshot
}

/// Publishes `snapshot` and logs what changed.
pub fn apply(state: &State, snapshot: Snapshot) {
    let started = Instant::now();
    state
        .telemetry
        .configure(&snapshot.gateway, snapshot.tracing.as_ref());
    for issue in &snapshot.errors {
        tracing::error!(version = snapshot.version, object = %issue.object, "{}", issue.message);
    }
    for issue in &snapshot.warnings {
        tracing::warn!(version = snapshot.version, object = %issue.object, "{}", issue.message);
    }
    tracing::info!(
        version = snapshot.version,
        gateway = %snapshot.gateway,
        routes = snapshot.routes.len(),
        errors = snapshot.errors.len(),
        "configuration applied"
    );
    state
        .metrics
        .config_version
        .store(snapshot.version, Ordering::Relaxed);
    state.mesh_targets.store(
        snapshot
            .mesh
            .as_ref()
            .map(|m| m.targets.clone())
            .unwrap_or_default(),
    );
    state.policy.loads.pools.publish(&snapshot.routes);
    let pools = &state.policy.loads.pools;
    state.h1.retain(|addr| pools.for_addr(addr).is_some());
    state.h2.retain(|addr| pools.for_addr(addr).is_some());
    let version = snapshot.version;
    let previous = state.snapshot.swap(Arc::new(snapshot));
    // Listeners added, removed or changed are (re)bound by crate::listeners.
    state.applied.send_replace(version);
    tracing::debug!(
        version,
        apply_ms = started.elapsed().as_secs_f64() * 1e3,
        "configuration published"
    );
    // Freeing a large snapshot takes milliseconds (14 ms at 5,000 routes); off the
    // runtime thread, so requests are not held up behind it. Requests still holding
    // the old snapshot free it themselves when they finish.
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(previous))),
        Err(_) => drop(previous),
    }
}

/// What the poller compares: every manifest file's name, size, modification time
/// and (on Unix) inode, so a file replaced by rename is seen even on file systems
/// with coarse timestamps.
pub type Fingerprint = Result<Vec<(PathBuf, u64, Option<SystemTime>, u64)>, String>;

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// Taken before each load, so a change made during the load is seen by the next poll.
pub fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if let (true, Ok(meta)) = (yaml, std::fs::metadata(&path)) {
            if meta.is_file() {
                files.push((path, meta.len(), meta.modified().ok(), inode(&meta)));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Wakes [`watch_dir`] on file system events in the directory.
#[derive(Default)]
struct Events {
    wake: tokio::sync::Notify,
    /// A YAML file's contents were written: reload even if its fingerprint
    /// looks unchanged (same size within one timestamp tick).
    written: AtomicBool,
    /// The watched directory itself was removed or moved: watch it anew.
    lost: AtomicBool,
    /// The last event completed a file (see [`SETTLE`]).
    settled: AtomicBool,
}

impl Events {
    fn record(&self, dir: &Path, event: notify::Result<notify::Event>) {
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
        let Ok(event) = event else {
            // The watcher lost track (e.g. the queue overflowed): look again.
            self.written.store(true, Ordering::Relaxed);
            self.wake.notify_one();
            return;
        };
        let content = match event.kind {
            // Opens and reads, ours included, change nothing.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => return,
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => true,
            _ => false,
        };
        if event.need_rescan() {
            self.written.store(true, Ordering::Relaxed);
        }
        let manifest = event.paths.iter().any(|p| is_manifest(p));
        if content && manifest {
            self.written.store(true, Ordering::Relaxed);
        }
        let completed = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => manifest,
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => true,
            _ => false,
        };
        self.settled.store(completed, Ordering::Relaxed);
        if event.paths.iter().any(|p| p == dir)
            && matches!(
                event.kind,
                EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
            )
        {
            self.lost.store(true, Ordering::Relaxed);
        }
        self.wake.notify_one();
    }
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

/// Starts watching `dir` (not its subdirectories: a ConfigMap's `..data` swap is
/// an event in `dir` itself). `None` if it cannot be watched now; `warn` logs why.
fn start_watcher(
    dir: &Path,
    events: &Arc<Events>,
    warn: bool,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let (sink, root) = (events.clone(), dir.to_path_buf());
    events.lost.store(false, Ordering::Relaxed);
    let watched = notify::recommended_watcher(move |e| sink.record(&root, e)).and_then(|mut w| {
        w.watch(dir, notify::RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match watched {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            if warn {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the manifest directory; polling it");
            }
            None
        }
    }
}

/// Watches `dir` and applies changes until `shutdown` changes. `loaded` is the
/// fingerprint taken before the active snapshot was loaded; `poll` is the safety
/// net's interval.
pub async fn watch_dir(
    state: Arc<State>,
    dir: PathBuf,
    gateway: Option<GatewayRef>,
    poll: Duration,
    loaded: Fingerprint,
    mut shutdown: watch::Receiver<bool>,
) {
    let events = Arc::new(Events::default());
    let mut watcher = start_watcher(&dir, &events, true);
    let mut applied = loaded;
    let mut pending = None;
    let mut next_poll = tokio::time::Instant::now() + poll_interval(poll, watcher.is_some());
    loop {
        let polled = tokio::select! {
            _ = tokio::time::sleep_until(next_poll) => true,
            _ = events.wake.notified() => false,
            _ = shutdown.changed() => return,
        };
        if polled {
            if watcher.is_none() || events.lost.load(Ordering::Relaxed) {
                let warn = watcher.is_some();
                watcher = start_watcher(&dir, &events, warn);
            }
            next_poll = tokio::time::Instant::now() + poll_interval(poll, watcher.is_some());
        } else {
            // Wait for a quiet moment, but not for ever.
            let first = tokio::time::Instant::now();
            let quiet = || {
                let wait = if events.settled.load(Ordering::Relaxed) {
                    SETTLE
                } else {
                    QUIET
                };
                (tokio::time::Instant::now() + wait).min(first + MAX_DELAY)
            };
            let mut deadline = quiet();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = events.wake.notified() => deadline = quiet(),
                    _ = shutdown.changed() => return,
                }
            }
            if events.lost.load(Ordering::Relaxed) {
                let warn = watcher.is_some();
                watcher = start_watcher(&dir, &events, warn);
            }
        }
        let fp_dir = dir.clone();
        let Ok(current) = tokio::task::spawn_blocking(move || fingerprint(&fp_dir)).await else {
            continue;
        };
        let written = !polled && events.written.swap(false, Ordering::Relaxed);
        if applied == current && !written {
            pending = None;
            continue;
        }
        // The poll applies what it saw twice in a row; an event is enough.
        if polled && pending.as_ref() != Some(&current) {
            pending = Some(current);
            continue;
        }
        pending = None;
        applied = current;
        reload(&state, &dir, gateway.as_ref()).await;
    }
}

fn poll_interval(poll: Duration, watching: bool) -> Duration {
    if watching {
        poll
    } else {
        poll.min(FALLBACK_POLL_INTERVAL)
    }
}

/// Loads, compiles and applies `dir` as the next version, or keeps the active one.
async fn reload(state: &Arc<State>, dir: &Path, gateway: Option<&GatewayRef>) {
    let version = state.snapshot.load().version + 1;
    let (load_dir, load_gateway, load_state) = (dir.to_path_buf(), gateway.cloned(), state.clone());
    let result = tokio::task::spawn_blocking(move || {
        load_snapshot(&load_dir, load_gateway.as_ref(), version, &load_state)
    })
    .await
    .unwrap_or_else(|e| Err(Error::Config(format!("compile task failed: {e}"))));
    match result {
        Ok(snapshot) => {
            state.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
            apply(state, snapshot);
        }
        Err(e) => {
            state.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                dir = %dir.display(),
                error = %e,
                keeping_version = state.snapshot.load().version,
                "configuration change rejected; still serving the last good configuration"
            );
        }
    }
}
