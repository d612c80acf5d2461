//! The shipped profiles' resolved manifests against golden files
//! (builder/tests/golden/*.json): a change to a profile, a role or the
//! resolution rules shows up as a diff to review. Regenerate with
//! `KEEL_BLESS=1 cargo test -p keel --test cli golden`.

use super::*;

const CASES: [(&str, &str); 4] = [
    ("production", "controller"),
    ("production", "etcd"),
    ("production", "worker"),
    ("local", "etcd"),
];

#[test]
fn golden_resolved_manifests() {
    let repo = repo();
    let golden = repo.join("builder/tests/golden");
    let bless = std::env::var_os("KEEL_BLESS").is_some();
    for (profile, role) in CASES {
        let out = ok(&keel(&repo, &["resolve", "--profile", profile, "--role", role, "--json"]));
        let path = golden.join(format!("resolve-{profile}-{role}.json"));
        if bless {
            fs::write(&path, &out).unwrap();
            continue;
        }
        let expected = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (KEEL_BLESS=1 writes it)", path.display()));
        assert_eq!(
            out,
            expected,
            "{} differs (KEEL_BLESS=1 regenerates it after review)",
            path.display()
        );
    }
}
