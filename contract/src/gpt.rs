//! GUID partition tables, written and read in Rust: a protective MBR, the
//! primary header and entry array at the start of the disk, the backup
//! copies at its end, all with their CRC32s. Everything in it comes from
//! the caller (disk GUID, partition GUIDs, names), so the same plan gives
//! the same bytes. The builder writes an image's table; keel-init reads it
//! in the initrd to find /usr, its hash tree and the root.

use std::io::{Read, Seek, SeekFrom, Write};

use serde::{Deserialize, Serialize};
pub use uuid::Uuid;

pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries.
pub const ALIGN: u64 = 1 << 20;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// The largest entry array [`Table::read`] accepts (the specification
/// allows any; real tables hold 128 entries of 128 bytes, 16 KiB).
pub const MAX_ENTRY_ARRAY: u64 = 1 << 20;
/// Sectors taken by the entry array (128 entries of 128 bytes).
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;

/// Partition type GUIDs from the Discoverable Partitions Specification.
pub mod types {
    use uuid::{uuid, Uuid};
    pub const ESP: Uuid = uuid!("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    pub const ROOT_X86_64: Uuid = uuid!("4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
    pub const USR_X86_64: Uuid = uuid!("8484680c-9521-48c6-9c11-b0720656f69e");
    pub const USR_VERITY_X86_64: Uuid = uuid!("77ff5f63-e7b6-4633-acf4-1565b864c0e6");
}

/// GPT attribute bit 59: systemd grows the file system to the partition.
pub const FLAG_GROWFS: u64 = 1 << 59;
/// GPT attribute bit 60: the partition is read-only.
pub const FLAG_READ_ONLY: u64 = 1 << 60;

/// One partition as laid out on the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Partition {
    pub number: u32,
    pub name: String,
    pub type_guid: Uuid,
    pub partition_guid: Uuid,
    pub offset: u64,
    pub size: u64,
    pub flags: u64,
}

/// A disk layout: GUID, size and partitions in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Table {
    pub disk_guid: Uuid,
    pub disk_size: u64,
    pub partitions: Vec<Partition>,
}

/// What a partition should hold, before it is placed.
pub struct Request {
    pub name: &'static str,
    pub type_guid: Uuid,
    pub partition_guid: Uuid,
    pub size: u64,
    pub flags: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no GPT: {0}")]
    Invalid(String),
}

/// Places `requests` one after the other on 1 MiB boundaries and sizes the
/// disk to hold them and the backup table.
pub fn plan(disk_guid: Uuid, requests: &[Request]) -> Table {
    let mut offset = ALIGN;
    let mut partitions = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let size = r.size.div_ceil(ALIGN) * ALIGN;
        partitions.push(Partition {
            number: i as u32 + 1,
            name: r.name.to_string(),
            type_guid: r.type_guid,
            partition_guid: r.partition_guid,
            offset,
            size,
            flags: r.flags,
        });
        offset += size;
    }
    // Room for the backup entries and header, rounded to the alignment.
    let disk_size = offset + ALIGN;
    Table { disk_guid, disk_size, partitions }
}

impl Table {
    pub fn get(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }

    /// Writes the protective MBR and both GPT copies into `disk`, which must
    /// already be `disk_size` bytes long.
    pub fn write(&self, disk: &mut (impl Write + Seek)) -> Result<(), GptError> {
        let last_lba = self.disk_size / SECTOR - 1;
        let entries = self.entry_array();
        let entries_crc = crc32fast::hash(&entries);
        let first_usable = 2 + ENTRY_SECTORS;
        let last_usable = last_lba - ENTRY_SECTORS - 1;

        disk.seek(SeekFrom::Start(0))?;
        disk.write_all(&protective_mbr(last_lba))?;
        let primary = self.header(1, last_lba, 2, first_usable, last_usable, entries_crc);
        disk.write_all(&primary)?;
        disk.write_all(&entries)?;

        let backup_entries_lba = last_lba - ENTRY_SECTORS;
        let backup =
            self.header(last_lba, 1, backup_entries_lba, first_usable, last_usable, entries_crc);
        disk.seek(SeekFrom::Start(backup_entries_lba * SECTOR))?;
        disk.write_all(&entries)?;
        disk.write_all(&backup)?;
        Ok(())
    }

    fn entry_array(&self) -> Vec<u8> {
        let mut out = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
        for (i, p) in self.partitions.iter().enumerate() {
            let e = &mut out[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
            e[0..16].copy_from_slice(&p.type_guid.to_bytes_le());
            e[16..32].copy_from_slice(&p.partition_guid.to_bytes_le());
            e[32..40].copy_from_slice(&(p.offset / SECTOR).to_le_bytes());
            e[40..48].copy_from_slice(&((p.offset + p.size) / SECTOR - 1).to_le_bytes());
            e[48..56].copy_from_slice(&p.flags.to_le_bytes());
            for (j, unit) in p.name.encode_utf16().take(36).enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
            }
        }
        out
    }

    fn header(
        &self,
        my_lba: u64,
        alt_lba: u64,
        entries_lba: u64,
        first: u64,
        last: u64,
        entries_crc: u32,
    ) -> [u8; SECTOR as usize] {
        let mut h = [0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
        h[40..48].copy_from_slice(&first.to_le_bytes());
        h[48..56].copy_from_slice(&last.to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.to_bytes_le());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[0..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Reads the primary GPT of `disk`, checking both CRCs. Every offset
    /// and size in it is checked against the disk's size before use, and
    /// at most [`MAX_ENTRY_ARRAY`] bytes of entries are read.
    pub fn read(disk: &mut (impl Read + Seek)) -> Result<Table, GptError> {
        let invalid = |m: String| GptError::Invalid(m);
        let disk_size = disk.seek(SeekFrom::End(0))?;
        if disk_size < 2 * SECTOR {
            return Err(invalid(format!("{disk_size} bytes is too small for a GPT")));
        }
        let mut h = [0u8; SECTOR as usize];
        disk.seek(SeekFrom::Start(SECTOR))?;
        disk.read_exact(&mut h)?;
        if &h[0..8] != b"EFI PART" {
            return Err(invalid("no \"EFI PART\" signature at LBA 1".into()));
        }
        let mut check = h;
        check[16..20].fill(0);
        if crc32fast::hash(&check[0..92]) != u32le(&h[16..20]) {
            return Err(invalid("header CRC32 mismatch".into()));
        }
        let entries_lba = u64le(&h[72..80]);
        let count = u64::from(u32le(&h[80..84]));
        let size = u64::from(u32le(&h[84..88]));
        // The specification: 128 * 2^n bytes an entry; at most 1 MiB read.
        let array = count * size;
        if size < ENTRY_SIZE || !size.is_power_of_two() || array > MAX_ENTRY_ARRAY {
            return Err(invalid(format!(
                "implausible entry array ({count} entries of {size} bytes)"
            )));
        }
        let disk_sectors = disk_size / SECTOR;
        let array_start = entries_lba.checked_mul(SECTOR).filter(|&start| {
            entries_lba >= 2 && start.checked_add(array).is_some_and(|end| end <= disk_size)
        });
        let Some(array_start) = array_start else {
            return Err(invalid(format!(
                "entry array at LBA {entries_lba} ({array} bytes) is not inside the disk"
            )));
        };
        let mut entries = vec![0u8; array as usize];
        disk.seek(SeekFrom::Start(array_start))?;
        disk.read_exact(&mut entries)?;
        if crc32fast::hash(&entries) != u32le(&h[88..92]) {
            return Err(invalid("entry array CRC32 mismatch".into()));
        }
        let disk_guid = Uuid::from_bytes_le(guid(&h[56..72]));
        let mut partitions = Vec::new();
        for (i, e) in entries.chunks_exact(size as usize).enumerate() {
            let type_guid = Uuid::from_bytes_le(guid(&e[0..16]));
            if type_guid.is_nil() {
                continue;
            }
            let first = u64le(&e[32..40]);
            let last = u64le(&e[40..48]);
            if first > last || last >= disk_sectors {
                return Err(invalid(format!(
                    "partition {} spans LBA {first}..={last}, outside the disk's {disk_sectors} sectors",
                    i + 1
                )));
            }
            let name: Vec<u16> = e[56..128]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            partitions.push(Partition {
                number: i as u32 + 1,
                name: String::from_utf16_lossy(&name),
                type_guid,
                partition_guid: Uuid::from_bytes_le(guid(&e[16..32])),
                // last < disk_sectors = disk_size / 512: no overflow.
                offset: first * SECTOR,
                size: (last + 1 - first) * SECTOR,
                flags: u64le(&e[48..56]),
            });
        }
        Ok(Table { disk_guid, disk_size, partitions })
    }
}

/// The partition UUIDs of a dm-verity /usr with `root_hash` (64 hex
/// digits), as systemd derives them for `usrhash=` and the builder gives
/// the partitions: the first 128 bits of the hash name the data (usr)
/// partition, the last 128 bits the hash (usr-verity) partition. `None`
/// when `root_hash` is not 32 bytes of hex.
pub fn usr_partition_uuids(root_hash: &str) -> Option<(Uuid, Uuid)> {
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = root_hash.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut raw = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        raw[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    let half = |b: &[u8]| Uuid::from_slice(b).ok();
    Some((half(&raw[..16])?, half(&raw[16..])?))
}

fn protective_mbr(last_lba: u64) -> [u8; SECTOR as usize] {
    let mut m = [0u8; SECTOR as usize];
    let e = &mut m[446..462];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    e[4] = 0xee;
    e[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    e[12..16].copy_from_slice(&(last_lba.min(u32::MAX as u64) as u32).to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xaa;
    m
}

fn guid(b: &[u8]) -> [u8; 16] {
    let mut g = [0u8; 16];
    g.copy_from_slice(b);
    g
}

fn u32le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn u64le(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[0..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn usr_partition_uuids_follow_the_root_hash() {
        let h = "0123456789abcdef0123456789abcdef".to_string() + "fedcba9876543210FEDCBA9876543210";
        let (data, hash) = usr_partition_uuids(&h).unwrap();
        assert_eq!(data.to_string(), "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(hash.to_string(), "fedcba98-7654-3210-fedc-ba9876543210");
        assert_eq!(usr_partition_uuids(&h[1..]), None);
        assert_eq!(usr_partition_uuids(&h.replace('0', "g")), None);
    }

    #[test]
    fn written_table_reads_back() {
        let table = plan(
            Uuid::from_u128(1),
            &[
                Request {
                    name: "esp",
                    type_guid: types::ESP,
                    partition_guid: Uuid::from_u128(2),
                    size: 3 << 20,
                    flags: 0,
                },
                Request {
                    name: "root",
                    type_guid: types::ROOT_X86_64,
                    partition_guid: Uuid::from_u128(3),
                    size: 1000,
                    flags: FLAG_GROWFS,
                },
            ],
        );
        assert_eq!(table.partitions[1].offset, 4 << 20);
        assert_eq!(table.partitions[1].size, 1 << 20);
        let mut disk = Cursor::new(vec![0u8; table.disk_size as usize]);
        table.write(&mut disk).unwrap();
        assert_eq!(Table::read(&mut disk).unwrap(), table);
        // A flipped bit in the entry array is caught.
        disk.get_mut()[2 * 512 + 20] ^= 1;
        assert!(matches!(Table::read(&mut disk), Err(GptError::Invalid(_))));
    }

    /// A written two-partition disk.
    fn disk() -> Vec<u8> {
        let table = plan(
            Uuid::from_u128(1),
            &[Request {
                name: "esp",
                type_guid: types::ESP,
                partition_guid: Uuid::from_u128(2),
                size: 1 << 20,
                flags: 0,
            }],
        );
        let mut disk = Cursor::new(vec![0u8; table.disk_size as usize]);
        table.write(&mut disk).unwrap();
        disk.into_inner()
    }

    /// Sets header bytes at `at` and fixes the header CRC, so that only
    /// the hostile value is wrong.
    fn patch_header(d: &mut [u8], at: usize, v: &[u8]) {
        let h = &mut d[512..1024];
        h[at..at + v.len()].copy_from_slice(v);
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h[0..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    fn read(d: Vec<u8>) -> Result<Table, GptError> {
        Table::read(&mut Cursor::new(d))
    }

    #[test]
    fn truncated_disks_are_errors_not_panics() {
        let full = disk();
        for n in (0..4 * 512).chain([17 * 512, 34 * 512 - 1, 34 * 512, full.len() / 2]) {
            assert!(read(full[..n].to_vec()).is_err(), "{n} bytes read as a GPT");
        }
        // Cut after the primary table: the partition now ends past the disk.
        let e = read(full[..34 * 512 + 1].to_vec()).unwrap_err().to_string();
        assert!(e.contains("outside the disk"), "{e}");
    }

    #[test]
    fn hostile_headers_are_refused_without_overflow_or_huge_allocations() {
        // Entry array at an LBA whose byte offset overflows, or past the end.
        for lba in [u64::MAX, u64::MAX / 512 + 1, 1 << 40, 0, 1] {
            let mut d = disk();
            patch_header(&mut d, 72, &lba.to_le_bytes());
            let e = read(d).unwrap_err().to_string();
            assert!(e.contains("not inside the disk"), "LBA {lba}: {e}");
        }
        // Counts and sizes that would ask for gigabytes, or odd sizes.
        for (count, size) in [(u32::MAX, 128), (1024, u32::MAX), (u32::MAX, u32::MAX), (128, 129)] {
            let mut d = disk();
            patch_header(&mut d, 80, &count.to_le_bytes());
            patch_header(&mut d, 84, &size.to_le_bytes());
            let e = read(d).unwrap_err().to_string();
            assert!(e.contains("implausible entry array"), "{count}x{size}: {e}");
        }
        // A partition whose last LBA is before its first, or past the disk
        // (the entry CRC fixed too).
        for (first, last) in [(100u64, 99u64), (2048, u64::MAX), (u64::MAX, u64::MAX)] {
            let mut d = disk();
            d[1024 + 32..1024 + 40].copy_from_slice(&first.to_le_bytes());
            d[1024 + 40..1024 + 48].copy_from_slice(&last.to_le_bytes());
            let crc = crc32fast::hash(&d[1024..1024 + 128 * 128]);
            patch_header(&mut d, 88, &crc.to_le_bytes());
            let e = read(d).unwrap_err().to_string();
            assert!(e.contains("outside the disk"), "{first}..={last}: {e}");
        }
    }
}
