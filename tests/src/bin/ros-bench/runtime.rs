//! The runtime benchmarks, ros-runtime against crun and runc on the same bundle (a busybox tree
//! with every namespace and a read-only overlay root), interleaved, wall time per operation:
//! `run` of `/bin/true`; the lifecycle an engine drives, `create` + `start` + `delete --force`
//! (three invocations); and `exec` of `/bin/true` into a running container.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::{median, min};

fn busybox() -> Result<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("busybox is not installed (apt-get install busybox-static)")
}

fn which(cmd: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(cmd))
        .find(|p| p.exists())
        .with_context(|| format!("{cmd} is not installed"))
}

/// The bundle: a busybox tree as the overlay's lower layer, a tmpfs for its upper layer, the
/// overlay mounted as the bundle's read-only rootfs.
fn bundle(dir: &Path, runtime: &Path) -> Result<()> {
    let lower = dir.join("lower");
    std::fs::create_dir_all(lower.join("bin"))?;
    for d in ["proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(lower.join(d))?;
    }
    std::fs::copy(busybox()?, lower.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", lower.join("bin/true"))?;
    std::os::unix::fs::symlink("busybox", lower.join("bin/sleep"))?;
    let rw = dir.join("rw");
    std::fs::create_dir_all(&rw)?;
    mount(
        Some("tmpfs"),
        &rw,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    for d in ["upper", "work"] {
        std::fs::create_dir_all(rw.join(d))?;
    }
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        rw.join("upper").display(),
        rw.join("work").display()
    );
    mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )?;
    let status = Command::new(runtime)
        .args(["spec", "--bundle"])
        .arg(dir)
        .arg("--")
        .arg("/bin/true")
        .status()?;
    if !status.success() {
        bail!("ros-runtime spec failed");
    }
    Ok(())
}

pub fn bench(runs: usize) -> Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the runtime benchmark needs root");
    }
    let host = if cfg!(target_arch = "aarch64") {
        ros_image::Arch::Aarch64
    } else {
        ros_image::Arch::X86_64
    };
    // The same static binary that goes into the images.
    let ros = ros_image::cargo_build(host, "ros-runtime", "ros-runtime", true)?;
    let (crun, runc) = (which("crun")?, which("runc")?);

    // crun refuses hybrid cgroups: in a mount namespace of our own, the unified mount goes
    // (crun then runs with its cgroup manager disabled) and ros gets a cgroup2 mount elsewhere.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    let work = std::env::temp_dir().join(format!("ros-bench-runtime-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let cg2 = work.join("cgroup2");
    std::fs::create_dir_all(&cg2)?;
    mount(
        Some("cgroup2"),
        &cg2,
        Some("cgroup2"),
        MsFlags::empty(),
        None::<&str>,
    )?;
    if hybrid.exists() {
        let _ = umount2(hybrid, MntFlags::MNT_DETACH);
    }
    let b = work.join("bundle");
    std::fs::create_dir_all(&b)?;
    bundle(&b, &ros)?;

    let run_root = work.join("run");
    let ros_cmd = |args: &[&str]| {
        let mut c = Command::new(&ros);
        c.arg("--root")
            .arg(&run_root)
            .arg("--cgroup-root")
            .arg(&cg2)
            .args(args);
        c
    };
    let crun_cmd = |args: &[&str]| {
        let mut c = Command::new(&crun);
        c.arg("--cgroup-manager=disabled").args(args);
        c
    };
    let runc_cmd = |args: &[&str]| {
        let mut c = Command::new(&runc);
        c.args(args);
        c
    };
    let bundle_arg = b.display().to_string();
    let time = |cmds: &mut [Command]| -> Result<f64> {
        let t = Instant::now();
        for cmd in cmds.iter_mut() {
            // No pipes: a created container keeps the streams it was given open until it
            // runs, so waiting for a pipe's end would wait for the container.
            let status = cmd
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .status()?;
            if !status.success() {
                bail!("{cmd:?} failed: {status}");
            }
        }
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    };
    let mut run = [Vec::new(), Vec::new(), Vec::new()];
    let mut life = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..runs + 3 {
        let id = format!("bench{i}");
        let r = [
            time(&mut [ros_cmd(&["run", "--bundle", &bundle_arg, &id])])?,
            time(&mut [crun_cmd(&["run", "--bundle", &bundle_arg, &id])])?,
            time(&mut [runc_cmd(&["run", "--bundle", &bundle_arg, &id])])?,
        ];
        let id = format!("life{i}");
        let l = [
            time(&mut [
                ros_cmd(&["create", "--bundle", &bundle_arg, &id]),
                ros_cmd(&["start", &id]),
                ros_cmd(&["delete", "--force", &id]),
            ])?,
            time(&mut [
                crun_cmd(&["create", "--bundle", &bundle_arg, &id]),
                crun_cmd(&["start", &id]),
                crun_cmd(&["delete", "--force", &id]),
            ])?,
            time(&mut [
                runc_cmd(&["create", "--bundle", &bundle_arg, &id]),
                runc_cmd(&["start", &id]),
                runc_cmd(&["delete", "--force", &id]),
            ])?,
        ];
        // The first runs warm the page cache; they are not counted.
        if i >= 3 {
            for k in 0..3 {
                run[k].push(r[k]);
                life[k].push(l[k]);
            }
        }
    }

    // exec: a container that sleeps, for each runtime, and /bin/true run in it.
    let config = b.join("config.json");
    let spec = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        spec.replace("\"/bin/true\"", "\"/bin/sleep\", \"1000\""),
    )?;
    let sleeper = "sleeper";
    time(&mut [
        ros_cmd(&["create", "--bundle", &bundle_arg, sleeper]),
        ros_cmd(&["start", sleeper]),
        crun_cmd(&["create", "--bundle", &bundle_arg, sleeper]),
        crun_cmd(&["start", sleeper]),
        runc_cmd(&["create", "--bundle", &bundle_arg, sleeper]),
        runc_cmd(&["start", sleeper]),
    ])?;
    std::fs::write(&config, &spec)?;
    let mut exec = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..runs + 3 {
        let e = [
            time(&mut [ros_cmd(&["exec", sleeper, "/bin/true"])])?,
            time(&mut [crun_cmd(&["exec", sleeper, "/bin/true"])])?,
            time(&mut [runc_cmd(&["exec", sleeper, "/bin/true"])])?,
        ];
        if i >= 3 {
            for k in 0..3 {
                exec[k].push(e[k]);
            }
        }
    }
    for mut c in [
        ros_cmd(&["delete", "--force", sleeper]),
        crun_cmd(&["delete", "--force", sleeper]),
        runc_cmd(&["delete", "--force", sleeper]),
    ] {
        let _ = c.output();
    }
    let _ = umount2(&b.join("rootfs"), MntFlags::MNT_DETACH);
    let _ = umount2(&b.join("rw"), MntFlags::MNT_DETACH);
    let _ = umount2(&cg2, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(&work);
    println!(
        "ros-runtime, crun and runc on one busybox bundle (every namespace, read-only overlay root); {runs} runs each, interleaved"
    );
    println!(
        "crun runs with its cgroup manager disabled (this host's cgroups are hybrid); ros-runtime and runc make cgroups"
    );
    for (what, ms) in [
        ("run /bin/true", &run),
        ("create + start + delete --force", &life),
        ("exec /bin/true", &exec),
    ] {
        let [r, c, u] = [median(&ms[0]), median(&ms[1]), median(&ms[2])];
        println!("{what}:");
        println!(
            "  ros-runtime  median {r:6.1} ms  best {:6.1} ms",
            min(&ms[0])
        );
        println!(
            "  crun         median {c:6.1} ms  best {:6.1} ms",
            min(&ms[1])
        );
        println!(
            "  runc         median {u:6.1} ms  best {:6.1} ms",
            min(&ms[2])
        );
        println!("  ros/crun {:.2}, ros/runc {:.2}", r / c, r / u);
    }
    println!("(goal: ros/crun at most 0.7 for a container start)");
    Ok(())
}
