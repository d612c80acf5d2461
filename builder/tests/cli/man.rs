//! `keel man`: a page for keel and for every subcommand that `--help`
//! lists, each a man page naming its command.

use std::fs;
use std::path::Path;

use super::{keel, ok};

/// The subcommands a command's `--help` lists under "Commands:" (without
/// clap's `help`).
fn subcommands(cwd: &Path, path: &[&str]) -> Vec<String> {
    let mut args = path.to_vec();
    args.push("--help");
    let help = ok(&keel(cwd, &args));
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("    "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn man_writes_a_page_for_every_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("man");
    let printed = ok(&keel(tmp.path(), &["man", "--out", out.to_str().unwrap()]));

    // Every command path from `--help`, breadth first.
    let mut expected = vec![vec!["keel".to_string()]];
    let mut i = 0;
    while i < expected.len() {
        let path = expected[i].clone();
        let args: Vec<&str> = path[1..].iter().map(String::as_str).collect();
        for sub in subcommands(tmp.path(), &args) {
            let mut child = path.clone();
            child.push(sub);
            expected.push(child);
        }
        i += 1;
    }
    assert!(expected.len() > 10, "keel --help lists too few commands: {expected:?}");
    assert!(expected.iter().any(|p| p.join("-") == "keel-assets-init"), "{expected:?}");

    for path in &expected {
        let name = path.join("-");
        let page = out.join(format!("{name}.1"));
        let text = fs::read_to_string(&page).unwrap_or_else(|e| {
            panic!("no man page for `{}`: {}: {e}", path.join(" "), page.display())
        });
        // roff escapes `-` as `\-`.
        let plain = text.replace("\\-", "-");
        assert!(
            plain.lines().any(|l| l.starts_with(&format!(".TH {name} 1"))),
            "{} has no title line `.TH {name} 1`:\n{text}",
            page.display()
        );
        assert!(plain.contains(".SH NAME"), "{} has no NAME section", page.display());
        assert!(printed.contains(&page.display().to_string()), "not printed: {}", page.display());
    }
    let pages = fs::read_dir(&out).unwrap().count();
    assert_eq!(pages, expected.len(), "pages beyond the listed commands in {}", out.display());
}
