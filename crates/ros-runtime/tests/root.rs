//! The runtime on this host, as root: real OCI bundles (a busybox rootfs) run through the
//! `ros-runtime` binary. Each test fails when not run as root (`scripts/test` runs as root):
//! a test that cannot run must not pass. cgroup limits are tested in QEMU instead (this host's
//! cgroups are hybrid).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

/// Fails the test unless it runs as root.
fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (run the suite with scripts/test as root)"
    );
}

fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox (apt-get install busybox-static)")
}

struct Bundle {
    dir: tempfile::TempDir,
    config: Value,
}

impl Bundle {
    /// A bundle with a busybox rootfs and runc's default config running `args`.
    fn new(args: &[&str]) -> Bundle {
        let dir = tempfile::tempdir().expect("tmp");
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "data"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
        }
        std::fs::copy(busybox(), rootfs.join("bin/busybox")).expect("copy busybox");
        for applet in [
            "sh", "cat", "echo", "id", "hostname", "readlink", "ls", "mount", "pwd", "touch",
            "grep", "sleep", "true", "wc", "mknod", "head",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("link");
        }
        let mut config: Value = {
            let out = Command::new(env!("CARGO_BIN_EXE_ros-runtime"))
                .args(["spec", "--bundle"])
                .arg(dir.path())
                .output()
                .expect("spec");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).expect("read"))
                .expect("json")
        };
        config["process"]["args"] = json!(args);
        config["process"]["env"] = json!(["PATH=/bin", "GREETING=hello"]);
        Bundle { dir, config }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, id: &str) -> Output {
        std::fs::write(self.dir.path().join("config.json"), self.config.to_string())
            .expect("write");
        let run_root = self.dir.path().join("run");
        Command::new(env!("CARGO_BIN_EXE_ros-runtime"))
            .args(["run", "--bundle"])
            .arg(self.dir.path())
            .arg("--root")
            .arg(&run_root)
            .arg(id)
            .output()
            .expect("run")
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    );
    stdout(o)
}

fn id(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

#[test]
fn namespaces_are_new_and_pid_is_1() {
    require_root();
    let b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "for n in mnt pid uts ipc net cgroup; do readlink /proc/self/ns/$n; done; echo pid $$",
    ]);
    let out = ok(&b.run(&id("ns")));
    for n in ["mnt", "pid", "uts", "ipc", "net", "cgroup"] {
        let host = std::fs::read_link(format!("/proc/self/ns/{n}"))
            .expect("ns")
            .display()
            .to_string();
        let inside = out
            .lines()
            .find(|l| l.starts_with(&format!("{n}:")))
            .expect(n);
        assert_ne!(inside, host, "{n} namespace is shared with the host");
    }
    assert!(out.contains("pid 1"), "{out}");
}

#[test]
fn a_namespace_left_out_is_the_hosts() {
    require_root();
    let mut b = Bundle::new(&["/bin/readlink", "/proc/self/ns/net"]);
    let ns = b.config["linux"]["namespaces"].as_array_mut().expect("ns");
    ns.retain(|n| n["type"] != "network");
    let out = ok(&b.run(&id("hostnet")));
    let host = std::fs::read_link("/proc/self/ns/net")
        .expect("ns")
        .display()
        .to_string();
    assert_eq!(out.trim(), host);
}

#[test]
fn overlay_root_takes_writes_and_leaves_the_image_alone() {
    require_root();
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "echo x > /written && cat /written && grep ' / / ' /proc/self/mountinfo && ls /tmp",
    ]);
    b.config["root"]["readonly"] = json!(false);
    b.config["annotations"] = json!({"org.ros.rootfs.overlay": "true"});
    let out = ok(&b.run(&id("overlay")));
    assert!(out.starts_with("x\n"), "{out}");
    assert!(
        out.contains(" - overlay overlay "),
        "the root is an overlay: {out}"
    );
    assert!(
        !b.path().join("rootfs/written").exists(),
        "the write reached the image"
    );
    // pivot_root left nothing of the host: the container's /tmp is its own, empty.
    let after_mountinfo = out
        .lines()
        .skip_while(|l| !l.contains(" / / "))
        .skip(1)
        .count();
    assert_eq!(after_mountinfo, 0, "{out}");
}

#[test]
fn a_read_only_root_refuses_writes() {
    require_root();
    let b = Bundle::new(&["/bin/touch", "/nope"]);
    let o = b.run(&id("ro"));
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Read-only file system"),
        "{:?}",
        o
    );
}

#[test]
fn bind_mounts_read_only_and_read_write() {
    require_root();
    let host_ro = tempfile::tempdir().expect("tmp");
    let host_rw = tempfile::tempdir().expect("tmp");
    std::fs::write(host_ro.path().join("f"), "from the host\n").expect("write");
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "cat /ro/f; touch /ro/g 2>&1; echo in > /rw/out",
    ]);
    let mounts = b.config["mounts"].as_array_mut().expect("mounts");
    mounts.push(json!({"destination": "/ro", "type": "bind", "source": host_ro.path(), "options": ["rbind", "ro"]}));
    mounts.push(json!({"destination": "/rw", "type": "bind", "source": host_rw.path(), "options": ["rbind", "rw"]}));
    let out = ok(&b.run(&id("bind")));
    assert!(out.contains("from the host"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert_eq!(
        std::fs::read_to_string(host_rw.path().join("out")).expect("out"),
        "in\n"
    );
}

#[test]
fn capabilities_are_dropped() {
    require_root();
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "grep -E '^Cap(Eff|Bnd)' /proc/self/status; mount -t tmpfs none /tmp 2>&1; echo mount=$?",
    ]);
    // Only CAP_KILL (bit 5) and CAP_NET_BIND_SERVICE (bit 10).
    let set = json!(["CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    for s in [
        "bounding",
        "effective",
        "permitted",
        "inheritable",
        "ambient",
    ] {
        b.config["process"]["capabilities"][s] = set.clone();
    }
    let out = ok(&b.run(&id("caps")));
    assert!(out.contains("CapEff:\t0000000000000420"), "{out}");
    assert!(out.contains("CapBnd:\t0000000000000420"), "{out}");
    assert!(
        out.contains("mount=255") || out.contains("mount=1"),
        "mount must fail without CAP_SYS_ADMIN: {out}"
    );
    assert!(
        out.contains("ermission denied") || out.contains("not permitted"),
        "{out}"
    );
}

#[test]
fn seccomp_denies_a_call() {
    require_root();
    // The busybox applet, not the shell's builtin (which prints $PWD without getcwd).
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "grep -E '^Seccomp' /proc/self/status; /bin/busybox pwd 2>&1; echo pwd=$?",
    ]);
    b.config["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]
    });
    let out = ok(&b.run(&id("seccomp")));
    assert!(out.contains("Seccomp:\t2"), "{out}");
    assert!(
        out.contains("Permission denied"),
        "getcwd must fail with EACCES: {out}"
    );
    assert!(out.contains("pwd=1"), "{out}");
}

#[test]
fn hostname_env_user_and_rlimits() {
    require_root();
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "hostname; echo $GREETING; id; ulimit -n; cd /tmp && pwd",
    ]);
    b.config["hostname"] = json!("box1");
    b.config["process"]["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [20]});
    b.config["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200}]);
    b.config["process"]["cwd"] = json!("/tmp");
    let out = ok(&b.run(&id("ids")));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "box1");
    assert_eq!(lines[1], "hello");
    assert!(
        lines[2].starts_with("uid=1000 gid=1001") && lines[2].contains("groups=20"),
        "{out}"
    );
    assert_eq!(lines[3], "100");
    assert_eq!(lines[4], "/tmp");
}

#[test]
fn the_scheduler_sets_the_programs_nice_value() {
    require_root();
    // Field 19 of /proc/self/stat is the nice value (the shell's, which cat's matches).
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "read -r s </proc/self/stat; set -- $s; echo ${19}",
    ]);
    b.config["process"]["scheduler"] = json!({"policy": "SCHED_OTHER", "nice": 7});
    assert_eq!(ok(&b.run(&id("nice"))).trim(), "7");
    b.config["process"]["scheduler"] = json!({"policy": "SCHED_RR", "priority": 1});
    let out = b.run(&id("rr"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only SCHED_OTHER"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn exit_codes_and_signals_come_back() {
    require_root();
    let b = Bundle::new(&["/bin/sh", "-c", "exit 7"]);
    assert_eq!(b.run(&id("exit")).status.code(), Some(7));
    // The init of a PID namespace ignores even SIGKILL from inside it: use the host's.
    let mut b = Bundle::new(&["/bin/sh", "-c", "kill -9 $$"]);
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .expect("ns")
        .retain(|n| n["type"] != "pid");
    assert_eq!(b.run(&id("kill")).status.code(), Some(137));
}

#[test]
fn the_init_shim_passes_the_stop_signal_on() {
    require_root();
    let mut b = Bundle::new(&["/bin/sleep", "100"]);
    b.config["annotations"] = json!({"org.ros.init": "true"});
    std::fs::write(b.path().join("config.json"), b.config.to_string()).expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ros-runtime"))
        .args(["run", "--bundle"])
        .arg(b.path())
        .arg("--root")
        .arg(b.path().join("run"))
        .arg(id("shim"))
        .spawn()
        .expect("run");
    std::thread::sleep(std::time::Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let t = std::time::Instant::now();
    let status = child.wait().expect("wait");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "sleep ignored SIGTERM"
    );
    assert_eq!(
        status.code(),
        Some(128 + 15),
        "sleep as PID 2 dies of SIGTERM, the shim reports it"
    );
}

#[test]
fn masked_and_read_only_paths() {
    require_root();
    let b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "cat /proc/kcore | wc -c; echo 1 > /proc/sys/vm/overcommit_memory 2>&1; echo w=$?",
    ]);
    let out = b.run(&id("masked"));
    let text = stdout(&out);
    assert_eq!(
        text.lines().next().map(str::trim),
        Some("0"),
        "/proc/kcore reads empty: {text}"
    );
    assert!(text.contains("w=1"), "{text}");
    // The shell reports a failed redirect on its own stderr.
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Read-only file system"),
        "{out:?}"
    );
}

#[test]
fn a_broken_bundle_is_a_clear_error() {
    require_root();
    let b = Bundle::new(&["/no/such/program"]);
    let o = b.run(&id("missing"));
    // Exit 1 when the runtime fails, as crun and runc.
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/no/such/program"), "{err}");
    let empty = tempfile::tempdir().expect("tmp");
    let o = Command::new(env!("CARGO_BIN_EXE_ros-runtime"))
        .args(["run", "--bundle"])
        .arg(empty.path())
        .arg("x")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("config.json"),
        "{o:?}"
    );
}

#[test]
fn a_user_namespace_maps_root_to_an_unprivileged_range() {
    require_root();
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "cat /proc/self/uid_map /proc/self/gid_map; readlink /proc/self/ns/user; id -u",
    ]);
    let linux = &mut b.config["linux"];
    linux["namespaces"]
        .as_array_mut()
        .expect("ns")
        .push(json!({"type": "user"}));
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    linux["uidMappings"] = map.clone();
    linux["gidMappings"] = map;
    let out = ok(&b.run(&id("userns")));
    let fields: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(fields[0], ["0", "100000", "65536"], "{out}");
    assert_eq!(fields[1], ["0", "100000", "65536"], "{out}");
    let host = std::fs::read_link("/proc/self/ns/user")
        .expect("ns")
        .display()
        .to_string();
    assert_ne!(fields[2][0], host, "{out}");
    assert_eq!(fields[3], ["0"], "root inside: {out}");
}

#[test]
fn devices_outside_the_allowed_set_can_be_neither_made_nor_opened() {
    require_root();
    // CAP_MKNOD given back, and a node of /dev/kmsg (1:11) already in the image: the device
    // filter must refuse both making and opening it.
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "cat /dev/null && echo null=ok; mknod /dev/kmsg c 1 11; echo mknod=$?; head -c 1 /data/kmsg >/dev/null; echo kmsg=$?; \
         head -c 4 /dev/granted | wc -c",
    ]);
    nix::sys::stat::mknod(
        &b.path().join("rootfs/data/kmsg"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 11),
    )
    .expect("mknod on the host");
    let caps = json!(["CAP_MKNOD", "CAP_DAC_OVERRIDE", "CAP_SYSLOG"]);
    for s in ["bounding", "effective", "permitted", "inheritable"] {
        b.config["process"]["capabilities"][s] = caps.clone();
    }
    b.config["process"]["capabilities"]["ambient"] = json!([]);
    // /dev/zero under another name, given to the container.
    b.config["linux"]["devices"] =
        json!([{"path": "/dev/granted", "type": "c", "major": 1, "minor": 5, "fileMode": 438}]);
    let o = b.run(&id("devices"));
    let out = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("null=ok"), "{out}");
    assert!(out.contains("mknod=1"), "making the node must fail: {out}");
    assert!(out.contains("kmsg=1"), "opening it must fail: {out}");
    assert!(
        out.contains("head: /data/kmsg: Operation not permitted"),
        "{out}"
    );
    assert!(out.contains("\n4\n"), "the granted device reads: {out}");
    // A rule of the bundle that allows everything is obeyed.
    b.config["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "rwm"}]);
    let o = b.run(&id("devices-all"));
    let out = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("kmsg=0") && out.contains("mknod=0"), "{out}");
}

/// `ros-runtime ARGS` with its state under `root`.
fn runtime(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ros-runtime"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("ros-runtime")
}

fn status_of(root: &Path, id: &str) -> String {
    let s: Value = serde_json::from_str(&ok(&runtime(root, &["state", id]))).expect("state");
    s["status"].as_str().unwrap_or_default().to_string()
}

#[test]
fn the_lifecycle_across_invocations() {
    require_root();
    let mut b = Bundle::new(&["sleep", "100"]);
    b.config["root"]["readonly"] = json!(false);
    std::fs::write(b.path().join("config.json"), b.config.to_string()).expect("write");
    let root = b.path().join("state");
    let pid_file = b.path().join("pid");
    let id = id("life");
    let bundle = b.path().display().to_string();
    // The created container's streams must not be pipes that `output()` waits on.
    let created = Command::new(env!("CARGO_BIN_EXE_ros-runtime"))
        .arg("--root")
        .arg(&root)
        .args(["create", "--bundle", &bundle, "--pid-file"])
        .arg(&pid_file)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("create");
    assert!(created.success());
    let state: Value = serde_json::from_str(&ok(&runtime(&root, &["state", &id]))).expect("json");
    assert_eq!(state["status"], "created");
    assert_eq!(state["ociVersion"], "1.2.0");
    let pid = std::fs::read_to_string(&pid_file).expect("pid file");
    assert_eq!(state["pid"].to_string(), pid);
    assert!(ok(&runtime(&root, &["list"])).contains(&format!("{id}\t{pid}\tcreated")));
    // Not stopped: delete refuses (the spec), and says why.
    let o = runtime(&root, &["delete", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not stopped: created"));

    ok(&runtime(&root, &["start", &id]));
    assert_eq!(status_of(&root, &id), "running");
    let o = runtime(&root, &["start", &id]);
    assert_eq!(o.status.code(), Some(1), "a second start is an error");
    let pids: Vec<i32> =
        serde_json::from_str(&ok(&runtime(&root, &["ps", "--format", "json", &id]))).expect("ps");
    assert_eq!(pids, [pid.trim().parse::<i32>().expect("pid")]);

    // exec: the status comes back; HOME is set (no /etc/passwd here: `/`); a missing cwd made.
    let o = runtime(
        &root,
        &[
            "exec",
            "--cwd",
            "/made/here",
            &id,
            "sh",
            "-c",
            "echo $HOME $(pwd); exit 3",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert_eq!(stdout(&o).trim(), "/ /made/here");

    ok(&runtime(&root, &["pause", &id]));
    assert_eq!(status_of(&root, &id), "paused");
    ok(&runtime(&root, &["resume", &id]));
    assert_eq!(status_of(&root, &id), "running");
    // --all signals every process of the container (here the one).
    ok(&runtime(&root, &["kill", "--all", &id, "KILL"]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while status_of(&root, &id) != "stopped" {
        assert!(std::time::Instant::now() < deadline, "never stopped");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // An error goes to stderr and, with --log, to the log as a JSON line (what podman reads).
    let log = b.path().join("log.json");
    let log_arg = log.display().to_string();
    let o = runtime(
        &root,
        &[
            "--log",
            &log_arg,
            "--log-format",
            "json",
            "kill",
            &id,
            "KILL",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("container not running"));
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .expect("log")
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("JSON");
    assert_eq!(line["level"], "error");
    assert!(
        line["msg"]
            .as_str()
            .is_some_and(|m| m.contains("container not running"))
    );
    ok(&runtime(&root, &["delete", &id]));
    let o = runtime(&root, &["state", &id]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}

/// `ros-runtime ARGS` with `input` on its standard input (a pipe, so not a terminal); its
/// output and status, or a failure after 30 s.
fn runtime_typed(root: &Path, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ros-runtime"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ros-runtime");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("typing");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(std::time::Duration::from_secs(30)).is_err() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
    let out = child.wait_with_output().expect("wait");
    let _ = tx.send(());
    let _ = watchdog.join();
    out
}

#[test]
fn a_terminal_in_the_foreground_without_a_console_socket() {
    require_root();
    // run: the program's terminal is shown on ros-runtime's own streams, typed input and all.
    let mut b = Bundle::new(&["sh"]);
    b.config["process"]["terminal"] = json!(true);
    b.config["root"]["readonly"] = json!(false);
    std::fs::write(b.path().join("config.json"), b.config.to_string()).expect("write");
    let root = b.path().join("state");
    let bundle = b.path().display().to_string();
    let o = runtime_typed(
        &root,
        &["run", "--bundle", &bundle, &id("tty-run")],
        "tty; echo $((40 + 2)); exit 5\n",
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert!(out.contains("/dev/pts/") && out.contains("42"), "{out}");

    // exec -t into a running container: the same.
    let mut b = Bundle::new(&["sleep", "100"]);
    b.config["root"]["readonly"] = json!(false);
    std::fs::write(b.path().join("config.json"), b.config.to_string()).expect("write");
    let bundle = b.path().display().to_string();
    let id = id("tty-exec");
    let created = Command::new(env!("CARGO_BIN_EXE_ros-runtime"))
        .arg("--root")
        .arg(&root)
        .args(["run", "--detach", "--bundle", &bundle, &id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run");
    assert!(created.success());
    let o = runtime_typed(&root, &["exec", "-t", &id, "sh"], "tty; exit 4\n");
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert!(out.contains("/dev/pts/"), "{out}");
    ok(&runtime(&root, &["delete", "--force", &id]));
}

#[test]
fn hooks_run_in_order_with_the_state() {
    require_root();
    let mut b = Bundle::new(&["sh", "-c", "echo program >> /tmp/hooks"]);
    b.config["root"]["readonly"] = json!(false);
    let log = b.path().join("rootfs/tmp/hooks");
    // Each hook writes its kind and the status it was given; startContainer runs inside the
    // container (after pivot_root), so it writes the container's path.
    let hook = |kind: &str, file: &str| {
        json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!("read s; echo {kind} $(echo \"$s\" | grep -o '\"status\":\"[a-z]*\"') >> {file}")],
        })
    };
    let host = log.display().to_string();
    b.config["hooks"] = json!({
        "prestart": [hook("prestart", &host)],
        "createRuntime": [hook("createRuntime", &host)],
        "createContainer": [hook("createContainer", &host)],
        "startContainer": [hook("startContainer", "/tmp/hooks")],
        "poststart": [hook("poststart", &host)],
        "poststop": [hook("poststop", &host)],
    });
    let o = b.run(&id("hooks"));
    ok(&o);
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .expect("hooks log")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            "prestart \"status\":\"created\"",
            "createRuntime \"status\":\"created\"",
            "createContainer \"status\":\"created\"",
            "startContainer \"status\":\"created\"",
            "program",
            "poststart \"status\":\"running\"",
            "poststop \"status\":\"stopped\"",
        ]
    );
}

#[test]
fn security_settings_that_cannot_be_applied_are_refused() {
    require_root();
    for (field, value, says) in [
        (
            "/process/apparmorProfile",
            json!("acme"),
            "AppArmor is not enabled",
        ),
        (
            "/linux/mountLabel",
            json!("system_u:object_r:x:s0"),
            "mount labels are not supported",
        ),
        (
            "/ociVersion",
            json!("2.0.0"),
            "ociVersion `2.0.0` is not supported",
        ),
        (
            "/linux/seccomp",
            json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG"]}),
            "is not supported",
        ),
    ] {
        let mut b = Bundle::new(&["true"]);
        let (parent, key) = field.rsplit_once('/').expect("path");
        let target = if parent.is_empty() {
            &mut b.config
        } else {
            b.config.pointer_mut(parent).expect("parent")
        };
        target[key] = value;
        let o = b.run(&id("refused"));
        assert_eq!(o.status.code(), Some(1), "{field}: {o:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(says), "{field}: {err}");
    }
}

#[test]
fn features_says_what_is_supported() {
    let o = Command::new(env!("CARGO_BIN_EXE_ros-runtime"))
        .arg("features")
        .output()
        .expect("features");
    let f: Value = serde_json::from_str(&ok(&o)).expect("json");
    assert_eq!(f["ociVersionMax"], "1.2.0");
    assert_eq!(f["linux"]["cgroup"]["v2"], true);
    assert!(
        f["hooks"]
            .as_array()
            .is_some_and(|h| h.len() == 6 && h.contains(&json!("createContainer")))
    );
}
