//! Where the proxy's workload identity comes from, from the command line:
//!
//! - `--mesh-cert-dir DIR`: the files an istio-proxy sidecar writes with
//!   `OUTPUT_CERTS` (`key.pem`, `cert-chain.pem`, `root-cert.pem`), polled;
//! - `--istio-ca ADDR --istio-ca-root FILE --token FILE --identity spiffe://...`:
//!   a CSR to the Istio CA, renewed at half-life;
//! - cluster mode with neither: the Istio CA with the paths the operator mounts
//!   ([`CLUSTER_TOKEN`], [`CLUSTER_ROOT`]), when the token is mounted; the identity
//!   is `spiffe://<trust domain>/ns/$POD_NAMESPACE/sa/$SERVICE_ACCOUNT`.

use std::path::PathBuf;
use std::time::Duration;

use meshgate_mesh::{CaConfig, IdentityManager, IstioCaProvider, SidecarFilesProvider, SpiffeId};

use crate::Error;

/// The projected token (audience `istio-ca`) the operator mounts.
pub const CLUSTER_TOKEN: &str = "/var/run/secrets/tokens/istio-token";
/// The mesh root (ConfigMap `istio-ca-root-cert`) the operator mounts.
pub const CLUSTER_ROOT: &str = "/var/run/secrets/istio/root-cert.pem";
/// istiod's CA address when none is given.
pub const DEFAULT_CA: &str = "istiod.istio-system.svc:15012";
/// How often sidecar files are read.
pub const FILES_POLL: Duration = Duration::from_secs(1);

/// The identity flags.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct IdentityArgs {
    /// Mesh identity from the files an istio-proxy sidecar writes (OUTPUT_CERTS):
    /// key.pem, cert-chain.pem, root-cert.pem.
    #[arg(long, value_name = "DIR", conflicts_with = "istio_ca")]
    pub mesh_cert_dir: Option<PathBuf>,
    /// Mesh identity from the Istio CA at ADDR (host:port). Cluster mode default:
    /// istiod.istio-system.svc:15012 when the istio-token is mounted.
    #[arg(long, value_name = "ADDR")]
    pub istio_ca: Option<String>,
    /// PEM roots of the Istio CA and the mesh (istio-ca-root-cert).
    #[arg(long, value_name = "FILE")]
    pub istio_ca_root: Option<PathBuf>,
    /// Service-account token with audience istio-ca, re-read at every request.
    #[arg(long, value_name = "FILE")]
    pub token: Option<PathBuf>,
    /// The SPIFFE ID to ask the Istio CA for.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub identity: Option<SpiffeId>,
    /// Name on istiod's serving certificate.
    #[arg(long, value_name = "NAME", default_value = "istiod.istio-system.svc")]
    pub istio_ca_server_name: String,
    /// Istio cluster id sent to the CA.
    #[arg(long, value_name = "ID", default_value = "Kubernetes")]
    pub istio_cluster_id: String,
    /// Requested workload certificate lifetime, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 86400)]
    pub mesh_cert_ttl: u64,
    /// Trust domain of the default cluster-mode identity.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
}

fn flag_error(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}

impl IdentityArgs {
    /// Starts the identity source the flags select; `None` when there is none.
    pub fn start(&self, cluster_mode: bool) -> Result<Option<IdentityManager>, Error> {
        if let Some(dir) = &self.mesh_cert_dir {
            return Ok(Some(IdentityManager::spawn(SidecarFilesProvider::new(
                dir, FILES_POLL,
            ))));
        }
        let cluster_default = cluster_mode && std::path::Path::new(CLUSTER_TOKEN).exists();
        let address = match (&self.istio_ca, cluster_default) {
            (Some(address), _) => address.clone(),
            (None, true) => DEFAULT_CA.to_string(),
            (None, false) => return Ok(None),
        };
        let token_path = self
            .token
            .clone()
            .or_else(|| cluster_mode.then(|| CLUSTER_TOKEN.into()))
            .ok_or_else(|| flag_error("--istio-ca needs --token FILE"))?;
        let root_path = self
            .istio_ca_root
            .clone()
            .or_else(|| cluster_mode.then(|| CLUSTER_ROOT.into()))
            .ok_or_else(|| flag_error("--istio-ca needs --istio-ca-root FILE"))?;
        let identity = match &self.identity {
            Some(id) => id.clone(),
            None => {
                let ns = std::env::var("POD_NAMESPACE").ok();
                let sa = std::env::var("SERVICE_ACCOUNT").ok();
                match (cluster_mode, ns, sa) {
                    (true, Some(ns), Some(sa)) => SpiffeId::new(&self.trust_domain, &ns, &sa)?,
                    _ => {
                        return Err(flag_error(
                            "--istio-ca needs --identity spiffe://<td>/ns/<ns>/sa/<sa> (or POD_NAMESPACE and SERVICE_ACCOUNT in cluster mode)",
                        ))
                    }
                }
            }
        };
        let config = CaConfig {
            address,
            server_name: self.istio_ca_server_name.clone(),
            root_pem: String::new(),
            token_path,
            cluster_id: self.istio_cluster_id.clone(),
            ttl: Duration::from_secs(self.mesh_cert_ttl),
        };
        Ok(Some(IdentityManager::spawn(IstioCaProvider::new(
            config,
            Some(root_path),
            identity,
        ))))
    }
}
