//! The one error type of the operator.

/// Everything that can make a reconcile or the operator itself fail.
///
/// Problems with what the user wrote are *not* errors: they are reported in
/// status conditions. These are failures to talk to the API server or to run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serialising {what}: {source}")]
    Serialize {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error("leader election: {0}")]
    Lease(String),
    #[error("metrics server on {addr}: {source}")]
    MetricsServer {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Crds(#[from] meshgate_crds::Error),
}

impl Error {
    /// A short, bounded label for the `reason` of the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) => match s.code {
                403 => "forbidden",
                404 => "not_found",
                409 => "conflict",
                422 => "invalid",
                429 => "throttled",
                500..=599 => "server_error",
                _ => "api_error",
            },
            Error::Kube(_) => "kube_client",
            Error::Serialize { .. } => "serialize",
            Error::MissingField(_) => "missing_field",
            Error::Lease(_) => "lease",
            Error::MetricsServer { .. } => "metrics_server",
            Error::Config(_) => "config",
            Error::Crds(_) => "crds",
        }
    }

    pub(crate) fn serialize(what: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Serialize {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_labels_are_bounded() {
        let forbidden = Error::Kube(kube::Error::Api(Box::new(
            kube::core::Status::failure("no", "Forbidden").with_code(403),
        )));
        assert_eq!(forbidden.metric_label(), "forbidden");
        assert_eq!(Error::MissingField("uid").metric_label(), "missing_field");
        assert_eq!(Error::Lease("x".into()).metric_label(), "lease");
    }
}
