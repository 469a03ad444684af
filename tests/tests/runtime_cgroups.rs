//! `ros-runtime update`, `pause` and `resume` where cgroup v2 is whole: a QEMU guest on both
//! arches whose PID 1 is a shell (`tests/runtime-guest/init`) running the image's static
//! ros-runtime against a busybox bundle. The limits are set by flag and by an OCI document, read
//! back from the container's cgroup, and shown to bite (the OOM killer, a refused fork); the
//! errors of a missing container, a bad document and a stopped container are checked too.
//! (The host's cgroups are hybrid: its v2 hierarchy takes no limits.)

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ros_image::cpio::Archive;
use ros_qemu::{BootConfig, Guest};
use ros_tests::Arch;

const INIT: &str = include_str!("../runtime-guest/init");

/// ros's initramfs with the test's archive appended (a later entry replaces an earlier one).
fn initramfs(
    arch: Arch,
    image: &std::path::Path,
    dir: &std::path::Path,
) -> Result<std::path::PathBuf> {
    let runtime = ros_image::cargo_build(arch, "ros-runtime", "ros-runtime", true)?;
    let mut a = Archive::default();
    a.file("init", 0o755, INIT.as_bytes().to_vec());
    ros_tests::busybox_bin(image, &mut a)?;
    a.file(
        "usr/bin/ros-runtime",
        0o755,
        std::fs::read(&runtime).with_context(|| format!("reading {}", runtime.display()))?,
    );
    let out = dir.join("initramfs-runtime.img");
    ros_tests::append_initramfs(image, &a, &out)?;
    Ok(out)
}

/// The guest's `rt: key=value` lines (a line may hold several pairs; an error line's value is
/// the rest of the line).
fn results(console: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for line in console.lines() {
        let Some((_, rest)) = line.split_once("rt: ") else {
            continue;
        };
        if let Some((k, v)) = rest.split_once("-error=") {
            m.insert(format!("{k}-error"), v.trim().to_string());
            continue;
        }
        let mut words = rest.split_whitespace();
        let prefix = match words.clone().next() {
            Some(w) if !w.contains('=') => {
                words.next();
                format!("{w}.")
            }
            _ => String::new(),
        };
        for w in words {
            if let Some((k, v)) = w.split_once('=') {
                m.insert(format!("{prefix}{k}"), v.to_string());
            }
        }
    }
    m
}

fn run(arch: Arch) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let image = ros_tests::image(arch)?;
    let cfg = BootConfig {
        initramfs: Some(initramfs(arch, &image, dir.path())?),
        image,
        nic: false,
        ..BootConfig::new(arch)
    };
    let mut g = Guest::spawn(&cfg)?;
    g.wait_for("rt: done", Duration::from_secs(180))
        .with_context(|| format!("the guest did not finish:\n{}", g.tail(40)))?;
    let r = results(&g.console());
    let _ = g.wait_exit(Duration::from_secs(20));
    let get = |k: &str| r.get(k).map_or("(none)", String::as_str);
    let want = |k: &str, v: &str| -> Result<()> {
        ensure!(get(k) == v, "{k} = {}, want {v}; all: {r:#?}", get(k));
        Ok(())
    };
    want("run", "0")?;
    want("before.memory.max", "max")?;
    want("before.pids.max", "max")?;
    want("before.cpu.max", "max/100000")?;
    want("before.cpu.weight", "100")?;
    // By flag: runc's shares 512 is cgroup v2's weight 20.
    want("flags", "0")?;
    want("flags.memory.max", "16777216")?;
    want("flags.pids.max", "20")?;
    want("flags.cpu.weight", "20")?;
    // By document: what it names changes, the rest stays.
    want("json", "0")?;
    want("json.memory.max", "33554432")?;
    want("json.cpu.max", "20000/100000")?;
    want("json.pids.max", "20")?;
    want("json.cpu.weight", "20")?;
    // A period alone keeps the quota.
    want("period", "0")?;
    want("period.cpu.max", "20000/50000")?;
    // A controller enabled for a limit that needs it; a limit without a v2 form refused.
    want("extra", "0")?;
    want("extra.memory.low", "8388608")?;
    want("extra.cpuset.cpus", "0")?;
    want("extra.cpuset.mems", "0")?;
    ensure!(
        get("swappiness-error").contains("memory.swappiness"),
        "swappiness was not refused by name: {r:#?}"
    );
    // The limits bite.
    want("hog", "137")?;
    ensure!(
        get("oom_kill").parse::<u32>().is_ok_and(|n| n >= 1),
        "no OOM kill counted: {r:#?}"
    );
    want("status", "running")?;
    ensure!(get("forks") != "0", "a fork past pids.max 3 worked: {r:#?}");
    ensure!(
        get("pids_max_events").parse::<u32>().is_ok_and(|n| n >= 1),
        "pids.events counted no refusal: {r:#?}"
    );
    // Errors say what was wrong.
    ensure!(
        get("missing-error").contains("nosuch"),
        "a missing container's error: {r:#?}"
    );
    ensure!(
        get("bad-json-error").contains("EOF") || get("bad-json-error").contains("line 1"),
        "a bad document's error: {r:#?}"
    );
    ensure!(
        get("stopped-error").contains("not running"),
        "a stopped container's error: {r:#?}"
    );
    want("paused", "paused")?;
    want("paused_freeze", "1")?;
    want("resumed", "running")?;
    want("resumed_freeze", "0")?;
    want("deleted", "0")?;
    want("cgroup", "gone")?;
    Ok(())
}

mod x86_64 {
    #[test]
    fn update_pause_resume() -> anyhow::Result<()> {
        super::run(super::Arch::X86_64)
    }
}

mod aarch64 {
    #[test]
    fn update_pause_resume() -> anyhow::Result<()> {
        super::run(super::Arch::Aarch64)
    }
}
