//! Standalone configuration: a directory of manifests, loaded, compiled, and
//! polled every 500 ms for changes.
//!
//! A change is applied once the directory has looked the same for one more poll,
//! so a file caught half-written is not read. A change that cannot be loaded or
//! compiled as a whole keeps the last good snapshot; routes that fail on their own
//! are dropped from the new snapshot and reported.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshgate_crds::manifests::{load_dir, Manifests};
use tokio::sync::watch;

use crate::snapshot::{compile, GatewayRef, Snapshot};
use crate::state::State;
use crate::Error;

/// How often the directory is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

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
    compile(
        &load_manifests(dir)?,
        gateway,
        version,
        &state.metrics,
        &state.policy,
    )
}

/// Publishes `snapshot` and logs what changed.
pub fn apply(state: &State, snapshot: Snapshot) {
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
    state.h2.retain(|addr| pools.for_addr(addr).is_some());
    let version = snapshot.version;
    state.snapshot.store(Arc::new(snapshot));
    // Listeners added, removed or changed are (re)bound by crate::listeners.
    state.applied.send_replace(version);
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

/// Polls `dir` and applies changes until `shutdown` changes. `loaded` is the
/// fingerprint taken before the active snapshot was loaded.
pub async fn watch_dir(
    state: Arc<State>,
    dir: PathBuf,
    gateway: Option<GatewayRef>,
    interval: Duration,
    loaded: Fingerprint,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut applied = Some(loaded);
    let mut pending = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let fp_dir = dir.clone();
        let Ok(current) = tokio::task::spawn_blocking(move || fingerprint(&fp_dir)).await else {
            continue;
        };
        if applied.as_ref() == Some(&current) {
            pending = None;
            continue;
        }
        if pending.as_ref() != Some(&current) {
            pending = Some(current);
            continue;
        }
        applied = pending.take();
        let version = state.snapshot.load().version + 1;
        let (load_dir, load_gateway, load_state) = (dir.clone(), gateway.clone(), state.clone());
        let result = tokio::task::spawn_blocking(move || {
            load_snapshot(&load_dir, load_gateway.as_ref(), version, &load_state)
        })
        .await
        .unwrap_or_else(|e| Err(Error::Config(format!("compile task failed: {e}"))));
        match result {
            Ok(snapshot) => {
                state.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                apply(&state, snapshot);
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
}
