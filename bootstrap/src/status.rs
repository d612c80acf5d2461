//! What an operator sees: one console line per step
//! (`keel-bootstrap: <step>: ok` or `keel-bootstrap: <step>: failed: <why>`),
//! a machine-readable status file (`/run/keel/status.json`), and systemd
//! readiness (`READY=1` on `$NOTIFY_SOCKET`). Lines carry names, ids and
//! error messages only, never key material.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

/// The status file, relative to the root.
pub(crate) const STATUS_FILE: &str = "run/keel/status.json";

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub millis: u128,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Requests {
    pub s3_get_object: u32,
    pub kms_decrypt: u32,
    pub ec2_describe_instances: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// "running", "configured" or "failed".
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    pub steps: Vec<Step>,
    pub aws_requests: Requests,
    pub elapsed_millis: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reports steps to a console writer and keeps the status.
pub struct Reporter {
    console: Box<dyn Write + Send>,
    path: PathBuf,
    start: Instant,
    pub status: Status,
}

impl Reporter {
    pub fn new(root: &Path, console: Box<dyn Write + Send>) -> Reporter {
        Reporter {
            console,
            path: root.join(STATUS_FILE),
            start: Instant::now(),
            status: Status {
                state: "running",
                role: None,
                instance_id: None,
                steps: Vec::new(),
                aws_requests: Requests::default(),
                elapsed_millis: 0,
                error: None,
            },
        }
    }

    /// Records one finished step and prints its line.
    pub fn step<T, E: std::fmt::Display>(
        &mut self,
        name: &str,
        started: Instant,
        result: &Result<T, E>,
    ) {
        let (ok, error) = match result {
            Ok(_) => (true, None),
            Err(e) => (false, Some(one_line(&e.to_string()))),
        };
        let line = match &error {
            None => format!("keel-bootstrap: {name}: ok"),
            Some(why) => format!("keel-bootstrap: {name}: failed: {why}"),
        };
        let _ = writeln!(self.console, "{line}");
        let _ = self.console.flush();
        self.status.steps.push(Step {
            name: name.to_string(),
            ok,
            error,
            millis: started.elapsed().as_millis(),
        });
    }

    /// Writes the status file (atomically; 0644: it holds no secret).
    pub fn write(&mut self) -> std::io::Result<()> {
        self.status.elapsed_millis = self.start.elapsed().as_millis();
        let json = serde_json::to_vec_pretty(&self.status).map_err(std::io::Error::other)?;
        crate::atomic_file::write(&self.path, 0o644, &json)
    }

    /// Marks the run finished: "configured" or "failed" with `error`.
    pub fn finish(&mut self, error: Option<String>) -> std::io::Result<()> {
        self.status.state = if error.is_some() { "failed" } else { "configured" };
        self.status.error = error.map(|e| one_line(&e));
        self.write()
    }

    pub fn elapsed(&self) -> std::time::Duration {
        self.start.elapsed()
    }
}

/// Folds a multi-line message onto one console line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Sends `READY=1` to systemd when it runs us with `Type=notify`
/// (`$NOTIFY_SOCKET` set); does nothing otherwise. An address starting
/// with '@' is in the abstract namespace.
pub fn notify_ready() -> std::io::Result<bool> {
    notify(
        std::env::var_os("NOTIFY_SOCKET").as_deref().map(Path::new),
        "READY=1\nSTATUS=configured\n",
    )
}

pub fn notify(socket: Option<&Path>, message: &str) -> std::io::Result<bool> {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(socket) = socket else { return Ok(false) };
    let sock = UnixDatagram::unbound()?;
    let bytes = socket.as_os_str().as_encoded_bytes();
    let addr = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name)?
    } else {
        SocketAddr::from_pathname(socket)?
    };
    sock.send_to_addr(message.as_bytes(), &addr)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_a_datagram_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        assert!(notify(Some(&path), "READY=1\n").unwrap());
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        assert!(!notify(None, "READY=1\n").unwrap());
    }

    #[test]
    fn multi_line_errors_fold_to_one_line() {
        assert_eq!(one_line("a\n  b\tc"), "a b c");
    }
}
