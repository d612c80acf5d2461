//! `keel man --out DIR`: one man page per command (`keel.1`,
//! `keel-build.1`, `keel-assets-init.1`, ...), generated from the same clap
//! definitions as `--help` (clap_mangen), so the pages never disagree with
//! the binary. Each page is written atomically.

use std::path::{Path, PathBuf};

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory for the pages (created when missing); existing pages of
    /// the same names are replaced.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Writes the pages of `cli` (the whole `keel` command) into `--out` and
/// prints each path.
pub fn run(args: &ManArgs, cli: clap::Command) -> anyhow::Result<()> {
    for path in write_pages(cli, &args.out)? {
        println!("{}", path.display());
    }
    Ok(())
}

/// The pages of `cmd` and of every visible subcommand, recursively, named
/// by the command path (`keel-assets-init.1`). Returns the paths written.
fn write_pages(mut cmd: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    // No page (and no SUBCOMMANDS entry) for clap's generated `help`.
    cmd = cmd.disable_help_subcommand(true);
    // Building sets each subcommand's display name to its full path.
    cmd.build();
    let mut written = Vec::new();
    write_tree(&cmd, dir, &mut written)?;
    Ok(written)
}

fn write_tree(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page).with_context(|| format!("rendering {}", path.display()))?;
    keel_bootstrap::atomic_file::write(&path, 0o644, &page)
        .with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        write_tree(sub, dir, written)?;
    }
    Ok(())
}
