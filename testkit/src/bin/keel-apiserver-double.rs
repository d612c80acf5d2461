//! `keel-apiserver-double`: a TEST DOUBLE of the Kubernetes API server
//! (see `keel_testkit::api_server_double`), run inside the TEST-ONLY
//! controller image by the kube-apiserver test double once it has checked
//! its flags. It takes the kube-apiserver flags it needs:
//!
//! ```text
//! keel-apiserver-double --bind-address IP --secure-port PORT \
//!     --client-ca-file FILE --tls-cert-file FILE --tls-private-key-file FILE
//! ```
//!
//! prints one line per request on stdout (and on the console under systemd), reports READY=1 to systemd when
//! it listens (`Type=notify`) and serves until it is stopped.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use keel_testkit::api_server_double::{ApiServerDouble, Config};

const USAGE: &str = "usage: keel-apiserver-double --bind-address IP --secure-port PORT \
--client-ca-file FILE --tls-cert-file FILE --tls-private-key-file FILE";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-apiserver-double (TEST DOUBLE): {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<()> {
    let mut bind: IpAddr = [0, 0, 0, 0].into();
    let mut port: u16 = 6443;
    let (mut ca, mut cert, mut key) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (flag.clone(), None),
        };
        let mut value =
            || inline.clone().or_else(|| args.next()).context(format!("{name}: no value"));
        match name.as_str() {
            "--bind-address" => bind = value()?.parse().context("--bind-address: not an IP")?,
            "--secure-port" => port = value()?.parse().context("--secure-port: not a port")?,
            "--client-ca-file" => ca = Some(value()?),
            "--tls-cert-file" => cert = Some(value()?),
            "--tls-private-key-file" => key = Some(value()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown flag {other}\n{USAGE}"),
        }
    }
    let read = |flag: &str, path: Option<String>| -> Result<String> {
        let path = path.with_context(|| format!("{flag} is required\n{USAGE}"))?;
        std::fs::read_to_string(&path).with_context(|| format!("{flag} {path}"))
    };
    let double = ApiServerDouble::start(Config {
        listen: SocketAddr::new(bind, port),
        client_ca_pem: read("--client-ca-file", ca)?,
        serving_cert_pem: read("--tls-cert-file", cert)?,
        serving_key_pem: read("--tls-private-key-file", key)?,
        unready: 0,
        log: Some(Arc::new(say)),
    })?;
    say(&format!(
        "apiserver-double: serving on {} (TEST DOUBLE, not kube-apiserver)",
        double.url()
    ));
    notify_ready()?;
    loop {
        std::thread::park();
    }
}

/// A line on stdout (the journal) and, under systemd, on the console,
/// where the QEMU tests read it.
fn say(line: &str) {
    use std::io::Write;
    println!("{line}");
    if std::os::unix::process::parent_id() == 1 {
        if let Ok(mut console) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
            let _ = writeln!(console, "{line}");
        }
    }
}

/// `READY=1` to systemd's notification socket, when there is one.
fn notify_ready() -> Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(()) };
    let socket = socket.to_string_lossy().into_owned();
    let addr = match socket.strip_prefix('@') {
        Some(name) => UnixAddr::from_abstract_name(name.as_bytes()),
        None => UnixAddr::from_pathname(&socket),
    }
    .with_context(|| format!("NOTIFY_SOCKET {socket}"))?;
    let sender = UnixDatagram::unbound().context("a datagram socket for sd_notify")?;
    sender.send_to_addr(b"READY=1", &addr).with_context(|| format!("notifying {socket}"))?;
    Ok(())
}
