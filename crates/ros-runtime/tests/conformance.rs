//! The OCI runtime validation suite (`scripts/conformance`) run against Debian's crun and
//! against ros-runtime in the same run: ros-runtime must pass every test crun passes here, but
//! for the differences listed below, each of which COMPATIBILITY.md explains. The table of both
//! runs is written to target/conformance/results.md. Needs root, Go and crun (scripts/setup.sh).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Tests crun passes on this host that ros-runtime fails on purpose (see COMPATIBILITY.md).
const DIFFERENCES: &[(&str, &str)] = &[(
    "linux_mount_label",
    "a mount label on a host without SELinux is refused, not ignored",
)];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the suite against `runtime`; test name to pass.
fn run(runtime: &str, out: &Path, tests: &[&str]) -> BTreeMap<String, bool> {
    let o = Command::new(workspace().join("scripts/conformance"))
        .arg(runtime)
        .arg(out)
        .args(tests)
        .output()
        .expect("scripts/conformance");
    assert!(
        o.status.success(),
        "scripts/conformance {runtime}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(t, r)| (t.to_string(), r == "PASS"))
        .collect()
}

#[test]
fn ros_runtime_passes_what_crun_passes() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (run the suite with scripts/test as root)"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let crun = run("crun", &dir.path().join("crun"), &[]);
    let ros = run(
        env!("CARGO_BIN_EXE_ros-runtime"),
        &dir.path().join("ros"),
        &[],
    );
    assert_eq!(crun.len(), 58, "the suite has 58 tests: {crun:?}");

    let mut table = String::from("| test | crun | ros-runtime |\n|---|---|---|\n");
    let mark = |p: bool| if p { "pass" } else { "fail" };
    for (t, c) in &crun {
        let r = ros.get(t).copied().unwrap_or(false);
        table.push_str(&format!("| {t} | {} | {} |\n", mark(*c), mark(r)));
    }
    let count = |m: &BTreeMap<String, bool>| m.values().filter(|p| **p).count();
    table.push_str(&format!(
        "| **passed** | **{}** | **{}** |\n",
        count(&crun),
        count(&ros)
    ));
    let results = workspace().join("target/conformance/results.md");
    std::fs::write(&results, &table).expect("write results");
    eprintln!("{table}");

    // Some tests race the container's program against the suite (`pidfile` kills a container
    // whose `true` may or may not have ended): a test crun passes gets two more tries with
    // ros-runtime before it counts as missed. A test ros-runtime fails every time still fails.
    let mut missing: Vec<&String> = Vec::new();
    for (t, c) in &crun {
        if !*c || ros[t] || DIFFERENCES.iter().any(|(d, _)| d == t) {
            continue;
        }
        let again = (0..2).any(|i| {
            run(
                env!("CARGO_BIN_EXE_ros-runtime"),
                &dir.path().join(format!("ros-again-{i}")),
                &[t.as_str()],
            )
            .get(t)
            .copied()
            .unwrap_or(false)
        });
        eprintln!(
            "{t}: crun passed, ros-runtime failed, then {} on a retry",
            if again { "passed" } else { "failed" }
        );
        if !again {
            missing.push(t);
        }
    }
    assert!(
        missing.is_empty(),
        "crun passes, ros-runtime fails: {missing:?} (TAP in {})",
        dir.keep().display()
    );
    // The listed differences stay true: each still passes with crun and fails with ours.
    for (t, why) in DIFFERENCES {
        assert!(
            crun[*t] && !ros[*t],
            "{t} is listed as a difference ({why}) but crun {} and ros-runtime {}",
            mark(crun[*t]),
            mark(ros[*t])
        );
    }
}
