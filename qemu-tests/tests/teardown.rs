//! A test that panics or is interrupted must not leave QEMU, dnsmasq or
//! its network namespace behind. Each case runs a child process (this
//! binary again, in child mode) that sets up a network with dnsmasq and an
//! idle QEMU, then panics, gets SIGINT, or is killed outright (SIGKILL: no
//! code runs; the next network created sweeps what it left); the parent
//! checks that every process and the namespace are gone. Needs root and
//! qemu-system-x86.
//!
//! A plain `main` (harness = false): the cases need a process of their own.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keel_qemu_tests::net::{Host, Network};
use keel_qemu_tests::rundir;
use keel_testkit::process::Guard;
use rustix::process::Signal;

const CHILD_ENV: &str = "KEEL_TEARDOWN_CHILD";

fn main() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        child(&mode);
        return;
    }
    let cases: [(&str, fn()); 3] = [
        ("a_panicking_test_leaves_no_qemu_dnsmasq_or_namespace", || parent("panic", Some(101))),
        ("an_interrupted_test_leaves_no_qemu_dnsmasq_or_namespace", || {
            parent("sigint", Some(128 + Signal::INT.as_raw()))
        }),
        ("what_a_killed_test_left_is_swept_by_the_next_network", || parent("sigkill", None)),
    ];
    let total = cases.len();
    let mut failed = 0;
    for (name, case) in cases {
        match std::panic::catch_unwind(case) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!(
        "\ntest result: {}. {} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" },
        total - failed
    );
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

/// Sets up what a cluster run holds, reports the pids and namespace, then
/// panics or waits to be interrupted.
fn child(mode: &str) {
    let dir = rundir::create(&format!("teardown-{mode}")).unwrap();
    let mut net = Network::create(&dir).unwrap();
    let host = Host { mac: net.guest_mac(0), ip: net.guest_ip(0), hostname: "vm0".into() };
    net.serve_dhcp(&[host]).unwrap();
    let tap = net.add_tap().unwrap();
    let mut qemu = net.command("qemu-system-x86_64");
    qemu.args(["-machine", "none", "-nodefaults", "-display", "none", "-S", "-netdev"])
        .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut qemu = Guard::spawn("qemu-system-x86_64", qemu).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    qemu.check_running().unwrap();
    let pids = Command::new("ip").args(["netns", "pids", net.netns()]).output().unwrap();
    println!("netns {}", net.netns());
    println!(
        "pids {}",
        String::from_utf8_lossy(&pids.stdout).split_whitespace().collect::<Vec<_>>().join(" ")
    );
    println!("ready");
    match mode {
        "panic" => panic!("deliberate panic with QEMU and dnsmasq running"),
        _ => loop {
            std::thread::sleep(Duration::from_secs(1));
        },
    }
}

/// The child process, interrupted (so that it cleans up) and then killed
/// if this test fails half-way.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        signal_child(&self.0, Signal::INT);
        if wait_timeout(&mut self.0, Duration::from_secs(10)).is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `want_code`: the child's exit code, or None when the child is killed
/// with SIGKILL and the next `Network::create` must sweep its leftovers.
fn parent(mode: &str, want_code: Option<i32>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(CHILD_ENV, mode).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Child(cmd.spawn().expect("starting the child test process"));
    let child = &mut child.0;
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let err_reader =
        std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());

    let (mut netns, mut pids) = (String::new(), Vec::<i32>::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!("child ({mode}, pid {}) did not get ready within 60 s", child.id())
        });
        if let Some(n) = line.strip_prefix("netns ") {
            netns = n.to_string();
        } else if let Some(p) = line.strip_prefix("pids ") {
            pids = p.split_whitespace().map(|p| p.parse().unwrap()).collect();
        } else if line == "ready" {
            break;
        }
    }
    assert_eq!(pids.len(), 2, "dnsmasq and QEMU in {netns}: {pids:?}");
    for &pid in &pids {
        assert!(alive(pid), "pid {pid} running before the {mode}");
    }
    let signal = match mode {
        "sigint" => Some(Signal::INT),
        "sigkill" => Some(Signal::KILL),
        _ => None,
    };
    if let Some(signal) = signal {
        signal_child(child, signal);
    }
    let status = wait_timeout(child, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("child ({mode}) did not exit within 60 s"));
    let err = err_reader.join().unwrap();
    assert_eq!(status.code(), want_code, "child ({mode}) exit status; stderr:\n{err}");
    if want_code.is_none() {
        for &pid in &pids {
            assert!(alive(pid), "pid {pid} should outlive a SIGKILLed test run until the sweep");
        }
        let dir = tempfile::tempdir().unwrap();
        drop(Network::create(dir.path()).expect("creating the next network"));
    }
    if mode == "sigint" {
        assert!(err.contains("keel teardown: signal 2"), "stderr:\n{err}");
    }
    let gone = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(100));
    }
    for &pid in &pids {
        assert!(!alive(pid), "pid {pid} still running after the child's {mode}");
    }
    assert!(
        !Path::new(&format!("/run/netns/{netns}")).exists(),
        "namespace {netns} left behind by the {mode}"
    );
}

fn wait_timeout(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Running (a zombie waiting for its reaper counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Sends `signal` to the child process we started.
fn signal_child(child: &std::process::Child, signal: Signal) {
    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(child), signal);
}
