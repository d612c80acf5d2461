//! What etcd's own data directory says about this node: whether it holds a
//! member (a write-ahead log whose metadata names the member and cluster
//! ids, and a backend snapshot), a first start that never completed, or
//! nothing; and moving a member's data aside (never deleting it).
//!
//! The WAL's first file starts with framed records: an 8-byte little-endian
//! frame (low 56 bits: record length; top byte: padding), then a protobuf
//! `walpb.Record { int64 type = 1; uint32 crc = 2; bytes data = 3; }`.
//! etcd writes a CRC record first and a metadata record (type 1) next,
//! whose data is `etcdserverpb.Metadata { uint64 NodeID = 1; uint64
//! ClusterID = 2; }` (etcd 3.4 and 3.5 alike).

use std::io::Read;
use std::path::{Path, PathBuf};

/// The record type of the WAL's metadata record.
const METADATA_RECORD: u64 = 1;
/// Records read before giving up on finding the metadata record.
const MAX_RECORDS: usize = 8;
/// A frame larger than this is not a metadata record of a sane WAL.
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// This node's etcd member, as its data names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMember {
    pub node_id: u64,
    pub cluster_id: u64,
}

/// What the data directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataState {
    /// No `member/` directory.
    Empty,
    /// A WAL with metadata and a backend snapshot: a member that started.
    Member(LocalMember),
    /// `member/` exists but is not a started member's data (why).
    Incomplete(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("moving {from} aside to {to}: {source}")]
    MoveAside { from: String, to: String, source: std::io::Error },
}

/// Reads the state of etcd's data directory `data_dir`.
pub fn state(data_dir: &Path) -> Result<DataState, DataError> {
    let member = data_dir.join("member");
    if !member.is_dir() {
        return Ok(DataState::Empty);
    }
    let wal_dir = member.join("wal");
    let mut wals: Vec<PathBuf> = match std::fs::read_dir(&wal_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(DataState::Incomplete("no member/wal directory".into()))
        }
        Err(source) => return Err(DataError::Read { path: wal_dir.display().to_string(), source }),
    };
    wals.sort();
    let Some(first) = wals.first() else {
        return Ok(DataState::Incomplete("no WAL file in member/wal".into()));
    };
    if !member.join("snap/db").is_file() {
        return Ok(DataState::Incomplete("no backend member/snap/db".into()));
    }
    let mut head = Vec::new();
    std::fs::File::open(first)
        .and_then(|f| f.take(64 * 1024).read_to_end(&mut head))
        .map_err(|source| DataError::Read { path: first.display().to_string(), source })?;
    Ok(match metadata(&head) {
        Some(m) if m.node_id != 0 && m.cluster_id != 0 => DataState::Member(m),
        _ => DataState::Incomplete(format!("{} has no member metadata", first.display())),
    })
}

/// Renames `member/` to `member.removed-<unix seconds>[-n]` beside it and
/// returns the new path. Nothing is deleted: an operator can still read
/// (or restore from) what was there.
pub fn move_aside(data_dir: &Path, now_unix: u64) -> Result<PathBuf, DataError> {
    let from = data_dir.join("member");
    let mut to = data_dir.join(format!("member.removed-{now_unix}"));
    let mut n = 1;
    while to.exists() {
        to = data_dir.join(format!("member.removed-{now_unix}-{n}"));
        n += 1;
    }
    std::fs::rename(&from, &to).map_err(|source| DataError::MoveAside {
        from: from.display().to_string(),
        to: to.display().to_string(),
        source,
    })?;
    Ok(to)
}

/// The metadata record among the first records of a WAL file.
fn metadata(wal: &[u8]) -> Option<LocalMember> {
    let mut at = 0usize;
    for _ in 0..MAX_RECORDS {
        let frame = u64::from_le_bytes(wal.get(at..at + 8)?.try_into().ok()?);
        let len = frame & ((1 << 56) - 1);
        let pad = if frame >> 63 == 1 { (frame >> 56) & 0x7 } else { 0 };
        if len == 0 || len > MAX_RECORD_BYTES {
            return None;
        }
        let body = wal.get(at + 8..at + 8 + len as usize)?;
        // Records are padded to 8 bytes; the padding follows the body.
        at += 8 + (len + pad) as usize;
        let fields = fields_of(body)?;
        let kind = fields.iter().find_map(|f| f.varint(1)).unwrap_or(0);
        if kind == METADATA_RECORD {
            let data = fields.iter().find_map(|f| f.bytes(3))?;
            let meta = fields_of(data)?;
            return Some(LocalMember {
                node_id: meta.iter().find_map(|f| f.varint(1))?,
                cluster_id: meta.iter().find_map(|f| f.varint(2))?,
            });
        }
    }
    None
}

enum Field<'a> {
    Varint(u32, u64),
    Bytes(u32, &'a [u8]),
}

impl Field<'_> {
    fn varint(&self, n: u32) -> Option<u64> {
        match self {
            Field::Varint(k, v) if *k == n => Some(*v),
            _ => None,
        }
    }
    fn bytes(&self, n: u32) -> Option<&[u8]> {
        match self {
            Field::Bytes(k, v) if *k == n => Some(v),
            _ => None,
        }
    }
}

/// Decodes the protobuf fields of `buf` (varint, fixed and length types).
fn fields_of(buf: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let (key, n) = varint(&buf[at..])?;
        at += n;
        let (num, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => {
                let (v, n) = varint(&buf[at..])?;
                at += n;
                out.push(Field::Varint(num, v));
            }
            1 => at += 8,
            2 => {
                let (len, n) = varint(&buf[at..])?;
                at += n;
                let end = at.checked_add(usize::try_from(len).ok()?)?;
                out.push(Field::Bytes(num, buf.get(at..end)?));
                at = end;
            }
            5 => at += 4,
            _ => return None,
        }
    }
    (at == buf.len()).then_some(out)
}

fn varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn record(kind: u64, data: &[u8]) -> Vec<u8> {
        let mut body = vec![0x08];
        put_varint(&mut body, kind);
        body.push(0x10);
        put_varint(&mut body, 0);
        if !data.is_empty() {
            body.push(0x1a);
            put_varint(&mut body, data.len() as u64);
            body.extend_from_slice(data);
        }
        let mut out = (body.len() as u64).to_le_bytes().to_vec();
        out.extend(body);
        out
    }

    #[test]
    fn reads_node_and_cluster_ids_from_the_wal_metadata() {
        let mut meta = vec![0x08];
        put_varint(&mut meta, 0x8e9e05c52164694d);
        meta.push(0x10);
        put_varint(&mut meta, 0xcdf818194e3a8c32);
        let mut wal = record(4, &[]);
        wal.extend(record(1, &meta));
        wal.extend([0u8; 64]);
        assert_eq!(
            metadata(&wal),
            Some(LocalMember { node_id: 0x8e9e05c52164694d, cluster_id: 0xcdf818194e3a8c32 })
        );
        assert_eq!(metadata(&[0u8; 64]), None);

        let dir = tempfile::tempdir().unwrap();
        assert_eq!(state(dir.path()).unwrap(), DataState::Empty);
        std::fs::create_dir_all(dir.path().join("member/wal")).unwrap();
        assert!(matches!(state(dir.path()).unwrap(), DataState::Incomplete(_)));
        std::fs::write(dir.path().join("member/wal/0000000000000000-0000000000000000.wal"), &wal)
            .unwrap();
        assert!(matches!(state(dir.path()).unwrap(), DataState::Incomplete(_)));
        std::fs::create_dir_all(dir.path().join("member/snap")).unwrap();
        std::fs::write(dir.path().join("member/snap/db"), b"").unwrap();
        assert!(matches!(state(dir.path()).unwrap(), DataState::Member(_)));
        let aside = move_aside(dir.path(), 7).unwrap();
        assert!(aside.ends_with("member.removed-7") && aside.join("snap/db").is_file());
        std::fs::create_dir_all(dir.path().join("member")).unwrap();
        assert!(move_aside(dir.path(), 7).unwrap().ends_with("member.removed-7-1"));
        assert_eq!(state(dir.path()).unwrap(), DataState::Empty);
    }
}
