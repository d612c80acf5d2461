//! Digests the source that decides what `keel build` writes into an image
//! (this crate's `src/`, the shared contract crate's `src/` and the
//! workspace's `Cargo.lock`) into `KEEL_SOURCE_SHA256`, which the image's
//! build key includes. A builder whose code changed then rebuilds its
//! images instead of calling the old ones up to date, whether or not its
//! version or the image recipe was bumped; the same source gives the same
//! key on any machine and compiler, so images stay reproducible.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let here = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    // A packaged crate has no workspace beside it: what is there is hashed.
    let inputs = [here.join("src"), here.join("../contract/src"), here.join("../Cargo.lock")];
    let mut h = Sha256::new();
    for input in &inputs {
        println!("cargo:rerun-if-changed={}", input.display());
        let mut list = Vec::new();
        if input.is_dir() {
            files(input, &mut list);
        } else if input.is_file() {
            list.push(input.clone());
        }
        list.sort();
        for f in list {
            let rel = f.strip_prefix(&here).unwrap_or(&f).to_string_lossy().into_owned();
            let body = fs::read(&f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
            for part in [rel.as_bytes(), &body] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part);
            }
        }
    }
    println!("cargo:rustc-env=KEEL_SOURCE_SHA256={}", hex(&h.finalize()));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
