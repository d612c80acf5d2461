//! Reads back what a booted VM did to its disk: the partitions of a GPT
//! disk image and the size of an ext4 file system, from the raw bytes
//! (`qemu-img convert` turns a VM's qcow2 overlay into a sparse raw file
//! first). Used to check that the root partition and its file system grew
//! to fill a disk larger than the image, and to read or write a file of
//! its root file system.

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

/// Writes `contents` as the file `path` (absolute, its parent directories
/// made as needed, mode 0644, owner root) into the ext4 file system of the
/// GPT partition named `partition` of the raw disk image `image`, as a
/// node would have left it at an earlier boot. The partition is copied out,
/// changed with e2fsprogs' debugfs and copied back.
pub fn write_into_ext4(image: &Path, partition: &str, path: &str, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let part = partition_named(image, partition)?;
    let tmp = tempfile::tempdir()?;
    let (fs_file, src) = (tmp.path().join("fs"), tmp.path().join("contents"));
    std::fs::write(&src, contents)?;
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let mut bytes = vec![0u8; usize::try_from(part.size)?];
    read_at(&mut disk, part.offset, &mut bytes)?;
    std::fs::write(&fs_file, &bytes)?;
    let rel = path.trim_start_matches('/');
    let mut commands = String::new();
    let mut dir = String::new();
    for d in rel.split('/').collect::<Vec<_>>().split_last().map(|(_, d)| d).unwrap_or(&[]) {
        dir.push('/');
        dir.push_str(d);
        commands.push_str(&format!("mkdir {dir}\n"));
    }
    commands.push_str(&format!(
        "write {} /{rel}\nsif /{rel} mode 0100644\nsif /{rel} uid 0\nsif /{rel} gid 0\n",
        src.display()
    ));
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg("-")
        .arg(&fs_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("piped").write_all(commands.as_bytes())?;
            c.wait_with_output()
        })
        .context("running debugfs (install the Debian package e2fsprogs)")?;
    // "mkdir" of a directory that exists is the only complaint expected.
    let said = String::from_utf8_lossy(&out.stderr);
    let complaints = debugfs_complaints(&said, &["directory already exists"]);
    ensure!(
        out.status.success() && complaints.is_empty(),
        "debugfs writing {path} into {}: {}",
        image.display(),
        complaints.join("; ")
    );
    let bytes = std::fs::read(&fs_file)?;
    disk.seek(SeekFrom::Start(part.offset))?;
    disk.write_all(&bytes)?;
    Ok(())
}

/// The file `path` (absolute) in the ext4 file system of the GPT
/// partition named `partition` of the raw disk image `image`, as a node
/// left it: read in place with e2fsprogs' debugfs.
pub fn read_from_ext4(image: &Path, partition: &str, path: &str) -> Result<Vec<u8>> {
    let part = partition_named(image, partition)?;
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(format!("{}?offset={}", image.display(), part.offset))
        .stdin(Stdio::null())
        .output()
        .context("running debugfs (install the Debian package e2fsprogs)")?;
    let said = String::from_utf8_lossy(&out.stderr);
    let complaints = debugfs_complaints(&said, &[]);
    ensure!(
        out.status.success() && complaints.is_empty(),
        "debugfs reading {path} from {} ({partition}): {}",
        image.display(),
        complaints.join("; ")
    );
    Ok(out.stdout)
}

fn partition_named(image: &Path, name: &str) -> Result<Partition> {
    partitions(image)?
        .into_iter()
        .find(|p| p.name == name)
        .with_context(|| format!("{}: no partition {name}", image.display()))
}

/// What debugfs said on stderr beyond its banner and the `expected`
/// complaints: it exits 0 whatever its commands did.
fn debugfs_complaints<'a>(stderr: &'a str, expected: &[&str]) -> Vec<&'a str> {
    stderr
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("debugfs ") && !expected.iter().any(|e| l.contains(e))
        })
        .collect()
}
