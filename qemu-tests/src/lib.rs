//! Harness that boots Keel images under QEMU against an emulated AWS.

pub mod aws;
pub mod aws_names;
pub mod boot_report;
pub mod cluster;
pub mod debian;
pub mod disk;
pub mod doubles;
pub mod etcd_cluster;
pub mod etcdctl;
pub mod images;
pub mod keel;
pub mod net;
pub mod published;
pub mod repack;
pub mod rundir;
pub mod stock;
pub mod vm;
