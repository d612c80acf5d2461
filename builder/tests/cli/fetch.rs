//! `keel fetch` against a local HTTP server serving fixture files and
//! scripted faults; the cache, offline mode and mirrors.

use keel_testkit::http::{FixtureServer, Reply};

use super::*;

/// A profile whose components `name` are served at
/// `<base>/files/<name>-1.0-amd64` with the sha256 of `content`.
fn profile_text(base: &str, items: &[(&str, &[u8])]) -> String {
    let mut t = String::from("[base]\nsuite = \"trixie\"\npackages = []\n");
    for (name, content) in items {
        t.push_str(&format!(
            "\n[components.{name}]\nversion = \"1.0\"\nurl = \"{base}/files/{name}-{{version}}-{{arch}}\"\nsha256 = \"{}\"\ninstall = {{ kind = \"binary\", path = \"/usr/bin/{name}\", mode = 0o755 }}\n",
            sha256(content)
        ));
    }
    t
}

fn path_of(name: &str) -> String {
    format!("/files/{name}-1.0-amd64")
}

struct Setup {
    ws: Workspace,
    cache: PathBuf,
}

impl Setup {
    fn new(base: &str, items: &[(&str, &[u8])]) -> Setup {
        let ws = Workspace::new();
        ws.profile("p", &profile_text(base, items));
        let cache = ws.path().join("cache");
        Setup { ws, cache }
    }

    fn fetch(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "fetch",
            "--profile",
            "p",
            "--cache-dir",
            self.cache.to_str().unwrap(),
            "--timeout",
            "2",
            "--attempts",
            "3",
        ];
        args.extend_from_slice(extra);
        self.ws.keel(&args)
    }
}

#[test]
fn fetches_in_parallel_verifies_and_reuses_the_cache() {
    let server = FixtureServer::start().unwrap();
    let items: Vec<(String, Vec<u8>)> =
        (0..6).map(|i| (format!("tool{i}"), vec![i as u8; 100_000 + i])).collect();
    for (name, content) in &items {
        server.serve(&path_of(name), content.clone());
    }
    let refs: Vec<(&str, &[u8])> = items.iter().map(|(n, c)| (n.as_str(), c.as_slice())).collect();
    let s = Setup::new(&server.base_url(), &refs);

    let out = ok(&s.fetch(&["--json"]));
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(list.len(), 6);
    for ((name, content), entry) in items.iter().zip(&list) {
        assert_eq!(entry["name"], name.as_str());
        let path = PathBuf::from(entry["path"].as_str().unwrap());
        assert_eq!(path, s.cache.join("sha256").join(sha256(content)));
        assert_eq!(&fs::read(&path).unwrap(), content);
    }
    // Second run: everything from the cache, no request.
    let requests = server.requests().len();
    ok(&s.fetch(&[]));
    assert_eq!(server.requests().len(), requests);
    assert_eq!(s.ws.cache_entries(&s.cache).len(), 6, "no temp files left");
}

#[test]
fn components_sharing_an_artifact_share_one_download() {
    let server = FixtureServer::start().unwrap();
    let content = b"server tarball".to_vec();
    let digest = sha256(&content);
    let mut text = String::from("[base]\nsuite = \"trixie\"\npackages = []\n");
    for name in ["kube-apiserver", "kube-scheduler"] {
        text.push_str(&format!(
            "\n[components.{name}]\nversion = \"1.0\"\nurl = \"{}/server.tgz\"\nsha256 = \"{digest}\"\ninstall = {{ kind = \"tarball\", dest = \"/usr/bin\", include = [\"{name}\"] }}\n",
            server.base_url()
        ));
    }
    let ws = Workspace::new();
    ws.profile("p", &text);
    server.serve("/server.tgz", content);
    let cache = ws.path().join("cache");
    let out = ok(&ws.keel(&["fetch", "--profile", "p", "--cache-dir", cache.to_str().unwrap()]));
    let entry = cache.join("sha256").join(&digest);
    assert_eq!(out, format!("kube-apiserver\t{0}\nkube-scheduler\t{0}\n", entry.display()));
    assert_eq!(server.hits("/server.tgz"), 1);
}

#[test]
fn wrong_bytes_are_a_mismatch_naming_url_and_both_digests() {
    let server = FixtureServer::start().unwrap();
    let s = Setup::new(&server.base_url(), &[("tool", b"the real bytes")]);
    server.serve(&path_of("tool"), b"other bytes".to_vec());
    let err = fails(&s.fetch(&[]));
    assert!(err.contains(&server.url(&path_of("tool"))), "{err}");
    assert!(err.contains(&format!("expected {}", sha256(b"the real bytes"))), "{err}");
    assert!(err.contains(&format!("got {}", sha256(b"other bytes"))), "{err}");
    assert!(s.ws.cache_entries(&s.cache).is_empty(), "nothing may be cached");
    assert_eq!(server.hits(&path_of("tool")), 1, "a mismatch is not retried");
}

#[test]
fn not_found_fails_at_once() {
    let server = FixtureServer::start().unwrap();
    let s = Setup::new(&server.base_url(), &[("tool", b"x")]);
    let err = fails(&s.fetch(&[]));
    assert!(err.contains("HTTP 404") && err.contains(&server.url(&path_of("tool"))), "{err}");
    assert_eq!(server.hits(&path_of("tool")), 1);
}

#[test]
fn service_unavailable_then_success_is_retried() {
    let server = FixtureServer::start().unwrap();
    let s = Setup::new(&server.base_url(), &[("tool", b"bytes")]);
    server.script(
        &path_of("tool"),
        vec![Reply::Status(503), Reply::Status(503), Reply::Body(b"bytes".to_vec())],
    );
    ok(&s.fetch(&[]));
    assert_eq!(server.hits(&path_of("tool")), 3);
    assert_eq!(fs::read(s.cache.join("sha256").join(sha256(b"bytes"))).unwrap(), b"bytes");

    // Always 503: gives up after --attempts, naming the status.
    let s = Setup::new(&server.base_url(), &[("down", b"x")]);
    server.script(&path_of("down"), vec![Reply::Status(503)]);
    let err = fails(&s.fetch(&[]));
    assert!(err.contains("HTTP 503"), "{err}");
    assert_eq!(server.hits(&path_of("down")), 3);
}

#[test]
fn a_stalled_server_times_out_and_leaves_nothing() {
    let server = FixtureServer::start().unwrap();
    let body = vec![9u8; 64 * 1024];
    let s = Setup::new(&server.base_url(), &[("slow", &body)]);
    server.script(&path_of("slow"), vec![Reply::Stall(body.clone())]);
    let err = fails(&s.ws.keel(&[
        "fetch",
        "--profile",
        "p",
        "--cache-dir",
        s.cache.to_str().unwrap(),
        "--timeout",
        "1",
        "--attempts",
        "2",
    ]));
    assert!(err.contains(&server.url(&path_of("slow"))), "{err}");
    assert!(err.to_lowercase().contains("timed out") || err.contains("timeout"), "{err}");
    assert_eq!(server.hits(&path_of("slow")), 2);
    assert!(s.ws.cache_entries(&s.cache).is_empty());
    assert_eq!(fs::read_dir(s.cache.join("sha256")).unwrap().count(), 0, "temp files left behind");
}

#[test]
fn a_reset_mid_body_is_retried_from_scratch() {
    let server = FixtureServer::start().unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let s = Setup::new(&server.base_url(), &[("big", &body)]);
    server.script(
        &path_of("big"),
        vec![Reply::ResetMidBody(body.clone()), Reply::Body(body.clone())],
    );
    ok(&s.fetch(&[]));
    assert_eq!(server.hits(&path_of("big")), 2);
    assert_eq!(fs::read(s.cache.join("sha256").join(sha256(&body))).unwrap(), body);

    let s = Setup::new(&server.base_url(), &[("flaky", &body)]);
    server.script(&path_of("flaky"), vec![Reply::ResetMidBody(body.clone())]);
    let err = fails(&s.fetch(&[]));
    assert!(err.contains(&server.url(&path_of("flaky"))), "{err}");
    assert!(s.ws.cache_entries(&s.cache).is_empty());
}

#[test]
fn a_corrupt_cache_entry_is_evicted_and_fetched_again() {
    let server = FixtureServer::start().unwrap();
    let s = Setup::new(&server.base_url(), &[("tool", b"good bytes")]);
    server.serve(&path_of("tool"), b"good bytes".to_vec());
    ok(&s.fetch(&[]));
    let entry = s.cache.join("sha256").join(sha256(b"good bytes"));
    fs::write(&entry, b"bad bytes!").unwrap();

    let out = s.fetch(&[]);
    ok(&out);
    assert!(
        stderr(&out).contains("corrupt") && stderr(&out).contains("evicted"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(&entry).unwrap(), b"good bytes");
    assert_eq!(server.hits(&path_of("tool")), 2);

    // Offline, a corrupt entry cannot be replaced: it is evicted and the
    // error says the artifact is missing.
    fs::write(&entry, b"bad bytes!").unwrap();
    let err = fails(&s.fetch(&["--offline"]));
    assert!(err.contains("offline"), "{err}");
    assert!(!entry.exists());
}

#[test]
fn offline_uses_the_cache_only() {
    let server = FixtureServer::start().unwrap();
    let s = Setup::new(&server.base_url(), &[("tool", b"bytes")]);
    server.serve(&path_of("tool"), b"bytes".to_vec());
    let err = fails(&s.fetch(&["--offline"]));
    assert!(err.contains("offline") && err.contains(&server.url(&path_of("tool"))), "{err}");
    assert_eq!(server.requests().len(), 0, "offline made a request");

    ok(&s.fetch(&[]));
    let before = server.requests().len();
    let out = ok(&s.fetch(&["--offline"]));
    assert!(out.contains("tool"), "{out}");
    assert_eq!(server.requests().len(), before);
}

#[test]
fn mirrors_map_prefixes_to_directories_and_urls() {
    let server = FixtureServer::start().unwrap();
    // Upstream is unreachable (nothing listens on port 1): only mirrors work.
    let upstream = "http://127.0.0.1:1/upstream";
    let s = Setup::new(upstream, &[("fromdir", b"dir bytes"), ("fromurl", b"url bytes")]);
    let mirror_dir = s.ws.path().join("mirror");
    fs::create_dir_all(mirror_dir.join("files")).unwrap();
    fs::write(mirror_dir.join("files/fromdir-1.0-amd64"), b"dir bytes").unwrap();
    server.serve("/m/files/fromurl-1.0-amd64", b"url bytes".to_vec());
    let mirrors = s.ws.path().join("mirrors.toml");
    fs::write(
        &mirrors,
        format!(
            "[mirrors]\n\"{upstream}/files/fromdir\" = \"mirror/files/fromdir\"\n\"{upstream}/\" = \"{}/m/\"\n",
            server.base_url()
        ),
    )
    .unwrap();
    let out = ok(&s.fetch(&["--mirrors", mirrors.to_str().unwrap()]));
    assert!(out.contains("fromdir") && out.contains("fromurl"), "{out}");
    assert_eq!(server.hits("/m/files/fromurl-1.0-amd64"), 1);

    // Air-gapped: offline with a directory mirror works; a URL mirror is
    // the network and is refused.
    let s2 = Setup::new(upstream, &[("fromdir", b"dir bytes")]);
    let out = s2.ws.keel(&[
        "fetch",
        "--profile",
        "p",
        "--cache-dir",
        s2.cache.to_str().unwrap(),
        "--offline",
        "--mirrors",
        mirrors.to_str().unwrap(),
    ]);
    assert!(stdout(&out).contains("fromdir"), "{}", stderr(&out));

    // A mirror serving the wrong bytes is a mismatch naming the mirror.
    fs::write(mirror_dir.join("files/fromdir-1.0-amd64"), b"tampered").unwrap();
    let s3 = Setup::new(upstream, &[("fromdir", b"dir bytes")]);
    let err = fails(&s3.fetch(&["--mirrors", mirrors.to_str().unwrap()]));
    assert!(err.contains("mirror of") && err.contains("mismatch"), "{err}");

    // KEEL_MIRRORS works like --mirrors; a file missing from a directory
    // mirror is named.
    fs::remove_file(mirror_dir.join("files/fromdir-1.0-amd64")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keel"));
    cmd.args(["fetch", "--profile", "p", "--cache-dir", s3.cache.to_str().unwrap()])
        .current_dir(s3.ws.path())
        .env("KEEL_MIRRORS", &mirrors);
    let err = fails(&cmd.output().unwrap());
    assert!(err.contains("the mirror has no") && err.contains("fromdir-1.0-amd64"), "{err}");
}

#[test]
fn several_failures_are_reported_together() {
    let server = FixtureServer::start().unwrap();
    let s = Setup::new(&server.base_url(), &[("one", b"1"), ("two", b"2"), ("three", b"3")]);
    server.serve(&path_of("three"), b"3".to_vec());
    let err = fails(&s.fetch(&[]));
    assert!(err.contains("2 downloads failed"), "{err}");
    assert!(err.contains("one-1.0-amd64") && err.contains("two-1.0-amd64"), "{err}");
    // The one that worked is cached all the same.
    assert_eq!(s.ws.cache_entries(&s.cache), [s.cache.join("sha256").join(sha256(b"3"))]);
}
