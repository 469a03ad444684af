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

/// What `ros-runtime create` adds to a start (the OCI lifecycle, see [`crate::oci`]).
#[derive(Debug, Default)]
pub struct Lifecycle {
    /// The exec FIFO. Once set up, the child reports itself created and opens this for
    /// writing, which blocks until `start` opens it for reading; only then does the program
    /// run. None: the program runs as soon as the setup is done.
    pub fifo: Option<PathBuf>,
    /// A connected unix socket that receives a new terminal's master (`--console-socket`),
    /// for a process with `terminal` set.
    pub console: Option<OwnedFd>,
    /// The container's state as its hooks read it; the runtime fills in `pid`.
    pub state: serde_json::Value,
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

    /// For a start with an exec FIFO: waits (blocking) until the child is set up and waiting
    /// for `start`, or its setup failed.
    pub fn wait_created(self) -> Result<Container> {
        let mut f = std::fs::File::from(
            self.report
                .try_clone()
                .map_err(|e| Error::Spawn(format!("reading the container's setup report: {e}")))?,
        );
        let mut first = [0u8; 1];
        match f.read(&mut first) {
            Ok(1) if first[0] == 0 => Ok(self.container),
            Ok(0) => self.conclude("the container's program ran before start", false),
            Ok(_) => {
                let mut rest = String::new();
                let _ = f.read_to_string(&mut rest);
                let report = format!("{}{rest}", char::from(first[0]));
                self.conclude(&report, false)
            }
            Err(e) => self.conclude(&format!("reading the setup report: {e}"), false),
        }
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
    spawn_with(cfg, stdio, opts, Lifecycle::default())
}

/// [`spawn_starting`] with the OCI lifecycle's parts: an exec FIFO, hooks, a console socket.
pub fn spawn_with(
    cfg: &Config,
    stdio: Stdio,
    opts: &SpawnOptions,
    lc: Lifecycle,
) -> Result<Starting> {
    cfg.validate()?;
    if cfg.process.terminal && lc.console.is_none() {
        return Err(Error::Config(
            "process.terminal needs a console socket (--console-socket) to send the terminal to"
                .into(),
        ));
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
            cgroup: opts.cgroup_root.join(&cfg.cgroup_path),
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
    match start(cfg, &steps, &programs, stdio, &container, shim.as_ref(), lc) {
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
    lc: Lifecycle,
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
    // Joined in this order: the user namespace first (it owns the others), the mount
    // namespace before the setup that mounts in it.
    let ns_files: Vec<(OwnedFd, nix::sched::CloneFlags)> = [
        (&cfg.namespaces.user, nix::sched::CloneFlags::CLONE_NEWUSER),
        (&cfg.namespaces.mount, nix::sched::CloneFlags::CLONE_NEWNS),
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

    // The FIFO is opened by path now, on the host; the child reopens it through /proc once
    // its root has changed.
    let fifo = lc
        .fifo
        .as_ref()
        .map(|p| {
            nix::fcntl::open(
                p.as_path(),
                OFlag::O_PATH | OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| Error::Spawn(format!("opening {}: {e}", p.display())))
        })
        .transpose()?;
    let flags = ns_flags(cfg);
    // A PID namespace is entered only by a new process: this one's children go into it for
    // the clone, and back into its own after.
    let pid_ns = match &cfg.namespaces.pid {
        NsMode::Path(p) => {
            let own = std::fs::File::open("/proc/self/ns/pid_for_children")
                .map_err(|e| Error::Spawn(format!("opening this PID namespace: {e}")))?;
            let theirs = std::fs::File::open(p)
                .map_err(|e| Error::Spawn(format!("opening namespace {}: {e}", p.display())))?;
            nix::sched::setns(&theirs, nix::sched::CloneFlags::CLONE_NEWPID)
                .map_err(|e| Error::Spawn(format!("joining {}: {e}", p.display())))?;
            Some(own)
        }
        _ => None,
    };
    let cloned = clone3_guarded(flags, Some(cg_fd.as_raw_fd()));
    let cloned = match cloned {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::EOPNOTSUPP | libc::EBUSY | libc::EACCES)
            ) =>
        {
            // A kernel or a hierarchy that cannot clone into the group: clone, then move the
            // child (below).
            clone3_guarded(flags, None).map(|pid| (pid, false))
        }
        other => other.map(|pid| (pid, true)),
    };
    if let Some(own) = &pid_ns
        && cloned.as_ref().is_ok_and(|(pid, _)| *pid != 0)
    {
        let _ = nix::sched::setns(own, nix::sched::CloneFlags::CLONE_NEWPID);
    }
    let (pid, in_cgroup) = cloned.map_err(|e| Error::Spawn(format!("clone3: {e}")))?;
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
            Held {
                fifo: fifo.as_ref(),
                console: lc.console.as_ref(),
                report: &err_w,
            },
        );
        let mut w = std::fs::File::from(err_w);
        let _ = w.write_all(msg.as_bytes());
        if CREATED.load(std::sync::atomic::Ordering::Relaxed) {
            // After `create` returned nobody reads the report: the error goes to the
            // container's stderr too.
            let _ = std::io::stderr().write_all(format!("ros-runtime: {msg}\n").as_bytes());
        }
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
    // The container's namespaces exist: the hooks of the runtime's namespace run now, before
    // its setup (and so before pivot_root), with its pid in their state.
    let mut state = lc.state;
    if let Some(m) = state.as_object_mut() {
        m.insert("pid".into(), pid.into());
    }
    let state = serde_json::to_vec(&state).unwrap_or_default();
    for (kind, hooks) in [
        ("prestart", &cfg.hooks.prestart),
        ("createRuntime", &cfg.hooks.create_runtime),
    ] {
        crate::hooks::run(kind, hooks, &state).map_err(|e| Error::Spawn(fail(e)))?;
    }
    let mut go = std::fs::File::from(go_w);
    go.write_all(b"g")
        .and_then(|()| go.write_all(&state))
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

/// What the child holds for the lifecycle of `create`.
struct Held<'a> {
    fifo: Option<&'a OwnedFd>,
    console: Option<&'a OwnedFd>,
    report: &'a OwnedFd,
}

/// The child's side, until exec. Returns only on failure.
#[allow(clippy::too_many_arguments)]
fn child(
    cfg: &Config,
    steps: &[setup::Step],
    programs: &[seccompiler::BpfProgram],
    stdio: Stdio,
    go: OwnedFd,
    ns_files: &[(OwnedFd, nix::sched::CloneFlags)],
    shim: Option<std::os::fd::RawFd>,
    held: Held<'_>,
) -> String {
    let mut got = Vec::new();
    if std::fs::File::from(go).read_to_end(&mut got).is_err() || got.first() != Some(&b'g') {
        return "the runtime went away before the container started".into();
    }
    let state = &got[1..];
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
        // In a joined user namespace, as in a new one, become its root.
        if *kind == nix::sched::CloneFlags::CLONE_NEWUSER
            && let Err(e) =
                crate::process::ids::setresgid(0).and_then(|()| crate::process::ids::setresuid(0))
        {
            return format!("becoming root in the user namespace: {e}");
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
    // createContainer hooks run in the container's mount namespace, before pivot_root.
    let pivot = steps
        .iter()
        .position(|s| matches!(s, setup::Step::PivotRoot { .. }))
        .unwrap_or(steps.len());
    if let Err(e) = setup::apply(&steps[..pivot])
        .and_then(|()| crate::hooks::run("createContainer", &cfg.hooks.create_container, state))
        .and_then(|()| setup::apply(&steps[pivot..]))
    {
        return e;
    }
    if let Some(sock) = held.console
        && cfg.process.terminal
        && let Err(e) = crate::console::attach(sock)
    {
        return e;
    }
    if let Some(fifo) = held.fifo {
        if let Err(e) = wait_for_start(fifo, held.report) {
            return e;
        }
        if let Err(e) = crate::hooks::run("startContainer", &cfg.hooks.start_container, state) {
            return e;
        }
    }
    crate::process::exec(cfg, programs, shim)
}

/// Set in the child once it said "created" (see [`wait_for_start`]).
static CREATED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Says "created" (a NUL byte on the report pipe), then blocks opening the exec FIFO for
/// writing until `start` opens it for reading.
fn wait_for_start(fifo: &OwnedFd, report: &OwnedFd) -> std::result::Result<(), String> {
    nix::unistd::write(report, &[0u8]).map_err(|e| format!("reporting created: {e}"))?;
    CREATED.store(true, std::sync::atomic::Ordering::Relaxed);
    let path = format!("/proc/self/fd/{}", fifo.as_raw_fd());
    let w = nix::fcntl::open(
        path.as_str(),
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("opening the exec FIFO (is /proc mounted in the container?): {e}"))?;
    nix::unistd::write(&w, b"0").map_err(|e| format!("writing the exec FIFO: {e}"))?;
    // The write end stays open until the exec closes it (close-on-exec): `start` reads to
    // end-of-file, so it returns (and runs the poststart hooks) once the program runs.
    std::mem::forget(w);
    Ok(())
}
