//! Debian's podman driving ros-runtime (`--runtime`): run, exec into, stop and remove
//! containers, with and without a terminal. Podman keeps its store in a temporary folder.
//!
//! What this host's hybrid cgroups require (shared/design/machine-notes.md): the cgroupfs
//! manager (no systemd here); `--pids-limit=-1`, since podman's default limit of 2048 cannot be
//! written where the pids controller is v1 only, and ros-runtime refuses a limit it cannot set
//! rather than drop it; ulimits under the host's hard limit; no network (no netavark).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::{Command, Output};

struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test needs root (run the suite with scripts/test as root)"
        );
        let p = Podman {
            dir: tempfile::tempdir().expect("tmp"),
        };
        // An image of a static busybox, imported from a tar of its root.
        let root = p.dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("bin")).expect("mkdir");
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("busybox (apt-get install busybox-static)");
        std::fs::copy(busybox, root.join("bin/busybox")).expect("copy");
        for a in ["sh", "sleep", "echo", "cat", "tty", "id", "grep"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).expect("link");
        }
        let tar = p.dir.path().join("rootfs.tar");
        let o = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .expect("tar");
        assert!(o.status.success(), "{o:?}");
        ok(&p.podman(&[
            "import".as_ref(),
            tar.as_os_str(),
            "localhost/bb:1".as_ref(),
        ]));
        p
    }

    fn podman<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        let d = self.dir.path();
        Command::new("podman")
            .arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--runtime")
            .arg(env!("CARGO_BIN_EXE_ros-runtime"))
            .args(["--cgroup-manager=cgroupfs", "--events-backend=file"])
            .args(args)
            .output()
            .expect("podman")
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec![
            "run",
            "--network=none",
            "--pids-limit=-1",
            "--ulimit=nofile=1024:1024",
            "--ulimit=nproc=1024:1024",
        ];
        all.extend_from_slice(args);
        self.podman(&all)
    }
}

impl Drop for Podman {
    /// A failed test leaves no container running.
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-f", "-a"]);
    }
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn runtime(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ros-runtime"))
        .args(args)
        .output()
        .expect("ros-runtime")
}

#[test]
fn podman_runs_a_container_through_ros_runtime_with_its_exit_code() {
    let p = Podman::new();
    let o = p.run(&[
        "--rm",
        "localhost/bb:1",
        "sh",
        "-c",
        "echo hello; grep NoNewPrivs /proc/self/status; exit 7",
    ]);
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("hello"), "{out}");
    // Podman asks for no_new_privs only with --security-opt no-new-privileges.
    assert!(out.contains("NoNewPrivs:\t0"), "{out}");
    let o = p.run(&["--rm", "-t", "localhost/bb:1", "sh", "-c", "tty; exit 4"]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("/dev/pts/"),
        "a terminal from the console socket: {out}"
    );
}

#[test]
fn podman_execs_into_stops_and_removes_a_container() {
    let p = Podman::new();
    let id = ok(&p.run(&["-d", "--name", "t1", "localhost/bb:1", "sleep", "1000"]));
    let id = id.trim();
    // Podman gives a runtime it does not know by name no --root: the default one holds it.
    let state = ok(&runtime(&["state", id]));
    assert!(state.contains("\"status\": \"running\""), "{state}");
    let ps = ok(&p.podman(&["ps", "--format", "{{.Names}} {{.Status}}"]));
    assert!(ps.contains("t1 Up"), "{ps}");
    let o = p.podman(&["exec", "t1", "sh", "-c", "echo in t1; exit 5"]);
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("in t1"));
    let o = p.podman(&["exec", "-t", "t1", "sh", "-c", "tty"]);
    assert!(ok(&o).contains("/dev/pts/"), "{o:?}");
    // sleep ignores SIGTERM as PID 1: podman kills it after the timeout.
    ok(&p.podman(&["stop", "-t", "1", "t1"]));
    let ps = ok(&p.podman(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]));
    assert!(ps.contains("t1 Exited"), "{ps}");
    ok(&p.podman(&["rm", "t1"]));
    let o = runtime(&["state", id]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not exist"),
        "ros-runtime's state is gone with the container: {o:?}"
    );
}
