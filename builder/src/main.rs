//! keel: builds immutable Kubernetes node images for AWS, publishes them as
//! AMIs, and creates the cluster's encrypted TLS assets.
//!
//! `main` parses the command line and hands each subcommand to the module
//! that does the work; the pipeline itself reads top to bottom in those
//! modules (see DESIGN.md).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod profile;
mod publish;

/// Build, publish and provision immutable Kubernetes node images for AWS.
#[derive(Debug, Parser)]
#[command(name = "keel", version, max_term_width = 80)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish a built image as an AMI in one or more regions.
    Publish(publish::PublishArgs),
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Publish(args) => publish::run(args).await,
    }
}

fn main() -> ExitCode {
    keel_bootstrap::aws::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
