//! The EFI system partition: a FAT file system written in-process (fatfs)
//! with a volume id derived from the inputs and no clock (every timestamp
//! is the FAT epoch), holding the UKI at the removable-media boot path and
//! the image's manifest.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::BuildError;

/// Where UEFI firmware looks for a boot loader on removable media (and on
/// EC2's and QEMU's disks, which have no boot entries).
pub const BOOT_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
/// Where the image's own manifest lives (read by `keel inspect`).
pub const MANIFEST_PATH: &str = "keel/manifest.json";

/// The ESP's size for an UKI of `uki_len` bytes: the UKI twice (room for an
/// update written beside the old one), at least 64 MiB.
pub fn size_for(uki_len: u64) -> u64 {
    (2 * uki_len + (4 << 20)).max(64 << 20).div_ceil(1 << 20) * (1 << 20)
}

/// Writes a FAT file system of `size` bytes to `path` holding `files`
/// (path in the ESP, contents).
pub fn make(
    path: &Path,
    size: u64,
    volume_id: u32,
    files: &[(&str, &[u8])],
) -> Result<(), BuildError> {
    let ctx = |e: std::io::Error| BuildError::io(path, e);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(ctx)?;
    file.set_len(size).map_err(ctx)?;
    fatfs::format_volume(
        &mut file,
        fatfs::FormatVolumeOptions::new().volume_id(volume_id).volume_label(*b"ESP        "),
    )
    .map_err(ctx)?;
    file.seek(SeekFrom::Start(0)).map_err(ctx)?;
    {
        let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new()).map_err(ctx)?;
        for (name, contents) in files {
            let root = fs.root_dir();
            let (dirs, leaf) = match name.rsplit_once('/') {
                Some((d, l)) => (d, l),
                None => ("", *name),
            };
            let mut dir = root;
            for d in dirs.split('/').filter(|d| !d.is_empty()) {
                dir = match dir.open_dir(d) {
                    Ok(x) => x,
                    Err(_) => dir.create_dir(d).map_err(ctx)?,
                };
            }
            let mut f = dir.create_file(leaf).map_err(ctx)?;
            f.truncate().map_err(ctx)?;
            f.write_all(contents).map_err(ctx)?;
            f.flush().map_err(ctx)?;
        }
        fs.unmount().map_err(ctx)?;
    }
    file.sync_all().map_err(ctx)
}

/// A window onto `size` bytes of a file from `offset`: the ESP inside a
/// disk image, opened read-only.
pub struct Slice {
    file: File,
    offset: u64,
    size: u64,
    pos: u64,
}

impl Slice {
    pub fn new(file: File, offset: u64, size: u64) -> Slice {
        Slice { file, offset, size, pos: 0 }
    }
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.size.saturating_sub(self.pos) as usize;
        let n = buf.len().min(left);
        self.file.seek(SeekFrom::Start(self.offset + self.pos))?;
        let n = self.file.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Slice {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the image is opened read-only",
        ))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for Slice {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => p as i64,
            SeekFrom::End(d) => self.size as i64 + d,
            SeekFrom::Current(d) => self.pos as i64 + d,
        };
        if pos < 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the partition",
            ));
        }
        self.pos = pos as u64;
        Ok(self.pos)
    }
}

/// Reads one file from a FAT file system.
pub fn read_file(fs: impl Read + Write + Seek, path: &str) -> std::io::Result<Vec<u8>> {
    let fs = fatfs::FileSystem::new(fs, fatfs::FsOptions::new())?;
    let mut f = fs.root_dir().open_file(path)?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_is_reproducible_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let files: &[(&str, &[u8])] = &[(BOOT_PATH, b"uki"), (MANIFEST_PATH, b"{}")];
        make(&a, 64 << 20, 7, files).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        make(&b, 64 << 20, 7, files).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let slice = Slice::new(File::open(&a).unwrap(), 0, 64 << 20);
        assert_eq!(read_file(slice, MANIFEST_PATH).unwrap(), b"{}");
    }
}
