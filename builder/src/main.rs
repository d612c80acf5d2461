//! The `keel` command: parses the command line and runs it (the work is in
//! the library, `keel::run`); prints the error chain and exits non-zero on
//! failure.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    keel_bootstrap::aws::install_crypto_provider();
    let cli = keel::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(keel::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The one error-chain printer: each cause once, an AWS error as
            // the service's code and message (not anyhow's `{:#}`, which
            // repeats a cause a message already names).
            eprintln!("error: {}", keel_bootstrap::error_chain::chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
