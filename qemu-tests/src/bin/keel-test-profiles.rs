//! keel-test-profiles: writes the TEST-ONLY profiles the QEMU harness
//! builds from (`local-test`, `k8s-test`, with `local` they extend) and the
//! machine's test CA certificate into a directory, for `keel build
//! --profiles-dir DIR --profile local-test`. scripts/demo uses it: the
//! harness's nodes reach AWS by its endpoint names through a TLS proxy
//! that only the test CA vouches for, so the images it boots must be test
//! images.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Write the QEMU harness's TEST-ONLY profiles and test CA into DIR.
#[derive(Debug, Parser)]
#[command(name = "keel-test-profiles", version, max_term_width = 80)]
struct Args {
    /// Where to write them (created if missing).
    dir: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match keel_qemu_tests::images::test_profiles(&args.dir) {
        Ok(dir) => {
            println!("{}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
