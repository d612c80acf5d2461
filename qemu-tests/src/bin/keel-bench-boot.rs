//! keel-bench-boot: boot time of Keel's etcd image against a stock Debian
//! trixie image with the same kernel and a generic initrd (see
//! `keel_qemu_tests::stock`), booted the same way (`vm::Config::new`: QEMU,
//! OVMF, KVM if it works else TCG, -smp 1, 1 GiB, virtio disk, NIC and RNG,
//! throw-away overlay). The two are booted alternately, so both see the
//! same machine load; each run is timed from QEMU's start to its milestone
//! line on the console: keel-bootstrap's first line, and the stock image's
//! oneshot unit ordered like keel-bootstrap.service.
//!
//! Prints a Markdown table per run with the boot's stages (firmware,
//! kernel, initrd, real root, network, bootstrap) from the console's
//! kernel timestamps and, for Keel, the unit timings its
//! `keel-boot-report.service` prints when asked (`boot_report`); then the
//! medians of every stage. The run's directory (default
//! ~/.cache/keel/bench/boot-runs, replaced by the next run) keeps each
//! boot's console log, each Keel boot's critical chain to keel-bootstrap
//! (`critical-chain.txt`, systemd-analyze style), the CPU each unit used
//! (`cpu-by-unit.txt`) and the tables
//! (`summary.md`).
//!
//! Usage: keel-bench-boot [--runs N] [--keel-image IMAGE] [--before IMAGE]
//!        [--rebuild-stock] [--out DIR]
//!
//! `--before IMAGE` boots a second Keel etcd image (an earlier build) in
//! every round too, so that before and after are measured side by side
//! under the same load.
//!
//! Needs root (mmdebstrap, chroot), QEMU, OVMF, mtools, dosfstools, and a
//! Keel tools tree in ~/.cache/keel/tools (made by `keel build`). Without
//! --keel-image it builds the etcd image as the tests do.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use keel_contract::Role;
use keel_qemu_tests::boot_report::{self, stamp};
use keel_qemu_tests::vm::{self, Config, Vm};
use keel_qemu_tests::{images, stock};

const DEADLINE: Duration = Duration::from_secs(900);
/// How long to wait for Keel's boot report after the milestone.
const REPORT_DEADLINE: Duration = Duration::from_secs(120);
/// keel-bootstrap.service started: every line it prints starts so.
const KEEL_MILESTONE: &str = "keel-bootstrap:";
const USAGE: &str = "usage: keel-bench-boot [--runs N] [--keel-image IMAGE] [--before IMAGE] \
                     [--rebuild-stock] [--out DIR]";

struct Subject {
    name: String,
    image: PathBuf,
    milestone: &'static str,
    /// Boot with the credential that makes Keel's image print its report.
    report: bool,
}

/// The stages of one boot, seconds (`None`: not seen on the console).
#[derive(Default, Clone)]
struct Stages {
    /// QEMU start to the kernel's first line: firmware, loading the UKI.
    firmware: Option<f64>,
    /// Kernel start to /init (the initrd's userspace).
    kernel: Option<f64>,
    /// /init to the real root's systemd.
    initrd: Option<f64>,
    /// The real root's systemd to systemd-networkd started.
    real_root: Option<f64>,
    /// systemd-networkd started to network-online (wait-online done).
    network: Option<f64>,
    /// network-online to keel-bootstrap's first line.
    bootstrap: Option<f64>,
    /// Of that, systemd starting keel-bootstrap to its first line: exec,
    /// page-in from /usr, runtime start.
    startup: Option<f64>,
    /// Where no network split is seen: real root's systemd to milestone.
    root_to_milestone: Option<f64>,
    /// QEMU start to the milestone line (wall clock).
    total: f64,
    /// CPU time QEMU used to the milestone line: the emulated CPU's work,
    /// which the host's load changes far less than the wall time.
    cpu: Option<f64>,
}

impl Stages {
    const HEADER: &str = "| firmware | kernel | initrd | real root | network | bootstrap | of which start-up | real root → milestone | **total** | QEMU CPU time |";
    fn cells(&self) -> String {
        let f = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.1}"));
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | **{:.1}** | {} |",
            f(self.firmware),
            f(self.kernel),
            f(self.initrd),
            f(self.real_root),
            f(self.network),
            f(self.bootstrap),
            f(self.startup),
            f(self.root_to_milestone),
            self.total,
            f(self.cpu)
        )
    }
    fn fields(&self) -> [Option<f64>; 10] {
        [
            self.firmware,
            self.kernel,
            self.initrd,
            self.real_root,
            self.network,
            self.bootstrap,
            self.startup,
            self.root_to_milestone,
            Some(self.total),
            self.cpu,
        ]
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut runs, mut keel_image, mut before, mut rebuild, mut out) =
        (3usize, None, None, false, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => {
                runs = args
                    .next()
                    .context("--runs needs a number")?
                    .parse()
                    .context("--runs: not a number")?
            }
            "--keel-image" => {
                keel_image = Some(PathBuf::from(args.next().context("--keel-image needs a path")?))
            }
            "--before" => {
                before = Some(PathBuf::from(args.next().context("--before needs a path")?))
            }
            "--out" => out = Some(PathBuf::from(args.next().context("--out needs a directory")?)),
            "--rebuild-stock" => rebuild = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => bail!("unexpected argument {a:?} ({USAGE})"),
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
    let mut subjects = vec![Subject {
        name: "keel etcd".into(),
        image: keel_path,
        milestone: KEEL_MILESTONE,
        report: true,
    }];
    if let Some(image) = before {
        // An earlier image may not have the report unit: its stages come
        // from the console alone.
        subjects.push(Subject {
            name: "keel etcd (before)".into(),
            image,
            milestone: KEEL_MILESTONE,
            report: false,
        });
    }
    subjects.push(Subject {
        name: "stock trixie".into(),
        image: stock_path,
        milestone: stock::MILESTONE,
        report: false,
    });
    // Each run's console logs and chains stay here (replaced by the next
    // invocation) for reading where the time went.
    let state = out.unwrap_or_else(|| stock::cache_dir().join("bench/boot-runs"));
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
    let mut summary = String::new();
    let mut say = |line: String| {
        println!("{line}");
        summary.push_str(&line);
        summary.push('\n');
    };
    say(format!("accelerator: {:?}; kernel: {} {}", vm::accel(), kernel.0, kernel.1));
    for s in &subjects {
        say(format!("{}: {}", s.name, s.image.display()));
    }
    say(String::new());
    say("Seconds. firmware: QEMU start → kernel's first line (wall); the rest from the console's kernel timestamps: kernel → /init, /init → real root's systemd, → systemd-networkd started, → network-online, → milestone line (of which: systemd starting keel-bootstrap → its first line). total: QEMU start → milestone (wall). QEMU CPU time: what QEMU used to the milestone (user + system, all threads).".into());
    say(String::new());
    say(format!("| run | image {} load avg before |", Stages::HEADER));
    say("|---|---|---|---|---|---|---|---|---|---|---|---|---|".into());
    let mut results: Vec<Vec<Stages>> = vec![Vec::new(); subjects.len()];
    for i in 1..=runs {
        for (k, s) in subjects.iter().enumerate() {
            let dir =
                state.join(format!("{}-{i}", s.name.replace(['(', ')'], "").replace(' ', "-")));
            let (stages, load) = boot(s, &dir)?;
            say(format!("| {i} | {} {} {load} |", s.name, stages.cells()));
            results[k].push(stages);
        }
    }
    say(String::new());
    say(format!("Medians over {runs} runs each:"));
    say(String::new());
    say(format!("| image {}", Stages::HEADER));
    say("|---|---|---|---|---|---|---|---|---|---|---|".into());
    let (mut totals, mut cpus) = (Vec::new(), Vec::new());
    for (s, r) in subjects.iter().zip(&results) {
        let mut row = format!("| {} |", s.name);
        for field in 0..10 {
            let values: Vec<f64> = r.iter().filter_map(|st| st.fields()[field]).collect();
            let m = median(&values);
            let _ = if m.is_nan() { write!(row, " ? |") } else { write!(row, " {m:.1} |") };
        }
        totals.push(median(&r.iter().map(|st| st.total).collect::<Vec<_>>()));
        cpus.push(median(&r.iter().filter_map(|st| st.cpu).collect::<Vec<_>>()));
        say(row);
    }
    say(String::new());
    for (s, m) in subjects.iter().zip(&totals) {
        say(format!("median {}: {m:.1} s", s.name));
    }
    let (stock, stock_cpu) = (totals[totals.len() - 1], cpus[cpus.len() - 1]);
    for ((s, m), c) in subjects.iter().zip(&totals).zip(&cpus).take(subjects.len() - 1) {
        say(format!(
            "ratio {} / stock: {:.2} wall, {:.2} QEMU CPU time (goal: at most 0.33)",
            s.name,
            m / stock,
            c / stock_cpu
        ));
    }
    say(format!(
        "console logs, critical chains and CPU by unit: {}/<image>-<run>/",
        state.display()
    ));
    let path = state.join("summary.md");
    std::fs::write(&path, summary).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Boots `s` once (console log and, for Keel, the critical chain in
/// `dir`); returns its stages and the load average before it started.
fn boot(s: &Subject, dir: &Path) -> Result<(Stages, String)> {
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let mut cfg = Config::new(&s.image, dir);
    if s.report {
        cfg.network.extend(boot_report::qemu_args());
    }
    let mut vm = Vm::start(&cfg)?;
    vm.wait_for("] Linux version ", DEADLINE)
        .with_context(|| format!("booting {}: no kernel", s.name))?;
    let firmware = vm.uptime().as_secs_f64();
    vm.wait_for(s.milestone, DEADLINE)
        .with_context(|| format!("booting {} ({})", s.name, s.image.display()))?;
    let total = vm.uptime().as_secs_f64();
    let cpu = vm.cpu_time().map(|d| d.as_secs_f64());
    if s.report {
        if let Err(e) = vm.wait_for(boot_report::END, REPORT_DEADLINE) {
            eprintln!("{}: no boot report on the console: {e:#}", s.name);
        }
    }
    let console = vm.console();
    drop(vm);

    let init = stamp(&console, "Run /init as init process", false);
    // An initrd's systemd (the dracut initrd of Keel images before
    // keel-init) prints the same banner first: the last one is the real
    // root's.
    let real_root = stamp(&console, " running in system mode", true);
    let milestone = stamp(&console, s.milestone, false);
    let units = boot_report::units(&console);
    // From the report where there is one; else systemd's audit records on
    // the console (the kernel may drop some when many come at once).
    let networkd = boot_report::times(&units, "systemd-networkd.service")
        .1
        .or_else(|| stamp(&console, "unit=systemd-networkd ", false));
    let online = boot_report::times(&units, "network-online.target")
        .1
        .or_else(|| stamp(&console, "unit=systemd-networkd-wait-online ", false));
    if let (false, Some(first_line)) = (units.is_empty(), milestone) {
        let chain = boot_report::critical_chain(&units, "keel-bootstrap.service", first_line);
        let text = format!(
            "# The critical chain to keel-bootstrap.service, as systemd-analyze critical-chain\n\
             # draws it (@: started, seconds since the kernel started; +: took to become\n\
             # active), from the unit timings keel-boot-report.service printed on the\n\
             # console; keel-bootstrap.service at its first console line.\n\n{chain}"
        );
        let path = dir.join("critical-chain.txt");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        let text = format!(
            "# CPU seconds each unit's cgroup used by the time of the report (after\n\
             # keel-bootstrap's run), most first: with one vCPU under TCG the boot is\n\
             # CPU-bound, so what one unit uses every other waits for. init.scope is\n\
             # systemd itself (and its generators).\n\n{}",
            boot_report::cpu_by_unit(&units, 25)
        );
        let path = dir.join("cpu-by-unit.txt");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let diff = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    Ok((
        Stages {
            firmware: Some(firmware),
            kernel: init,
            initrd: diff(init, real_root),
            real_root: diff(real_root, networkd),
            network: diff(networkd, online),
            bootstrap: diff(online, milestone),
            startup: diff(boot_report::bootstrap_first_start(&console), milestone),
            root_to_milestone: diff(real_root, milestone),
            total,
            cpu,
        },
        load,
    ))
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
    fn medians_of_odd_even_and_empty_samples() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
