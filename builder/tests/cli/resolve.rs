//! `keel resolve`: the shipped profiles, inheritance, and every bad input
//! named by file, line and column.

use serde_json::Value;

use super::*;

fn resolve_json(cwd: &Path, profile: &str, role: &str) -> Value {
    let out = ok(&keel(cwd, &["resolve", "--profile", profile, "--role", role, "--json"]));
    serde_json::from_str(&out).expect("resolve --json prints JSON")
}

fn names(v: &Value) -> Vec<String> {
    v["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn production_resolves_for_every_role() {
    let repo = repo();
    let controller = resolve_json(&repo, "production", "controller");
    // A shipped profile never makes a test image.
    assert!(controller.get("test").is_none(), "production has a [test] table");
    assert_eq!(
        names(&controller),
        [
            "cni-plugins",
            "containerd",
            "crictl",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
            "runc"
        ]
    );
    let kubelet = &controller["components"][6];
    assert_eq!(
        kubelet["source"]["url"],
        "https://dl.k8s.io/release/v1.36.4/bin/linux/amd64/kubelet"
    );
    assert_eq!(kubelet["source"]["digest"]["algorithm"], "sha256");
    assert_eq!(kubelet["install"]["mode"], 0o755);
    assert_eq!(controller["components"][3]["source"]["digest"]["algorithm"], "sha512");
    assert_eq!(controller["arch"], "amd64");
    assert_eq!(controller["base"]["suite"], "trixie");
    assert!(controller["base"]["packages"].as_array().unwrap().contains(&Value::from("conntrack")));

    let etcd = resolve_json(&repo, "production", "etcd");
    assert_eq!(names(&etcd), ["etcd"]);
    let worker = resolve_json(&repo, "production", "worker");
    assert_eq!(names(&worker), ["cni-plugins", "containerd", "crictl", "kubelet", "runc"]);

    // The table names every component with its version.
    let table = ok(&keel(&repo, &["resolve", "--profile", "production", "--role", "worker"]));
    assert!(table.contains("kubelet") && table.contains("1.36.4"), "{table}");
}

#[test]
fn local_profile_builds_etcd_from_debian_and_names_kubelet_missing() {
    let repo = repo();
    let etcd = resolve_json(&repo, "local", "etcd");
    assert_eq!(
        etcd["components"][0]["source"],
        serde_json::json!({"kind": "debian", "package": "etcd-server"})
    );
    let packages = etcd["base"]["packages"].as_array().unwrap();
    assert!(packages.contains(&Value::from("etcd-server")), "{packages:?}");
    assert!(packages.contains(&Value::from("etcd-client")), "{packages:?}");

    for role in ["worker", "controller"] {
        let err = fails(&keel(&repo, &["resolve", "--profile", "local", "--role", role]));
        assert!(err.contains("\"kubelet\""), "{err}");
        assert!(err.contains("profile \"local\""), "{err}");
        assert!(err.contains(&format!("images/{role}/role.toml:")), "{err}");
    }
}

const BASE: &str = r#"# the parent
source-date-epoch = 100

[base]
suite = "trixie"
packages = ["systemd"]

[components.tool]
version = "1.0"
url = "https://example.invalid/tool-{version}-{arch}"
sha256 = "1111111111111111111111111111111111111111111111111111111111111111"
install = { kind = "binary", path = "/usr/bin/tool", mode = 0o755 }

[components.pkg]
debian = "some-package"
"#;

fn workspace_with_roles() -> Workspace {
    let ws = Workspace::new();
    ws.profile("base", BASE);
    ws.role("worker", "components = [\"tool\", \"pkg\"]\npackages = [\"iptables\"]\n");
    ws.role("etcd", "components = [\"pkg\"]\n");
    ws.role("controller", "components = [\"tool\"]\n");
    ws
}

#[test]
fn extends_overrides_single_fields() {
    let ws = workspace_with_roles();
    ws.profile(
        "child",
        r#"extends = "base"

[base]
mirror = "http://mirror.invalid/debian"

[components.tool]
version = "2.0"
sha512 = "22222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222"

[components.pkg]
version = "3.1-2"

[roles.worker]
packages = ["strace"]
"#,
    );
    ws.profile("grandchild", "extends = \"child\"\nsource-date-epoch = 200\n");
    let v = resolve_json(ws.path(), "grandchild", "worker");
    assert_eq!(v["profile"], "grandchild");
    assert_eq!(v["extends"], serde_json::json!(["child", "base"]));
    assert_eq!(v["source-date-epoch"], 200);
    // Inherited from base, overridden in child, field by field.
    assert_eq!(v["base"]["suite"], "trixie");
    assert_eq!(v["base"]["mirror"], "http://mirror.invalid/debian");
    assert_eq!(
        v["base"]["packages"],
        serde_json::json!(["iptables", "some-package=3.1-2", "strace", "systemd"])
    );
    let tool = &v["components"][1];
    assert_eq!(tool["version"], "2.0");
    assert_eq!(tool["source"]["url"], "https://example.invalid/tool-2.0-amd64");
    assert_eq!(tool["source"]["digest"]["algorithm"], "sha512");
    assert_eq!(tool["install"]["path"], "/usr/bin/tool");

    // A path works as well as a name.
    let by_path = ws.path().join("profiles/grandchild.toml");
    let v2 = resolve_json(ws.path(), by_path.to_str().unwrap(), "worker");
    assert_eq!(v, v2);
}

/// A profile adds components to a role (a test image's extra binary, an
/// agent): `[roles.R] components` on top of role.toml's, each defined in
/// the chain; one it does not define is an error at its position.
#[test]
fn a_profile_adds_components_to_a_role() {
    let ws = workspace_with_roles();
    ws.profile("child", "extends = \"base\"\n[roles.controller]\ncomponents = [\"pkg\"]\n");
    let controller = resolve_json(ws.path(), "child", "controller");
    let names: Vec<&str> = controller["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pkg", "tool"]);
    // Other roles are unchanged.
    let etcd = resolve_json(ws.path(), "child", "etcd");
    assert_eq!(etcd["components"].as_array().unwrap().len(), 1);

    ws.profile("child", "extends = \"base\"\n[roles.worker]\ncomponents = [\"agent\"]\n");
    let err = fails(&ws.keel(&["resolve", "--profile", "child", "--role", "worker"]));
    assert!(err.contains("profiles/child.toml:3:"), "{err}");
    assert!(err.contains("\"agent\""), "{err}");
}

/// Writes `child.toml` (extending base) and asserts that resolving it fails
/// at `line:column` with `needle` in the message.
#[track_caller]
fn assert_error_at(ws: &Workspace, file: &str, text: &str, at: &str, needle: &str) {
    ws.profile(file, text);
    let err = fails(&ws.keel(&["resolve", "--profile", file, "--role", "worker"]));
    let expected = format!("profiles/{file}.toml:{at}: ");
    assert!(err.contains(&expected), "expected {expected:?} in: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

#[test]
fn bad_profiles_are_errors_with_file_line_and_column() {
    let ws = workspace_with_roles();
    assert_error_at(
        &ws,
        "child",
        "extends = \"base\"\n[components.tool]\nverison = \"2\"\n",
        "3:1",
        "unknown field `verison`",
    );
    assert_error_at(
        &ws,
        "child",
        "extends = \"base\"\nbogus = 1\n",
        "2:1",
        "unknown field `bogus`",
    );
    assert_error_at(
        &ws,
        "child",
        "extends = \"base\"\n[components.tool]\nversion = \"2\"\nsha256 = \"abc123\"\n",
        "4:10",
        "malformed sha256",
    );
    assert_error_at(
        &ws,
        "child",
        "extends = \"base\"\n\n[components.new]\nurl = \"https://x.invalid/{version}\"\nsha256 = \"1111111111111111111111111111111111111111111111111111111111111111\"\ninstall = { kind = \"binary\", path = \"/usr/bin/new\", mode = 0o755 }\n",
        "3:13",
        "missing field `version`",
    );
    assert_error_at(
        &ws,
        "child",
        "extends = \"base\"\n[components.tool]\ninstall = { kind = \"binary\", path = \"/usr/bin/t\" }\n",
        "3:11",
        "missing field `mode`",
    );
    assert_error_at(
        &ws,
        "child",
        "extends = \"base\"\n[roles.master]\npackages = []\n",
        "2:8",
        "unknown variant `master`",
    );
    assert_error_at(
        &ws,
        "child",
        "extends = \"base\"\n[components.tool]\nversion = \"9.9\"\n",
        "3:11",
        "without a new `sha256` or `sha512`",
    );
    assert_error_at(
        &ws,
        "child",
        "extends = \"base\"\n[components.tool]\nurl = \"https://x.invalid/{name}\"\n",
        "3:7",
        "unknown placeholder \"{name}\"",
    );
    assert_error_at(&ws, "child", "extends = \"nowhere\"\n", "1:11", "no file");
    // No profile in the chain sets base.suite.
    assert_error_at(&ws, "lonely", "[base]\npackages = []\n", "1:1", "missing field `base.suite`");
}

#[test]
fn cycle_in_extends_is_named_where_it_closes() {
    let ws = workspace_with_roles();
    ws.profile("a", "extends = \"b\"\n");
    ws.profile("b", "# b\nextends = \"c\"\n");
    ws.profile("c", "\n\nextends = \"a\"\n");
    let err = fails(&ws.keel(&["resolve", "--profile", "a", "--role", "etcd"]));
    assert!(err.contains("profiles/c.toml:3:11: cycle in `extends`: a -> b -> c -> a"), "{err}");
}

#[test]
fn bad_role_files_and_roles_are_errors() {
    let ws = workspace_with_roles();
    ws.role("worker", "components = [\"tool\"]\nservices = []\n");
    let err = fails(&ws.keel(&["resolve", "--profile", "base", "--role", "worker"]));
    assert!(err.contains("images/worker/role.toml:2:1: unknown field `services`"), "{err}");

    ws.role("worker", "components = [\"tool\",\n  \"kubelet\"]\n");
    let err = fails(&ws.keel(&["resolve", "--profile", "base", "--role", "worker"]));
    assert!(
        err.contains("images/worker/role.toml:2:3: role worker needs component \"kubelet\", which profile \"base\" does not provide"),
        "{err}"
    );

    let err = fails(&ws.keel(&["resolve", "--profile", "base", "--role", "master"]));
    assert!(err.contains("master") && err.contains("controller, etcd, worker"), "{err}");

    let err = fails(&ws.keel(&["resolve", "--profile", "missing", "--role", "etcd"]));
    assert!(err.contains("profile \"missing\" not found"), "{err}");
}

#[test]
fn help_fits_80_columns() {
    let repo = repo();
    for sub in ["resolve", "fetch", "pin", "userdata", "iam-policy", "build", "inspect", "assets"] {
        let help = ok(&keel(&repo, &[sub, "--help"]));
        for line in help.lines() {
            assert!(line.chars().count() <= 80, "keel {sub} --help: line too long: {line:?}");
        }
    }
}

/// Issue 13: `no_timer_check`, a QEMU workaround, was on every image's
/// kernel command line. Now only a profile that asks for it gets extra
/// arguments; the shipped profiles ask for none, and a profile cannot
/// replace the arguments that find and verify /usr and the root.
#[test]
fn bug_a_test_only_kernel_argument_is_a_profile_key_the_shipped_profiles_do_not_set() {
    let repo = repo();
    for profile in ["production", "local"] {
        let v = resolve_json(&repo, profile, "etcd");
        assert!(v.get("kernel-cmdline").is_none(), "{profile}: {v}");
    }
    let ws = workspace_with_roles();
    ws.profile("child", "extends = \"base\"\nkernel-cmdline = [\"no_timer_check\"]\n");
    let v = resolve_json(ws.path(), "child", "worker");
    assert_eq!(v["kernel-cmdline"], serde_json::json!(["no_timer_check"]));
    let table = ok(&ws.keel(&["resolve", "--profile", "child", "--role", "worker"]));
    assert!(table.contains("cmdline   + no_timer_check"), "{table}");
    for (arg, needle) in [
        ("usrhash=00", "usrhash= is set by keel build"),
        ("root=/dev/sda1", "root= is set by keel build"),
        ("a b", "is not one argument"),
        ("", "an empty argument"),
    ] {
        assert_error_at(
            &ws,
            "child",
            &format!("extends = \"base\"\nkernel-cmdline = [{arg:?}]\n"),
            "2:18",
            needle,
        );
    }
}

/// A `[test]` table makes a test profile: its CA certificates (read
/// relative to the profile) are in the resolved manifest, and a profile
/// extending it is a test profile too; a profile without one has no
/// `test` key. Files that are not certificates, or carry a key, are
/// refused at their position.
#[test]
fn a_test_table_makes_test_images_and_its_cas_must_be_certificates() {
    let ws = workspace_with_roles();
    let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    fs::write(ws.path().join("profiles/test-ca.crt"), ca).unwrap();
    ws.profile("ci", "extends = \"base\"\n[test]\ntrust = [\"test-ca.crt\"]\n");
    ws.profile("ci-child", "extends = \"ci\"\n");
    for name in ["ci", "ci-child"] {
        let v = resolve_json(ws.path(), name, "etcd");
        assert_eq!(v["test"]["trusted-cas"], serde_json::json!([ca]), "{name}");
    }
    assert!(resolve_json(ws.path(), "base", "etcd").get("test").is_none());

    fs::write(ws.path().join("profiles/key.pem"), format!("{ca}-----BEGIN PRIVATE KEY-----\n"))
        .unwrap();
    assert_error_at(
        &ws,
        "bad",
        "extends = \"base\"\n[test]\ntrust = [\"key.pem\"]\n",
        "3:10",
        "must hold no private key",
    );
    assert_error_at(
        &ws,
        "bad",
        "extends = \"base\"\n[test]\ntrust = [\"nope.crt\"]\n",
        "3:10",
        "test.trust: reading",
    );
    assert_error_at(
        &ws,
        "bad",
        "extends = \"base\"\n[test]\ncmdline = []\n",
        "3:1",
        "unknown field `cmdline`",
    );
}
