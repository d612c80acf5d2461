//! `keel build`: profile + role -> bootable GPT disk image with a verified,
//! read-only /usr. The pipeline, top to bottom, is [`build`]:
//! tools tree -> Debian base (cached) -> file tree (base, components, role
//! files, keel-bootstrap) and the initrd (keel-init and the kernel modules
//! it loads) -> /usr as erofs + dm-verity -> UKI with the root hash on its
//! command line -> ESP -> GPT disk -> manifest.

mod base;
pub mod command;
pub mod diff;
mod elf;
mod esp;
mod initrd;
use keel_contract::gpt;
pub mod manifest;
mod rootfs;
pub mod sbom;
pub(crate) mod tools;
mod uki;
mod usr;

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::fetch::Fetched;
use crate::profile::Resolved;
use manifest::Manifest;

/// Used when a profile sets no `source-date-epoch` (2026-01-01T00:00:00Z).
pub const DEFAULT_EPOCH: u64 = 1_767_225_600;
/// The writable root partition's size in the image; it grows to fill the
/// disk on first boot.
const ROOT_SIZE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{program} not found: install the Debian package {package}")]
    MissingTool { program: String, package: String },
    #[error("{what} failed: {message}")]
    Tool { what: String, message: String },
    #[error(transparent)]
    Elf(#[from] elf::ElfError),
    #[error("SOURCE_DATE_EPOCH {epoch} is not a date")]
    Epoch { epoch: u64 },
    #[error("path with a NUL byte: {path}")]
    NulInPath { path: String },
    #[error("{archive}: unpacking {entry}: {source}")]
    Unpack { archive: String, entry: String, source: std::io::Error },
    #[error("component {component}: install path {path} must be an absolute path under /usr (the rest of the image is not kept)")]
    InstallPath { component: String, path: String },
    #[error("component {component}: its artifact was not fetched")]
    NotFetched { component: String },
    #[error("component {component}: unpacking {archive}: {source}")]
    UnpackComponent { component: String, archive: String, source: std::io::Error },
    #[error("component {component}: {archive} has no entry {entry} after stripping {strip} path elements")]
    MissingEntry { component: String, archive: String, entry: String, strip: usize },
    #[error("component {component}: Debian package {package} is not installed in the base")]
    PackageNotInstalled { component: String, package: String },
    #[error("the base has no kernel in /boot: add a kernel package (linux-image-cloud-amd64) to the profile's base packages")]
    NoKernel,
    #[error(transparent)]
    Initrd(#[from] initrd::InitrdError),
    #[error("veritysetup format printed no root hash:\n{stdout}")]
    NoRootHash { stdout: String },
    #[error("root hash {hash}: {source}")]
    BadRootHash { hash: String, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("serializing {what}: {source}")]
    Serialize { what: &'static str, source: serde_json::Error },
    #[error("no partition {name} in the plan")]
    NoPartition { name: String },
    #[error("{path}: writing the partition table: {source}")]
    PartitionTable { path: String, source: gpt::GptError },
    #[error("{path}: {size} bytes do not fit partition {name} ({capacity} bytes)")]
    TooBig { path: String, size: u64, name: String, capacity: u64 },
}

impl BuildError {
    pub fn io(path: &Path, source: std::io::Error) -> BuildError {
        BuildError::Io { path: path.display().to_string(), source }
    }
}

/// Everything one build needs.
pub struct Request<'a> {
    pub resolved: &'a Resolved,
    pub fetched: &'a [Fetched],
    /// The static keel-bootstrap executable.
    pub bootstrap_bin: &'a Path,
    /// The static keel-init executable (the initrd's /init).
    pub init_bin: &'a Path,
    /// `images/` (role files and units).
    pub images_dir: &'a Path,
    /// Base and tools caches, work directories.
    pub cache_dir: &'a Path,
    pub out_dir: &'a Path,
    /// Rebuild even when the output is up to date.
    pub force: bool,
    /// Draw spinners (on a terminal).
    pub progress: bool,
    /// Sign the UKI for Secure Boot with this db key; `None` builds an
    /// unsigned image (development), which the manifest says.
    pub secure_boot: Option<&'a crate::secureboot::SigningKey>,
}

/// What [`build`] made.
pub struct Outcome {
    pub image: PathBuf,
    pub manifest_path: PathBuf,
    /// The SPDX SBOM beside the image (the same document is in its ESP).
    pub sbom_path: PathBuf,
    pub manifest: Manifest,
    pub up_to_date: bool,
}

/// Paths a build writes before they are complete; removed on failure and
/// on Ctrl-C.
pub struct Scratch {
    pub work: PathBuf,
    pub image_tmp: PathBuf,
}

impl Scratch {
    pub fn new(resolved: &Resolved, cache_dir: &Path, out_dir: &Path) -> Scratch {
        let stem = file_stem(resolved);
        let pid = std::process::id();
        Scratch {
            work: cache_dir.join("work").join(format!("{stem}-{pid}")),
            image_tmp: out_dir.join(format!(".{stem}.raw.tmp-{pid}")),
        }
    }

    pub fn remove(&self) {
        let _ = fs::remove_dir_all(&self.work);
        let _ = fs::remove_file(&self.image_tmp);
    }
}

/// `keel-<role>-<profile>`.
pub fn file_stem(r: &Resolved) -> String {
    format!("keel-{}-{}", r.role, r.profile)
}

/// Builds the image, or finds it up to date.
pub fn build(req: &Request, scratch: &Scratch) -> Result<Outcome, BuildError> {
    let result = build_inner(req, scratch);
    scratch.remove();
    result
}

/// The build's SOURCE_DATE_EPOCH.
fn epoch(req: &Request) -> u64 {
    req.resolved.source_date_epoch.unwrap_or(DEFAULT_EPOCH)
}

fn build_inner(req: &Request, scratch: &Scratch) -> Result<Outcome, BuildError> {
    let r = req.resolved;
    let epoch = epoch(req);
    let stem = file_stem(r);
    let image_path = req.out_dir.join(format!("{stem}.raw"));
    let manifest_path = req.out_dir.join(format!("{stem}.manifest.json"));
    let sbom_path = req.out_dir.join(format!("{stem}.spdx.json"));
    elf::check_static(req.bootstrap_bin)?;
    elf::check_static(req.init_bin)?;
    let role_dirs = [req.images_dir.join("common"), req.images_dir.join(r.role.as_str())];

    let key = build_key(req, epoch, &role_dirs, SOURCE)?;
    if !req.force {
        if let Some(m) = up_to_date(&image_path, &manifest_path, &key) {
            if sbom_path.is_file() {
                return Ok(Outcome {
                    image: image_path,
                    manifest_path,
                    sbom_path,
                    manifest: m,
                    up_to_date: true,
                });
            }
        }
    }
    let stage = Stage::new(req.progress);
    let seed = Seed(key.clone());
    let work = &scratch.work;

    stage.start("tools tree (trixie: ukify, sysusers, mkfs.erofs, veritysetup)");
    let tools = tools::Tools::ensure(req.cache_dir, r.base.mirror.as_deref())?;
    stage.start(&format!(
        "Debian {} base ({} packages)",
        r.base.suite,
        base::packages(&r.base).len()
    ));
    let base_tar = base::ensure(req.cache_dir, &r.base, epoch)?;
    stage.start("file tree and initrd (keel-init)");
    let tree = FileTree::assemble(req, &tools, &base_tar, work, &role_dirs)?;
    stage.start("/usr as erofs + dm-verity");
    let usr = UsrImage::make(&tools, work, epoch, &seed)?;
    stage.start("root file system");
    let root = RootImage::make(&tools, work, epoch, &seed)?;
    stage.start("unified kernel image");
    if req.secure_boot.is_some() {
        stage.start("unified kernel image, signed with db (Secure Boot)");
    }
    let uki =
        Uki::make(&tools, work, &tree, &usr, &root, req.secure_boot, epoch, &r.kernel_cmdline)?;
    stage.start("disk image");
    let (manifest, sbom) = disk_image(req, &key, epoch, &seed, tree, &usr, &root, &uki, scratch)?;

    let outer = serde_json::to_vec_pretty(&manifest)
        .map_err(|source| BuildError::Serialize { what: "the manifest", source })?;
    // The manifest describes the image: replace it first so that a crash
    // between the two renames never leaves an old manifest beside a new image.
    let _ = fs::remove_file(&manifest_path);
    fs::rename(&scratch.image_tmp, &image_path).map_err(|e| BuildError::io(&image_path, e))?;
    keel_bootstrap::atomic_file::write(&sbom_path, 0o644, &sbom)
        .map_err(|e| BuildError::io(&sbom_path, e))?;
    keel_bootstrap::atomic_file::write(&manifest_path, 0o644, &outer)
        .map_err(|e| BuildError::io(&manifest_path, e))?;
    stage.finish();
    Ok(Outcome { image: image_path, manifest_path, sbom_path, manifest, up_to_date: false })
}

/// Stage 1: the image's file tree in `work/tree` (base, components, role
/// files and units, keel-bootstrap, the factory /etc), with the base's
/// kernel moved out to `work/vmlinuz`, and the initrd made from keel-init
/// and the tree's kernel modules in `work/initrd`.
struct FileTree {
    /// The Debian packages installed in the base, as the SBOM lists them.
    debian: Vec<sbom::DebPackage>,
    /// The Debian packages installed in the base, as the manifest lists them.
    packages: Vec<rootfs::Package>,
    /// sha256 of the keel-bootstrap binary, hex.
    bootstrap_sha256: String,
    /// sha256 of the keel-init binary, hex.
    init_sha256: String,
    /// The kernel's version (`uname -r`).
    kernel: String,
}

impl FileTree {
    /// The tree's directory under `work`.
    const DIR: &str = "tree";
    /// The tree's os-release, as named under `work`.
    const OS_RELEASE: &str = "tree/usr/lib/os-release";

    fn assemble(
        req: &Request,
        tools: &tools::Tools,
        base_tar: &Path,
        work: &Path,
        role_dirs: &[PathBuf],
    ) -> Result<FileTree, BuildError> {
        let tree = work.join(Self::DIR);
        fs::create_dir_all(&tree).map_err(|e| BuildError::io(&tree, e))?;
        rootfs::unpack_base(base_tar, &tree)?;
        // Before /etc and /usr/share/doc change: dpkg's status and the
        // copyright files are what the SBOM says of each package.
        let debian = sbom::debian_packages(&tree)?;
        let packages: Vec<rootfs::Package> = debian
            .iter()
            .map(|d| rootfs::Package { name: d.name.clone(), version: d.version.clone() })
            .collect();
        let (vmlinuz, kernel) = rootfs::kernel(&tree)?;
        let to = work.join("vmlinuz");
        fs::rename(&vmlinuz, &to).map_err(|e| BuildError::io(&vmlinuz, e))?;
        let init = fs::read(req.init_bin).map_err(|e| BuildError::io(req.init_bin, e))?;
        initrd::make(&tree, work, &kernel, &init, epoch(req))?;
        rootfs::write_static_nodes(&tree, &kernel)?;
        rootfs::add_components(&tree, &req.resolved.components, req.fetched)?;
        for d in role_dirs {
            rootfs::add_files(&d.join("files"), &tree)?;
        }
        rootfs::add_units(&role_dirs.iter().map(|d| d.join("units")).collect::<Vec<_>>(), &tree)?;
        let bootstrap =
            fs::read(req.bootstrap_bin).map_err(|e| BuildError::io(req.bootstrap_bin, e))?;
        rootfs::write_file(&tree, "usr/bin/keel-bootstrap", &bootstrap, 0o755)?;
        let role = format!("{}\n", req.resolved.role);
        rootfs::write_file(&tree, "usr/lib/keel/role", role.as_bytes(), 0o644)?;
        // Which version of each component the node runs: keel-bootstrap
        // writes containerd's configuration in that version's schema.
        let entries = manifest::components(&req.resolved.components, &packages)?;
        let versions =
            keel_contract::image::render(entries.iter().map(|e| (&*e.name, &*e.version)));
        let components = keel_contract::image::COMPONENTS_FILE;
        rootfs::write_file(&tree, components, versions.as_bytes(), 0o644)?;
        if let Some(test) = &req.resolved.test {
            rootfs::add_test_layer(&tree, test)?;
        }
        rootfs::add_system_users(tools, work, Self::DIR, epoch(req))?;
        rootfs::make_factory_etc(&tree)?;
        let bootstrap_sha256 = hex::encode(Sha256::digest(&bootstrap));
        let init_sha256 = hex::encode(Sha256::digest(&init));
        Ok(FileTree { debian, packages, bootstrap_sha256, init_sha256, kernel })
    }
}

/// Stage 2: the tree's /usr as erofs (`work/usr.erofs`) and its dm-verity
/// hash tree (`work/usr.verity`), with the partition UUIDs the root hash
/// names.
struct UsrImage {
    root_hash: String,
    usr_uuid: Uuid,
    verity_uuid: Uuid,
    data: PathBuf,
    hash: PathBuf,
}

impl UsrImage {
    fn make(
        tools: &tools::Tools,
        work: &Path,
        epoch: u64,
        seed: &Seed,
    ) -> Result<Self, BuildError> {
        let usr = usr::make(
            tools,
            work,
            FileTree::DIR,
            epoch,
            seed.uuid("erofs"),
            seed.uuid("verity"),
            &seed.bytes("verity-salt"),
        )?;
        let (usr_uuid, verity_uuid) = usr::partition_uuids(&usr.root_hash)?;
        Ok(UsrImage {
            root_hash: usr.root_hash,
            usr_uuid,
            verity_uuid,
            data: work.join("usr.erofs"),
            hash: work.join("usr.verity"),
        })
    }
}

/// Stage 3: the writable root file system (`work/root.img`, ext4): a
/// skeleton with the factory /etc already in place (the first boot copies
/// nothing), which grows to fill the disk on first boot.
struct RootImage {
    image: PathBuf,
    partition_uuid: Uuid,
}

impl RootImage {
    fn make(
        tools: &tools::Tools,
        work: &Path,
        epoch: u64,
        seed: &Seed,
    ) -> Result<Self, BuildError> {
        let skel = work.join("skel");
        fs::create_dir_all(&skel).map_err(|e| BuildError::io(&skel, e))?;
        rootfs::make_skeleton(&skel)?;
        rootfs::copy_etc(
            &work.join(FileTree::DIR).join(keel_contract::factory_etc::DIR),
            &skel.join("etc"),
        )?;
        rootfs::clamp_times(&skel, epoch)?;
        make_ext4(tools, work, "root.img", "skel", ROOT_SIZE, seed.uuid("ext4"), epoch)?;
        Ok(RootImage { image: work.join("root.img"), partition_uuid: seed.uuid("root-partition") })
    }
}

/// Stage 4: the unified kernel image: kernel, initrd and a command line
/// that names the verity root hash and the root partition; signed with db
/// for Secure Boot when the build has a key.
struct Uki {
    bytes: Vec<u8>,
    cmdline: String,
}

impl Uki {
    #[allow(clippy::too_many_arguments)]
    fn make(
        tools: &tools::Tools,
        work: &Path,
        tree: &FileTree,
        usr: &UsrImage,
        root: &RootImage,
        secure_boot: Option<&crate::secureboot::SigningKey>,
        epoch: u64,
        extra: &[String],
    ) -> Result<Self, BuildError> {
        let cmdline = uki::cmdline(&usr.root_hash, &root.partition_uuid, extra);
        let os_release = FileTree::OS_RELEASE;
        uki::make(tools, work, "vmlinuz", "initrd", os_release, &cmdline, &tree.kernel)?;
        let path = match secure_boot {
            Some(key) => uki::sign(work, key, epoch)?,
            None => work.join("uki.efi"),
        };
        let bytes = fs::read(&path).map_err(|e| BuildError::io(&path, e))?;
        Ok(Uki { bytes, cmdline })
    }
}

/// Stage 5: the GPT disk image in `scratch.image_tmp` (ESP with the UKI,
/// the manifest and the SBOM, /usr, its hash tree, root), its manifest
/// with the image's sha256, and its SBOM (JSON).
#[allow(clippy::too_many_arguments)]
fn disk_image(
    req: &Request,
    key: &str,
    epoch: u64,
    seed: &Seed,
    tree: FileTree,
    usr: &UsrImage,
    root: &RootImage,
    uki: &Uki,
    scratch: &Scratch,
) -> Result<(Manifest, Vec<u8>), BuildError> {
    let r = req.resolved;
    let len = |p: &Path| fs::metadata(p).map(|m| m.len()).map_err(|e| BuildError::io(p, e));
    let esp_img = scratch.work.join("esp.img");
    let table = gpt::plan(
        seed.uuid("disk"),
        &[
            gpt::Request {
                name: "esp",
                type_guid: gpt::types::ESP,
                partition_guid: seed.uuid("esp"),
                size: esp::size_for(uki.bytes.len() as u64),
                flags: 0,
            },
            gpt::Request {
                name: "usr",
                type_guid: gpt::types::USR_X86_64,
                partition_guid: usr.usr_uuid,
                size: len(&usr.data)?,
                flags: gpt::FLAG_READ_ONLY,
            },
            gpt::Request {
                name: "usr-verity",
                type_guid: gpt::types::USR_VERITY_X86_64,
                partition_guid: usr.verity_uuid,
                size: len(&usr.hash)?,
                flags: gpt::FLAG_READ_ONLY,
            },
            gpt::Request {
                name: "root",
                type_guid: gpt::types::ROOT_X86_64,
                partition_guid: root.partition_uuid,
                size: ROOT_SIZE,
                flags: gpt::FLAG_GROWFS,
            },
        ],
    );
    let mut manifest = Manifest {
        profile: r.profile.clone(),
        role: r.role,
        image_sha256: None,
        image_size: table.disk_size,
        keel_version: env!("CARGO_PKG_VERSION").to_string(),
        build_key: key.to_string(),
        source_date_epoch: epoch,
        kernel: tree.kernel,
        cmdline: uki.cmdline.clone(),
        verity_root_hash: usr.root_hash.clone(),
        secure_boot: manifest::secure_boot(req.secure_boot),
        test_image: r.test.is_some(),
        components: manifest::components(&r.components, &tree.packages)?,
        debian_packages: tree.packages,
        disk_guid: table.disk_guid,
        partitions: table.partitions.clone(),
    };
    let inner = serde_json::to_vec_pretty(&manifest)
        .map_err(|source| BuildError::Serialize { what: "the manifest", source })?;
    let inputs = sbom::Inputs {
        name: &file_stem(r),
        debian: &tree.debian,
        bootstrap_sha256: &tree.bootstrap_sha256,
        init_sha256: &tree.init_sha256,
    };
    let sbom = serde_json::to_vec_pretty(&sbom::document(&manifest, &inputs))
        .map_err(|source| BuildError::Serialize { what: "the SBOM", source })?;
    let esp_part =
        table.get("esp").ok_or_else(|| BuildError::NoPartition { name: "esp".into() })?;
    let volume_id =
        u32::from_le_bytes(seed.bytes("fat-volume-id")[..4].try_into().unwrap_or([0; 4]));
    esp::make(
        &esp_img,
        esp_part.size,
        volume_id,
        &[(esp::BOOT_PATH, &uki.bytes), (esp::MANIFEST_PATH, &inner), (sbom::ESP_PATH, &sbom)],
    )?;
    let sha = assemble(
        &scratch.image_tmp,
        &table,
        &[("esp", &esp_img), ("usr", &usr.data), ("usr-verity", &usr.hash), ("root", &root.image)],
    )?;
    manifest.image_sha256 = Some(sha);
    Ok((manifest, sbom))
}

/// Bump when what the build puts into an image changes in a way that
/// neither its inputs nor keel's source show (a tool's behaviour), so
/// that images built before are rebuilt rather than found up to date.
const RECIPE: &str = "keel-image-11";

/// The sha256 of the source this `keel` was built from (builder/build.rs:
/// this crate's and the contract crate's `src/`, and `Cargo.lock`).
const SOURCE: &str = env!("KEEL_SOURCE_SHA256");

/// The hash of everything that goes into the image: the resolved manifest,
/// artifact digests, base and tools recipes, role files and units, the
/// bootstrap and init binaries, the initrd's module list, keel's own
/// version and `source`, the digest of its source ([`SOURCE`]: a changed
/// builder rebuilds what it built before).
fn build_key(
    req: &Request,
    epoch: u64,
    role_dirs: &[PathBuf],
    source: &str,
) -> Result<String, BuildError> {
    let mut h = Sha256::new();
    let field = |h: &mut Sha256, s: &[u8]| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s);
    };
    field(&mut h, env!("CARGO_PKG_VERSION").as_bytes());
    field(&mut h, source.as_bytes());
    field(&mut h, RECIPE.as_bytes());
    let resolved = serde_json::to_vec(req.resolved)
        .map_err(|source| BuildError::Serialize { what: "the resolved profile", source })?;
    field(&mut h, &resolved);
    field(&mut h, base::key(&req.resolved.base, epoch).as_bytes());
    for m in initrd::MODULES.iter().chain([&initrd::ACCELERATED_SHA256]) {
        field(&mut h, m.as_bytes());
    }
    field(&mut h, uki::cmdline("", &Uuid::nil(), &req.resolved.kernel_cmdline).as_bytes());
    // Signed with another key (or not at all) is another image.
    field(&mut h, manifest::secure_boot(req.secure_boot).as_bytes());
    for f in req.fetched {
        field(&mut h, f.name.as_bytes());
        field(&mut h, f.digest.hex().as_bytes());
    }
    for bin in [req.bootstrap_bin, req.init_bin] {
        field(&mut h, &fs::read(bin).map_err(|e| BuildError::io(bin, e))?);
    }
    rootfs::hash_role_dirs(role_dirs, &mut |b| field(&mut h, b))?;
    Ok(hex::encode(h.finalize()))
}

/// The manifest beside an existing image built from the same inputs.
fn up_to_date(image: &Path, manifest_path: &Path, key: &str) -> Option<Manifest> {
    let m: Manifest = serde_json::from_slice(&fs::read(manifest_path).ok()?).ok()?;
    let size = fs::metadata(image).ok()?.len();
    (m.build_key == key && m.image_size == size).then_some(m)
}

/// Identifiers and salts derived from the build key.
struct Seed(String);

impl Seed {
    fn bytes(&self, label: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.0.as_bytes());
        h.update(b"\0");
        h.update(label.as_bytes());
        h.finalize().into()
    }

    /// A random-looking (version 4 layout) UUID that only the inputs choose.
    fn uuid(&self, label: &str) -> Uuid {
        let b = self.bytes(label);
        let mut u = [0u8; 16];
        u.copy_from_slice(&b[..16]);
        uuid::Builder::from_random_bytes(u).into_uuid()
    }
}

/// Makes an ext4 file system of `size` bytes at `work/<name>` from
/// `work/<skel>`, with fixed UUID, hash seed and time.
fn make_ext4(
    tools: &tools::Tools,
    work: &Path,
    name: &str,
    skel: &str,
    size: u64,
    fs_uuid: Uuid,
    epoch: u64,
) -> Result<(), BuildError> {
    let img = work.join(name);
    let f = File::create(&img).map_err(|e| BuildError::io(&img, e))?;
    f.set_len(size).map_err(|e| BuildError::io(&img, e))?;
    drop(f);
    tools.run(
        work,
        "/usr/sbin/mkfs.ext4",
        &[
            "-q".into(),
            "-F".into(),
            // 4 KiB blocks whatever the image's size: mke2fs picks 1 KiB
            // for a file system this small, whose online growth then stops
            // near 64 GiB (reserved GDT blocks), short of a big EBS volume.
            "-b".into(),
            "4096".into(),
            "-L".into(),
            "root".into(),
            "-U".into(),
            fs_uuid.to_string(),
            "-E".into(),
            format!("hash_seed={fs_uuid},root_owner=0:0,lazy_itable_init=0"),
            "-d".into(),
            format!("{}/{skel}", tools::WORK),
            format!("{}/{name}", tools::WORK),
        ],
        &[("E2FSPROGS_FAKE_TIME", epoch.to_string()), ("SOURCE_DATE_EPOCH", epoch.to_string())],
    )?;
    Ok(())
}

/// Writes the disk image at `path`: the partition table, then each
/// partition's contents; fsyncs it and returns its sha256.
fn assemble(
    path: &Path,
    table: &gpt::Table,
    parts: &[(&str, &Path)],
) -> Result<String, BuildError> {
    let ctx = |e: std::io::Error| BuildError::io(path, e);
    let mut disk = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(ctx)?;
    disk.set_len(table.disk_size).map_err(ctx)?;
    table.write(&mut disk).map_err(|source| BuildError::PartitionTable {
        path: path.display().to_string(),
        source,
    })?;
    for (name, src) in parts {
        let p =
            table.get(name).ok_or_else(|| BuildError::NoPartition { name: name.to_string() })?;
        let mut input = File::open(src).map_err(|e| BuildError::io(src, e))?;
        disk.seek(SeekFrom::Start(p.offset)).map_err(ctx)?;
        let n = std::io::copy(&mut input, &mut disk).map_err(ctx)?;
        if n > p.size {
            return Err(BuildError::TooBig {
                path: src.display().to_string(),
                size: n,
                name: name.to_string(),
                capacity: p.size,
            });
        }
    }
    disk.sync_all().map_err(ctx)?;
    disk.seek(SeekFrom::Start(0)).map_err(ctx)?;
    let digest =
        crate::fetch::hash_reader(&mut disk, crate::profile::Algorithm::Sha256).map_err(ctx)?;
    Ok(digest.hex().to_string())
}

/// One line (or spinner) per pipeline stage, on stderr.
struct Stage {
    bar: Option<ProgressBar>,
    started: std::time::Instant,
}

impl Stage {
    fn new(progress: bool) -> Stage {
        let bar = progress.then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed:>4}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        });
        Stage { bar, started: std::time::Instant::now() }
    }

    fn start(&self, what: &str) {
        match &self.bar {
            Some(b) => {
                b.println(format!("  {what}"));
                b.set_message(what.to_string());
            }
            None => {
                eprintln!("keel build: [{:>5.1}s] {what}", self.started.elapsed().as_secs_f64())
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The subsystems udev coldplugs at boot (`systemd-udev-trigger`'s
    /// drop-in) and those keel-udev-late.service leaves out are the same
    /// list, or devices would be coldplugged twice or never.
    #[test]
    fn early_and_late_coldplug_split_the_subsystems_between_them() {
        let images = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("images/common");
        let read = |p: &str| fs::read_to_string(images.join(p)).unwrap();
        let subsystems = |text: &str, flag: &str| -> Vec<String> {
            let mut v: Vec<String> = text
                .lines()
                .filter(|l| l.starts_with("ExecStart=-udevadm trigger --type=devices"))
                .flat_map(|l| l.split_whitespace())
                .filter_map(|w| w.strip_prefix(flag).map(str::to_string))
                .collect();
            v.sort();
            v
        };
        let early = subsystems(
            &read("files/usr/lib/systemd/system/systemd-udev-trigger.service.d/keel-early.conf"),
            "--subsystem-match=",
        );
        let late = subsystems(&read("units/keel-udev-late.service"), "--subsystem-nomatch=");
        assert!(early.iter().any(|s| s == "net") && early.iter().any(|s| s == "block"));
        assert_eq!(early, late);
    }

    #[test]
    fn device_nodes_come_before_every_role_service_keel_bootstrap_gates() {
        let units =
            Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("images/common/units");
        let before = |unit: &str| -> Vec<String> {
            let text = fs::read_to_string(units.join(unit)).unwrap();
            let mut v: Vec<String> = text
                .lines()
                .filter_map(|l| l.strip_prefix("Before="))
                .flat_map(|l| l.split_whitespace().map(str::to_string))
                .filter(|u| u != "shutdown.target")
                .collect();
            v.sort();
            v
        };
        let roles = before("keel-bootstrap.service");
        assert!(roles.iter().any(|u| u == "etcd.service"), "{roles:?}");
        assert_eq!(before("keel-tmpfiles-dev.service"), roles);
    }

    #[test]
    fn build_key_includes_the_secure_boot_key_and_the_builders_source() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
        let paths =
            crate::profile::Paths { profiles: root.join("profiles"), images: root.join("images") };
        let resolved = crate::profile::resolve(&paths, "local", keel_contract::Role::Etcd).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("keel-bootstrap");
        fs::write(&bin, b"not really a binary: build_key only hashes it").unwrap();
        let keys: Vec<_> = ["a", "b"]
            .iter()
            .map(|n| {
                let dir = tmp.path().join(n);
                crate::secureboot::init(&dir, "Test", time::OffsetDateTime::now_utc()).unwrap();
                crate::secureboot::SigningKey::open(&dir).unwrap()
            })
            .collect();
        let key_for_source = |sb: Option<&crate::secureboot::SigningKey>, source: &str| {
            let req = Request {
                resolved: &resolved,
                fetched: &[],
                bootstrap_bin: &bin,
                init_bin: &bin,
                images_dir: &paths.images,
                cache_dir: tmp.path(),
                out_dir: tmp.path(),
                force: false,
                progress: false,
                secure_boot: sb,
            };
            let dirs = [paths.images.join("common"), paths.images.join("etcd")];
            build_key(&req, DEFAULT_EPOCH, &dirs, source).unwrap()
        };
        let key_for = |sb| key_for_source(sb, SOURCE);
        let (unsigned, a, b) = (key_for(None), key_for(Some(&keys[0])), key_for(Some(&keys[1])));
        assert_eq!(unsigned, key_for(None));
        assert_eq!(a, key_for(Some(&keys[0])));
        assert_ne!(unsigned, a);
        assert_ne!(a, b);
        // Another builder source is another image, at the same version.
        assert_eq!(SOURCE.len(), 64, "{SOURCE}");
        assert!(SOURCE.bytes().all(|c| c.is_ascii_hexdigit()), "{SOURCE}");
        assert_ne!(unsigned, key_for_source(None, &"0".repeat(64)));
    }
}
