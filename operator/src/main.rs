//! `meshgate-operator`: the meshgate control plane.
//!
//! `run` reconciles ApiGateways and ApiPolicies (see docs/operator.md);
//! `crds` prints the CRDs and `api-docs` the API reference.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use meshgate_crds::gateway::IdentitySource;
use meshgate_operator::{telemetry, BuildOptions, LeaseConfig, Options};

#[derive(Parser)]
#[command(name = "meshgate-operator", version, about = "meshgate control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD into --out-dir.
    Crds {
        /// Write `<crd-name>.yaml` files into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Print the API reference (docs/api.md) generated from the CRD schemas and the examples in DIR.
    ApiDocs {
        /// Directory of example manifests to include.
        #[arg(long, default_value = "docs/examples")]
        examples: PathBuf,
    },
    /// Run the operator: leader election, then reconcile ApiGateways and ApiPolicies.
    Run(RunArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Identity {
    #[value(name = "IstioCA")]
    IstioCa,
    #[value(name = "SidecarFiles")]
    SidecarFiles,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The meshgate-proxy image the gateway Deployments run.
    #[arg(long, env = "MESHGATE_PROXY_IMAGE")]
    proxy_image: String,
    /// Namespaces to watch, comma-separated; empty: all namespaces.
    #[arg(
        long,
        env = "MESHGATE_WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    namespaces: Vec<String>,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "meshgate-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "meshgate-operator")]
    lease_name: String,
    /// Identity source for gateways in mesh mode Istio that do not choose one.
    #[arg(
        long,
        env = "MESHGATE_DEFAULT_IDENTITY",
        value_enum,
        default_value = "IstioCA"
    )]
    default_identity: Identity,
    /// Istio revision label (`istio.io/rev`) for SidecarFiles pods.
    #[arg(long, env = "MESHGATE_ISTIO_REVISION")]
    istio_revision: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "MESHGATE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `meshgate_operator=debug`.
    #[arg(long, env = "MESHGATE_LOG", default_value = "info")]
    log_level: String,
    /// OTLP endpoint for reconcile traces, e.g. `http://otel-collector:4317`
    /// (gRPC) or `http://otel-collector:4318/v1/traces` (HTTP); none: no traces.
    #[arg(long, env = "MESHGATE_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// OTLP transport.
    #[arg(
        long,
        env = "MESHGATE_OTLP_PROTOCOL",
        value_enum,
        default_value = "grpc"
    )]
    otlp_protocol: Protocol,
    /// Share of reconciles traced (0.0 to 1.0).
    #[arg(long, env = "MESHGATE_TRACE_SAMPLING", default_value_t = 1.0)]
    trace_sampling: f64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Protocol {
    #[value(name = "grpc")]
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds { out_dir } => print_crds(out_dir).map_err(meshgate_operator::Error::from),
        Command::ApiDocs { examples } => {
            print_api_docs(&examples).map_err(meshgate_operator::Error::from)
        }
        Command::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgate-operator: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<(), meshgate_operator::Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| meshgate_operator::Error::Config(format!("tokio runtime: {e}")))?;
    let export = args
        .otlp_endpoint
        .filter(|e| !e.is_empty())
        .map(|endpoint| telemetry::TraceExport {
            endpoint,
            protocol: match args.otlp_protocol {
                Protocol::Grpc => telemetry::OtlpProtocol::Grpc,
                Protocol::HttpProtobuf => telemetry::OtlpProtocol::HttpProtobuf,
            },
            sampling_ratio: args.trace_sampling,
        });
    let _traces = {
        let _rt = runtime.enter();
        telemetry::init(&args.log_level, std::io::stdout, export.as_ref())?
    };
    runtime.block_on(async move {
        let client = kube::Client::try_default().await?;
        let opts = Options {
            build: BuildOptions {
                proxy_image: args.proxy_image,
                default_identity: match args.default_identity {
                    Identity::IstioCa => IdentitySource::IstioCA,
                    Identity::SidecarFiles => IdentitySource::SidecarFiles,
                },
                istio_revision: args.istio_revision.filter(|r| !r.is_empty()),
            },
            namespaces: args
                .namespaces
                .into_iter()
                .filter(|n| !n.is_empty())
                .collect(),
            lease: LeaseConfig::new(
                &args.lease_namespace,
                &args.lease_name,
                &meshgate_operator::default_identity(),
            ),
            metrics_addr: Some(args.metrics_addr),
        };
        meshgate_operator::run(client, opts, shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutdown signal received");
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutdown signal received");
}

fn print_crds(out_dir: Option<PathBuf>) -> Result<(), meshgate_crds::Error> {
    match out_dir {
        None => {
            let yaml = meshgate_crds::crds_yaml()?;
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::stdout().lock().write_all(yaml.as_bytes());
        }
        Some(dir) => {
            for (name, yaml) in meshgate_crds::crd_files()? {
                let path = dir.join(name);
                std::fs::write(&path, yaml).map_err(|source| meshgate_crds::Error::Io {
                    path: path.display().to_string(),
                    source,
                })?;
            }
        }
    }
    Ok(())
}

fn print_api_docs(examples: &std::path::Path) -> Result<(), meshgate_crds::Error> {
    let examples = meshgate_crds::examples::read_dir(examples)?;
    let doc = meshgate_crds::apidoc::markdown(&examples)?;
    let _ = std::io::stdout().lock().write_all(doc.as_bytes());
    Ok(())
}
