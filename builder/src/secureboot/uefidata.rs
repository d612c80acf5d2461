//! EC2's `UefiData` (RegisterImage): the UEFI variable store an instance
//! of the AMI starts with, here PK, KEK and db holding the hierarchy's
//! certificates, so that its firmware runs in user mode and boots only
//! what db signed.
//!
//! The format is the one of AWS's `uefivars` tool (PyPI), version 0:
//! base64 of `"AMZNUEFI"` (u64 LE magic), CRC32C (u32) of the rest, the
//! version (u32 0), then a zlib stream of: the number of variables (u64),
//! and per variable its name (u64 length + UTF-8), data (u64 length +
//! bytes), vendor GUID (16 bytes, EFI byte order), attributes (u32) and,
//! for time-based authenticated variables, a timestamp (16 zero bytes)
//! and a digest (u64 length + 32 zero bytes). `uefivars` decompresses with
//! a preset dictionary that a stream made without one never asks for.
//! Each variable's data is an EFI_SIGNATURE_LIST of one X.509 certificate.

use std::io::Write as _;

use base64::Engine as _;

use super::Hierarchy;

/// "AMZNUEFI" read as a little-endian u64.
const MAGIC: u64 = 0x4946_4555_4e5a_4d41;
const VERSION: u32 = 0;

const NON_VOLATILE: u32 = 0x01;
const BOOTSERVICE_ACCESS: u32 = 0x02;
const RUNTIME_ACCESS: u32 = 0x04;
const TIME_BASED_AUTHENTICATED_WRITE_ACCESS: u32 = 0x20;
/// PK, KEK and db are time-based authenticated variables.
const ATTRIBUTES: u32 =
    NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS | TIME_BASED_AUTHENTICATED_WRITE_ACCESS;

/// EFI_GLOBAL_VARIABLE (PK, KEK).
pub const GLOBAL_VARIABLE: uuid::Uuid = uuid::uuid!("8be4df61-93ca-11d2-aa0d-00e098032b8c");
/// EFI_IMAGE_SECURITY_DATABASE_GUID (db, dbx).
pub const IMAGE_SECURITY_DATABASE: uuid::Uuid = uuid::uuid!("d719b2cb-3d3a-4596-a3bc-dad00e67656f");
/// EFI_CERT_X509_GUID: a signature list of DER certificates.
pub const CERT_X509: uuid::Uuid = uuid::uuid!("a5c059a1-94e4-4aa7-87b5-ab155c2bf072");

/// An EFI_SIGNATURE_LIST with one X.509 certificate owned by `owner`.
pub fn signature_list(owner: &uuid::Uuid, der: &[u8]) -> Vec<u8> {
    let signature_size = 16 + der.len();
    let list_size = 16 + 4 + 4 + 4 + signature_size;
    let mut out = Vec::with_capacity(list_size);
    out.extend_from_slice(&CERT_X509.to_bytes_le());
    out.extend_from_slice(&(list_size as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // SignatureHeaderSize
    out.extend_from_slice(&(signature_size as u32).to_le_bytes());
    out.extend_from_slice(&owner.to_bytes_le());
    out.extend_from_slice(der);
    out
}

fn data(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// CRC-32C (Castagnoli, reflected), as `google-crc32c` computes it.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
        }
    }
    !crc
}

/// The `UefiData` of an AMI that enrols `h` (PK, KEK, db).
pub fn encode(h: &Hierarchy) -> std::io::Result<String> {
    let vars = [
        ("PK", GLOBAL_VARIABLE, &h.pk.der),
        ("KEK", GLOBAL_VARIABLE, &h.kek.der),
        ("db", IMAGE_SECURITY_DATABASE, &h.db.der),
    ];
    let mut raw = Vec::new();
    raw.extend_from_slice(&(vars.len() as u64).to_le_bytes());
    for (name, guid, der) in vars {
        data(&mut raw, name.as_bytes());
        data(&mut raw, &signature_list(&h.owner, der));
        raw.extend_from_slice(&guid.to_bytes_le());
        raw.extend_from_slice(&ATTRIBUTES.to_le_bytes());
        raw.extend_from_slice(&[0u8; 16]); // no timestamp
        data(&mut raw, &[0u8; 32]); // no digest
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&raw)?;
    let zdata = z.finish()?;
    let mut body = VERSION.to_le_bytes().to_vec();
    body.extend_from_slice(&zdata);
    let mut blob = MAGIC.to_le_bytes().to_vec();
    blob.extend_from_slice(&crc32c(&body).to_le_bytes());
    blob.extend_from_slice(&body);
    Ok(base64::engine::general_purpose::STANDARD.encode(blob))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn signature_list_layout() {
        let owner = uuid::uuid!("11111111-2222-3333-4444-555555555555");
        let l = signature_list(&owner, b"DER");
        assert_eq!(l.len(), 28 + 16 + 3);
        assert_eq!(&l[..4], &[0xa1, 0x59, 0xc0, 0xa5]);
        assert_eq!(u32::from_le_bytes(l[16..20].try_into().unwrap()), 47);
        assert_eq!(u32::from_le_bytes(l[24..28].try_into().unwrap()), 19);
        assert_eq!(&l[28..32], &[0x11, 0x11, 0x11, 0x11]);
        assert_eq!(&l[44..], b"DER");
    }
}
