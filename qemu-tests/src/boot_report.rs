//! Reading where a boot's time went from its console: the kernel's
//! console timestamps of the boot's milestones, and the unit timings that
//! Keel's `keel-boot-report.service` prints when the VM is given the
//! credential [`CREDENTIAL`]: each unit's activation timestamps and
//! `After=` dependencies, from which [`critical_chain`] rebuilds the chain
//! `systemd-analyze critical-chain` shows (the same unit properties it
//! reads, taken on the console because the benchmark's VM has no shell).

use std::collections::BTreeMap;

/// The credential that turns the report on (its value is ignored).
pub const CREDENTIAL: &str = "keel.boot-report";
/// The QEMU arguments that pass [`CREDENTIAL`] to the guest's systemd
/// (SMBIOS type 11 OEM string).
pub fn qemu_args() -> Vec<String> {
    vec!["-smbios".into(), format!("type=11,value=io.systemd.credential:{CREDENTIAL}=1")]
}
/// The report's console lines carry this syslog identifier.
const IDENT: &str = "keel-boot-report[";
/// The report's last line.
pub const END: &str = "end of report";
/// The report's line with keel-bootstrap's first start (a failed run that
/// is restarted shows only its last start in the unit's properties).
const FIRST_START: &str = "keel-bootstrap.service first start: ";

/// The text of the report's console lines.
fn report_lines(console: &str) -> impl Iterator<Item = &str> {
    console
        .lines()
        .filter_map(|l| l.split_once(IDENT).and_then(|(_, rest)| rest.split_once("]: ")))
        .map(|(_, text)| text.trim_end_matches('\r'))
}

/// The kernel timestamp (`[   12.345678]`, seconds) of the first (or
/// last) console line containing `pattern`.
pub fn stamp(console: &str, pattern: &str, last: bool) -> Option<f64> {
    let mut lines = console.lines().filter(|l| l.contains(pattern));
    let line = if last { lines.next_back()? } else { lines.next()? };
    line_stamp(line)
}

/// A console line's kernel timestamp. Terminal escapes may come first
/// ("[?7h"); the stamp is the first bracketed decimal number.
fn line_stamp(line: &str) -> Option<f64> {
    line.match_indices('[').find_map(|(i, _)| {
        let inner = line[i + 1..].split(']').next()?.trim();
        inner.contains('.').then(|| inner.parse::<f64>().ok()).flatten()
    })
}

/// One unit as the report shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Unit {
    /// Started activating / became active, seconds since the kernel
    /// started (CLOCK_MONOTONIC); `None` when it has not (yet).
    pub activating: Option<f64>,
    pub active: Option<f64>,
    pub after: Vec<String>,
    /// CPU time the unit's cgroup used by the time of the report, seconds
    /// (`None` when systemd does not account it: targets, devices).
    pub cpu: Option<f64>,
}

/// The units of the report on `console`, by name; empty when the console
/// carries no complete report.
pub fn units(console: &str) -> BTreeMap<String, Unit> {
    let body: Vec<&str> = report_lines(console).collect();
    if !body.contains(&END) {
        return BTreeMap::new();
    }
    let usec = |v: &str| v.parse::<u64>().ok().filter(|&u| u > 0).map(|u| u as f64 / 1e6);
    let mut out = BTreeMap::new();
    let (mut id, mut unit) = (None::<String>, Unit::default());
    // systemctl prints a unit's type-specific properties (CPUUsageNSec:
    // services, scopes, slices, mounts, sockets) before its Id, so the
    // CPU time read belongs to the next Id.
    let mut cpu = None;
    for line in body.iter().copied().chain(std::iter::once("")) {
        if line.is_empty() || line == END {
            if let Some(name) = id.take() {
                out.insert(name, std::mem::take(&mut unit));
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        match key {
            // A new block (the console may drop the empty line between).
            "Id" => {
                if let Some(name) = id.replace(value.to_string()) {
                    out.insert(name, std::mem::take(&mut unit));
                }
                unit.cpu = cpu.take();
            }
            "After" => unit.after = value.split_whitespace().map(str::to_string).collect(),
            "InactiveExitTimestampMonotonic" => unit.activating = usec(value),
            "ActiveEnterTimestampMonotonic" => unit.active = usec(value),
            "CPUUsageNSec" => cpu = value.parse::<u64>().ok().map(|n| n as f64 / 1e9),
            _ => {}
        }
    }
    out
}

/// The critical chain to `unit`, which started at `start` (seconds since
/// the kernel started; the milestone's console timestamp: a unit that
/// failed and is restarted shows only its last start), as
/// `systemd-analyze critical-chain` draws it: back from `unit` through, at
/// each step, the `After=` dependency that became active last before the
/// unit started. `@` is when a unit started activating, `+` how long it
/// took to become active; both count from the kernel's start, so they line
/// up with the console's timestamps (systemd-analyze counts `@` from
/// userspace).
pub fn critical_chain(units: &BTreeMap<String, Unit>, unit: &str, start: f64) -> String {
    let mut out = format!("{unit} @{start:.3}s\n");
    let mut before = start;
    let mut name = unit.to_string();
    for depth in 0..64 {
        let Some(u) = units.get(&name) else { break };
        let next = u
            .after
            .iter()
            .filter_map(|d| Some((d, units.get(d)?)))
            .filter_map(|(d, v)| Some((d, v, v.active?)))
            .filter(|(_, _, t)| *t <= before)
            .max_by(|a, b| a.2.total_cmp(&b.2));
        let Some((d, v, active)) = next else { break };
        let at = v.activating.unwrap_or(active);
        let took = if active > at { format!(" +{:.3}s", active - at) } else { String::new() };
        out.push_str(&format!("{}└─{d} @{at:.3}s{took}\n", "  ".repeat(depth)));
        before = at;
        name = d.clone();
    }
    out
}

/// The `top` units that used the most CPU by the time of the report, one
/// per line (`seconds  unit`, most first), then the sum over all units.
/// Under TCG with one vCPU a boot is CPU-bound: what a unit uses is time
/// every other unit waits.
pub fn cpu_by_unit(units: &BTreeMap<String, Unit>, top: usize) -> String {
    let mut used: Vec<(&String, f64)> =
        units.iter().filter_map(|(name, u)| Some((name, u.cpu?))).collect();
    used.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut out = String::new();
    for (name, secs) in used.iter().take(top) {
        out.push_str(&format!("{secs:7.3}  {name}\n"));
    }
    let sum: f64 = used.iter().map(|(_, s)| s).sum();
    out.push_str(&format!("{sum:7.3}  (all {} units)\n", used.len()));
    out
}

/// When systemd first started keel-bootstrap.service (seconds since the
/// kernel started), from the report's journal line.
pub fn bootstrap_first_start(console: &str) -> Option<f64> {
    report_lines(console)
        .find_map(|l| l.strip_prefix(FIRST_START))
        .and_then(|v| v.trim().parse().ok())
}

/// When `unit` started activating and became active, from the report.
pub fn times(units: &BTreeMap<String, Unit>, unit: &str) -> (Option<f64>, Option<f64>) {
    units.get(unit).map_or((None, None), |u| (u.activating, u.active))
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
        assert_eq!(stamp(console, "keel-bootstrap:", false), Some(61.395582));
        assert_eq!(stamp(console, "absent", false), None);
    }

    const REPORT: &str = "\
[   30.000001] keel-bootstrap[447]: keel-bootstrap: image role: ok
[   30.100000] keel-boot-report[450]: Id=keel-bootstrap.service
[   30.100000] keel-boot-report[450]: After=network-online.target keel-etc.service basic.target
[   30.100000] keel-boot-report[450]: InactiveExitTimestampMonotonic=29900000
[   30.100000] keel-boot-report[450]: ActiveEnterTimestampMonotonic=0
[   30.100000] keel-boot-report[450]: 
[   30.100000] keel-boot-report[450]: Id=network-online.target
[   30.100000] keel-boot-report[450]: After=systemd-networkd-wait-online.service
[   30.100000] keel-boot-report[450]: InactiveExitTimestampMonotonic=29800000
[   30.100000] keel-boot-report[450]: ActiveEnterTimestampMonotonic=29800000
[   30.100000] keel-boot-report[450]: 
[   30.100000] keel-boot-report[450]: CPUUsageNSec=183000000
[   30.100000] keel-boot-report[450]: Id=systemd-networkd-wait-online.service
[   30.100000] keel-boot-report[450]: After=systemd-networkd.service
[   30.100000] keel-boot-report[450]: InactiveExitTimestampMonotonic=20000000
[   30.100000] keel-boot-report[450]: ActiveEnterTimestampMonotonic=29700000
[   30.100000] keel-boot-report[450]: 
[   30.100000] keel-boot-report[450]: CPUUsageNSec=812000000
[   30.100000] keel-boot-report[450]: Id=systemd-networkd.service
[   30.100000] keel-boot-report[450]: After=basic.target
[   30.100000] keel-boot-report[450]: InactiveExitTimestampMonotonic=19000000
[   30.100000] keel-boot-report[450]: ActiveEnterTimestampMonotonic=19500000
[   30.100000] keel-boot-report[450]: CPUUsageNSec=[not set]
[   30.100000] keel-boot-report[450]: Id=keel-etc.service
[   30.100000] keel-boot-report[450]: After=
[   30.100000] keel-boot-report[450]: InactiveExitTimestampMonotonic=10000000
[   30.100000] keel-boot-report[450]: ActiveEnterTimestampMonotonic=10100000
[   30.100000] keel-boot-report[450]: keel-bootstrap.service first start: 29.850000
[   30.100000] keel-boot-report[450]: end of report
";

    #[test]
    fn the_report_gives_unit_times_and_the_critical_chain() {
        let u = units(REPORT);
        assert_eq!(u.len(), 5);
        assert_eq!(times(&u, "systemd-networkd.service"), (Some(19.0), Some(19.5)));
        assert_eq!(times(&u, "keel-bootstrap.service"), (Some(29.9), None));
        assert_eq!(bootstrap_first_start(REPORT), Some(29.85));
        assert_eq!(
            critical_chain(&u, "keel-bootstrap.service", 30.0),
            "keel-bootstrap.service @30.000s\n\
             └─network-online.target @29.800s\n\
             \x20 └─systemd-networkd-wait-online.service @20.000s +9.700s\n\
             \x20   └─systemd-networkd.service @19.000s +0.500s\n"
        );
        assert_eq!(
            cpu_by_unit(&u, 1),
            "  0.812  systemd-networkd.service\n  0.995  (all 2 units)\n"
        );
        // A report cut off before its end is no report.
        assert!(units(&REPORT.replace("end of report", "Id=x")).is_empty());
    }
}
