//! keel-qemu-boot: boots one Keel image under QEMU + OVMF (KVM when it
//! works, TCG otherwise) from a throw-away overlay, waits for
//! keel-bootstrap's first console line, prints keel-bootstrap's lines and
//! stops the VM. The disk image is not changed.
//!
//! Usage: keel-qemu-boot IMAGE [--state DIR] [--deadline SECONDS]
//!
//! The VM gets QEMU's restricted user-mode network (no packet leaves this
//! machine), which has no instance metadata
//! service: keel-bootstrap runs and then reports that it cannot reach
//! 169.254.169.254. Booting nodes that configure themselves against an
//! emulated AWS is the cluster harness's job (qemu-tests/src/cluster.rs).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use keel_qemu_tests::vm::{Config, Vm};

/// Every line keel-bootstrap prints starts so.
const MILESTONE: &str = "keel-bootstrap:";
/// How long to keep reading keel-bootstrap's lines after the first one.
const GRACE: Duration = Duration::from_secs(20);

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut image = None;
    let mut state = None;
    let mut deadline = Duration::from_secs(600);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--state" => state = Some(PathBuf::from(args.next().context("--state needs a directory")?)),
            "--deadline" => {
                let s = args.next().context("--deadline needs seconds")?;
                deadline = Duration::from_secs(s.parse().with_context(|| format!("--deadline {s:?}: not a number of seconds"))?);
            }
            "-h" | "--help" => {
                println!("usage: keel-qemu-boot IMAGE [--state DIR] [--deadline SECONDS]");
                return Ok(());
            }
            _ if image.is_none() && !a.starts_with('-') => image = Some(PathBuf::from(a)),
            _ => bail!("unexpected argument {a:?} (usage: keel-qemu-boot IMAGE [--state DIR] [--deadline SECONDS])"),
        }
    }
    let image = image.context("usage: keel-qemu-boot IMAGE [--state DIR] [--deadline SECONDS]")?;
    if !image.is_file() {
        bail!("{}: no such image", image.display());
    }
    let state = state.unwrap_or_else(|| image.with_extension("boot"));
    let mut vm = Vm::start(&Config::new(&image, &state))?;
    eprintln!("booting {} (console: {})", image.display(), vm.console_path().display());
    vm.wait_for(MILESTONE, deadline).with_context(|| {
        format!("waiting for {MILESTONE:?} on the console ({})", vm.console_path().display())
    })?;
    eprintln!("keel-bootstrap.service started after {:.0?}", vm.uptime());
    // Read on for a while to show what the bootstrap did; stop early when
    // it has said its last word.
    let _ = vm.wait_for_any(&["keel-bootstrap: failed:", "keel-bootstrap: configured"], GRACE);
    for line in vm.console().lines().filter(|l| l.contains(MILESTONE)) {
        println!("{}", line.trim());
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
