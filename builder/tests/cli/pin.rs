//! `keel pin` against the local HTTP server: checksum files in both forms,
//! `--compute`, overrides in a child profile, and failures that leave the
//! profile untouched.

use keel_testkit::http::FixtureServer;

use super::*;

fn profile(base: &str, digest_line: &str) -> String {
    format!(
        r#"# Tools, pinned.
[base]
suite = "trixie"   # the suite
packages = []

# The one tool.
[components.tool]
version = "1.0"    # current
url = "{base}/v{{version}}/tool-{{arch}}.tgz"
{digest_line}
checksum-url = "{base}/v{{version}}/tool-{{arch}}.tgz.sha256"
install = {{ kind = "tarball", dest = "/usr/bin" }}

[components.other]
debian = "other"
"#
    )
}

#[test]
fn pin_reads_a_bare_checksum_file_and_keeps_the_layout() {
    let server = FixtureServer::start().unwrap();
    let ws = Workspace::new();
    let old = sha256(b"old");
    let before = profile(&server.base_url(), &format!("sha256 = \"{old}\"  # from upstream"));
    ws.profile("p", &before);
    let new = sha256(b"new tool");
    server.serve("/v1.1/tool-amd64.tgz.sha256", format!("{new}\n").into_bytes());

    let out = ok(&ws.keel(&["pin", "tool", "1.1", "--profile", "p"]));
    assert!(out.contains("tool: 1.0 -> 1.1"), "{out}");
    let after = ws.read_profile("p");
    assert_eq!(after, before.replace("\"1.0\"", "\"1.1\"").replace(&old, &new));

    // The new pin is what fetch verifies against.
    server.serve("/v1.1/tool-amd64.tgz", b"new tool".to_vec());
    let cache = ws.path().join("cache");
    ok(&ws.keel(&["fetch", "--profile", "p", "--cache-dir", cache.to_str().unwrap()]));
    assert!(cache.join("sha256").join(&new).is_file());
}

#[test]
fn pin_picks_its_file_from_a_sha256sum_list_and_handles_sha512() {
    let server = FixtureServer::start().unwrap();
    let ws = Workspace::new();
    let text = profile(&server.base_url(), &format!("sha512 = \"{}\"", sha512(b"old")))
        .replace(".tgz.sha256\"", ".tgz.sha512\"");
    ws.profile("p", &text);
    let new = sha512(b"new");
    server.serve(
        "/v2.0/tool-amd64.tgz.sha512",
        format!("{}  tool-arm64.tgz\n{new}  tool-amd64.tgz\n", sha512(b"arm")).into_bytes(),
    );
    ok(&ws.keel(&["pin", "tool", "2.0", "--profile", "p"]));
    let after = ws.read_profile("p");
    assert!(
        after.contains(&format!("sha512 = \"{new}\"")) && after.contains("version = \"2.0\""),
        "{after}"
    );
}

#[test]
fn pin_compute_hashes_the_artifact() {
    let server = FixtureServer::start().unwrap();
    let ws = Workspace::new();
    ws.profile("p", &profile(&server.base_url(), &format!("sha256 = \"{}\"", sha256(b"old"))));
    server.serve("/v3.0/tool-amd64.tgz", b"computed".to_vec());
    let cache = ws.path().join("cache");
    ok(&ws.keel(&[
        "pin",
        "tool",
        "3.0",
        "--profile",
        "p",
        "--compute",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]));
    assert!(ws.read_profile("p").contains(&sha256(b"computed")));
    assert!(cache.join("sha256").join(sha256(b"computed")).is_file(), "the artifact stays cached");
    assert_eq!(server.hits("/v3.0/tool-amd64.tgz.sha256"), 0);
}

#[test]
fn pin_in_a_child_profile_adds_an_override() {
    let server = FixtureServer::start().unwrap();
    let ws = Workspace::new();
    let parent = profile(&server.base_url(), &format!("sha256 = \"{}\"", sha256(b"old")));
    ws.profile("parent", &parent);
    ws.profile("child", "# child\nextends = \"parent\"\n");
    ws.role("worker", "components = [\"tool\"]\n");
    let new = sha256(b"child tool");
    server.serve("/v1.5/tool-amd64.tgz.sha256", format!("{new}  tool-amd64.tgz\n").into_bytes());
    ok(&ws.keel(&["pin", "tool", "1.5", "--profile", "child"]));
    assert_eq!(ws.read_profile("parent"), parent, "the parent is untouched");
    let out = ok(&ws.keel(&["resolve", "--profile", "child", "--role", "worker", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["components"][0]["version"], "1.5");
    assert_eq!(v["components"][0]["source"]["digest"]["hex"], new.as_str());
}

#[test]
fn pin_failures_leave_the_profile_untouched() {
    let server = FixtureServer::start().unwrap();
    let ws = Workspace::new();
    let before = profile(&server.base_url(), &format!("sha256 = \"{}\"", sha256(b"old")));
    ws.profile("p", &before);

    let err = fails(&ws.keel(&["pin", "tool", "9.9", "--profile", "p", "--attempts", "1"]));
    assert!(err.contains("HTTP 404") && err.contains("/v9.9/tool-amd64.tgz.sha256"), "{err}");

    server.serve("/v9.8/tool-amd64.tgz.sha256", b"<html>not a checksum</html>\n".to_vec());
    let err = fails(&ws.keel(&["pin", "tool", "9.8", "--profile", "p"]));
    assert!(err.contains("holds no sha256 digest"), "{err}");

    let err = fails(&ws.keel(&["pin", "other", "1", "--profile", "p"]));
    assert!(err.contains("Debian package"), "{err}");
    let err = fails(&ws.keel(&["pin", "nope", "1", "--profile", "p"]));
    assert!(err.contains("no component \"nope\""), "{err}");
    assert_eq!(ws.read_profile("p"), before);
}
