//! Every reference to a Markdown file in the repository, from code or docs, names a file that is
//! in the repository, and every section it names is there.
//!
//! A reference is a word ending in `.md`. It resolves against the citing file's directory or any
//! directory above it, up to the repository's root (so `BENCHMARKS.md` from anywhere is the one
//! at the root, and a bare kernel-notes name from `docs/` is the one beside it). A `§n` right after a reference
//! (`docs/KERNEL.md §4`) must be a heading of that file that starts with `§n`; a `§n` with no
//! reference before it is a section of docs/KERNEL.md, the one file here whose sections are
//! numbered. A quoted heading right after a reference (`docs/PROTOCOL.md ("Framing")` or
//! `BENCHMARKS.md, "Attempts"`) must be a heading of that file.

use std::collections::BTreeMap;
use std::path::{Component, Path};
use std::process::Command;

/// The file that a bare `§n` cites.
const NUMBERED: &str = "docs/KERNEL.md";

/// One broken reference: where, and what is wrong.
#[derive(Debug, PartialEq)]
struct Broken {
    file: String,
    line: usize,
    what: String,
}

/// The repository's files that git tracks or would track (not ignored), relative to the root.
fn repository_files(root: &Path) -> Vec<String> {
    let out = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root)
        .output()
        .expect("this test lists the repository's files with git, which must be installed");
    assert!(
        out.status.success(),
        "git ls-files failed in {}: {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<String> = out
        .stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8(p.to_vec()).expect("a file name that is UTF-8"))
        .filter(|p| root.join(p).is_file())
        .collect();
    assert!(
        files.iter().any(|f| f == "Cargo.toml"),
        "{} is not the repository's root",
        root.display()
    );
    files
}

/// `path` with `.` and `..` taken out; `None` if it climbs above the root.
fn normalise(path: &Path) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(parts.join("/"))
}

/// The file `reference`, cited from `citing`, names: the first of the citing file's directory
/// and the directories above it under which the reference is a file of the repository.
fn resolve(citing: &str, reference: &str, files: &BTreeMap<String, String>) -> Option<String> {
    let reference = reference.trim_start_matches('/');
    let mut dir = Path::new(citing).parent();
    while let Some(d) = dir {
        if let Some(p) = normalise(&d.join(reference))
            && files.contains_key(&p)
        {
            return Some(p);
        }
        dir = d.parent();
    }
    None
}

/// The headings of a Markdown text, without their `#`s.
fn headings(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
}

/// Whether `text` has a heading that starts with the section number `section` (e.g. `§1.2`).
fn has_section(text: &str, section: &str) -> bool {
    headings(text).any(|h| h.split_whitespace().next() == Some(section))
}

/// The `§n` (digits and inner dots) at the start of `s`, if any.
fn section_at(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('§')?;
    let len = rest
        .char_indices()
        .take_while(|&(i, c)| {
            c.is_ascii_digit()
                || (c == '.' && rest[i + 1..].starts_with(|d: char| d.is_ascii_digit()))
        })
        .map(|(i, c)| i + c.len_utf8())
        .last()?;
    Some(&s[..'§'.len_utf8() + len])
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

/// Every broken reference in `text`, the contents of the repository file `citing`.
fn check(citing: &str, text: &str, files: &BTreeMap<String, String>) -> Vec<Broken> {
    let mut broken = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut report = |what: String| {
            broken.push(Broken {
                file: citing.to_string(),
                line: n + 1,
                what,
            })
        };
        // Byte ranges of the line that a reference's `§n` already accounted for.
        let mut cited_sections: Vec<usize> = Vec::new();
        for (end, _) in line.match_indices(".md") {
            let after = end + 3;
            if line[after..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let start = line[..end]
                .char_indices()
                .rev()
                .take_while(|&(_, c)| is_path_char(c))
                .last()
                .map_or(end, |(i, _)| i);
            let reference = &line[start..after];
            // An address on the web is not a file of the repository.
            if start == end || reference.starts_with("//") || reference.contains("://") {
                continue;
            }
            let Some(target) = resolve(citing, reference, files) else {
                report(format!("{reference} is not a file of the repository"));
                continue;
            };
            let target_text = &files[&target];
            let rest = &line[after..];
            let trimmed = rest.trim_start();
            if let Some(section) = section_at(trimmed) {
                cited_sections.push(after + (rest.len() - trimmed.len()));
                if !has_section(target_text, section) {
                    report(format!("{target} has no section {section}"));
                }
            }
            let quoted = rest
                .strip_prefix(", \"")
                .or_else(|| rest.strip_prefix(" (\""))
                .or_else(|| rest.strip_prefix(" \""));
            if let Some(heading) = quoted.and_then(|q| q.split('"').next())
                && !headings(target_text).any(|h| h == heading)
            {
                report(format!("{target} has no heading {heading:?}"));
            }
        }
        for (at, _) in line.match_indices('§') {
            if cited_sections.contains(&at) {
                continue;
            }
            // A `§` with no number after it is prose about sections, not a citation.
            let Some(section) = section_at(&line[at..]) else {
                continue;
            };
            match files.get(NUMBERED) {
                Some(numbered) if has_section(numbered, section) => {}
                Some(_) => report(format!("{NUMBERED} has no section {section}")),
                None => report(format!("{section} cites {NUMBERED}, which is missing")),
            }
        }
    }
    broken
}

#[test]
fn every_markdown_reference_names_a_file_and_section_of_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let files: BTreeMap<String, String> = repository_files(&root)
        .into_iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(root.join(&p)).ok()?;
            Some((p, text))
        })
        .collect();
    let references = files
        .values()
        .map(|t| t.matches(".md").count() + t.matches('§').count())
        .sum::<usize>();
    assert!(
        references > 50,
        "only {references} references found: is this the repository?"
    );
    let broken: Vec<String> = files
        .iter()
        .flat_map(|(path, text)| check(path, text, &files))
        .map(|b| format!("{}:{}: {}", b.file, b.line, b.what))
        .collect();
    assert!(
        broken.is_empty(),
        "{} broken references to Markdown files:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[test]
fn the_check_finds_a_missing_file_a_missing_section_and_a_missing_heading() {
    let numbered = "# Kernel\n## §1 One\n### §1.2 Two\n".to_string();
    let files: BTreeMap<String, String> = [
        (NUMBERED.to_string(), numbered),
        ("README.md".to_string(), "# R\n## Use it\n".to_string()),
        ("crates/a/src/lib.rs".to_string(), String::new()),
    ]
    .into_iter()
    .collect();
    let md = ".md";
    let cases = [
        (format!("see docs/KERNEL{md} §1.2 and §1"), 0),
        (format!("see KERNEL{md} §1"), 1),
        (format!("see docs/KERNEL{md} §1.3"), 1),
        (format!("see docs/KERNEL{md} §1.2, §3"), 1),
        (format!("see README{md}, \"Use it\""), 0),
        (format!("see README{md} (\"Use it\")"), 0),
        (format!("see README{md}, \"Try it\""), 1),
        (
            format!("see /../../README{md} and https://example.org/x{md}"),
            0,
        ),
        ("a bare §2".to_string(), 1),
    ];
    for (text, expected) in cases {
        let found = check("crates/a/src/lib.rs", &text, &files);
        assert_eq!(found.len(), expected, "{text:?}: {found:?}");
    }
}
