//! EC2 tag names. The builder puts them on AMIs and snapshots; launch
//! templates put the instance tags on instances; keel-bootstrap filters
//! DescribeInstances by them to find its peers.

/// Instance tag: the cluster an instance belongs to.
pub const CLUSTER: &str = "keel:cluster";
/// Instance, AMI and snapshot tag: the node role.
pub const ROLE: &str = "keel:role";
/// AMI and snapshot tag: sha256 of the raw disk image. Publishing looks an
/// image up by it, so that publishing the same image twice reuses the AMI.
pub const IMAGE_SHA256: &str = "keel:image-sha256";
/// AMI and snapshot tag: the profile the image was built from.
pub const PROFILE: &str = "keel:profile";
/// AMI and snapshot tag prefix: one tag per component, `keel:component:<name>` = version.
pub const COMPONENT_PREFIX: &str = "keel:component:";

/// The EC2 filter name for a tag key (`tag:<key>`).
pub fn filter_name(key: &str) -> String {
    format!("tag:{key}")
}
