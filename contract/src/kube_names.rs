//! Kubernetes' name rules for what user data hands the kubelet and the
//! control plane (k8s.io/apimachinery `validation`: qualified names, label
//! values, RFC 1123 subdomains), and the kubelet's own rule for the labels
//! it may set on its node (k8s.io/kubelet `KubeletLabels`,
//! `KubeletLabelNamespaces`; the NodeRestriction admission plugin enforces
//! the same set). A value that passes here contains no space, quote,
//! comma or `=` beyond its syntax, so it cannot smuggle a flag.

/// Labels a kubelet may set on its own node in the `kubernetes.io` and
/// `k8s.io` namespaces.
pub const KUBELET_LABELS: [&str; 12] = [
    "kubernetes.io/hostname",
    "kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
];
/// Namespaces (and their subdomains) a kubelet may label freely.
pub const KUBELET_LABEL_NAMESPACES: [&str; 2] = ["kubelet.kubernetes.io", "node.kubernetes.io"];
/// Namespaces Kubernetes reserves.
pub const RESERVED_NAMESPACES: [&str; 2] = ["kubernetes.io", "k8s.io"];

fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// A qualified name's name part or a non-empty label value: at most 63
/// characters, alphanumeric at both ends, `-`, `_` or `.` between.
fn name_part(s: &str) -> bool {
    s.len() <= 63
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

/// An RFC 1123 subdomain: lowercase labels of letters, digits and `-`
/// (alphanumeric at both ends) joined by dots, 253 characters at most.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.is_empty() || s.len() > 253 || !s.split('.').all(label_ok) {
        return Err(format!(
            "{s:?} is not a lowercase RFC 1123 DNS name (labels of a-z, 0-9 and '-', \
             alphanumeric at both ends, joined by '.', at most 253 characters)"
        ));
    }
    Ok(())
}

/// A label key: `[prefix/]name`, prefix a DNS subdomain.
pub fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if !name_part(name) {
        return Err(format!(
            "label key {key:?}: the name part must be 1-63 characters, alphanumeric at both \
             ends with '-', '_' or '.' between"
        ));
    }
    if let Some(p) = prefix {
        dns_subdomain(p).map_err(|e| format!("label key {key:?}: prefix {e}"))?;
    }
    Ok(())
}

/// A label value: empty, or like a name part.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || name_part(value) {
        Ok(())
    } else {
        Err(format!(
            "label value {value:?} must be empty or at most 63 characters, alphanumeric at both \
             ends with '-', '_' or '.' between"
        ))
    }
}

fn in_namespace(prefix: &str, namespace: &str) -> bool {
    prefix == namespace || prefix.ends_with(&format!(".{namespace}"))
}

/// A `key=value` label the kubelet may set on its own node
/// (`--node-labels`): valid key and value, and a reserved namespace only
/// where the kubelet is allowed one. `node-role.kubernetes.io/*` is
/// refused: the kubelet refuses it at start-up and NodeRestriction would
/// refuse the update; set roles with the API after the node joins.
pub fn node_label(label: &str) -> Result<(), String> {
    let (key, value) =
        label.split_once('=').ok_or_else(|| format!("node label {label:?} is not key=value"))?;
    label_key(key)?;
    label_value(value)?;
    if let Some((prefix, _)) = key.rsplit_once('/') {
        let reserved = RESERVED_NAMESPACES.iter().any(|n| in_namespace(prefix, n));
        let allowed = KUBELET_LABEL_NAMESPACES.iter().any(|n| in_namespace(prefix, n))
            || KUBELET_LABELS.contains(&key);
        if reserved && !allowed {
            return Err(format!(
                "label key {key:?} is in a namespace Kubernetes reserves (kubernetes.io, \
                 k8s.io); a kubelet may set only {} and keys under {}",
                KUBELET_LABELS.join(", "),
                KUBELET_LABEL_NAMESPACES.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_labels_follow_the_kubelets_rules() {
        for ok in [
            "tier=general",
            "keel.dev/pool=general",
            "node.kubernetes.io/exclude-from-external-load-balancers=",
            "kubelet.kubernetes.io/x=y",
            "topology.kubernetes.io/zone=eu-central-1a",
            "a=",
        ] {
            node_label(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("x=y --anonymous-auth=true", "label value"),
            ("x --anonymous-auth=true=y", "label key"),
            ("tier", "not key=value"),
            ("node-role.kubernetes.io/control-plane=", "reserves"),
            ("kubernetes.io/role=master", "reserves"),
            ("example.k8s.io/x=y", "reserves"),
            ("Keel.dev/pool=a", "prefix"),
            ("-x=y", "name part"),
            ("x=\"y\"", "label value"),
            ("x=a,b=c", "label value"),
        ] {
            let err = node_label(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(label_value(&"a".repeat(64)).is_err());
    }

    #[test]
    fn dns_names() {
        dns_subdomain("cluster.local").unwrap();
        dns_subdomain("k8s-1.example.com").unwrap();
        for bad in ["", "Cluster.local", "a..b", "-a.b", "a b", "a.b.", "x_y"] {
            assert!(dns_subdomain(bad).is_err(), "{bad}");
        }
    }
}
