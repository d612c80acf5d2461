//! Real local servers for Keel's tests. Nothing here is a mock of an HTTP
//! layer: tests talk to moto's real server (emulated AWS) and to small
//! in-test servers over real sockets.

pub mod api_server_double;
pub mod fault_proxy;
pub mod host_tools;
pub mod http;
pub mod imds;
pub mod moto;
pub mod process;
pub mod pytools;
pub mod readback;
pub mod teardown;
pub mod test_ca;
pub mod tls_proxy;

/// Installs the process-wide TLS crypto provider (aws-lc-rs), as the
/// binaries do; a no-op when one is installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
