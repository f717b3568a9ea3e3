//! `meshgate-operator`: the meshgate control plane.
//!
//! Today it prints the CRDs (`meshgate-operator crds`); the reconciler lands
//! with the operator issue.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crds { out_dir } => print_crds(out_dir),
        Command::ApiDocs { examples } => print_api_docs(&examples),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshgate-operator: {e}");
            ExitCode::FAILURE
        }
    }
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
