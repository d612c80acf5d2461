//! Child processes that die with the test: killed (whole process group) on
//! drop, so a failing or panicking test leaves nothing running, and on
//! Ctrl-C/SIGTERM/SIGHUP through [`crate::teardown`].

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use crate::teardown::{self, Registration};

/// A child process in its own process group, killed on drop.
pub struct Guard {
    child: Child,
    name: String,
    _on_interrupt: Registration,
}

impl Guard {
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Guard> {
        cmd.process_group(0);
        let child = cmd.spawn().map_err(|e| anyhow::anyhow!("starting {name} ({cmd:?}): {e}"))?;
        let pgid = child.id() as i32;
        let on_interrupt =
            teardown::on_interrupt(&format!("killing {name} (process group {pgid})"), move || {
                kill_group(pgid)
            });
        Ok(Guard { child, name: name.to_string(), _on_interrupt: on_interrupt })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }

    /// Fails if the process has already exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => anyhow::bail!("{} exited early: {status}", self.name),
            None => Ok(()),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        kill_group(self.child.id() as i32);
        let _ = self.child.wait();
    }
}

/// SIGKILL to the process group `pgid` (a child started in its own group).
fn kill_group(pgid: i32) {
    if let Some(pgid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port on 127.0.0.1")
}
