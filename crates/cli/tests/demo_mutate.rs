//! `teecast demo --mutate`: the default path survives a concurrent writer, zerocopy's failures
//! (if any) are detected, and no receiver keeps a bad file — whatever the luck of the run. Every
//! run must have had the writer rewriting while it sent, or it proved nothing.

use std::process::Command;

#[test]
fn demo_mutate_reports_both_paths_and_succeeds() {
    let out = Command::new(env!("CARGO_BIN_EXE_teecast"))
        .args(["demo", "--mutate", "--size-mib", "16"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let runs: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("bad files kept"))
        .collect();
    let (zerocopy, default) = runs.split_at(runs.len().saturating_sub(1));
    assert!(!zerocopy.is_empty(), "no zerocopy run: {text}");
    // zerocopy runs until one fails: every run before the last came through whole, and a failed
    // one was refused by at least one receiver, never accepted with a bad file.
    for (i, line) in zerocopy.iter().enumerate() {
        let prefix = format!("teecast demo: zerocopy, run {}: ", i + 1);
        assert!(line.starts_with(&prefix), "{text}");
        if line.contains(": FAILED: ") {
            assert_eq!(i + 1, zerocopy.len(), "runs after a failure: {text}");
            assert!(!line.contains(" 0 refused"), "{line}");
        } else {
            assert!(line.contains(": ok: 3 confirmed, 0 refused"), "{line}");
        }
    }
    assert!(
        default[0].starts_with("teecast demo: default path (")
            && default[0].contains("): ok: 3 confirmed, 0 refused"),
        "{text}"
    );
    for line in &runs {
        assert!(line.contains(", 0 bad files kept"), "{line}");
        let rewrites: u64 = line
            .rsplit(", ")
            .next()
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count of rewrites in {line:?}"));
        assert!(rewrites > 0, "the writer rewrote nothing during: {line}");
    }
}

/// Regression: Ctrl-C of the demo left its files (hundreds of MiB) in the temporary directory.
#[test]
fn an_interrupted_demo_leaves_nothing() {
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_teecast"))
        .args(["demo", "--size-mib", "512"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = demo.id();
    // Wait until the demo is at work: its receivers are listening. It says first where it works
    // (/dev/shm where that is a tmpfs, else the temporary directory).
    let mut out = std::io::BufReader::new(demo.stdout.take().unwrap());
    let mut line = String::new();
    let mut work = None;
    while !line.contains("receivers listening") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "the demo ended before its receivers listened"
        );
        if let Some(rest) = line.strip_prefix("teecast demo: working in ") {
            work = rest.split(" (").next().map(std::path::PathBuf::from);
        }
    }
    let work = work.expect("the demo says where it works");
    assert!(
        work.ends_with(format!("teecast-demo-{pid}")),
        "{}",
        work.display()
    );
    assert!(
        work.is_dir(),
        "{} should exist while the demo runs",
        work.display()
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let status = demo.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(!work.exists(), "{} was left behind", work.display());
}
