//! The dm-verity superblock `veritysetup format` writes at the start of
//! the hash partition, and the kernel's `verity` target table made from it
//! and the command line's root hash.

use std::fmt;

/// The superblock's size on disk (it takes a whole hash block).
pub const SUPERBLOCK_SIZE: usize = 512;

/// What the `verity` target needs from the superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// 1: the current format (0 is Chrome OS's).
    pub hash_type: u32,
    /// The hash, e.g. `sha256`.
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    /// The data device's size in data blocks.
    pub data_blocks: u64,
    pub salt: Vec<u8>,
    /// For the device-mapper UUID, as veritysetup names it.
    pub uuid: [u8; 16],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuperblockError(pub String);

impl fmt::Display for SuperblockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dm-verity superblock: {}", self.0)
    }
}

/// Parses the superblock (cryptsetup's `struct verity_sb`: signature
/// "verity\0\0", version 1, little-endian fields).
pub fn parse(b: &[u8]) -> Result<Superblock, SuperblockError> {
    let bad = |m: String| SuperblockError(m);
    if b.len() < SUPERBLOCK_SIZE {
        return Err(bad(format!("{} bytes, want {SUPERBLOCK_SIZE}", b.len())));
    }
    if &b[0..8] != b"verity\0\0" {
        return Err(bad("no \"verity\" signature".into()));
    }
    let u32at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let version = u32at(8);
    if version != 1 {
        return Err(bad(format!("version {version}, only 1 is known")));
    }
    let hash_type = u32at(12);
    if hash_type > 1 {
        return Err(bad(format!("hash type {hash_type}")));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[16..32]);
    let alg = &b[32..64];
    let alg = &alg[..alg.iter().position(|&c| c == 0).unwrap_or(alg.len())];
    if alg.is_empty() || !alg.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return Err(bad("no hash algorithm name".into()));
    }
    let algorithm = String::from_utf8_lossy(alg).into_owned();
    let (data_block_size, hash_block_size) = (u32at(64), u32at(68));
    for (what, size) in [("data", data_block_size), ("hash", hash_block_size)] {
        if !size.is_power_of_two() || !(512..=1 << 20).contains(&size) {
            return Err(bad(format!("{what} block size {size}")));
        }
    }
    let mut d = [0u8; 8];
    d.copy_from_slice(&b[72..80]);
    let data_blocks = u64::from_le_bytes(d);
    if data_blocks == 0 || data_blocks.checked_mul(u64::from(data_block_size)).is_none() {
        return Err(bad(format!("{data_blocks} data blocks")));
    }
    let salt_size = usize::from(u16::from_le_bytes([b[80], b[81]]));
    if salt_size > 256 {
        return Err(bad(format!("salt of {salt_size} bytes")));
    }
    let salt = b[88..88 + salt_size].to_vec();
    Ok(Superblock {
        hash_type,
        algorithm,
        data_block_size,
        hash_block_size,
        data_blocks,
        salt,
        uuid,
    })
}

impl Superblock {
    /// The data device's size the table covers, bytes.
    pub fn data_bytes(&self) -> u64 {
        self.data_blocks * u64::from(self.data_block_size)
    }

    /// The `verity` target's parameters: `data` and `hash` are the devices
    /// (`major:minor`); the hash tree starts in the block after the
    /// superblock, as veritysetup writes it with no hash offset.
    pub fn table(&self, data: &str, hash: &str, root_hash: &str) -> String {
        let hash_start = (SUPERBLOCK_SIZE as u64).div_ceil(u64::from(self.hash_block_size));
        let salt = if self.salt.is_empty() { "-".to_string() } else { hex(&self.salt) };
        format!(
            "{} {data} {hash} {} {} {} {hash_start} {} {root_hash} {salt}",
            self.hash_type,
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            self.algorithm
        )
    }

    /// The device-mapper UUID veritysetup gives a device it opens.
    pub fn dm_uuid(&self, name: &str) -> String {
        format!("CRYPT-VERITY-{}-{name}", hex(&self.uuid))
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A superblock as veritysetup 2.7 writes it (fields set by hand).
    fn superblock() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0..8].copy_from_slice(b"verity\0\0");
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[12..16].copy_from_slice(&1u32.to_le_bytes());
        b[16..32].copy_from_slice(&[0xab; 16]);
        b[32..38].copy_from_slice(b"sha256");
        b[64..68].copy_from_slice(&4096u32.to_le_bytes());
        b[68..72].copy_from_slice(&4096u32.to_le_bytes());
        b[72..80].copy_from_slice(&1000u64.to_le_bytes());
        b[80..82].copy_from_slice(&4u16.to_le_bytes());
        b[88..92].copy_from_slice(&[1, 2, 0xfe, 0xff]);
        b
    }

    #[test]
    fn superblock_parses_into_the_verity_table() {
        let sb = parse(&superblock()).unwrap();
        assert_eq!(sb.algorithm, "sha256");
        assert_eq!(sb.data_bytes(), 4096 * 1000);
        assert_eq!(
            sb.table("254:2", "254:3", "ab12"),
            "1 254:2 254:3 4096 4096 1000 1 sha256 ab12 0102feff"
        );
        assert_eq!(sb.dm_uuid("usr"), format!("CRYPT-VERITY-{}-usr", "ab".repeat(16)));
        let mut no_salt = superblock();
        no_salt[80..82].fill(0);
        assert!(parse(&no_salt).unwrap().table("a", "b", "c").ends_with(" c -"));
    }

    #[test]
    fn damaged_superblocks_are_refused() {
        let cases: [(usize, &[u8], &str); 6] = [
            (0, b"erofs", "signature"),
            (8, &2u32.to_le_bytes(), "version 2"),
            (32, &[0; 6], "algorithm"),
            (64, &4095u32.to_le_bytes(), "data block size 4095"),
            (72, &0u64.to_le_bytes(), "0 data blocks"),
            (80, &257u16.to_le_bytes(), "salt of 257"),
        ];
        for (at, bytes, want) in cases {
            let mut b = superblock();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            let e = parse(&b).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        assert!(parse(&superblock()[..100]).is_err());
    }
}
