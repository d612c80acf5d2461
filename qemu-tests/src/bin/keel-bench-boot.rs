//! keel-bench-boot: boot time of Keel's etcd image against a stock Debian
//! trixie image with the same kernel and a generic initrd (see
//! `keel_qemu_tests::stock`), booted the same way (`vm::Config::new`: QEMU,
//! OVMF, KVM if it works else TCG, -smp 1, 1 GiB, virtio disk, NIC and RNG,
//! throw-away overlay). The two are booted alternately, so both see the
//! same machine load; each run is timed from QEMU's start to its milestone
//! line on the console: keel-bootstrap's first line, and the stock image's
//! oneshot unit ordered like keel-bootstrap.service. Prints a Markdown
//! table with the kernel timestamps of the boot's stages and the load
//! average, then the medians. Console logs stay in
//! ~/.cache/keel/bench/boot-runs/.
//!
//! Usage: keel-bench-boot [--runs N] [--keel-image IMAGE] [--rebuild-stock]
//!
//! Needs root (mmdebstrap, chroot), QEMU, OVMF, mtools, dosfstools, and a
//! Keel tools tree in ~/.cache/keel/tools (made by `keel build`). Without
//! --keel-image it builds the etcd image as the tests do.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use keel_contract::Role;
use keel_qemu_tests::vm::{self, Config, Vm};
use keel_qemu_tests::{images, stock};

const DEADLINE: Duration = Duration::from_secs(900);
/// keel-bootstrap.service started: every line it prints starts so.
const KEEL_MILESTONE: &str = "keel-bootstrap:";

struct Subject {
    name: &'static str,
    image: PathBuf,
    milestone: &'static str,
}

/// One boot's figures.
struct Run {
    wall: Duration,
    /// QEMU start to the kernel's first line: firmware, loading the UKI.
    firmware: Duration,
    /// Kernel timestamps (s): userspace starts (/init), the real root's
    /// systemd starts (after the initrd), the network is online, the
    /// milestone line.
    init: Option<f64>,
    real_root: Option<f64>,
    /// systemd-networkd-wait-online finished (its audit record; the
    /// kernel may drop audit lines when many come at once).
    online: Option<f64>,
    milestone: Option<f64>,
    load: String,
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut runs, mut keel_image, mut rebuild) = (3usize, None, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().context("--runs needs a number")?.parse().context("--runs: not a number")?,
            "--keel-image" => keel_image = Some(PathBuf::from(args.next().context("--keel-image needs a path")?)),
            "--rebuild-stock" => rebuild = true,
            "-h" | "--help" => {
                println!("usage: keel-bench-boot [--runs N] [--keel-image IMAGE] [--rebuild-stock]");
                return Ok(());
            }
            _ => bail!("unexpected argument {a:?} (usage: keel-bench-boot [--runs N] [--keel-image IMAGE] [--rebuild-stock])"),
        }
    }
    let (keel_path, manifest) = match keel_image {
        Some(p) => {
            let m = p.with_extension("manifest.json");
            (p, m)
        }
        None => {
            let img = images::image(Role::Etcd)?;
            (img.path, img.manifest)
        }
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).with_context(|| {
            format!("reading {} (the Keel image's manifest)", manifest.display())
        })?)
        .with_context(|| format!("{}: not JSON", manifest.display()))?;
    let kernel = stock::kernel_package(&manifest)?;
    let stock_path = stock::ensure(&kernel, rebuild)?;
    let subjects = [
        Subject { name: "keel etcd", image: keel_path, milestone: KEEL_MILESTONE },
        Subject { name: "stock trixie", image: stock_path, milestone: stock::MILESTONE },
    ];
    // Each run's console log stays here (replaced by the next invocation)
    // for reading where the time went.
    let state = stock::cache_dir().join("bench/boot-runs");
    let _ = std::fs::remove_dir_all(&state);
    println!("accelerator: {:?}; kernel: {} {}", vm::accel(), kernel.0, kernel.1);
    for s in &subjects {
        println!("{}: {}", s.name, s.image.display());
    }
    println!();
    println!("| run | image | QEMU start → milestone (s) | QEMU start → kernel (s) | kernel: /init (s) | kernel: real root's systemd (s) | kernel: network online (s) | kernel: milestone (s) | load avg before |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); subjects.len()];
    for i in 1..=runs {
        for (k, s) in subjects.iter().enumerate() {
            let r = boot(s, &state.join(format!("{}-{i}", s.name.replace(' ', "-"))))?;
            let f = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.1}"));
            println!(
                "| {i} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
                s.name,
                r.wall.as_secs_f64(),
                r.firmware.as_secs_f64(),
                f(r.init),
                f(r.real_root),
                f(r.online),
                f(r.milestone),
                r.load
            );
            results[k].push(r.wall.as_secs_f64());
        }
    }
    println!();
    println!("console logs: {}/<image>-<run>/console.log", state.display());
    let medians: Vec<f64> = results.iter().map(|r| median(r)).collect();
    for (s, m) in subjects.iter().zip(&medians) {
        println!("median {}: {m:.1} s", s.name);
    }
    println!("ratio keel / stock: {:.2} (goal: at most 0.33)", medians[0] / medians[1]);
    Ok(())
}

fn boot(s: &Subject, state: &Path) -> Result<Run> {
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let mut vm = Vm::start(&Config::new(&s.image, state))?;
    vm.wait_for("] Linux version ", DEADLINE)
        .with_context(|| format!("booting {}: no kernel", s.name))?;
    let firmware = vm.uptime();
    vm.wait_for(s.milestone, DEADLINE)
        .with_context(|| format!("booting {} ({})", s.name, s.image.display()))?;
    let wall = vm.uptime();
    let console = vm.console();
    drop(vm);
    Ok(Run {
        wall,
        firmware,
        init: stamp(&console, "Run /init as init process", false),
        // The initrd's systemd (Keel's dracut initrd) prints the same banner
        // first: the last one is the real root's.
        real_root: stamp(&console, " running in system mode", true),
        online: stamp(&console, "unit=systemd-networkd-wait-online ", false),
        milestone: stamp(&console, s.milestone, false),
        load,
    })
}

/// The kernel timestamp (`[   12.345678]`) of the first (or last)
/// console line containing `pattern`.
fn stamp(console: &str, pattern: &str, last: bool) -> Option<f64> {
    let mut lines = console.lines().filter(|l| l.contains(pattern));
    let line = if last { lines.next_back()? } else { lines.next()? };
    // Terminal escapes may come first ("[?7h"); the stamp is the first
    // bracketed decimal number.
    line.match_indices('[').find_map(|(i, _)| {
        let inner = line[i + 1..].split(']').next()?.trim();
        inner.contains('.').then(|| inner.parse::<f64>().ok()).flatten()
    })
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_read_past_escapes_and_unit_names() {
        let console =
            "\x1b[!p]104[?7h[   17.207582] systemd[1]: systemd 257 running in system mode\n\
                       [    4.817783] systemd[1]: systemd 257 running in system mode\n\
                       [   61.395582] keel-bootstrap[447]: keel-bootstrap: image role: ok\n";
        assert_eq!(stamp(console, " running in system mode", false), Some(17.207582));
        assert_eq!(stamp(console, " running in system mode", true), Some(4.817783));
        assert_eq!(stamp(console, KEEL_MILESTONE, false), Some(61.395582));
        assert_eq!(stamp(console, "absent", false), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
