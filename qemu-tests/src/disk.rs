//! Reads back what a booted VM did to its disk: the partitions of a GPT
//! disk image and the size of an ext4 file system, from the raw bytes
//! (`qemu-img convert` turns a VM's qcow2 overlay into a sparse raw file
//! first). Used to check that the root partition and its file system grew
//! to fill a disk larger than the image.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context, Result};

/// One GPT partition entry (name, byte offset, size, ...).
pub use keel_contract::gpt::Partition;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read_at(f: &mut File, offset: u64, buf: &mut [u8]) -> Result<()> {
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(buf).with_context(|| format!("reading {} bytes at {offset}", buf.len()))
}

/// The partitions of the GPT disk image `path` (primary table, CRCs
/// checked), read with the reader the builder and keel-init use.
pub fn partitions(path: &Path) -> Result<Vec<Partition>> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let table = keel_contract::gpt::Table::read(&mut f)
        .with_context(|| format!("{}: reading the GPT", path.display()))?;
    Ok(table.partitions)
}

fn ext4_superblock(path: &Path, offset: u64) -> Result<[u8; 1024]> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut sb = [0u8; 1024];
    read_at(&mut f, offset + 1024, &mut sb)?;
    ensure!(sb[56..58] == [0x53, 0xef], "{}: no ext4 superblock at {offset}", path.display());
    Ok(sb)
}

/// The block size of the ext4 file system starting at `offset` in `path`.
pub fn ext4_block_size(path: &Path, offset: u64) -> Result<u64> {
    Ok(1024u64 << u32_at(&ext4_superblock(path, offset)?, 24))
}

/// The size in bytes of the ext4 file system starting at `offset` in
/// `path` (its superblock's block count times its block size).
pub fn ext4_size(path: &Path, offset: u64) -> Result<u64> {
    let sb = ext4_superblock(path, offset)?;
    let blocks = u64::from(u32_at(&sb, 4)) | (u64::from(u32_at(&sb, 0x150)) << 32);
    Ok(blocks * (1024u64 << u32_at(&sb, 24)))
}

/// Converts a VM's qcow2 overlay (with its backing image) to a sparse raw
/// file at `raw`.
pub fn overlay_to_raw(overlay: &Path, raw: &Path) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(overlay)
        .arg(raw)
        .stdin(Stdio::null())
        .output()
        .context("running qemu-img (install the Debian package qemu-utils)")?;
    if !out.status.success() {
        bail!(
            "qemu-img convert {}: {}",
            overlay.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
