//! `ros-pull --confine` as the init runs it (as root): while it waits on a registry that never
//! answers, its capabilities, its mounts and what it can see are read from /proc.

use std::io::Read;
use std::time::{Duration, Instant};

fn status_field(pid: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

#[test]
fn the_puller_confines_itself_before_it_fetches() {
    // A "registry" that accepts and never answers: the pull stays in flight.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in listener.incoming().take(4) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let t = tempfile::tempdir().expect("tempdir");
    let regs = t.path().join("registries.json");
    std::fs::write(
        &regs,
        format!(
            r#"{{"mirrors": {{"127.0.0.1:{port}": {{"endpoints": ["http://127.0.0.1:{port}"]}}}}}}"#
        ),
    )
    .expect("registries");
    let store = t.path().join("store");
    let marker = std::path::PathBuf::from(format!("/run/ros-confine-test-{}", std::process::id()));
    std::fs::write(&marker, b"the init's runtime state").expect("marker in /run");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ros-pull"))
        .arg("--confine")
        .arg("--store")
        .arg(&store)
        .arg("--registries")
        .arg(&regs)
        .args(["--json", "pull", &format!("127.0.0.1:{port}/hello:1")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ros-pull");
    let pid = child.id();
    // Confined once its bounding set is cut to CHOWN(0) DAC_OVERRIDE(1) FOWNER(3) FSETID(4)
    // MKNOD(27) = 0x800001b.
    let deadline = Instant::now() + Duration::from_secs(20);
    while status_field(pid, "CapBnd:") != "000000000800001b" {
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let mut out = String::new();
            let _ = child.stdout.take().map(|mut o| o.read_to_string(&mut out));
            let _ = std::fs::remove_file(&marker);
            panic!(
                "not confined: CapBnd {} ({out})",
                status_field(pid, "CapBnd:")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let caps = (
        status_field(pid, "CapEff:"),
        status_field(pid, "CapPrm:"),
        status_field(pid, "CapBnd:"),
        status_field(pid, "NoNewPrivs:"),
    );
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    let seen_marker = std::path::Path::new(&format!("/proc/{pid}/root"))
        .join(marker.strip_prefix("/").expect("absolute"))
        .exists();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&marker);
    drop(held);
    assert_eq!(
        caps,
        (
            "000000000800001b".into(),
            "000000000800001b".into(),
            "000000000800001b".into(),
            "1".into()
        )
    );
    assert!(!seen_marker, "/run is hidden from the puller");
    let points = ros_registry::confine::mount_points(&mountinfo);
    let store = std::fs::canonicalize(&store).expect("store");
    let opts = |p: &std::path::Path| {
        points
            .iter()
            .rev()
            .find(|(q, _)| q == p)
            .map(|(_, o)| o.clone())
            .unwrap_or_default()
    };
    assert!(
        opts(&store).starts_with("rw"),
        "the store is writable: {mountinfo}"
    );
    assert!(
        opts(std::path::Path::new("/")).starts_with("ro"),
        "/ is read-only: {mountinfo}"
    );
    // Every mount the puller can reach (the topmost at its path, not under a hidden folder)
    // is read-only, but the store.
    let hidden = ros_registry::confine::HIDDEN;
    for (p, _) in &points {
        let covered = hidden
            .iter()
            .any(|h| p.starts_with(h) && p != std::path::Path::new(h));
        if covered || p.starts_with(&store) {
            continue;
        }
        assert!(
            opts(p).starts_with("ro"),
            "{} is writable: {mountinfo}",
            p.display()
        );
    }
    for h in hidden.iter().filter(|h| std::path::Path::new(h).is_dir()) {
        assert!(
            mountinfo
                .lines()
                .rev()
                .any(|l| l.split(' ').nth(4) == Some(*h) && l.contains(" - tmpfs ")),
            "{h} is covered by a tmpfs: {mountinfo}"
        );
    }
}
