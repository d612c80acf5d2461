//! Real local servers for Keel's tests. Nothing here is a mock of an HTTP
//! layer: tests talk to moto's real server (emulated AWS) and to small
//! in-test servers over real sockets.

pub mod api_server_double;
pub mod fault_proxy;
pub mod host_tools;
pub mod http;
pub mod imds;
pub mod moto;
pub mod ntp_double;
pub mod process;
pub mod pytools;
pub mod readback;
pub mod teardown;
pub mod test_ca;
pub mod tls_proxy;

/// A directory under `~/.cache/keel` (`name`), or the environment
/// variable `env` when it is set: where `scripts/setup` puts the
/// virtualenvs and where the test CA is kept.
pub fn cache_dir(env: &str, name: &str) -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os(env) {
        return dir.into();
    }
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    home.unwrap_or_else(|| "/root".into()).join(".cache/keel").join(name)
}

/// Installs the process-wide TLS crypto provider (aws-lc-rs), as the
/// binaries do; a no-op when one is installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
