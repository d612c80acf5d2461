//! Name rules. A cluster name ends up in KMS encryption contexts, S3
//! metadata, EC2 tags, bundle headers and kubeconfig names; the builder
//! refuses to make assets for a name this rule rejects, and a node refuses
//! user data that names one.

/// A cluster name that breaks [`check_cluster_name`]'s rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cluster name {0:?} is not valid: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit")]
pub struct ClusterNameError(pub String);

/// The cluster-name rule: 1-63 lowercase ASCII letters, digits and `-`,
/// starting and ending with a letter or digit (a DNS label).
pub fn check_cluster_name(name: &str) -> Result<(), ClusterNameError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ClusterNameError(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_follow_one_rule() {
        for ok in ["prod", "prod-eu-1", "a", &"x".repeat(63)] {
            check_cluster_name(ok).unwrap();
        }
        for bad in ["", "Prod", "-a", "a-", "a_b", "a.b", "a b", "é", &"x".repeat(64)] {
            let e = check_cluster_name(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}
