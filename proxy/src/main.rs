//! `meshgate-proxy`: the meshgate edge proxy.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use meshgate_proxy::cluster::ClusterSource;
use meshgate_proxy::demo::{self, DemoOptions};
use meshgate_proxy::identity_source::IdentityArgs;
use meshgate_proxy::runtime::{Options, Running, Source};
use meshgate_proxy::snapshot::GatewayRef;

/// jemalloc instead of glibc malloc: a reload at thousands of routes allocates and
/// frees millions of small objects, which glibc served slowly and kept as freed
/// memory (RSS doubled). Measured in docs/performance.md ("allocator, typed
/// parsing, CRD list-map").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: a background thread hands memory
/// freed by a reload back to the system within about a second
/// (`dirty_decay_ms`), instead of keeping it until later allocations trigger
/// the purge (10 s by default). A 5,000-route proxy settles at 35-38 MiB
/// after reloads instead of 48-55 MiB. The environment variable `_RJEM_MALLOC_CONF`
/// still overrides these.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: Option<&'static u8> =
    Some(&b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0]);

/// How long in-flight requests may take to finish after SIGTERM or Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    name = "meshgate-proxy",
    version,
    about = "meshgate edge proxy",
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Standalone mode: a directory of Kubernetes YAML (ApiGateway, Secrets, Services,
    /// EndpointSlices), watched (inotify; a 2 s poll as a safety net) and re-applied
    /// on change.
    #[arg(long, value_name = "DIR", required_unless_present = "gateway")]
    manifests: Option<PathBuf>,
    /// The ApiGateway to serve. Without --manifests this is cluster mode: the
    /// ApiGateway and the objects it needs are watched through the Kubernetes API
    /// (KUBECONFIG or the in-cluster service account).
    #[arg(long, value_name = "NS/NAME")]
    gateway: Option<GatewayRef>,
    /// Bind listener NAME to ADDR instead of `--bind-ip` and its manifest port
    /// (repeatable).
    #[arg(long, value_name = "NAME=ADDR", value_parser = parse_listen)]
    listen: Vec<(String, SocketAddr)>,
    /// Admin listener (/healthz, /ready, /config, /metrics).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Address the gateway listeners bind to, each on its manifest port.
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    bind_ip: IpAddr,
    /// Extra CA certificates (PEM) trusted for remote JWKS URIs, besides the
    /// system's (`SSL_CERT_FILE`/`SSL_CERT_DIR` are honoured too).
    #[arg(long, value_name = "FILE")]
    jwks_ca_file: Option<PathBuf>,
    /// Worker threads of the runtime (default: one per CPU).
    #[arg(long, value_name = "N")]
    worker_threads: Option<usize>,
    #[command(flatten)]
    mesh: IdentityArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a self-contained demo: an echo backend, a self-signed certificate and an
    /// embedded ApiGateway, all on 127.0.0.1.
    Demo(DemoArgs),
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// HTTP listener port (0: any free port).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// HTTPS listener port (0: any free port).
    #[arg(long, default_value_t = 8443)]
    https_port: u16,
    /// Admin listener.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Send the advertised requests, print the results and exit 0 if all passed.
    #[arg(long)]
    check: bool,
}

fn parse_listen(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=ADDR, got {s:?}"))?;
    let addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
    Ok((name.to_string(), addr))
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .init();
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn stop(running: Running) {
    tracing::info!("shutting down: no new connections, waiting for in-flight requests");
    if running.shutdown(SHUTDOWN_GRACE).await {
        tracing::info!("stopped");
    }
}

async fn run(cli: Cli) -> Result<ExitCode, meshgate_proxy::Error> {
    match cli.command {
        Some(Command::Demo(args)) => {
            let demo = demo::start(DemoOptions {
                http_port: args.http_port,
                https_port: args.https_port,
                admin: Some(args.admin),
            })
            .await?;
            println!("{}", demo.banner());
            if args.check {
                let ok = demo.check().await;
                demo.running.shutdown(SHUTDOWN_GRACE).await;
                return Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
            println!("Press Ctrl-C to stop.");
            shutdown_signal().await;
            stop(demo.running).await;
        }
        None => {
            let source = match (cli.manifests, &cli.gateway) {
                (Some(dir), _) => Source::Dir(dir),
                (None, Some(gateway)) => Source::Cluster(ClusterSource::connect(gateway).await?),
                (None, None) => {
                    return Err(meshgate_proxy::Error::Config(
                        "--manifests DIR or --gateway NAMESPACE/NAME is required".into(),
                    ))
                }
            };
            let cluster_mode = matches!(source, Source::Cluster(_));
            let mut options = Options::new(source);
            options.identity = cli.mesh.start(cluster_mode)?;
            options.gateway = cli.gateway;
            options.admin = Some(cli.admin);
            options.bind_ip = cli.bind_ip;
            options.listen = cli.listen.into_iter().collect();
            if let Some(file) = &cli.jwks_ca_file {
                options.jwks_roots = meshgate_proxy::tls::read_pem_certs(file)?;
            }
            // Cluster mode waits for its first configuration; a signal ends the wait.
            let running = tokio::select! {
                running = Running::start(options) => running?,
                _ = shutdown_signal() => return Ok(ExitCode::SUCCESS),
            };
            shutdown_signal().await;
            stop(running).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How many runtime workers: `--worker-threads`, else `TOKIO_WORKER_THREADS`
/// (tokio's own variable, `env`), else one per CPU this process may run on
/// (`cpus`: a `taskset` mask and a cgroup CPU limit count).
fn worker_threads(flag: Option<usize>, env: Option<&str>, cpus: usize) -> usize {
    flag.filter(|n| *n > 0)
        .or_else(|| {
            env.and_then(|v| v.trim().parse().ok())
                .filter(|n: &usize| *n > 0)
        })
        .unwrap_or(cpus.max(1))
}

/// One worker gets tokio's current-thread runtime: the thread that accepts also
/// runs every connection, with no work-stealing queues, no cross-thread wake-ups
/// and no second thread sharing the core. More workers get the multi-thread
/// runtime. Measured in docs/performance.md ("The floor, and the kernel's share").
fn runtime_builder(workers: usize) -> tokio::runtime::Builder {
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let check = matches!(&cli.command, Some(Command::Demo(d)) if d.check);
    // Keep `demo --check` output to the results unless RUST_LOG asks for more.
    init_logging(if check { "warn" } else { "info" });
    // The one crypto provider of the process (also done by `Running::start`).
    if rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was already installed");
    }
    let workers = worker_threads(
        cli.worker_threads,
        std::env::var("TOKIO_WORKER_THREADS").ok().as_deref(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let runtime = match runtime_builder(workers).enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("meshgate-proxy: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "meshgate-proxy failed");
            eprintln!("meshgate-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_then_tokios_variable_then_the_cpus_choose_the_workers() {
        assert_eq!(worker_threads(Some(3), Some("2"), 8), 3);
        assert_eq!(worker_threads(None, Some(" 2 "), 8), 2);
        assert_eq!(worker_threads(Some(0), Some("2"), 8), 2);
        assert_eq!(worker_threads(None, None, 8), 8);
        // Nonsense in the variable falls through to the CPUs (tokio would panic).
        assert_eq!(worker_threads(None, Some("many"), 4), 4);
        assert_eq!(worker_threads(None, Some("0"), 4), 4);
        assert_eq!(worker_threads(None, None, 0), 1);
    }

    #[test]
    fn one_worker_runs_on_the_current_thread() {
        let one = runtime_builder(1).build().expect("runtime");
        assert_eq!(
            one.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        let two = runtime_builder(2).build().expect("runtime");
        assert_eq!(
            two.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::MultiThread
        );
        assert_eq!(two.metrics().num_workers(), 2);
    }
}
