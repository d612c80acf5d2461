//! TEST ONLY: the layer that makes a test image, added only when the
//! profile has a `[test]` table (never to a shipped image): the marker
//! `/usr/lib/keel/test-image` in the verified `/usr` (the node then
//! accepts a plain-http `aws.endpoint-url`), and the profile's test CAs,
//! kept in `/usr/share/keel/test-ca/` and appended to the trust store
//! keel-bootstrap verifies AWS endpoints against
//! (`/etc/ssl/certs/ca-certificates.crt`, from the factory /etc).

use std::fs;
use std::path::Path;

use keel_contract::userdata::TEST_IMAGE_FILE;

use super::write_file;
use crate::image::BuildError;
use crate::profile::TestImage;

/// The trust store Debian's ca-certificates builds, relative to the root.
const TRUST_STORE: &str = "etc/ssl/certs/ca-certificates.crt";
/// Where the test CAs are kept as files of their own.
const TEST_CA_DIR: &str = "usr/share/keel/test-ca";

const MARKER: &str = "\
# Written by keel build: a TEST IMAGE, built from a profile with a [test]
# table. It accepts a plain-http aws.endpoint-url and trusts the CAs in
# /usr/share/keel/test-ca. Never ship it.
";

/// Adds the test layer to the tree at `root` (before the factory /etc is
/// made from `root/etc`).
pub fn add_test_layer(root: &Path, test: &TestImage) -> Result<(), BuildError> {
    write_file(root, TEST_IMAGE_FILE, MARKER.as_bytes(), 0o644)?;
    let store = root.join(TRUST_STORE);
    let mut bundle = fs::read(&store).map_err(|e| BuildError::io(&store, e))?;
    for (i, pem) in test.trusted_cas.iter().enumerate() {
        write_file(root, &format!("{TEST_CA_DIR}/{i}.crt"), pem.as_bytes(), 0o644)?;
        if !bundle.is_empty() && !bundle.ends_with(b"\n") {
            bundle.push(b'\n');
        }
        bundle.extend_from_slice(pem.as_bytes());
    }
    write_file(root, TRUST_STORE, &bundle, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_and_the_cas_go_in_and_debians_bundle_stays() {
        let dir = tempfile::tempdir().unwrap();
        write_file(
            dir.path(),
            TRUST_STORE,
            b"-----BEGIN CERTIFICATE-----\nDEBIAN\n-----END CERTIFICATE-----",
            0o644,
        )
        .unwrap();
        let ca = "-----BEGIN CERTIFICATE-----\nTEST\n-----END CERTIFICATE-----\n";
        add_test_layer(dir.path(), &TestImage { trusted_cas: vec![ca.into()] }).unwrap();
        let bundle = fs::read_to_string(dir.path().join(TRUST_STORE)).unwrap();
        assert!(
            bundle.starts_with("-----BEGIN CERTIFICATE-----\nDEBIAN\n-----END CERTIFICATE-----\n")
        );
        assert!(bundle.ends_with(ca));
        assert!(dir.path().join(TEST_IMAGE_FILE).is_file());
        assert_eq!(fs::read_to_string(dir.path().join(TEST_CA_DIR).join("0.crt")).unwrap(), ca);
    }

    #[test]
    fn a_base_without_a_trust_store_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = add_test_layer(dir.path(), &TestImage { trusted_cas: vec![] }).unwrap_err();
        assert!(format!("{err}").contains("ca-certificates.crt"), "{err}");
    }
}
