//! What `publish` stores next to a bundle so that a re-publish can tell
//! "same assets" from "new assets" without decrypting anything, and without
//! storing a plain hash of a secret (a hash of a low-entropy secret such as
//! a bootstrap token could be brute-forced):
//!
//! - the content fingerprint is HMAC-SHA256 keyed with the asset
//!   directory's random `fingerprint.key` over the bundle's plaintext and
//!   the requested KMS key; without that key it says nothing about the
//!   contents;
//! - the CA fingerprints are plain SHA-256 of the CA certificates, which
//!   are public.

use sha2::{Digest, Sha256};

/// Label that separates this use of the key from any other.
const LABEL: &[u8] = b"keel-bundle-fingerprint-v1\0";
const BLOCK: usize = 64;

/// HMAC-SHA256 (RFC 2104) over the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    block.fill(0);
    outer.finalize().into()
}

/// The content fingerprint of a bundle: `hmac-sha256:<hex>`.
pub fn content(key: &[u8], kms_key: &str, plaintext: &[u8]) -> String {
    let mac = hmac_sha256(key, &[LABEL, kms_key.as_bytes(), b"\0", plaintext]);
    format!("hmac-sha256:{}", hex::encode(mac))
}

/// SHA-256 of a public certificate, hex.
pub fn certificate(pem: &[u8]) -> String {
    hex::encode(Sha256::digest(pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc_4231_test_cases() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let mac =
            hmac_sha256(&[0xaa; 131], &[b"Test Using Larger Than Block-Size Key - Hash Key First"]);
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn content_depends_on_key_kms_key_and_plaintext() {
        let a = content(&[1; 32], "alias/k", b"x");
        assert!(a.starts_with("hmac-sha256:"));
        assert_ne!(a, content(&[2; 32], "alias/k", b"x"));
        assert_ne!(a, content(&[1; 32], "alias/j", b"x"));
        assert_ne!(a, content(&[1; 32], "alias/k", b"y"));
        assert_eq!(a, content(&[1; 32], "alias/k", b"x"));
    }
}
