//! The container start benchmark: `/bin/true` in a busybox bundle with every namespace and a
//! read-only overlay root, started by ros-runtime, crun and runc in turn, wall time per start.

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
    let mut ros_ms = Vec::new();
    let mut crun_ms = Vec::new();
    let mut runc_ms = Vec::new();
    let time = |cmd: &mut Command| -> Result<f64> {
        let t = Instant::now();
        let out = cmd.output()?;
        if !out.status.success() {
            bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    };
    for i in 0..runs + 3 {
        let id = format!("bench{i}");
        let r = time(
            Command::new(&ros)
                .args(["run", "--bundle"])
                .arg(&b)
                .arg("--root")
                .arg(&run_root)
                .arg("--cgroup-root")
                .arg(&cg2)
                .arg(&id),
        )?;
        let c = time(
            Command::new(&crun)
                .args(["--cgroup-manager=disabled", "run", "--bundle"])
                .arg(&b)
                .arg(&id),
        )?;
        let u = time(
            Command::new(&runc)
                .args(["run", "--bundle"])
                .arg(&b)
                .arg(&id),
        )?;
        // The first runs warm the page cache; they are not counted.
        if i >= 3 {
            ros_ms.push(r);
            crun_ms.push(c);
            runc_ms.push(u);
        }
    }
    let _ = umount2(&b.join("rootfs"), MntFlags::MNT_DETACH);
    let _ = umount2(&b.join("rw"), MntFlags::MNT_DETACH);
    let _ = umount2(&cg2, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(&work);
    let (r, c, u) = (median(&ros_ms), median(&crun_ms), median(&runc_ms));
    println!(
        "container start: /bin/true, every namespace, read-only overlay root; {runs} runs each, interleaved"
    );
    println!(
        "  ros-runtime  median {r:6.1} ms  best {:6.1} ms",
        min(&ros_ms)
    );
    println!(
        "  crun         median {c:6.1} ms  best {:6.1} ms  (cgroup manager disabled: this host's cgroups are hybrid)",
        min(&crun_ms)
    );
    println!(
        "  runc         median {u:6.1} ms  best {:6.1} ms",
        min(&runc_ms)
    );
    println!(
        "  ros/crun {:.2}, ros/runc {:.2} (goal: ros no slower than crun)",
        r / c,
        r / u
    );
    Ok(())
}
