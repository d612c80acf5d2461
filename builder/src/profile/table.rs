//! The human-readable form of a resolved manifest (`keel resolve` without
//! `--json`).

use std::fmt::Write;

use super::resolved::{Install, Resolved, Source};

pub fn render(r: &Resolved) -> String {
    let mut out = String::new();
    let extends = if r.extends.is_empty() {
        String::new()
    } else {
        format!(" (extends {})", r.extends.join(" -> "))
    };
    let _ = writeln!(out, "profile   {}{extends}", r.profile);
    let _ = writeln!(out, "role      {}", r.role);
    let _ = writeln!(out, "arch      {}", r.arch);
    if let Some(t) = r.source_date_epoch {
        let _ = writeln!(out, "epoch     {t}");
    }
    if !r.kernel_cmdline.is_empty() {
        let _ = writeln!(out, "cmdline   + {}", r.kernel_cmdline.join(" "));
    }
    let mirror = r.base.mirror.as_deref().unwrap_or("mmdebstrap's default mirror");
    let _ = writeln!(out, "base      debian {} from {mirror}", r.base.suite);
    let _ = writeln!(out, "packages  {}", wrap(&r.base.packages, 10, 78));
    let name_w =
        r.components.iter().map(|c| c.name.len()).max().unwrap_or(0).max("COMPONENT".len());
    let ver_w = r
        .components
        .iter()
        .map(|c| c.version.as_deref().unwrap_or("-").len())
        .max()
        .unwrap_or(0)
        .max("VERSION".len());
    let _ = writeln!(out);
    let _ = writeln!(out, "{:name_w$}  {:ver_w$}  SOURCE / INSTALL", "COMPONENT", "VERSION");
    for c in &r.components {
        let version = c.version.as_deref().unwrap_or(&r.base.suite);
        let pad = " ".repeat(name_w + ver_w + 4);
        match &c.source {
            Source::Url { url, digest } => {
                let _ = writeln!(out, "{:name_w$}  {version:ver_w$}  {url}", c.name);
                let _ = writeln!(out, "{pad}{digest}");
            }
            Source::Debian { package } => {
                let _ =
                    writeln!(out, "{:name_w$}  {version:ver_w$}  debian package {package}", c.name);
            }
        }
        let install = match &c.install {
            Install::Binary { path, mode } => format!("-> {path} (mode {mode:04o})"),
            Install::Tarball { dest, strip_components, include } => {
                let what =
                    if include.is_empty() { "everything".to_string() } else { include.join(", ") };
                let strip = if *strip_components > 0 {
                    format!(" (strip {strip_components})")
                } else {
                    String::new()
                };
                format!("-> {dest}/{strip}: {what}")
            }
            Install::Package => continue,
        };
        let _ = writeln!(out, "{pad}{install}");
    }
    out
}

/// Joins words into lines of at most `width` columns, continuation lines
/// indented by `indent`.
fn wrap(words: &[String], indent: usize, width: usize) -> String {
    let mut out = String::new();
    let mut col = indent;
    for (i, w) in words.iter().enumerate() {
        if i > 0 {
            if col + 1 + w.len() > width {
                out.push('\n');
                out.push_str(&" ".repeat(indent));
                col = indent;
            } else {
                out.push(' ');
                col += 1;
            }
        }
        out.push_str(w);
        col += w.len();
    }
    out
}
