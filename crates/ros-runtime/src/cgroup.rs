//! cgroup v2: a container's group, its limits, and its removal. The root of the hierarchy is
//! passed in (found from /proc/self/mountinfo in practice), so every file this writes can be
//! checked on a temporary folder in tests.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Resources;
use crate::error::{Error, Result};

/// The controllers ros enables down to each container's group, when the parent has them.
pub const CONTROLLERS: &[&str] = &["cpu", "io", "memory", "pids"];

/// The cgroup2 mount point in a `/proc/self/mountinfo` (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a host with hybrid cgroups).
pub fn find_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup2"))
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// This machine's cgroup2 root.
pub fn system_root() -> Result<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| Error::Cgroup {
        path: "/proc/self/mountinfo".into(),
        what: "reading".into(),
        source: e,
    })?;
    find_root(&mi).ok_or_else(|| Error::Config("no cgroup2 filesystem is mounted".into()))
}

#[derive(Debug, Clone)]
pub struct Cgroup {
    pub path: PathBuf,
}

fn err(path: &Path, what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let path = path.display().to_string();
    let what = what.into();
    move |source| Error::Cgroup { path, what, source }
}

impl Cgroup {
    /// Creates `root/rel` (and the groups above it), enabling the controllers for the groups
    /// below each level where the level above has them.
    pub fn create(root: &Path, rel: &Path) -> Result<Cgroup> {
        let mut dir = root.to_path_buf();
        for part in rel.components() {
            let wanted: Vec<String> = std::fs::read_to_string(dir.join("cgroup.controllers"))
                .unwrap_or_default()
                .split_whitespace()
                .filter(|c| CONTROLLERS.contains(c))
                .map(|c| format!("+{c}"))
                .collect();
            if !wanted.is_empty() {
                let enabled =
                    std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
                let missing: Vec<&String> = wanted
                    .iter()
                    .filter(|w| !enabled.split_whitespace().any(|e| e == &w[1..]))
                    .collect();
                if !missing.is_empty() {
                    let line: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
                    std::fs::write(dir.join("cgroup.subtree_control"), line.join(" "))
                        .map_err(err(&dir, "enabling controllers"))?;
                }
            }
            dir.push(part);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err(&dir, "creating")(e)),
            }
        }
        reset_delegation(&dir)?;
        Ok(Cgroup { path: dir })
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        std::fs::write(self.path.join(file), value)
            .map_err(err(&self.path, format!("writing {value:?} to {file}")))
    }

    /// Writes the limits.
    pub fn apply(&self, r: &Resources) -> Result<()> {
        if let Some(m) = r.memory_max {
            self.write("memory.max", &limit(m))?;
        }
        if let Some(s) = r.memory_swap_max {
            self.write("memory.swap.max", &limit(s))?;
        }
        if let Some(p) = r.pids_max {
            self.write("pids.max", &limit(p))?;
        }
        if let Some((quota, period)) = r.cpu_max {
            let q = if quota < 0 {
                "max".to_string()
            } else {
                quota.to_string()
            };
            self.write("cpu.max", &format!("{q} {period}"))?;
        }
        if let Some(period) = r.cpu_period {
            // cpu.max takes the quota first: keep the one that is set.
            let now = self.read("cpu.max")?;
            let quota = now.split_whitespace().next().unwrap_or("max");
            self.write("cpu.max", &format!("{quota} {period}"))?;
        }
        if let Some(w) = r.cpu_weight {
            self.write("cpu.weight", &w.to_string())?;
        }
        if let Some(w) = r.io_weight {
            self.write("io.weight", &format!("default {w}"))?;
        }
        for (file, value) in &r.unified {
            if file.contains('/') || file.starts_with('.') || !file.contains('.') {
                return Err(Error::Config(format!(
                    "cgroup file `{file}` is not a plain file name"
                )));
            }
            if !self.path.join(file).exists() {
                self.enable(file.split('.').next().unwrap_or_default())?;
            }
            self.write(file, value)?;
        }
        Ok(())
    }

    /// Marks the group idle for the CPU scheduler (`cpu.idle`, Linux 5.15): its processes run
    /// only when no group that is not idle wants the CPU; or back to normal.
    pub fn set_idle(&self, idle: bool) -> Result<()> {
        self.write("cpu.idle", if idle { "1" } else { "0" })
    }

    /// One of the group's files, trimmed.
    pub fn read(&self, file: &str) -> Result<String> {
        std::fs::read_to_string(self.path.join(file))
            .map(|s| s.trim().to_string())
            .map_err(err(&self.path, format!("reading {file}")))
    }

    /// Enables `controller` for this group: in the subtree_control of each group above it,
    /// from the highest one that does not pass it down yet. A controller the hierarchy does
    /// not have is an error naming it.
    fn enable(&self, controller: &str) -> Result<()> {
        let has = |dir: &Path, file: &str| {
            std::fs::read_to_string(dir.join(file))
                .unwrap_or_default()
                .split_whitespace()
                .any(|c| c == controller)
        };
        let mut missing = Vec::new();
        let mut dir = self.path.as_path();
        while !has(dir, "cgroup.controllers") {
            let Some(parent) = dir
                .parent()
                .filter(|p| p.join("cgroup.controllers").exists())
            else {
                return Err(Error::Config(format!(
                    "the cgroup controller `{controller}` is not available to {}",
                    self.path.display()
                )));
            };
            missing.push(parent);
            dir = parent;
        }
        for parent in missing.iter().rev() {
            std::fs::write(
                parent.join("cgroup.subtree_control"),
                format!("+{controller}"),
            )
            .map_err(err(parent, format!("enabling {controller}")))?;
        }
        Ok(())
    }

    /// The group's folder, opened for `clone3(CLONE_INTO_CGROUP)`.
    pub fn open(&self) -> Result<OwnedFd> {
        let f = std::fs::File::open(&self.path).map_err(err(&self.path, "opening"))?;
        Ok(OwnedFd::from(f))
    }

    /// Moves a process into the group.
    pub fn add(&self, pid: i32) -> Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// The processes in the group.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// How many times the kernel's OOM killer struck in the group.
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.path.join("memory.events"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Removes the group if it is empty: `Ok(true)` removed (or gone), `Ok(false)` still busy.
    pub fn try_remove(&self) -> Result<bool> {
        if descendants(&self.path) > 0 {
            let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
            remove_children(&self.path);
        }
        match std::fs::remove_dir(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
            Err(e) => Err(err(&self.path, "removing")(e)),
        }
    }

    /// Kills what is left in the group and removes it, waiting up to `timeout` for the kernel
    /// to let go of exiting processes.
    pub fn remove(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut killed = false;
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(err(&self.path, "removing")(e)),
                Err(_) => {
                    if !killed {
                        // cgroup.kill (Linux 5.14) kills everything inside at once, the
                        // groups below included.
                        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
                        killed = true;
                    }
                    // Groups the container made below its own (a container that runs
                    // containers) go first, deepest first. Looked for only when cgroup.stat
                    // counts some: listing a folder calls libc's opendir, which allocates
                    // outside the fork-safe allocator (see crate::forksafe).
                    if descendants(&self.path) > 0 {
                        remove_children(&self.path);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

fn limit(v: i64) -> String {
    if v < 0 {
        "max".to_string()
    } else {
        v.to_string()
    }
}

/// Removes the (empty of processes) groups below `path`, deepest first.
fn remove_children(path: &Path) {
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_children(&e.path());
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// How many groups are below `path` (its cgroup.stat; a plain read, no directory listing).
fn descendants(path: &Path) -> u64 {
    std::fs::read_to_string(path.join("cgroup.stat"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("nr_descendants "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// A group kept from a container that ran containers (it made groups below its own and gave
/// them controllers): those groups are removed and the controllers taken back, or no process
/// could join it again (cgroup v2 puts no process in a group that gives its children
/// controllers).
fn reset_delegation(dir: &Path) -> Result<()> {
    if descendants(dir) > 0 {
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while descendants(dir) > 0 && Instant::now() < deadline {
            remove_children(dir);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let off: Vec<String> = enabled
        .split_whitespace()
        .map(|c| format!("-{c}"))
        .collect();
    if !off.is_empty() {
        std::fs::write(dir.join("cgroup.subtree_control"), off.join(" "))
            .map_err(err(dir, "taking back the controllers given below"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount() {
        let hybrid = "30 24 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            find_root(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "25 1 0:22 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw\n";
        assert_eq!(find_root(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(find_root("1 0 0:1 / / rw - tmpfs rootfs rw\n"), None);
    }

    #[test]
    fn creates_the_path_enabling_controllers_and_writes_limits() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path();
        std::fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids\n",
        )
        .expect("w");
        std::fs::write(root.join("cgroup.subtree_control"), "cpu\n").expect("w");
        let cg = Cgroup::create(root, Path::new("ros/c1")).expect("create");
        assert_eq!(cg.path, root.join("ros/c1"));
        // The kernel's files of the group (a folder here).
        std::fs::write(cg.path.join("memory.high"), "max").expect("w");
        // Only what was missing is asked for.
        assert_eq!(
            std::fs::read_to_string(root.join("cgroup.subtree_control")).expect("r"),
            "+io +memory +pids"
        );
        cg.apply(&Resources {
            memory_max: Some(64 << 20),
            pids_max: Some(32),
            cpu_max: Some((50_000, 100_000)),
            cpu_weight: Some(39),
            io_weight: Some(100),
            unified: vec![("memory.high".into(), "max".into())],
            ..Resources::default()
        })
        .expect("apply");
        let read = |f: &str| std::fs::read_to_string(cg.path.join(f)).expect("read");
        assert_eq!(read("memory.max"), "67108864");
        assert_eq!(read("pids.max"), "32");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("cpu.weight"), "39");
        assert_eq!(read("io.weight"), "default 100");
        assert_eq!(read("memory.high"), "max");
        // A file whose controller the group lacks: enabled from the highest group down.
        std::fs::write(root.join("ros/cgroup.controllers"), "cpu io memory pids\n").expect("w");
        std::fs::write(cg.path.join("cgroup.controllers"), "io memory pids\n").expect("w");
        cg.apply(&Resources {
            unified: vec![("hugetlb.2MB.max".into(), "4194304".into())],
            ..Resources::default()
        })
        .expect("apply hugetlb");
        assert_eq!(
            std::fs::read_to_string(root.join("ros/cgroup.subtree_control")).expect("r"),
            "+hugetlb"
        );
        assert_eq!(read("hugetlb.2MB.max"), "4194304");
        // One the hierarchy does not have is an error naming it.
        let e = cg
            .apply(&Resources {
                unified: vec![("rdma.max".into(), "mlx4_0 hca_handle=2".into())],
                ..Resources::default()
            })
            .expect_err("no rdma");
        assert!(e.to_string().contains("`rdma`"), "{e}");
        let bad = Resources {
            unified: vec![("../escape".into(), "1".into())],
            ..Resources::default()
        };
        assert!(cg.apply(&bad).is_err());
    }

    #[test]
    fn reads_oom_kills_and_removes() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cg = Cgroup {
            path: tmp.path().join("g"),
        };
        std::fs::create_dir(&cg.path).expect("mkdir");
        std::fs::write(
            cg.path.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n",
        )
        .expect("w");
        assert_eq!(cg.oom_kills(), 2);
        std::fs::remove_file(cg.path.join("memory.events")).expect("rm");
        cg.remove(Duration::from_millis(50)).expect("remove");
        assert!(!cg.path.exists());
        cg.remove(Duration::from_millis(50))
            .expect("removing twice is fine");
    }
}
