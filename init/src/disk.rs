//! Finding the boot disk's partitions: the /usr data and hash partitions
//! the root hash names (their partition UUIDs are its halves,
//! [`keel_contract::gpt::usr_partition_uuids`]) and the root partition
//! `root=PARTUUID=` names, read from each disk's GPT, waited for while the
//! drivers find the disk. No udev: the kernel's sysfs and devtmpfs.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keel_contract::gpt::{Table, Uuid};

/// A partition found: its device node and `major:minor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub node: PathBuf,
    pub dev: String,
    pub size: u64,
}

/// The three partitions of a Keel disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions {
    pub usr: Found,
    pub usr_verity: Found,
    pub root: Found,
}

/// What to look for.
pub struct Wanted {
    pub usr: Uuid,
    pub usr_verity: Uuid,
    pub root: Uuid,
}

/// One whole disk: its name in /sys/class/block, its table, and its
/// partitions' numbers with their block device names.
pub struct Disk {
    pub name: String,
    pub table: Table,
    /// (partition number, device name, major:minor)
    pub partitions: Vec<(u32, String, String)>,
}

/// Looks for the wanted partitions in `disks`; each is the first match in
/// the order of `disks`.
pub fn locate(disks: &[Disk], want: &Wanted) -> [Option<Found>; 3] {
    let find = |uuid: &Uuid| {
        disks.iter().find_map(|d| {
            let p = d.table.partitions.iter().find(|p| &p.partition_guid == uuid)?;
            let (_, name, dev) = d.partitions.iter().find(|(n, _, _)| *n == p.number)?;
            Some(Found { node: Path::new("/dev").join(name), dev: dev.clone(), size: p.size })
        })
    };
    [find(&want.usr), find(&want.usr_verity), find(&want.root)]
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

/// The whole disks the kernel knows now (not partitions, loop, RAM or
/// device-mapper devices), with their GPTs; disks without one are left out.
pub fn scan(sys_block: &Path, dev: &Path) -> Vec<Disk> {
    let Ok(entries) = fs::read_dir(sys_block) else { return Vec::new() };
    let mut names: Vec<String> =
        entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    names.sort();
    let mut disks = Vec::new();
    for name in names {
        let dir = sys_block.join(&name);
        let skip = ["loop", "ram", "dm-", "sr", "zram"].iter().any(|p| name.starts_with(p));
        if skip || dir.join("partition").exists() {
            continue;
        }
        let Ok(mut f) = File::open(dev.join(&name)) else { continue };
        let Ok(table) = Table::read(&mut f) else { continue };
        let mut partitions = Vec::new();
        if let Ok(children) = fs::read_dir(&dir) {
            for c in children.filter_map(Result::ok) {
                let p = c.path();
                let number = read_trim(&p.join("partition")).and_then(|n| n.parse().ok());
                let majmin = read_trim(&p.join("dev"));
                if let (Some(n), Some(d), Ok(child)) = (number, majmin, c.file_name().into_string())
                {
                    partitions.push((n, child, d));
                }
            }
        }
        disks.push(Disk { name, table, partitions });
    }
    disks
}

/// Waits up to `timeout` for all three partitions, polling sysfs; the
/// error names what is missing and the disks seen.
pub fn wait(want: &Wanted, timeout: Duration) -> Result<Partitions, String> {
    let start = Instant::now();
    loop {
        let disks = scan(Path::new("/sys/class/block"), Path::new("/dev"));
        let [usr, usr_verity, root] = locate(&disks, want);
        match (usr, usr_verity, root) {
            (Some(usr), Some(usr_verity), Some(root)) => {
                return Ok(Partitions { usr, usr_verity, root })
            }
            (u, v, r) if start.elapsed() >= timeout => {
                let mut missing = Vec::new();
                for (found, what, uuid) in [
                    (u.is_some(), "/usr (usr)", want.usr),
                    (v.is_some(), "its hash tree (usr-verity)", want.usr_verity),
                    (r.is_some(), "the root", want.root),
                ] {
                    if !found {
                        missing.push(format!("{what} partition {uuid}"));
                    }
                }
                let seen: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
                return Err(format!(
                    "no {} after {} s (disks with a GPT: {})",
                    missing.join(", "),
                    timeout.as_secs(),
                    if seen.is_empty() { "none".to_string() } else { seen.join(", ") }
                ));
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_contract::gpt::{self, Request};
    use std::io::Cursor;

    const HASH: &str = "0123456789abcdef0123456789abcdeffedcba9876543210fedcba9876543210";

    fn image_table() -> Table {
        let (usr, verity) = gpt::usr_partition_uuids(HASH).unwrap();
        let req = |name, type_guid, partition_guid| Request {
            name,
            type_guid,
            partition_guid,
            size: 1 << 20,
            flags: 0,
        };
        gpt::plan(
            Uuid::from_u128(1),
            &[
                req("esp", gpt::types::ESP, Uuid::from_u128(2)),
                req("usr", gpt::types::USR_X86_64, usr),
                req("usr-verity", gpt::types::USR_VERITY_X86_64, verity),
                req("root", gpt::types::ROOT_X86_64, Uuid::from_u128(5)),
            ],
        )
    }

    /// A written image's GPT read back, in a fake sysfs and /dev (plain
    /// files, as the kernel would show the disk and its partitions).
    #[test]
    fn partitions_are_found_by_the_root_hash_and_partuuid_in_a_written_gpt() {
        let table = image_table();
        let mut disk = Cursor::new(vec![0u8; table.disk_size as usize]);
        table.write(&mut disk).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let (sys, dev) = (tmp.path().join("sys"), tmp.path().join("dev"));
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("vda"), disk.get_ref()).unwrap();
        fs::write(dev.join("vdb"), vec![0u8; 64 << 10]).unwrap();
        fs::create_dir_all(sys.join("vdb")).unwrap();
        for n in 1..=4 {
            let p = sys.join("vda").join(format!("vda{n}"));
            fs::create_dir_all(&p).unwrap();
            fs::write(p.join("partition"), format!("{n}\n")).unwrap();
            fs::write(p.join("dev"), format!("254:{n}\n")).unwrap();
            // /sys/class/block lists partitions beside disks.
            std::os::unix::fs::symlink(&p, sys.join(format!("vda{n}"))).unwrap();
        }
        let disks = scan(&sys, &dev);
        assert_eq!(disks.len(), 1, "vdb has no GPT, partitions are not disks");
        let (usr, usr_verity) = gpt::usr_partition_uuids(HASH).unwrap();
        let want = Wanted { usr, usr_verity, root: Uuid::from_u128(5) };
        let [u, v, r] = locate(&disks, &want);
        assert_eq!(
            u.unwrap(),
            Found { node: "/dev/vda2".into(), dev: "254:2".into(), size: 1 << 20 }
        );
        assert_eq!(v.unwrap().dev, "254:3");
        assert_eq!(r.unwrap().node, Path::new("/dev/vda4"));
        let other = Wanted { root: Uuid::from_u128(9), ..want };
        assert_eq!(locate(&disks, &other)[2], None);
    }
}
