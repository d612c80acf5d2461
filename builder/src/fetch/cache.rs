//! The content-addressed artifact cache: `<dir>/<algorithm>/<hex>`. An
//! entry appears only under its verified digest (temp file in the same
//! directory, hashed while written, fsynced, renamed), and is re-verified
//! before every use; a corrupt entry is evicted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::hash::Hasher;
use super::FetchError;
use crate::profile::{Algorithm, Digest};

/// Buffer size for hashing and writing artifacts (hundreds of MB each).
const BUFFER: usize = 1 << 20;

/// Distinguishes temp files of concurrent downloads in one process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// What [`Cache::lookup`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A verified entry.
    Hit(PathBuf),
    /// No entry.
    Miss,
    /// An entry whose contents had another digest: removed.
    Evicted { actual: Digest },
}

impl Cache {
    /// Opens (creating when missing) the cache in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Cache, FetchError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| FetchError::Io { path: dir.clone(), source })?;
        Ok(Cache { dir })
    }

    /// `~/.cache/keel/artifacts`.
    pub fn default_dir() -> PathBuf {
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        home.join(".cache/keel/artifacts")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry for `digest` lives (whether or not it exists).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.algorithm().name()).join(digest.hex())
    }

    /// Looks `digest` up and re-verifies the entry's contents; evicts a
    /// corrupt one. Blocking: hashes the whole file.
    pub fn lookup(&self, digest: &Digest) -> Result<Lookup, FetchError> {
        let path = self.path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Miss),
            Err(source) => return Err(FetchError::Io { path, source }),
        };
        let actual = hash_reader(file, digest.algorithm())
            .map_err(|source| FetchError::Io { path: path.clone(), source })?;
        if actual == *digest {
            return Ok(Lookup::Hit(path));
        }
        fs::remove_file(&path).map_err(|source| FetchError::Io { path: path.clone(), source })?;
        Ok(Lookup::Evicted { actual })
    }

    /// A new temp file in the entry directory of `algorithm`, hashing what
    /// is written to it. Dropped without [`Pending::commit`], it is removed.
    pub fn pending(&self, algorithm: Algorithm) -> Result<Pending, FetchError> {
        let dir = self.dir.join(algorithm.name());
        fs::create_dir_all(&dir).map_err(|source| FetchError::Io { path: dir.clone(), source })?;
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".tmp-{}-{seq}", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|source| FetchError::Io { path: tmp.clone(), source })?;
        Ok(Pending {
            cache: self.clone(),
            tmp,
            out: Some(BufWriter::with_capacity(BUFFER, file)),
            hasher: Some(Hasher::new(algorithm)),
        })
    }
}

/// An entry being written.
pub struct Pending {
    cache: Cache,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    hasher: Option<Hasher>,
}

impl Pending {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), FetchError> {
        if let (Some(out), Some(hasher)) = (self.out.as_mut(), self.hasher.as_mut()) {
            hasher.update(bytes);
            out.write_all(bytes)
                .map_err(|source| FetchError::Io { path: self.tmp.clone(), source })?;
        }
        Ok(())
    }

    /// Finishes the entry when its digest is `expected`: fsyncs and renames
    /// it into place and returns its path. Otherwise removes it and returns
    /// the actual digest as the inner error.
    pub fn commit(mut self, expected: &Digest) -> Result<Result<PathBuf, Digest>, FetchError> {
        Ok(self.finish(Some(expected))?.map(|(path, _)| path))
    }

    /// Finishes the entry under whatever digest its contents have.
    pub fn commit_any(mut self) -> Result<(PathBuf, Digest), FetchError> {
        match self.finish(None)? {
            Ok(done) => Ok(done),
            // Nothing was expected, so nothing can mismatch.
            Err(actual) => Err(FetchError::Io {
                path: self.cache.path(&actual),
                source: io::Error::other("digest mismatch without an expected digest"),
            }),
        }
    }

    fn finish(
        &mut self,
        expected: Option<&Digest>,
    ) -> Result<Result<(PathBuf, Digest), Digest>, FetchError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FetchError::Io { path, source }
        };
        let (Some(out), Some(hasher)) = (self.out.take(), self.hasher.take()) else {
            return Err(FetchError::Io {
                path: self.tmp.clone(),
                source: io::Error::other("entry already finished"),
            });
        };
        let actual = hasher.finish();
        if expected.is_some_and(|e| *e != actual) {
            drop(out);
            let _ = fs::remove_file(&self.tmp);
            return Ok(Err(actual));
        }
        let file = out
            .into_inner()
            .map_err(|e| FetchError::Io { path: self.tmp.clone(), source: e.into_error() })?;
        file.sync_all().map_err(io_err(&self.tmp))?;
        drop(file);
        let path = self.cache.path(&actual);
        fs::rename(&self.tmp, &path).map_err(io_err(&path))?;
        if let Some(dir) = path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
        }
        Ok(Ok((path, actual)))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.hasher.is_some() {
            self.out = None;
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// The digest of everything `r` yields.
pub fn hash_reader(mut r: impl Read, algorithm: Algorithm) -> io::Result<Digest> {
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256_of(bytes: &[u8]) -> Digest {
        hash_reader(bytes, Algorithm::Sha256).unwrap()
    }

    #[test]
    fn commit_verifies_and_leaves_nothing_on_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let good = sha256_of(b"hello");

        let mut p = cache.pending(Algorithm::Sha256).unwrap();
        p.write(b"jello").unwrap();
        let actual = p.commit(&good).unwrap().unwrap_err();
        assert_eq!(actual, sha256_of(b"jello"));
        assert_eq!(fs::read_dir(dir.path().join("sha256")).unwrap().count(), 0);

        let mut p = cache.pending(Algorithm::Sha256).unwrap();
        p.write(b"hel").unwrap();
        p.write(b"lo").unwrap();
        let path = p.commit(&good).unwrap().unwrap();
        assert_eq!(path, cache.path(&good));
        assert_eq!(cache.lookup(&good).unwrap(), Lookup::Hit(path));
    }

    #[test]
    fn dropped_pending_entry_removes_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let mut p = cache.pending(Algorithm::Sha512).unwrap();
        p.write(b"half").unwrap();
        drop(p);
        assert_eq!(fs::read_dir(dir.path().join("sha512")).unwrap().count(), 0);
    }

    #[test]
    fn lookup_evicts_a_corrupt_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let good = sha256_of(b"hello");
        fs::create_dir_all(dir.path().join("sha256")).unwrap();
        fs::write(cache.path(&good), b"hellO").unwrap();
        assert_eq!(cache.lookup(&good).unwrap(), Lookup::Evicted { actual: sha256_of(b"hellO") });
        assert!(!cache.path(&good).exists());
        assert_eq!(cache.lookup(&good).unwrap(), Lookup::Miss);
    }
}
