//! `teecast probe` through the real binary: it runs, its JSON parses, every answer has its type,
//! and the O_DIRECT answer agrees with whether opening a file there with O_DIRECT works.

use std::process::Command;

fn probe(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_teecast"))
        .arg("probe")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn probe_json_answers_every_question() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = probe(&[dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for key in [
        "splice_shares_page_cache",
        "vmsplice_shares_user_pages",
        "o_direct_available",
        "msg_zerocopy_accepted",
        "io_uring_usable",
    ] {
        assert!(v[key].is_boolean(), "{key}: {}", v[key]);
    }
    // tee is measured exactly when file splice shares pages; the O_DIRECT answer exactly when
    // O_DIRECT is available.
    assert_eq!(
        v["tee_shares_pages"].is_boolean(),
        v["splice_shares_page_cache"] == true
    );
    assert_eq!(
        v["o_direct_splice_private"].is_boolean(),
        v["o_direct_available"] == true
    );
    assert!(v["pipe_granted_for_1mib"].as_u64().unwrap() >= 4096);
    assert!(v["pipe_max_size"].as_u64().unwrap() >= 4096);
    assert_eq!(v["errors"], serde_json::json!({}));
    // The scratch file is gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // auto never picks a path the probe calls unstable.
    let stable: Vec<&str> = v["stable_strategies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let steps = v["auto"].as_array().unwrap();
    assert_eq!(steps[0]["from_destinations"], 1, "{v}");
    for step in steps {
        let picked = step["strategy"].as_str().unwrap();
        assert!(stable.contains(&picked), "auto: {v}");
    }
    assert_eq!(
        stable.contains(&"zerocopy"),
        v["splice_shares_page_cache"] == false
    );
}

#[test]
fn probe_o_direct_answer_matches_opening_with_o_direct() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, [0u8; 4096]).unwrap();
    let opens = rustix::fs::open(
        &file,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECT,
        rustix::fs::Mode::empty(),
    )
    .is_ok();
    std::fs::remove_file(&file).unwrap();
    let (code, out) = probe(&[dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["o_direct_available"], opens);
    assert_eq!(
        v["stable_strategies"]
            .as_array()
            .unwrap()
            .contains(&"direct".into()),
        v["o_direct_splice_private"] == true
    );
}

#[test]
fn probe_human_output_and_bad_path() {
    let (code, out) = probe(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("splice file→pipe shares page-cache pages:"),
        "{out}"
    );
    assert!(out.contains("auto picks: readwrite"), "{out}");
    let (code, out) = probe(&["/nonexistent-teecast-dir"]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("not a directory"), "{out}");
}

#[test]
fn mutate_is_hidden_from_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_teecast"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("probe"), "{help}");
    assert!(!help.contains("mutate"), "{help}");
}
