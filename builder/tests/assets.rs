//! `keel assets` end to end: the real `keel` binary against moto's server
//! (S3 and KMS; one server per test, started here and killed on drop), and
//! the node's side (`keel_bootstrap::envelope::fetch`) reading back what was
//! published. Needs moto (scripts/setup installs it); fails, not skips,
//! without it.
//!
//! Every `keel` run goes through `Env::keel`, which records stdout and
//! stderr; each test ends with `Env::assert_no_secrets`, which looks for PEM
//! private-key markers and every secret of every asset directory of the
//! test (key PEM bodies, DER base64, token secret, encryption key,
//! fingerprint key) in all of it.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use keel_bootstrap::aws::{s3_client, sdk_config, Target};
use keel_bootstrap::envelope::{self, EnvelopeError};
use keel_contract::bundle::{BundleError, Header};
use keel_contract::Role;
use keel_testkit::moto::Moto;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

const REGION: &str = "us-east-1";
const BUCKET: &str = "keel-assets";

/// S3 and KMS clients for `endpoint`, with moto's dummy credentials.
async fn clients(endpoint: &str) -> (aws_sdk_s3::Client, aws_sdk_kms::Client) {
    let target = Target { region: Some(REGION.into()), endpoint_url: Some(endpoint.to_string()) };
    let config = keel_testkit::moto::with_test_keys(sdk_config(&target).await);
    (s3_client(&config), aws_sdk_kms::Client::new(&config))
}

struct Env {
    moto: Moto,
    tmp: tempfile::TempDir,
    s3: aws_sdk_s3::Client,
    kms: aws_sdk_kms::Client,
    /// stdout and stderr of every keel run.
    outputs: RefCell<Vec<String>>,
    /// Asset directories made in this test.
    dirs: RefCell<Vec<PathBuf>>,
}

impl Env {
    async fn start() -> Env {
        keel_bootstrap::aws::install_crypto_provider();
        let moto = Moto::start().expect("moto's server (run scripts/setup)");
        let (s3, kms) = clients(&moto.endpoint).await;
        Env {
            s3,
            kms,
            moto,
            tmp: tempfile::tempdir().unwrap(),
            outputs: RefCell::new(Vec::new()),
            dirs: RefCell::new(Vec::new()),
        }
    }

    /// Runs `keel` with moto's environment; records its output.
    fn keel(&self, args: &[&str]) -> Output {
        self.keel_via(&self.moto.endpoint, args)
    }

    /// Runs `keel` against `endpoint` (moto or a proxy in front of it).
    fn keel_via(&self, endpoint: &str, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(args)
            .envs(self.moto.env(REGION))
            .env("AWS_ENDPOINT_URL", endpoint)
            .output()
            .expect("running keel");
        self.outputs.borrow_mut().push(String::from_utf8_lossy(&out.stdout).into_owned());
        self.outputs.borrow_mut().push(String::from_utf8_lossy(&out.stderr).into_owned());
        out
    }

    fn keel_ok(&self, args: &[&str]) -> String {
        let out = self.keel(args);
        assert!(
            out.status.success(),
            "keel {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs keel expecting failure; returns stderr.
    fn keel_err(&self, args: &[&str]) -> String {
        let out = self.keel(args);
        assert!(
            !out.status.success(),
            "keel {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    fn init(&self, name: &str, cluster: &str) -> PathBuf {
        let dir = self.tmp.path().join(name);
        let d = dir.to_str().unwrap();
        self.keel_ok(&[
            "assets",
            "init",
            "--cluster",
            cluster,
            "--api-endpoint",
            "10.0.0.1",
            "--out",
            d,
        ]);
        self.dirs.borrow_mut().push(dir.clone());
        dir
    }

    fn publish(&self, dir: &Path, prefix: &str, key: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "assets",
            "publish",
            "--dir",
            dir.to_str().unwrap(),
            "--bucket",
            BUCKET,
            "--prefix",
            prefix,
            "--kms-key",
            key,
        ];
        args.extend_from_slice(extra);
        self.keel(&args)
    }

    async fn bucket(&self, versioned: bool) {
        self.s3.create_bucket().bucket(BUCKET).send().await.unwrap();
        if versioned {
            self.s3
                .put_bucket_versioning()
                .bucket(BUCKET)
                .versioning_configuration(
                    aws_sdk_s3::types::VersioningConfiguration::builder()
                        .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                        .build(),
                )
                .send()
                .await
                .unwrap();
        }
    }

    async fn kms_key(&self) -> String {
        let key = self.kms.create_key().send().await.unwrap();
        key.key_metadata().unwrap().key_id().to_string()
    }

    async fn get(&self, key: &str) -> Vec<u8> {
        let o = self.s3.get_object().bucket(BUCKET).key(key).send().await.unwrap();
        o.body.collect().await.unwrap().into_bytes().to_vec()
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) {
        self.s3.put_object().bucket(BUCKET).key(key).body(bytes.into()).send().await.unwrap();
    }

    async fn fetch(
        &self,
        prefix: &str,
        cluster: &str,
        role: Role,
    ) -> Result<keel_contract::bundle::Bundle, EnvelopeError> {
        envelope::fetch(&self.s3, &self.kms, BUCKET, prefix, cluster, role).await
    }

    /// (etag, version) of each object under `prefix`, and how many
    /// versions exist in the bucket.
    async fn versions(&self) -> (BTreeSet<(String, String, String)>, usize) {
        let v = self.s3.list_object_versions().bucket(BUCKET).send().await.unwrap();
        let latest = v
            .versions()
            .iter()
            .filter(|v| v.is_latest() == Some(true))
            .map(|v| {
                (
                    v.key().unwrap().to_string(),
                    v.e_tag().unwrap().to_string(),
                    v.version_id().unwrap().to_string(),
                )
            })
            .collect();
        (latest, v.versions().len())
    }

    /// No key material in any output of any keel run of this test.
    fn assert_no_secrets(&self) {
        let needles = self.dirs.borrow().iter().flat_map(|d| secrets(d)).collect::<Vec<_>>();
        assert!(needles.len() > 20, "too few secrets collected: {}", needles.len());
        for out in self.outputs.borrow().iter() {
            assert!(!out.contains("PRIVATE KEY"), "PEM private key marker in output:\n{out}");
            for n in &needles {
                assert!(!out.contains(n.as_str()), "secret {}... in output:\n{out}", &n[..4]);
            }
        }
    }
}

/// Every secret string of an asset directory, as it could leak in text.
fn secrets(dir: &Path) -> Vec<String> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut out = Vec::new();
    for f in walk(dir) {
        let bytes = fs::read(&f).unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if text.contains("PRIVATE KEY-----") {
            let body: Vec<&str> = text.lines().filter(|l| !l.starts_with("-----")).collect();
            out.extend(body.iter().filter(|l| l.len() >= 16).map(|l| l.to_string()));
            out.push(body.concat());
            out.push(b64(&bytes));
        }
    }
    let token = fs::read_to_string(dir.join("kubernetes/bootstrap-token")).unwrap();
    out.push(token.trim().split_once('.').unwrap().1.to_string());
    let enc = fs::read_to_string(dir.join("kubernetes/encryption-config.yaml")).unwrap();
    out.push(enc.lines().find_map(|l| l.trim().strip_prefix("secret: ")).unwrap().to_string());
    let admin: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("kubernetes/admin.conf")).unwrap()).unwrap();
    out.push(admin["users"][0]["user"]["client-key-data"].as_str().unwrap().to_string());
    let fp = fs::read(dir.join("fingerprint.key")).unwrap();
    out.push(hex::encode(&fp));
    out.push(b64(&fp));
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn der(pem_bytes: &[u8]) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_bytes).unwrap();
    assert_eq!(pem.label, "CERTIFICATE");
    pem.contents
}

fn expected_files(role: Role) -> BTreeSet<&'static str> {
    match role {
        Role::Etcd => ["etcd/pki/ca.crt", "etcd/pki/ca.key"].into(),
        Role::Controller => [
            "kubernetes/pki/ca.crt",
            "kubernetes/pki/ca.key",
            "kubernetes/pki/sa.key",
            "kubernetes/pki/sa.pub",
            "kubernetes/pki/front-proxy-ca.crt",
            "kubernetes/pki/front-proxy-ca.key",
            "kubernetes/pki/apiserver-etcd-client.crt",
            "kubernetes/pki/apiserver-etcd-client.key",
            "etcd/pki/ca.crt",
            "kubernetes/encryption-config.yaml",
        ]
        .into(),
        Role::Worker => ["kubernetes/pki/ca.crt", "kubernetes/bootstrap-token"].into(),
    }
}

const DAY: i64 = 86_400;

fn check_ca(c: &X509Certificate, cn: &str) {
    assert_eq!(c.subject().to_string(), format!("CN={cn}"));
    assert_eq!(c.issuer(), c.subject());
    c.verify_signature(None).expect("CA self-signature");
    let bc = c.basic_constraints().unwrap().expect("basic constraints").value;
    assert!(bc.ca, "{cn} is not a CA");
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = c.key_usage().unwrap().expect("key usage").value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
    assert!(c.subject_alternative_name().unwrap().is_none());
    let v = c.validity();
    assert!(v.is_valid(), "{cn} not valid now");
    let days = (v.not_after.timestamp() - v.not_before.timestamp()) / DAY;
    assert_eq!(days, 3652, "{cn} lifetime");
}

fn check_client(c: &X509Certificate, ca: &X509Certificate, subject: &str) {
    assert_eq!(c.subject().to_string(), subject);
    assert_eq!(c.issuer(), ca.subject());
    c.verify_signature(Some(ca.public_key())).expect("signed by its CA");
    assert!(!c.is_ca());
    let bc = c.basic_constraints().unwrap().expect("basic constraints").value;
    assert!(!bc.ca);
    let ku = c.key_usage().unwrap().expect("key usage").value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let eku = c.extended_key_usage().unwrap().expect("extended key usage").value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(c.subject_alternative_name().unwrap().is_none());
    let v = c.validity();
    assert!(v.is_valid());
    assert_eq!((v.not_after.timestamp() - v.not_before.timestamp()) / DAY, 365);
}

/// The private key in `key_path` belongs to the public key `spki_der`.
fn assert_key_matches(key_path: &Path, spki_der: &[u8]) {
    let key = rcgen::KeyPair::from_pem(&fs::read_to_string(key_path).unwrap()).unwrap();
    assert_eq!(key.public_key_der(), spki_der, "{} does not match", key_path.display());
}

#[test]
fn init_writes_a_verifiable_pki_with_tight_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let d = dir.to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "assets",
            "init",
            "--cluster",
            "c1",
            "--api-endpoint",
            "api.c1.example",
            "--api-endpoint",
            "10.0.0.1",
        ])
        .args(["--out", d])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("CN=kubernetes-admin") && stdout.contains("api.c1.example, 10.0.0.1"),
        "{stdout}"
    );

    // Modes: keys and anything holding a secret 0600, certificates 0644.
    assert_eq!(mode(&dir), 0o700);
    for f in walk(&dir) {
        let name = f.to_str().unwrap();
        let public =
            name.ends_with(".crt") || name.ends_with(".pub") || name.ends_with("keel-assets.toml");
        assert_eq!(mode(&f), if public { 0o644 } else { 0o600 }, "{name}");
    }

    let read = |p: &str| fs::read(dir.join(p)).unwrap();
    let ca_der = der(&read("kubernetes/pki/ca.crt"));
    let etcd_der = der(&read("etcd/pki/ca.crt"));
    let fp_der = der(&read("kubernetes/pki/front-proxy-ca.crt"));
    let client_der = der(&read("kubernetes/pki/apiserver-etcd-client.crt"));
    let admin_der = der(&read("kubernetes/pki/admin.crt"));
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    let (_, etcd) = X509Certificate::from_der(&etcd_der).unwrap();
    let (_, fp) = X509Certificate::from_der(&fp_der).unwrap();
    let (_, client) = X509Certificate::from_der(&client_der).unwrap();
    let (_, admin) = X509Certificate::from_der(&admin_der).unwrap();
    check_ca(&ca, "kubernetes");
    check_ca(&etcd, "etcd-ca");
    check_ca(&fp, "front-proxy-ca");
    check_client(&client, &etcd, "CN=kube-apiserver-etcd-client");
    check_client(&admin, &ca, "O=system:masters, CN=kubernetes-admin");
    // The chain is real: the etcd client certificate does not verify
    // against the cluster CA, nor the CAs against each other.
    assert!(client.verify_signature(Some(ca.public_key())).is_err());
    assert!(etcd.verify_signature(Some(ca.public_key())).is_err());

    for (key, cert) in [
        ("kubernetes/pki/ca.key", &ca),
        ("etcd/pki/ca.key", &etcd),
        ("kubernetes/pki/front-proxy-ca.key", &fp),
        ("kubernetes/pki/apiserver-etcd-client.key", &client),
        ("kubernetes/pki/admin.key", &admin),
    ] {
        assert_key_matches(&dir.join(key), cert.public_key().raw);
    }
    let sa_pub = fs::read_to_string(dir.join("kubernetes/pki/sa.pub")).unwrap();
    let sa_pub = rcgen::SubjectPublicKeyInfo::from_pem(&sa_pub).unwrap();
    let sa_key =
        rcgen::KeyPair::from_pem(&fs::read_to_string(dir.join("kubernetes/pki/sa.key")).unwrap())
            .unwrap();
    assert_eq!(rcgen::PublicKeyData::der_bytes(&sa_pub), sa_key.public_key_raw());

    // Token: Kubernetes format, and the Secret manifest carries the same.
    let token = String::from_utf8(read("kubernetes/bootstrap-token")).unwrap();
    let (id, secret) = token.trim_end().split_once('.').unwrap();
    let ok = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    assert!(ok(id, 6) && ok(secret, 16), "{id}");
    let manifest = String::from_utf8(read("kubernetes/bootstrap-token-secret.yaml")).unwrap();
    assert!(manifest.contains(&format!("name: bootstrap-token-{id}")));
    assert!(manifest.contains(&format!("token-secret: \"{secret}\"")));
    assert!(stdout.contains(id) && !stdout.contains(secret));

    // Encryption config: a 32-byte secretbox key.
    let enc = String::from_utf8(read("kubernetes/encryption-config.yaml")).unwrap();
    assert!(enc.contains("kind: EncryptionConfiguration") && enc.contains("- secretbox:"));
    let key = enc.lines().find_map(|l| l.trim().strip_prefix("secret: ")).unwrap();
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(key).unwrap().len(), 32);

    // Admin kubeconfig: server from the first endpoint, the cluster CA.
    let conf: serde_json::Value = serde_json::from_slice(&read("kubernetes/admin.conf")).unwrap();
    let cluster = &conf["clusters"][0]["cluster"];
    assert_eq!(cluster["server"], "https://api.c1.example:6443", "{conf}");
    let ca_data = cluster["certificate-authority-data"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(ca_data).unwrap(),
        read("kubernetes/pki/ca.crt")
    );

    // No key material in the output.
    for s in secrets(&dir) {
        assert!(!stdout.contains(&s) && !String::from_utf8_lossy(&out.stderr).contains(&s));
    }
    assert!(!stdout.contains("PRIVATE KEY"));

    // A second init never overwrites: refused, files untouched.
    let before = read("kubernetes/pki/ca.key");
    let again = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["assets", "init", "--cluster", "c1", "--api-endpoint", "10.0.0.1", "--out", d])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    assert_eq!(read("kubernetes/pki/ca.key"), before);

    // Bad input is refused with a clear message and no directory.
    let bad = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["assets", "init", "--cluster", "Bad_Name", "--api-endpoint", "10.0.0.1"])
        .args(["--out", tmp.path().join("b").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("cluster name \"Bad_Name\""));
    assert!(!tmp.path().join("b").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_round_trips_per_role_is_idempotent_and_shows() {
    let env = Env::start().await;
    env.bucket(true).await;
    let key = env.kms_key().await;
    let dir = env.init("a", "c1");

    let out = env.publish(&dir, "clusters/c1", &key, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches(" uploaded ").count(), 3, "{stdout}");

    for role in Role::ALL {
        let b = env.fetch("clusters/c1", "c1", role).await.unwrap();
        assert_eq!(b.cluster, "c1");
        assert_eq!(b.role, role);
        let paths: BTreeSet<&str> = b.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, expected_files(role), "{role}");
        for f in &b.files {
            assert_eq!(&f.contents[..], &fs::read(dir.join(&f.path)).unwrap()[..], "{}", f.path);
            let public = f.path.ends_with(".crt") || f.path.ends_with(".pub");
            assert_eq!(f.mode, if public { 0o644 } else { 0o600 }, "{}", f.path);
        }
        // The header names the key as KMS reports it.
        let (h, _) = Header::parse(&env.get(&format!("clusters/c1/{role}.bundle")).await).unwrap();
        assert!(h.kms_key_id.ends_with(&key), "{}", h.kms_key_id);
    }

    let (before, count) = env.versions().await;
    assert_eq!((before.len(), count), (3, 3));
    let again = env.keel_ok(&[
        "assets",
        "publish",
        "--dir",
        dir.to_str().unwrap(),
        "--bucket",
        BUCKET,
        "--prefix",
        "clusters/c1/",
        "--kms-key",
        &key,
    ]);
    assert_eq!(again.matches(" unchanged ").count(), 3, "{again}");
    for (k, etag, version) in &before {
        assert!(
            again
                .contains(&format!("s3://{BUCKET}/{k} unchanged (etag {etag}, version {version})")),
            "{again}"
        );
    }
    assert_eq!(env.versions().await, (before, 3), "republish wrote new versions");

    let show = env.keel_ok(&["assets", "show", "--bucket", BUCKET, "--prefix", "clusters/c1"]);
    for role in Role::ALL {
        assert!(show.contains(&format!("s3://{BUCKET}/clusters/c1/{role}.bundle")), "{show}");
        assert!(show.contains(&format!("role {role} of cluster c1 gets:")), "{show}");
        assert!(show.contains(&format!("keel:cluster=c1, keel:role={role}")), "{show}");
        for p in expected_files(role) {
            assert!(show.contains(&format!("/etc/{p}")), "{p} missing:\n{show}");
        }
    }
    assert!(show.contains("0600 /etc/kubernetes/bootstrap-token"), "{show}");
    assert!(show.contains("0644 /etc/etcd/pki/ca.crt  (CA, sha256 "), "{show}");
    let empty = env.keel_ok(&["assets", "show", "--bucket", BUCKET, "--prefix", "nothing-here"]);
    assert!(empty.contains("no bundles"), "{empty}");
    env.assert_no_secrets();
}

fn forge(bytes: &[u8], cluster: &str, role: Role) -> Vec<u8> {
    let (mut h, len) = Header::parse(bytes).unwrap();
    h.cluster = cluster.into();
    h.role = role;
    let mut out = h.encode().unwrap();
    out.extend_from_slice(&bytes[len..]);
    out
}

fn is_kms_refusal(e: &EnvelopeError, key: &str) -> bool {
    let msg = e.to_string();
    matches!(e, EnvelopeError::Object { source, .. } if matches!(**source, EnvelopeError::Decrypt { .. }))
        && msg.contains("InvalidCiphertext")
        && msg.contains(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_contexts_tampering_and_truncation_are_refused() {
    let env = Env::start().await;
    env.bucket(false).await;
    let key = env.kms_key().await;
    let a = env.init("a", "c1");
    let b = env.init("b", "c2");
    assert!(env.publish(&a, "c1", &key, &[]).status.success());
    assert!(env.publish(&b, "c2", &key, &[]).status.success());
    let etcd = env.get("c1/etcd.bundle").await;

    // Another role's bundle at this role's key: the header names it.
    env.put("x/worker.bundle", etcd.clone()).await;
    let e = env.fetch("x", "c1", Role::Worker).await.unwrap_err();
    assert!(e.to_string().contains("s3://keel-assets/x/worker.bundle"), "{e}");
    assert!(e.to_string().contains("role etcd, expected cluster \"c1\" role worker"), "{e}");
    // ... and with the header rewritten to claim the worker role, KMS
    // refuses the data key under the worker context.
    env.put("x/worker.bundle", forge(&etcd, "c1", Role::Worker)).await;
    let e = env.fetch("x", "c1", Role::Worker).await.unwrap_err();
    assert!(is_kms_refusal(&e, &key), "{e}");

    // Another cluster's bundle: refused by name, and by KMS when forged.
    let e = env.fetch("c2", "c1", Role::Etcd).await.unwrap_err();
    assert!(e.to_string().contains("bundle is for cluster \"c2\""), "{e}");
    let other = env.get("c2/etcd.bundle").await;
    env.put("y/etcd.bundle", forge(&other, "c1", Role::Etcd)).await;
    let e = env.fetch("y", "c1", Role::Etcd).await.unwrap_err();
    assert!(is_kms_refusal(&e, &key), "{e}");

    let (_, header_len) = Header::parse(&etcd).unwrap();
    let auth_failure = |e: &EnvelopeError| {
        matches!(e, EnvelopeError::Object { source, .. }
            if matches!(**source, EnvelopeError::Open { source: BundleError::Authentication, .. }))
    };
    // A flipped byte in the ciphertext, and in the header's nonce: GCM.
    for at in [etcd.len() - 1, header_len + 3, header_len - 1] {
        let mut bad = etcd.clone();
        bad[at] ^= 0x80;
        env.put("z/etcd.bundle", bad).await;
        let e = env.fetch("z", "c1", Role::Etcd).await.unwrap_err();
        assert!(auth_failure(&e), "byte {at}: {e}");
    }
    // A flipped byte in the encrypted data key: KMS refuses it.
    let mut bad = etcd.clone();
    bad[header_len - 12 - 20] ^= 0x01;
    env.put("z/etcd.bundle", bad).await;
    let e = env.fetch("z", "c1", Role::Etcd).await.unwrap_err();
    assert!(
        matches!(&e, EnvelopeError::Object { source, .. } if matches!(**source, EnvelopeError::Decrypt { .. })),
        "{e}"
    );
    // A flipped byte in the cluster name: refused before KMS.
    let mut bad = etcd.clone();
    bad[18] ^= 0x01;
    env.put("z/etcd.bundle", bad).await;
    let e = env.fetch("z", "c1", Role::Etcd).await.unwrap_err();
    assert!(e.to_string().contains("bundle is for cluster"), "{e}");

    // Truncated objects: inside the ciphertext and inside the header.
    env.put("t/etcd.bundle", etcd[..etcd.len() - 5].to_vec()).await;
    let e = env.fetch("t", "c1", Role::Etcd).await.unwrap_err();
    assert!(auth_failure(&e), "{e}");
    env.put("t/etcd.bundle", etcd[..header_len - 4].to_vec()).await;
    let e = env.fetch("t", "c1", Role::Etcd).await.unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    env.put("t/etcd.bundle", Vec::new()).await;
    let e = env.fetch("t", "c1", Role::Etcd).await.unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");

    // The untouched bundle still opens.
    assert!(env.fetch("c1", "c1", Role::Etcd).await.is_ok());
    env.assert_no_secrets();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_and_disabled_key_are_named() {
    let env = Env::start().await;
    let key = env.kms_key().await;
    let dir = env.init("a", "c1");

    let err = String::from_utf8(env.publish(&dir, "c1", &key, &[]).stderr).unwrap();
    assert!(err.contains(BUCKET) && err.contains("NoSuchBucket"), "{err}");
    let e = env.fetch("c1", "c1", Role::Worker).await.unwrap_err();
    assert!(
        e.to_string().contains("s3://keel-assets/c1/worker.bundle")
            && e.to_string().contains("NoSuchBucket"),
        "{e}"
    );
    let err = env.keel_err(&["assets", "show", "--bucket", BUCKET]);
    assert!(err.contains(BUCKET) && err.contains("NoSuchBucket"), "{err}");

    env.bucket(false).await;
    let unknown = "11111111-2222-3333-4444-555555555555";
    let err = String::from_utf8(env.publish(&dir, "c1", unknown, &[]).stderr).unwrap();
    assert!(err.contains(unknown) && err.contains("NotFound"), "{err}");
    assert!(env.publish(&dir, "c1", &key, &[]).status.success());

    env.kms.disable_key().key_id(&key).send().await.unwrap();
    let proxy = DisabledKeyProxy::start(&env.moto.endpoint, &key).await;
    let (_, kms) = clients(&proxy.endpoint).await;
    let e = envelope::fetch(&env.s3, &kms, BUCKET, "c1", "c1", Role::Controller).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&key)
            && msg.contains("DisabledException")
            && msg.contains("c1/controller.bundle"),
        "{msg}"
    );
    let dir_s = dir.to_str().unwrap();
    let out = env.keel_via(
        &proxy.endpoint,
        &[
            "assets",
            "publish",
            "--dir",
            dir_s,
            "--bucket",
            BUCKET,
            "--prefix",
            "c1-new",
            "--kms-key",
            &key,
        ],
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(
        err.contains(&key) && err.contains("DisabledException") && err.contains("is disabled"),
        "{err}"
    );
    assert_eq!(proxy.refused(), 2, "the proxy did not see both KMS calls");
    // show needs no KMS.
    env.keel_ok(&["assets", "show", "--bucket", BUCKET, "--prefix", "c1"]);
    env.assert_no_secrets();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_cas_needs_rotate() {
    let env = Env::start().await;
    env.bucket(true).await;
    let key = env.kms_key().await;
    let a = env.init("a", "c1");
    let b = env.init("b", "c1");
    assert!(env.publish(&a, "c1", &key, &[]).status.success());
    let (before, _) = env.versions().await;

    let err = String::from_utf8(env.publish(&b, "c1", &key, &[]).stderr).unwrap();
    assert!(err.contains("nothing was uploaded") && err.contains("--rotate"), "{err}");
    for ca in ["kubernetes/pki/ca.crt", "etcd/pki/ca.crt", "kubernetes/pki/front-proxy-ca.crt"] {
        assert!(err.contains(ca), "{ca}: {err}");
    }
    assert_eq!(env.versions().await, (before, 3), "a refused publish changed objects");

    // Rotate through an alias: the header records the key's ARN.
    env.kms.create_alias().alias_name("alias/keel-c1").target_key_id(&key).send().await.unwrap();
    let out = env.keel_ok(&[
        "assets",
        "publish",
        "--dir",
        b.to_str().unwrap(),
        "--bucket",
        BUCKET,
        "--prefix",
        "c1",
        "--kms-key",
        "alias/keel-c1",
        "--rotate",
    ]);
    assert_eq!(out.matches(" replaced ").count(), 3, "{out}");
    let (h, _) = Header::parse(&env.get("c1/worker.bundle").await).unwrap();
    assert!(
        h.kms_key_id.starts_with("arn:aws:kms:") && h.kms_key_id.ends_with(&key),
        "{}",
        h.kms_key_id
    );
    assert!(out.contains("worker: rotated CA kubernetes/pki/ca.crt"), "{out}");
    let w = env.fetch("c1", "c1", Role::Worker).await.unwrap();
    let ca = w.files.iter().find(|f| f.path == "kubernetes/pki/ca.crt").unwrap();
    assert_eq!(&ca.contents[..], &fs::read(b.join("kubernetes/pki/ca.crt")).unwrap()[..]);
    assert_eq!(env.versions().await.1, 6);

    // Another cluster's assets never overwrite these, --rotate or not.
    let c = env.init("c", "c2");
    let err = String::from_utf8(env.publish(&c, "c1", &key, &["--rotate"]).stderr).unwrap();
    assert!(err.contains("cluster \"c1\"") && err.contains("use another prefix"), "{err}");
    env.assert_no_secrets();
}

/// Test double for one AWS behaviour moto lacks: moto 5.2.5 records
/// DisableKey (DescribeKey says Disabled) but keeps encrypting and
/// decrypting with the key. This HTTP proxy forwards every request to moto
/// and, when a KMS reply names the disabled key, answers what AWS answers
/// instead: HTTP 400 `DisabledException: <arn> is disabled.`
struct DisabledKeyProxy {
    endpoint: String,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DisabledKeyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DisabledKeyProxy {
    async fn start(upstream: &str, disabled_key: &str) -> DisabledKeyProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (upstream, key, count) =
            (upstream.to_string(), disabled_key.to_string(), refused.clone());
        let client = reqwest::Client::builder().build().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (upstream, key, count, client) =
                    (upstream.clone(), key.clone(), count.clone(), client.clone());
                tokio::spawn(async move {
                    let _ = proxy_connection(stream, &client, &upstream, &key, &count).await;
                });
            }
        });
        DisabledKeyProxy { endpoint, refused, task }
    }

    fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Serves HTTP/1.1 requests (keep-alive, Content-Length bodies) on one
/// connection.
async fn proxy_connection(
    stream: tokio::net::TcpStream,
    client: &reqwest::Client,
    upstream: &str,
    disabled_key: &str,
    refused: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut request_line = String::new();
        if r.read_line(&mut request_line).await? == 0 {
            return Ok(());
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) =
            (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("/").to_string());
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;

        let mut req = client.request(method.parse().unwrap(), format!("{upstream}{path}"));
        for (k, v) in &headers {
            if !["host", "content-length", "connection"].contains(&k.as_str()) {
                req = req.header(k, v);
            }
        }
        let resp = req.body(body).send().await.map_err(std::io::Error::other)?;
        let mut status = resp.status();
        let mut resp_headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .filter(|(k, _)| !["transfer-encoding", "connection"].contains(&k.as_str()))
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let mut resp_body = resp.bytes().await.map_err(std::io::Error::other)?.to_vec();

        let kms = header("x-amz-target").is_some_and(|t| t.starts_with("TrentService."));
        if kms && status.is_success() {
            let reply: serde_json::Value = serde_json::from_slice(&resp_body).unwrap_or_default();
            if let Some(arn) =
                reply.get("KeyId").and_then(|v| v.as_str()).filter(|a| a.ends_with(disabled_key))
            {
                refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                status = reqwest::StatusCode::BAD_REQUEST;
                resp_body = serde_json::json!({"__type": "DisabledException", "message": format!("{arn} is disabled.")})
                    .to_string()
                    .into_bytes();
                resp_headers = vec![("content-type".into(), "application/x-amz-json-1.1".into())];
            }
        }
        if method != "HEAD" {
            resp_headers.retain(|(k, _)| k != "content-length");
            resp_headers.push(("content-length".into(), resp_body.len().to_string()));
        }
        let mut out =
            format!("HTTP/1.1 {} {}\r\n", status.as_u16(), status.canonical_reason().unwrap_or(""));
        for (k, v) in &resp_headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        w.write_all(out.as_bytes()).await?;
        if method != "HEAD" {
            w.write_all(&resp_body).await?;
        }
        w.flush().await?;
    }
}
