//! moto's server (PyPI `moto[server]`), the emulated AWS for tests: EC2,
//! EBS direct APIs, S3 and KMS. It is installed into a virtualenv by
//! `scripts/setup` (default `~/.cache/keel/moto-venv`, or `KEEL_MOTO_VENV`);
//! a test that needs it fails with that instruction when it is missing,
//! rather than being skipped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{free_port, Guard};

/// Where `scripts/setup` installs moto.
pub fn venv_dir() -> PathBuf {
    crate::cache_dir("KEEL_MOTO_VENV", "moto-venv")
}

/// A running moto server on a loopback port, stopped on drop. Each test
/// gets its own server, so tests share no AWS state.
pub struct Moto {
    _guard: Guard,
    pub endpoint: String,
    pub port: u16,
}

impl Moto {
    pub fn start() -> anyhow::Result<Moto> {
        Moto::start_on(std::net::Ipv4Addr::LOCALHOST)
    }

    /// Starts moto listening on `addr` (e.g. the host side of a VM
    /// network, so that guests reach it too).
    pub fn start_on(addr: std::net::Ipv4Addr) -> anyhow::Result<Moto> {
        Moto::start_with(addr, &[])
    }

    /// Starts moto on loopback with extra environment variables, e.g.
    /// `INITIAL_NO_AUTH_ACTION_COUNT=0` to make it check credentials.
    pub fn start_with_env(env: &[(&str, &str)]) -> anyhow::Result<Moto> {
        Moto::start_with(std::net::Ipv4Addr::LOCALHOST, env)
    }

    fn start_with(addr: std::net::Ipv4Addr, env: &[(&str, &str)]) -> anyhow::Result<Moto> {
        let bin = venv_dir().join("bin/moto_server");
        if !bin.exists() {
            anyhow::bail!(
                "moto's server is not installed at {}: run scripts/setup (it installs moto[server] into that virtualenv)",
                bin.display()
            );
        }
        let port = free_port();
        let mut cmd = Command::new(&bin);
        cmd.args(["-H", &addr.to_string(), "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.envs(env.iter().copied());
        let mut guard = Guard::spawn("moto_server", cmd)?;
        let endpoint = format!("http://{addr}:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            guard.check_running()?;
            if std::net::TcpStream::connect((addr, port)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!("moto_server did not listen on {endpoint} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Moto { _guard: guard, endpoint, port })
    }

    /// Environment for a child process (the `keel` binary) to reach this
    /// server with dummy credentials.
    pub fn env(&self, region: &str) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_REGION".into(), region.into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }
}

/// The access key moto accepts (any will do; these are moto's documented
/// test keys).
pub const ACCESS_KEY_ID: &str = "testing";
pub const SECRET_ACCESS_KEY: &str = "testing";

/// `config` with fixed keys instead of the standard credential chain: for
/// moto, which accepts any keys. Test code only; production code uses the
/// standard chain (keel_bootstrap::aws::sdk_config).
pub fn with_keys(
    config: aws_types::SdkConfig,
    access_key_id: &str,
    secret_access_key: &str,
) -> aws_types::SdkConfig {
    use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
    let keys = Credentials::new(access_key_id, secret_access_key, None, None, "keel-fixed-keys");
    config.to_builder().credentials_provider(SharedCredentialsProvider::new(keys)).build()
}

/// `config` with moto's test keys.
pub fn with_test_keys(config: aws_types::SdkConfig) -> aws_types::SdkConfig {
    with_keys(config, ACCESS_KEY_ID, SECRET_ACCESS_KEY)
}
