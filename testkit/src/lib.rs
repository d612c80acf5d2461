//! Real local servers for Keel's tests. Nothing here is a mock of an HTTP
//! layer: tests talk to moto's real server (emulated AWS) and to small
//! in-test servers over real sockets.

pub mod fault_proxy;
pub mod host_tools;
pub mod http;
pub mod imds;
pub mod moto;
pub mod process;
pub mod pytools;
pub mod readback;
pub mod teardown;
