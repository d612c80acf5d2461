//! The kernel command line, as Keel's builder writes it (`uki::cmdline`):
//! the /usr root hash, the root partition, and how to mount both.

use std::fmt;

use keel_contract::gpt::Uuid;

/// What keel-init needs from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// 64 lowercase hex digits: the dm-verity root hash of /usr.
    pub usrhash: String,
    /// `root=PARTUUID=...`.
    pub root_partuuid: Uuid,
    pub usr_fstype: String,
    pub usr_flags: Options,
    pub root_fstype: String,
    pub root_flags: Options,
    /// Skip, under QEMU's emulation (TCG), the modules the builder marks
    /// so (the x86-64 sha256): true unless `keel.tcg-skip=no`, with which
    /// a test boots the code path EC2 instances take.
    pub tcg_skip: bool,
}

/// Mount options: `ro`/`rw` become the read-only flag, `x-*` options
/// (systemd's, e.g. `x-systemd.growfs`) are not the kernel's and are
/// dropped, the rest is passed to the file system.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Options {
    pub read_only: bool,
    pub data: String,
}

impl Options {
    fn parse(s: &str, read_only: bool) -> Options {
        let mut o = Options { read_only, data: String::new() };
        let mut data = Vec::new();
        for opt in s.split(',').filter(|o| !o.is_empty()) {
            match opt {
                "ro" => o.read_only = true,
                "rw" => o.read_only = false,
                _ if opt.starts_with("x-") => {}
                _ => data.push(opt),
            }
        }
        o.data = data.join(",");
        o
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdlineError {
    Missing(&'static str),
    Bad { arg: String, why: &'static str },
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineError::Missing(what) => write!(f, "no {what} on the kernel command line"),
            CmdlineError::Bad { arg, why } => write!(f, "kernel command line: {arg}: {why}"),
        }
    }
}

/// The command line's arguments: split at spaces outside double quotes,
/// quotes removed (as the kernel does).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut cur, mut quoted, mut any) = (String::new(), false, false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// An argument's key and, after the first `=`, its value.
fn key_value(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (arg, None),
    }
}

/// Parses `/proc/cmdline`; the last of a repeated argument wins, as in
/// systemd.
pub fn parse(line: &str) -> Result<Cmdline, CmdlineError> {
    let (mut usrhash, mut root, mut rw) = (None, None, None);
    let (mut usr_fstype, mut usr_flags) = (None, String::new());
    let (mut root_fstype, mut root_flags) = (None, String::new());
    let mut tcg_skip = true;
    for w in words(line) {
        match key_value(&w) {
            ("usrhash", Some(v)) => {
                if v.len() != 64 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(CmdlineError::Bad {
                        arg: w.clone(),
                        why: "not a sha256 root hash (64 hex digits)",
                    });
                }
                usrhash = Some(v.to_ascii_lowercase());
            }
            ("root", Some(v)) => {
                let Some(uuid) = v.strip_prefix("PARTUUID=") else {
                    return Err(CmdlineError::Bad {
                        arg: w.clone(),
                        why: "keel-init finds the root only by PARTUUID=",
                    });
                };
                let Ok(uuid) = Uuid::parse_str(uuid) else {
                    return Err(CmdlineError::Bad { arg: w.clone(), why: "not a UUID" });
                };
                root = Some(uuid);
            }
            ("mount.usrfstype", Some(v)) => usr_fstype = Some(v.to_string()),
            ("mount.usrflags", Some(v)) => usr_flags = v.to_string(),
            ("rootfstype", Some(v)) => root_fstype = Some(v.to_string()),
            ("rootflags", Some(v)) => root_flags = v.to_string(),
            ("keel.tcg-skip", Some(v)) => tcg_skip = v != "no",
            ("rw", None) => rw = Some(true),
            ("ro", None) => rw = Some(false),
            _ => {}
        }
    }
    Ok(Cmdline {
        usrhash: usrhash.ok_or(CmdlineError::Missing("usrhash= (the /usr root hash)"))?,
        root_partuuid: root.ok_or(CmdlineError::Missing("root=PARTUUID="))?,
        usr_fstype: usr_fstype.ok_or(CmdlineError::Missing("mount.usrfstype="))?,
        // /usr is read-only whatever the flags say: dm-verity is.
        usr_flags: Options::parse(&usr_flags, true),
        root_fstype: root_fstype.ok_or(CmdlineError::Missing("rootfstype="))?,
        // Read-only unless `rw`, as the kernel mounts a root.
        root_flags: Options::parse(&root_flags, !rw.unwrap_or(false)),
        tcg_skip,
    })
}

/// The command line's `module.param[=value]` arguments, read once: the
/// module (`-` as `_`, as kmod compares names), the parameter and its
/// value. Other dotted names (`systemd.firstboot=`, `mount.usrfstype=`)
/// are among them: callers keep those that are modules. The kernel applies
/// `module.param=` only to built-in modules and leaves the rest to whoever
/// loads the module (kmod's modprobe reads /proc/cmdline; keel-init does
/// the same).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleArgs(Vec<(String, String, Option<String>)>);

impl ModuleArgs {
    pub fn parse(line: &str) -> ModuleArgs {
        let mut out = Vec::new();
        for w in words(line) {
            let (key, value) = key_value(&w);
            let Some((name, param)) = key.split_once('.') else { continue };
            if !name.is_empty() && !param.is_empty() {
                out.push((name.replace('-', "_"), param.to_string(), value.map(str::to_string)));
            }
        }
        ModuleArgs(out)
    }

    /// The modules given parameters (`nvme_core` for
    /// `nvme_core.io_timeout=...`), each once, in order.
    pub fn modules(&self) -> Vec<&str> {
        distinct(self.0.iter().map(|(name, _, _)| name.as_str()))
    }

    /// The arguments for `module` (`-` and `_` alike).
    fn of<'a>(
        &'a self,
        module: &str,
    ) -> impl Iterator<Item = &'a (String, String, Option<String>)> {
        let module = module.replace('-', "_");
        self.0.iter().filter(move |(name, _, _)| *name == module)
    }

    /// The names of the parameters `module` is given, each once, in order.
    pub fn names(&self, module: &str) -> Vec<&str> {
        distinct(self.of(module).map(|(_, param, _)| param.as_str()))
    }

    /// The parameters `module` is given (`io_timeout=4294967295` for
    /// `nvme_core`), as finit_module(2) takes them: `param=value` joined
    /// by spaces, a value with a space quoted.
    pub fn params(&self, module: &str) -> String {
        self.of(module)
            .map(|(_, param, value)| match value {
                Some(v) if v.contains(char::is_whitespace) => format!("{param}=\"{v}\""),
                Some(v) => format!("{param}={v}"),
                None => param.clone(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Each of `items` once, in the order they first come.
fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "d477443e180cc82cc8c256af41475ad1f2c960fbbb0862a2d0d614eaa9ae4f2a";

    #[test]
    fn keels_command_line_parses() {
        let line = format!(
            "usrhash={HASH} mount.usrfstype=erofs mount.usrflags=ro \
             root=PARTUUID=D8E9CA48-aa45-40b9-b33b-6852fbbfa97f rootfstype=ext4 \
             rootflags=x-systemd.growfs,noatime rw console=tty0 console=ttyS0,115200n8 \
             systemd.firstboot=no panic=30 no_timer_check\n"
        );
        let c = parse(&line).unwrap();
        assert_eq!(c.usrhash, HASH);
        assert_eq!(c.root_partuuid.to_string(), "d8e9ca48-aa45-40b9-b33b-6852fbbfa97f");
        assert_eq!(c.usr_fstype, "erofs");
        assert_eq!(c.usr_flags, Options { read_only: true, data: String::new() });
        assert_eq!(c.root_fstype, "ext4");
        assert_eq!(c.root_flags, Options { read_only: false, data: "noatime".into() });
    }

    #[test]
    fn quotes_group_and_the_last_argument_wins() {
        let line = format!(
            "usrhash=00 usrhash={HASH} \"mount.usrflags=ro,x-a\" mount.usrfstype=erofs \
             root=PARTUUID=d8e9ca48-aa45-40b9-b33b-6852fbbfa97f rootfstype=ext4 rw ro"
        );
        // The first usrhash= is bad: refused, not skipped.
        assert!(matches!(parse(&line), Err(CmdlineError::Bad { .. })));
        let line = line.replacen("usrhash=00 ", "", 1);
        let c = parse(&line).unwrap();
        assert!(c.root_flags.read_only, "ro came last");
        assert_eq!(c.usr_flags.data, "");
        assert!(c.tcg_skip, "skipped under TCG unless asked");
        assert!(!parse(&format!("{line} keel.tcg-skip=no")).unwrap().tcg_skip);
        assert!(parse(&format!("{line} keel.tcg-skip=no keel.tcg-skip=yes")).unwrap().tcg_skip);
    }

    #[test]
    fn missing_and_bad_arguments_are_named() {
        let e = parse("root=PARTUUID=d8e9ca48-aa45-40b9-b33b-6852fbbfa97f").unwrap_err();
        assert!(e.to_string().contains("usrhash="), "{e}");
        let e = parse(&format!("usrhash={HASH} root=/dev/vda4")).unwrap_err();
        assert!(e.to_string().contains("root=/dev/vda4"), "{e}");
        let e = parse(&format!("usrhash={HASH} root=PARTUUID=nope")).unwrap_err();
        assert!(e.to_string().contains("not a UUID"), "{e}");
        let e = parse(&format!(
            "usrhash={HASH} root=PARTUUID=d8e9ca48-aa45-40b9-b33b-6852fbbfa97f rootfstype=ext4"
        ))
        .unwrap_err();
        assert_eq!(e, CmdlineError::Missing("mount.usrfstype="));
    }

    #[test]
    fn module_parameters_are_picked_for_their_module() {
        let line = format!(
            "usrhash={HASH} mount.usrfstype=erofs nvme_core.io_timeout=4294967295 \
             console=ttyS0 nvme-core.admin_timeout=60 nvme.poll_queues=2 ena.debug \
             \"dm_mod.foo=a b\" nvme_core. systemd.firstboot=no"
        );
        let args = ModuleArgs::parse(&line);
        assert_eq!(args.params("nvme_core"), "io_timeout=4294967295 admin_timeout=60");
        assert_eq!(args.params("nvme-core"), "io_timeout=4294967295 admin_timeout=60");
        assert_eq!(args.params("nvme"), "poll_queues=2");
        assert_eq!(args.params("ena"), "debug");
        assert_eq!(args.params("dm_mod"), "foo=\"a b\"");
        assert_eq!(args.params("virtio_blk"), "");
        assert_eq!(args.modules(), ["mount", "nvme_core", "nvme", "ena", "dm_mod", "systemd"]);
        // Names from the arguments, not from the joined string: a quoted
        // value with a space is one parameter.
        assert_eq!(args.names("dm_mod"), ["foo"]);
        assert_eq!(args.names("nvme-core"), ["io_timeout", "admin_timeout"]);
    }
}
