//! The README's test command works on a fresh machine: `.ci/peers` installs every program the
//! tests run, the README's "Try it" block gives `.ci/peers && cargo test`, and `.ci/run` runs
//! exactly that command.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every program a test of the workspace starts by name (`Command::new` with a literal; a path's last
/// part), and the peers started indirectly (`tc` under `ip netns exec`, the digest tools).
fn programs_the_tests_run() -> Vec<String> {
    let mut found = vec!["tc".to_string(), "xxh128sum".into(), "sha256sum".into()];
    for krate in ["cli", "teecast", "proto", "sys"] {
        for dir in [
            format!("crates/{krate}/tests"),
            format!("crates/{krate}/src"),
        ] {
            let mut stack = vec![root().join(dir)];
            while let Some(d) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&d) else {
                    continue;
                };
                for e in entries.flatten() {
                    let p = e.path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|x| x == "rs") {
                        let text = std::fs::read_to_string(&p).unwrap();
                        for piece in text.split("Command::new(\"").skip(1) {
                            let prog = piece.split('"').next().unwrap();
                            let prog = prog.rsplit('/').next().unwrap().to_string();
                            if !found.contains(&prog) {
                                found.push(prog);
                            }
                        }
                    }
                }
            }
        }
    }
    found
}

#[test]
fn the_test_script_installs_every_program_the_tests_run() {
    let script = read(".ci/peers");
    let wanted: Vec<&str> = script
        .lines()
        .filter_map(|l| l.strip_prefix("want "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let programs = programs_the_tests_run();
    assert!(programs.iter().any(|p| p == "sshd"), "{programs:?}");
    for p in &programs {
        assert!(
            wanted.contains(&p.as_str()),
            "the tests run {p}, which .ci/peers does not install (it wants {wanted:?})"
        );
    }
}

#[test]
fn ci_and_the_readme_run_the_test_script() {
    let ci = read(".ci/run");
    let steps: Vec<&str> = ci
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    assert!(steps.contains(&"cargo fmt --check"), "{ci}");
    assert!(
        steps.contains(&"cargo clippy --all-targets -- -D warnings"),
        "{ci}"
    );
    let readme = read("README.md");
    let line = readme
        .lines()
        .find(|l| l.contains("# the test suite"))
        .expect("the README's test command");
    let command = line.split('#').next().unwrap().trim();
    assert_eq!(command, ".ci/peers && cargo test", "{line}");
    assert_eq!(steps.last(), Some(&command), "{ci}");
    assert!(!readme.contains("Nothing else to install"));
    assert!(
        readme.contains("cargo run --release -- demo     # "),
        "the demo command as written"
    );
}

/// As another user the script stops at once, saying why, and runs nothing.
#[test]
fn the_test_script_says_it_needs_root() {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(root().join(".ci/peers"))
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("needs root"), "{err}");
}
