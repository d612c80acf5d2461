//! Hashing while bytes go by, with the algorithm a digest names.

use sha2::{Digest as _, Sha256, Sha512};

use crate::profile::{Algorithm, Digest};

pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest::Sha256(hex::encode(h.finalize())),
            Hasher::Sha512(h) => Digest::Sha512(hex::encode(h.finalize())),
        }
    }
}
