//! The build's tools: host programs (mmdebstrap) and a Debian trixie tools
//! tree made by mmdebstrap and cached by the hash of its inputs. The host
//! is Debian 12, whose systemd (252) has no ukify; the tools tree brings
//! systemd 257's ukify, UEFI stub and sysusers, erofs-utils 1.8,
//! veritysetup and e2fsprogs. Tools run chrooted into the tree, in a
//! private mount namespace where the build's work directory is
//! bind-mounted at /work.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::BuildError;

/// Bump when the recipe below changes in a way the package list does not show.
const RECIPE: &str = "keel-tools-1";
const SUITE: &str = "trixie";
const PACKAGES: &[&str] = &[
    "cryptsetup-bin",
    "e2fsprogs",
    "erofs-utils",
    "python3-pefile",
    "systemd-boot-efi",
    "systemd-standalone-sysusers",
    "systemd-ukify",
];

/// Where the work directory appears inside the tools tree.
pub const WORK: &str = "/work";

/// Fails with the Debian package to install unless `program` is on PATH.
pub fn require_host(program: &str, package: &str) -> Result<PathBuf, BuildError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file()).ok_or_else(|| {
        BuildError::MissingTool { program: program.to_string(), package: package.to_string() }
    })
}

pub struct Tools {
    root: PathBuf,
}

impl Tools {
    /// The cached tools tree, made by mmdebstrap when missing.
    pub fn ensure(cache_dir: &Path, mirror: Option<&str>) -> Result<Tools, BuildError> {
        let key = {
            let mut h = Sha256::new();
            h.update(RECIPE);
            h.update(SUITE);
            h.update(mirror.unwrap_or(""));
            for p in PACKAGES {
                h.update(p);
                h.update("\n");
            }
            hex::encode(&h.finalize()[..12])
        };
        let dir = cache_dir.join("tools");
        let root = dir.join(&key);
        if root.join("usr/bin/ukify").is_file() {
            return Ok(Tools { root });
        }
        let mut cmd = mmdebstrap()?;
        std::fs::create_dir_all(&dir).map_err(|e| BuildError::io(&dir, e))?;
        let tmp = dir.join(format!(".{key}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        cmd.args([
            "--variant=apt",
            "--format=directory",
            &format!("--include={}", PACKAGES.join(",")),
        ])
        .arg(SUITE)
        .arg(&tmp);
        if let Some(m) = mirror {
            cmd.arg(m);
        }
        let result = run_checked(cmd, "mmdebstrap (tools tree)", MMDEBSTRAP_LIMIT);
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let work = tmp.join(WORK.trim_start_matches('/'));
        std::fs::create_dir_all(&work).map_err(|e| BuildError::io(&work, e))?;
        std::fs::rename(&tmp, &root).map_err(|e| BuildError::io(&root, e))?;
        Ok(Tools { root })
    }

    /// Runs `program` (an absolute path inside the tools tree) with `args`,
    /// chrooted into the tree with `work` at /work, and returns its output.
    pub fn run(
        &self,
        work: &Path,
        program: &str,
        args: &[String],
        env: &[(&str, String)],
    ) -> Result<Output, BuildError> {
        let root = cstring(&self.root)?;
        let work_c = cstring(work)?;
        let target = cstring(&self.root.join(WORK.trim_start_matches('/')))?;
        let dev = cstring(&self.root.join("dev"))?;
        let proc_ = cstring(&self.root.join("proc"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin")
            .env("LC_ALL", "C.UTF-8")
            .current_dir("/");
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: the only `unsafe` in Keel's production code, audited:
        // between fork and exec the child runs only direct system calls
        // through rustix (no allocation: every path is a CString made
        // before the fork), and unshare(CLONE_NEWNS) is the flag that
        // `unshare_unsafe` documents as sound (only CLONE_FILES is not).
        unsafe {
            cmd.pre_exec(move || {
                use rustix::mount::{
                    mount_bind, mount_bind_recursive, mount_change, MountPropagationFlags,
                };
                use rustix::thread::{unshare_unsafe, UnshareFlags};
                unshare_unsafe(UnshareFlags::NEWNS)?;
                mount_change(c"/", MountPropagationFlags::REC | MountPropagationFlags::PRIVATE)?;
                mount_bind(work_c.as_c_str(), target.as_c_str())?;
                mount_bind_recursive(c"/dev", dev.as_c_str())?;
                mount_bind_recursive(c"/proc", proc_.as_c_str())?;
                rustix::process::chroot(root.as_c_str())?;
                rustix::process::chdir(c"/work")?;
                Ok(())
            });
        }
        run_checked(cmd, program, TOOL_LIMIT)
    }
}

fn cstring(p: &Path) -> Result<CString, BuildError> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| BuildError::NulInPath { path: p.display().to_string() })
}

/// How long mmdebstrap may take to make a tree (the base or the tools):
/// it downloads and installs a Debian system, a few minutes on a fresh
/// machine. Past this the mirror or the host is stuck.
pub const MMDEBSTRAP_LIMIT: Duration = Duration::from_secs(40 * 60);

/// How long a local tool may run (mkfs.erofs on /usr, veritysetup, ukify,
/// sbsign, xz, fsck.erofs: seconds each, a minute at most).
pub const TOOL_LIMIT: Duration = Duration::from_secs(15 * 60);

/// apt's options for mmdebstrap: every download bounded in time and
/// retried, so a mirror that stops answering fails the build with apt's
/// error rather than hanging it.
const APT_OPTS: &[&str] = &["Acquire::Retries \"3\"", "Acquire::http::Timeout \"60\""];

/// The host's mmdebstrap, quiet and with [`APT_OPTS`], for the base and
/// the tools tree (run it with [`run_checked`] and [`MMDEBSTRAP_LIMIT`]).
pub fn mmdebstrap() -> Result<Command, BuildError> {
    let mut cmd = Command::new(require_host("mmdebstrap", "mmdebstrap")?);
    cmd.arg("--quiet").args(APT_OPTS.iter().map(|o| format!("--aptopt={o}")));
    Ok(cmd)
}

/// Runs `cmd` (stdin empty, stdout and stderr captured), failing with its
/// stderr when it exits non-zero, and stopping it, with every process it
/// started, when it has not finished within `limit`.
pub fn run_checked(mut cmd: Command, what: &str, limit: Duration) -> Result<Output, BuildError> {
    let failed = |message: String| BuildError::Tool { what: what.to_string(), message };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    let waited = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() >= limit => {
                let started_by_it = kill_tree(child.id());
                let _ = child.wait();
                break Err(format!(
                    "did not finish within {}: killed it and {started_by_it} process(es) it had started",
                    minutes_or_seconds(limit)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => break Err(e.to_string()),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let tail = || {
        let stderr = String::from_utf8_lossy(&stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    match waited {
        Ok(status) if status.success() => Ok(Output { status, stdout, stderr }),
        Ok(status) => Err(failed(format!("{status}\n{}", tail()))),
        Err(why) => Err(failed(format!("{why}\n{}", tail()))),
    }
}

fn minutes_or_seconds(d: Duration) -> String {
    if d.as_secs() >= 60 && d.as_secs().is_multiple_of(60) {
        format!("{} min", d.as_secs() / 60)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Reads `pipe` to its end on a thread of its own (a tool that fills one
/// pipe while the other is not read would block).
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Stops `pid` and its descendants (found by their parent in /proc:
/// mmdebstrap runs apt and dpkg, which run maintainer scripts) with
/// SIGSTOP, in passes until a pass finds no new one (a stopped process
/// forks no more, and its children stay its children), then SIGKILLs them
/// all. Returns how many processes it killed below `pid`.
fn kill_tree(pid: u32) -> usize {
    use rustix::process::{kill_process, Pid, Signal};
    let signal = |p: u32, s: Signal| {
        if let Some(p) = Pid::from_raw(p as i32) {
            let _ = kill_process(p, s);
        }
    };
    let mut found = vec![pid];
    signal(pid, Signal::STOP);
    for _ in 0..10 {
        let fresh: Vec<u32> = descendants(pid).into_iter().filter(|p| !found.contains(p)).collect();
        if fresh.is_empty() {
            break;
        }
        for p in fresh {
            signal(p, Signal::STOP);
            found.push(p);
        }
    }
    for p in &found {
        signal(*p, Signal::KILL);
    }
    found.len() - 1
}

/// Every process below `root` in the process tree, from /proc/*/stat.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if let Some(ppid) = ppid.and_then(|p| p.parse::<u32>().ok()) {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_that_fails_reports_its_status_and_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo the reason >&2; exit 3"]);
        let e = run_checked(cmd, "sh (a test)", TOOL_LIMIT).unwrap_err().to_string();
        assert!(e.starts_with("sh (a test) failed: exit status: 3"), "{e}");
        assert!(e.contains("the reason"), "{e}");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2"]);
        let out = run_checked(cmd, "sh", TOOL_LIMIT).unwrap();
        assert_eq!((&out.stdout[..], &out.stderr[..]), (&b"out\n"[..], &b"err\n"[..]));
    }

    /// A tool past its limit is stopped with what it started (a shell's
    /// background child here, as mmdebstrap's apt), and the error says so.
    #[test]
    fn a_tool_past_its_limit_is_stopped_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("sleep 300 & echo $! > {}; echo waiting >&2; wait", pidfile.display()));
        let started = Instant::now();
        let e = run_checked(cmd, "sh (a stuck tool)", Duration::from_millis(500))
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(60), "not stopped: {e}");
        assert!(
            e.contains("sh (a stuck tool) failed: did not finish within 0.5 s: killed it and 1 process(es) it had started"),
            "{e}"
        );
        assert!(e.ends_with("waiting"), "{e}");
        let child: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        // Killed: gone, or a zombie until init reaps it.
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next());
        assert!(matches!(state, None | Some("Z")), "sleep {child} still runs: {stat}");
    }
}
