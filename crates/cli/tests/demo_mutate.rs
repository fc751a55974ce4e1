//! `teecast demo --mutate`: the default path survives a concurrent writer, zerocopy's failures
//! (if any) are detected, and no receiver keeps a bad file — whatever the luck of the run.

use std::process::Command;

#[test]
fn demo_mutate_reports_both_paths_and_succeeds() {
    let out = Command::new(env!("CARGO_BIN_EXE_teecast"))
        .args(["demo", "--mutate", "--size-mib", "16"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("teecast demo: zerocopy, run 1:"), "{text}");
    assert!(text.contains("default path ("), "{text}");
    assert!(!text.contains(" FAILED: 0 confirmed, 0 refused"), "{text}");
    for line in text.lines().filter(|l| l.contains("bad files kept")) {
        assert!(line.contains(", 0 bad files kept"), "{line}");
    }
}
