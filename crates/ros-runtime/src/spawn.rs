//! Starting a container: the cgroup and its limits, then `clone3` with the new namespaces,
//! straight into the cgroup when the kernel allows (Linux 5.7), and the setup in the child. The
//! child reports a failure over a pipe that its exec closes, so the parent knows whether the
//! program started, and why not. [`spawn`] waits for that report; [`spawn_starting`] returns as
//! soon as the child exists, so a caller with an event loop (the init) waits for the report
//! there instead of blocking through the child's setup ([`Starting`]).
//!
//! The child runs Rust code between clone and exec, so the clone holds
//! [`crate::forksafe::fork_guard`]: a caller with threads must use [`crate::forksafe::ForkSafe`]
//! as its allocator, and its other threads must not hold locks the child needs.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::fcntl::OFlag;

use crate::cgroup::Cgroup;
use crate::config::{Config, NsMode};
use crate::error::{Error, Result};
use crate::setup::{self, Paths};

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of the kernel's clone3 ABI (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Where containers' state and groups go.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    /// The cgroup2 root.
    pub cgroup_root: PathBuf,
    /// A folder for the containers' working folders (e.g. `/run/ros-runtime`).
    pub run_root: PathBuf,
    /// The program a container's shim execs, started as `ros-shim PID`: a binary that calls
    /// [`crate::shim::run_if_shim`] first in `main` (the caller's own: `/proc/self/exe`). None
    /// keeps the shim a fork of the caller (see [`crate::shim`] for what that costs).
    pub shim: Option<PathBuf>,
}

/// The container's standard streams; `None` inherits the caller's.
#[derive(Debug, Default)]
pub struct Stdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// A started container.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    /// Its first process, as the caller sees it.
    pub pid: i32,
    pub cgroup: Cgroup,
    pub run_dir: PathBuf,
}

impl Container {
    /// Removes what the container left on the host: what still runs in its cgroup, the group,
    /// its working folder. Its mounts went with its mount namespace.
    pub fn destroy(&self, timeout: Duration) -> Result<()> {
        let r = self.cgroup.remove(timeout);
        let _ = std::fs::remove_dir_all(&self.run_dir);
        r
    }

    /// Like [`Container::destroy`], without waiting: the working folder is removed and the
    /// group too when it is empty; otherwise what is left in it is killed and the group is
    /// returned, for the caller to remove later ([`Cgroup::try_remove`]).
    pub fn release(self) -> Option<Cgroup> {
        let _ = std::fs::remove_dir_all(&self.run_dir);
        match self.cgroup.try_remove() {
            Ok(true) => None,
            Ok(false) => {
                let _ = std::fs::write(self.cgroup.path.join("cgroup.kill"), "1");
                Some(self.cgroup)
            }
            Err(_) => Some(self.cgroup),
        }
    }
}

fn ns_flags(cfg: &Config) -> u64 {
    let n = &cfg.namespaces;
    let mut f = 0i64;
    for (mode, flag) in [
        (&n.mount, libc::CLONE_NEWNS),
        (&n.pid, libc::CLONE_NEWPID),
        (&n.uts, libc::CLONE_NEWUTS),
        (&n.ipc, libc::CLONE_NEWIPC),
        (&n.net, libc::CLONE_NEWNET),
        (&n.user, libc::CLONE_NEWUSER),
        (&n.cgroup, libc::CLONE_NEWCGROUP),
    ] {
        if *mode == NsMode::New {
            f |= i64::from(flag);
        }
    }
    u64::try_from(f).unwrap_or(0)
}

fn clone3(flags: u64, cgroup_fd: Option<i32>) -> std::io::Result<i32> {
    let mut args = CloneArgs {
        flags,
        exit_signal: u64::try_from(libc::SIGCHLD).unwrap_or(17),
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup_fd {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = u64::try_from(fd).unwrap_or(0);
    }
    // SAFETY: args is a valid clone_args of the size passed; with no stack given the child
    // continues on a copy of this stack, as after fork.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw mut args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(i32::try_from(r).unwrap_or(-1))
    }
}

/// `clone3` with no other thread inside the allocator (see [`crate::forksafe`]).
fn clone3_guarded(flags: u64, cgroup_fd: Option<i32>) -> std::io::Result<i32> {
    let guard = crate::forksafe::fork_guard();
    let r = clone3(flags, cgroup_fd);
    drop(guard);
    r
}

/// Starts the container described by `cfg`.
/// A container whose first process exists and is setting up (mounts, `pivot_root`, ids,
/// capabilities, seccomp) until it execs the program. Its report pipe reads end-of-file then;
/// if the setup fails, the child writes why before it exits.
#[derive(Debug)]
pub struct Starting {
    container: Container,
    report: OwnedFd,
}

impl Starting {
    pub fn pid(&self) -> i32 {
        self.container.pid
    }

    pub fn container(&self) -> &Container {
        &self.container
    }

    /// Another descriptor of the report pipe's read end, for a caller that waits on it in its
    /// own event loop and passes what it read to [`Starting::conclude`].
    pub fn report_fd(&self) -> std::io::Result<OwnedFd> {
        self.report.try_clone()
    }

    /// Waits (blocking) for the setup's report, then concludes.
    pub fn finish(self) -> Result<Container> {
        let mut report = String::new();
        let _ = std::fs::File::from(
            self.report
                .try_clone()
                .map_err(|e| Error::Spawn(format!("reading the container's setup report: {e}")))?,
        )
        .read_to_string(&mut report);
        self.conclude(&report, false)
    }

    /// Concludes from the setup's whole report (read to end-of-file): empty, the program runs;
    /// otherwise the setup failed, the child is killed and what it left removed, and the report
    /// is the error. `reaped` says the caller has already collected the child's exit (its pid
    /// may then belong to another process and is not signalled).
    pub fn conclude(self, report: &str, reaped: bool) -> Result<Container> {
        if report.is_empty() {
            return Ok(self.container);
        }
        let pid = nix::unistd::Pid::from_raw(self.container.pid);
        if !reaped {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        let _ = self.container.destroy(Duration::from_secs(1));
        Err(Error::Setup(report.to_string()))
    }
}

/// Starts a container and waits until its program runs (or its setup fails).
pub fn spawn(cfg: &Config, stdio: Stdio, opts: &SpawnOptions) -> Result<Container> {
    spawn_starting(cfg, stdio, opts)?.finish()
}

/// Starts a container without waiting for its setup: see [`Starting`].
pub fn spawn_starting(cfg: &Config, stdio: Stdio, opts: &SpawnOptions) -> Result<Starting> {
    cfg.validate()?;
    for mode in [&cfg.namespaces.pid, &cfg.namespaces.user] {
        if matches!(mode, NsMode::Path(_)) {
            return Err(Error::Config(
                "joining an existing PID or user namespace is not supported".into(),
            ));
        }
    }
    let programs = cfg
        .seccomp
        .programs(cfg.process.capabilities.as_ref().map(|c| &c.bounding[..]))?;
    let run_dir = opts.run_root.join(&cfg.id);
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| Error::Spawn(format!("creating {}: {e}", run_dir.display())))?;
    let steps = setup::plan(
        cfg,
        &Paths {
            root: run_dir.join("root"),
            scratch: run_dir.join("rw"),
        },
    );
    let cgroup = Cgroup::create(&opts.cgroup_root, &cfg.cgroup_path)?;
    let container = Container {
        id: cfg.id.clone(),
        pid: -1,
        cgroup,
        run_dir,
    };
    let shim = match (&opts.shim, cfg.init) {
        (Some(p), true) => Some(
            nix::fcntl::open(
                p.as_path(),
                OFlag::O_PATH | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| Error::Spawn(format!("opening the shim {}: {e}", p.display())))?,
        ),
        _ => None,
    };
    match start(cfg, &steps, &programs, stdio, &container, shim.as_ref()) {
        Ok((pid, report)) => Ok(Starting {
            container: Container { pid, ..container },
            report,
        }),
        Err(e) => {
            let _ = container.destroy(Duration::from_secs(1));
            Err(e)
        }
    }
}

fn start(
    cfg: &Config,
    steps: &[setup::Step],
    programs: &[seccompiler::BpfProgram],
    stdio: Stdio,
    c: &Container,
    shim: Option<&OwnedFd>,
) -> Result<(i32, OwnedFd)> {
    c.cgroup.apply(&cfg.resources)?;
    let cg_fd = c.cgroup.open()?;
    // The device filter is in place before the container's first instruction, and a filter
    // that cannot be attached stops the start: a device rule is never dropped.
    if let Some(rules) = &cfg.device_rules {
        crate::devices::attach(&cg_fd, rules).map_err(|e| Error::Cgroup {
            path: c.cgroup.path.display().to_string(),
            what: "attaching the device filter".into(),
            source: e,
        })?;
    }
    let spawn_err = |what: &str| {
        let what = what.to_string();
        move |e: nix::errno::Errno| Error::Spawn(format!("{what}: {e}"))
    };
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(spawn_err("pipe"))?;
    let (go_r, go_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(spawn_err("pipe"))?;
    let ns_files: Vec<(OwnedFd, nix::sched::CloneFlags)> = [
        (&cfg.namespaces.net, nix::sched::CloneFlags::CLONE_NEWNET),
        (&cfg.namespaces.ipc, nix::sched::CloneFlags::CLONE_NEWIPC),
        (&cfg.namespaces.uts, nix::sched::CloneFlags::CLONE_NEWUTS),
        (
            &cfg.namespaces.cgroup,
            nix::sched::CloneFlags::CLONE_NEWCGROUP,
        ),
    ]
    .into_iter()
    .filter_map(|(m, f)| match m {
        NsMode::Path(p) => Some(
            std::fs::File::open(p)
                .map(|file| (OwnedFd::from(file), f))
                .map_err(|e| Error::Spawn(format!("opening namespace {}: {e}", p.display()))),
        ),
        _ => None,
    })
    .collect::<Result<_>>()?;

    let flags = ns_flags(cfg);
    let (pid, in_cgroup) = match clone3_guarded(flags, Some(cg_fd.as_raw_fd())) {
        Ok(pid) => (pid, true),
        // A kernel or a hierarchy that cannot clone into the group: clone, then move the child.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::EOPNOTSUPP | libc::EBUSY | libc::EACCES)
            ) =>
        {
            (
                clone3_guarded(flags, None).map_err(|e| Error::Spawn(format!("clone3: {e}")))?,
                false,
            )
        }
        Err(e) => return Err(Error::Spawn(format!("clone3: {e}"))),
    };
    if pid == 0 {
        drop(err_r);
        drop(go_w);
        let msg = child(
            cfg,
            steps,
            programs,
            stdio,
            go_r,
            &ns_files,
            shim.map(AsRawFd::as_raw_fd),
        );
        let mut w = std::fs::File::from(err_w);
        let _ = w.write_all(msg.as_bytes());
        // SAFETY: _exit ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(127) }
    }
    drop(err_w);
    drop(go_r);
    let fail = |msg: String| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        msg
    };
    if !in_cgroup && let Err(e) = c.cgroup.add(pid) {
        return Err(Error::Spawn(fail(e.to_string())));
    }
    if cfg.namespaces.user == NsMode::New {
        write_id_maps(pid, cfg).map_err(|e| Error::Spawn(fail(e)))?;
    }
    let mut go = std::fs::File::from(go_w);
    go.write_all(b"g")
        .map_err(|e| Error::Spawn(fail(format!("starting the child: {e}"))))?;
    drop(go);
    Ok((pid, err_r))
}

fn write_id_maps(pid: i32, cfg: &Config) -> std::result::Result<(), String> {
    let line = |m: &[crate::config::IdMap]| -> String {
        m.iter()
            .map(|x| format!("{} {} {}\n", x.container, x.host, x.size))
            .collect()
    };
    let w = |file: &str, data: &str| {
        std::fs::write(format!("/proc/{pid}/{file}"), data)
            .map_err(|e| format!("writing {file}: {e}"))
    };
    // setgroups stays allowed (the runtime is privileged), so the child can drop the host's
    // supplementary groups and set the spec's.
    w("uid_map", &line(&cfg.uid_map))?;
    w("gid_map", &line(&cfg.gid_map))
}

/// The child's side, until exec. Returns only on failure.
fn child(
    cfg: &Config,
    steps: &[setup::Step],
    programs: &[seccompiler::BpfProgram],
    stdio: Stdio,
    go: OwnedFd,
    ns_files: &[(OwnedFd, nix::sched::CloneFlags)],
    shim: Option<std::os::fd::RawFd>,
) -> String {
    let mut b = [0u8; 1];
    if std::fs::File::from(go).read_exact(&mut b).is_err() {
        return "the runtime went away before the container started".into();
    }
    if cfg.namespaces.user == NsMode::New {
        // The child is still the host's root (uid 0 there), which the map leaves unmapped in
        // the new namespace: files it made would be EOVERFLOW. Becoming the namespace's root
        // makes it the mapped host id.
        if let Err(e) = crate::process::ids::setresgid(0) {
            return format!("becoming gid 0 in the user namespace: {e}");
        }
        if let Err(e) = crate::process::ids::setresuid(0) {
            return format!("becoming uid 0 in the user namespace: {e}");
        }
    }
    for (fd, kind) in ns_files {
        if let Err(e) = nix::sched::setns(fd, *kind) {
            return format!("joining a {kind:?} namespace: {e}");
        }
    }
    let redirect = |fd: Option<OwnedFd>, dup: fn(OwnedFd) -> nix::Result<()>, name: &str| {
        fd.map_or(Ok(()), dup)
            .map_err(|e| format!("redirecting {name}: {e}"))
    };
    let redirected = redirect(stdio.stdin, nix::unistd::dup2_stdin::<OwnedFd>, "stdin")
        .and_then(|()| redirect(stdio.stdout, nix::unistd::dup2_stdout::<OwnedFd>, "stdout"))
        .and_then(|()| redirect(stdio.stderr, nix::unistd::dup2_stderr::<OwnedFd>, "stderr"));
    if let Err(e) = redirected {
        return e;
    }
    if let Err(e) = setup::apply(steps) {
        return e;
    }
    crate::process::exec(cfg, programs, shim)
}
