//! Every relative Markdown link in the repository's documentation resolves:
//! README.md, BENCHMARKS.md, images/README.md and docs/**/*.md (the book's
//! sources). A link's file must exist, and its `#anchor` must be the id of
//! a heading in the target file (GitHub's and mdBook's ids agree for the
//! headings used here). A failure names the file, line and link.
//!
//! A page of the book (docs/src/) may link only within the book: mdBook
//! renders `x.md` as `x.html`, so a link out of it would break.
//!
//! Links with a scheme (`https:`, `mailto:`) and text inside code blocks or
//! code spans are not checked.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

/// The repository root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit/ has a parent").to_path_buf()
}

/// The documentation files under `root`: the named top-level files and
/// every `.md` below `docs/`, except the built book (`docs/book/`).
fn doc_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["README.md", "BENCHMARKS.md", "images/README.md"]
        .iter()
        .map(|f| root.join(f))
        .filter(|p| p.is_file())
        .collect();
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("reading a docs directory entry").path();
            if path.is_dir() {
                if path != root.join("docs/book") {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The lines of a Markdown file outside fenced code blocks, numbered
/// from 1.
fn outside_fences(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// The lines outside fenced code blocks with code spans blanked out: where
/// links are looked for.
fn prose_lines(text: &str) -> Vec<(usize, String)> {
    outside_fences(text).into_iter().map(|(n, line)| (n, without_code_spans(line))).collect()
}

/// `line` with the contents of every `code span` removed.
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
        let delim = &rest[start..start + ticks];
        let after = &rest[start + ticks..];
        match after.find(delim) {
            Some(end) => rest = &after[end + ticks..],
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The anchor ids of a file's headings, as GitHub and mdBook make them:
/// the heading's text lowercased, spaces to `-`, punctuation other than
/// `-` and `_` dropped; a repeated id gets `-1`, `-2`, ...
fn anchors(text: &str) -> HashSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut ids = HashSet::new();
    for (_, line) in outside_fences(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        // A code span in a heading keeps its text; the backticks go.
        let heading = link_texts(&line[hashes..].trim().replace('`', ""));
        let id: String = heading
            .chars()
            .filter_map(|c| {
                if c.is_alphanumeric() || c == '-' || c == '_' {
                    Some(c.to_lowercase().next().unwrap_or(c))
                } else if c == ' ' {
                    Some('-')
                } else {
                    None
                }
            })
            .collect();
        let n = seen.entry(id.clone()).or_insert(0);
        ids.insert(if *n == 0 { id } else { format!("{id}-{n}") });
        *n += 1;
    }
    ids
}

/// Heading text with `[text](target)` reduced to `text`.
fn link_texts(heading: &str) -> String {
    let mut out = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|c| open + c) else { break };
        let Some(end) = rest[close..].find(')').map(|e| close + e) else { break };
        out.push_str(&rest[..open]);
        out.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The targets of inline links `[text](target "title")` and of reference
/// definitions `[name]: target` on one line.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let trimmed = line.trim_start();
    if trimmed.starts_with('[') {
        if let Some(def) = trimmed.find("]:") {
            if let Some(t) = trimmed[def + 2..].split_whitespace().next() {
                targets.push(t.trim_matches(|c| c == '<' || c == '>').to_string());
            }
        }
    }
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let end = after.find(')').unwrap_or(after.len());
        if let Some(t) = after[..end].split_whitespace().next() {
            targets.push(t.trim_matches(|c| c == '<' || c == '>').to_string());
        }
        rest = &after[end..];
    }
    targets
}

/// `dir/rel` with `.` and `..` resolved lexically.
fn join(dir: &Path, rel: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for c in dir.join(rel).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Every broken relative link of `files`, as `file:line: link: why`.
fn broken_links(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut errors = Vec::new();
    for file in files {
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let shown = file.strip_prefix(root).unwrap_or(file).display().to_string();
        for (n, line) in prose_lines(&text) {
            for link in link_targets(&line) {
                if link.contains("://") || link.starts_with("mailto:") {
                    continue;
                }
                let (path, anchor) = match link.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (link.as_str(), None),
                };
                let target = if path.is_empty() {
                    file.clone()
                } else if path.starts_with('/') {
                    errors.push(format!("{shown}:{n}: {link}: absolute path; use a relative one"));
                    continue;
                } else {
                    join(file.parent().unwrap_or(root), path)
                };
                let book = root.join("docs/src");
                if file.starts_with(&book) && !target.starts_with(&book) {
                    errors.push(format!(
                        "{shown}:{n}: {link}: leaves docs/src, so the rendered book's link breaks; \
                         name the file in code instead"
                    ));
                    continue;
                }
                if !target.exists() {
                    errors
                        .push(format!("{shown}:{n}: {link}: {} does not exist", target.display()));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if target.extension().is_none_or(|e| e != "md") {
                    errors.push(format!(
                        "{shown}:{n}: {link}: an anchor into a file that is not Markdown"
                    ));
                    continue;
                }
                let target_text = fs::read_to_string(&target)
                    .unwrap_or_else(|e| panic!("{}: {e}", target.display()));
                if !anchors(&target_text).contains(anchor) {
                    errors.push(format!(
                        "{shown}:{n}: {link}: {} has no heading with the id #{anchor}",
                        target.display()
                    ));
                }
            }
        }
    }
    errors
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let root = repo();
    let files = doc_files(&root);
    assert!(
        files.iter().any(|f| f.ends_with("docs/src/SUMMARY.md")),
        "no docs/src/SUMMARY.md among {files:?}"
    );
    let errors = broken_links(&root, &files);
    assert!(errors.is_empty(), "broken links in the docs:\n{}", errors.join("\n"));
}

#[test]
fn a_broken_link_or_anchor_is_reported_with_file_line_and_link() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join("docs/src/guide")).unwrap();
    fs::write(
        root.join("README.md"),
        "# Keel\n\n[ok](docs/src/guide/a.md#the-commands-keel-x)\n\
         ```sh\n[in a fence](nowhere.md)\n```\n\
         `[in a span](nowhere.md)` and [gone](docs/src/guide/b.md)\n\
         [bad anchor](docs/src/guide/a.md#nope) [self](#keel)\n",
    )
    .unwrap();
    fs::write(
        root.join("docs/src/guide/a.md"),
        "# A\n\n## The commands: `keel x`\n\n[self](a.md#a) [web](https://example.org/x.md)\n\
         [dup](#a-1) [out](../../../README.md)\n\n## A\n",
    )
    .unwrap();
    let files = doc_files(root);
    assert_eq!(files.len(), 2, "{files:?}");
    let errors = broken_links(root, &files);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors[0].starts_with("README.md:7: docs/src/guide/b.md: "), "{}", errors[0]);
    assert!(errors[0].ends_with("does not exist"), "{}", errors[0]);
    assert!(errors[1].starts_with("README.md:8: docs/src/guide/a.md#nope: "), "{}", errors[1]);
    assert!(errors[1].contains("no heading with the id #nope"), "{}", errors[1]);
    assert!(
        errors[2].starts_with("docs/src/guide/a.md:6: ../../../README.md: leaves docs/src"),
        "{}",
        errors[2]
    );
}
