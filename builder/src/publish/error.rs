//! What can go wrong while publishing, with what was being done and to
//! what. AWS errors carry the service's own code and message.

use std::fmt;
use std::path::PathBuf;

use keel_bootstrap::aws::AwsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },

    #[error("{}: {message}", path.display())]
    BuildManifest { path: PathBuf, message: String },

    #[error(
        "{} has sha256 {actual}, but {} says {expected}: the image changed after it was built",
        image.display(),
        manifest.display()
    )]
    ImageMismatch { image: PathBuf, manifest: PathBuf, expected: String, actual: String },

    #[error("{call} in {region} ({target}): {source}")]
    Aws { call: &'static str, region: String, target: String, source: AwsError },

    #[error("{call} in {region} ({target}) answered without {missing}")]
    Incomplete { call: &'static str, region: String, target: String, missing: &'static str },

    #[error(
        "{} of {total} non-zero blocks of snapshot {snapshot_id} in {region} failed to upload \
         ({cleanup}):\n{}",
        failures.len(),
        BlockList(failures)
    )]
    Blocks {
        region: String,
        snapshot_id: String,
        total: u64,
        failures: Vec<BlockFailure>,
        cleanup: String,
    },

    #[error("{what} in {region} is in state {state}: {message}")]
    BadState { what: String, region: String, state: String, message: String },

    #[error("gave up waiting for {what} in {region} to be {wanted} (last state: {state})")]
    Wait { what: String, region: String, wanted: &'static str, state: String },
}

/// One block that could not be uploaded, after all retries.
#[derive(Debug)]
pub struct BlockFailure {
    pub index: u64,
    pub message: String,
}

struct BlockList<'a>(&'a [BlockFailure]);

impl fmt::Display for BlockList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  block {}: {}", b.index, b.message)?;
        }
        Ok(())
    }
}

/// An AWS SDK error as `Error::Aws`, kept as its source: it reads as the
/// service's code and message (`AuthFailure: AWS was not able to validate
/// ...`) when the service answered, the whole error chain otherwise
/// (timeouts, connection errors); see [`AwsError`].
pub fn aws(
    call: &'static str,
    region: &str,
    target: impl Into<String>,
    err: impl Into<AwsError>,
) -> Error {
    Error::Aws { call, region: region.to_string(), target: target.into(), source: err.into() }
}
