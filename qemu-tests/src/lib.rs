//! Harness that boots Keel images under QEMU against an emulated AWS.

pub mod net;
pub mod vm;
