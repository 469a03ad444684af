//! The OCI runtime lifecycle across separate invocations, as runc's command line drives it
//! (`create`, `start`, `state`, `kill`, `delete`, `exec`, `pause`, `resume`, `update`, `ps`,
//! `list`). Each container keeps a folder under the runtime's root (`--root`, default
//! `/run/ros-runtime`): `state.json` (what [`Record`] holds), `config.json` (the bundle's, as it
//! was at create, so a changed bundle changes nothing), and `exec.fifo` while it is created and
//! not started (see [`crate::spawn::Lifecycle`]).
//!
//! A container's status is read, never stored: its first process gone (or its pid reused, told
//! by the process's start time) is `stopped`; the FIFO still there is `created`; a frozen cgroup
//! is `paused`; otherwise `running`.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;
use crate::config::{Config, Resources};
use crate::error::{Error, Result};
use crate::spawn::{Lifecycle, SpawnOptions, Stdio};

/// The runtime spec version this runtime implements (reported in `state` and `features`).
pub const OCI_VERSION: &str = "1.2.0";
/// The default root, as runc's `/run/runc`.
pub const DEFAULT_ROOT: &str = "/run/ros-runtime";

const STATE: &str = "state.json";
const CONFIG: &str = "config.json";
const FIFO: &str = "exec.fifo";

/// What `create` records of a container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    /// Its first process, in the runtime's PID namespace.
    pub pid: i32,
    /// That process's start time (`/proc/PID/stat` field 22), to tell a reused pid.
    pub pid_start: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// Its cgroup on the host.
    pub cgroup: PathBuf,
    /// RFC 3339.
    pub created: String,
    pub annotations: BTreeMap<String, String>,
    pub owner: u32,
    /// Whether its config has poststart or poststop hooks (else `start` and `delete` need
    /// not read it again).
    #[serde(default)]
    pub late_hooks: bool,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// The state a runtime reports (runtime-spec `runtime.md`, with runc's `rootfs`, `created`
/// and `owner` beside).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    /// 0 once stopped (runc's rule).
    pub pid: i32,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub owner: String,
}

/// The status from what was observed (pure).
pub fn status_of(alive: bool, fifo_present: bool, frozen: bool) -> Status {
    match (alive, fifo_present, frozen) {
        (false, _, _) => Status::Stopped,
        (true, true, _) => Status::Created,
        (true, false, true) => Status::Paused,
        (true, false, false) => Status::Running,
    }
}

/// A process's state letter and start time from its `/proc/PID/stat`.
pub fn parse_stat(stat: &str) -> Option<(char, u64)> {
    // The command name is in parentheses and may hold anything: read after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    // Field 3 is the state; the start time is field 22, so 19 fields on.
    let start = f.nth(18)?.parse().ok()?;
    Some((state, start))
}

fn proc_stat(pid: i32) -> Option<(char, u64)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether the process `pid` that started at `start` is still there (a zombie is not).
pub fn alive(pid: i32, start: u64) -> bool {
    pid > 0 && proc_stat(pid).is_some_and(|(s, t)| t == start && !matches!(s, 'Z' | 'X' | 'x'))
}

/// Waits, at most `limit`, until the process `pid` has run up to its first wait (sleeping or
/// stopped) or ended. The poststart hooks run after it: the spec puts them after the program
/// starts, and without this the program and the hooks race from the same instant (on a busy
/// machine the hook's first write often came first; the OCI suite's poststart test checks the
/// program's write is there before the hook's).
fn settle(pid: i32, start: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match proc_stat(pid) {
            Some((state, t)) if t == start && matches!(state, 'R' | 'D') => {
                std::thread::sleep(Duration::from_millis(1));
            }
            _ => return,
        }
    }
}

fn not_found(id: &str) -> Error {
    Error::NotFound(id.to_string())
}

/// Writes `data` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| Error::Spawn(format!("writing {}: {e}", path.display())))
}

fn now_rfc3339() -> String {
    chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The runtime's root folder of container folders.
#[derive(Debug, Clone)]
pub struct Root {
    pub path: PathBuf,
    /// The cgroup2 root the containers' groups go under.
    pub cgroup_root: PathBuf,
}

/// What `create` is given besides the bundle.
#[derive(Debug, Default)]
pub struct CreateOptions {
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    /// Start at once, without waiting for `start`, when the config has no hooks that run
    /// between the two (startContainer, poststart): what `run` asks.
    pub no_wait: bool,
    /// Descriptors after the standard streams passed on to the process (`--preserve-fds`).
    pub preserve_fds: u32,
}

/// A container `create` made.
#[derive(Debug, Clone, Copy)]
pub struct Created {
    pub pid: i32,
    /// Its program runs already (see [`CreateOptions::no_wait`]).
    pub started: bool,
}

/// The exec FIFO's reader: `start` reads the child's byte through it.
fn open_fifo_reader(path: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Error::Spawn(format!("opening {}: {e}", path.display())))
}

fn connect_console(path: &Path) -> Result<OwnedFd> {
    std::os::unix::net::UnixStream::connect(path)
        .map(OwnedFd::from)
        .map_err(|e| {
            Error::Spawn(format!(
                "connecting to the console socket {}: {e}",
                path.display()
            ))
        })
}

impl Root {
    pub fn new(path: PathBuf, cgroup_root: PathBuf) -> Root {
        Root { path, cgroup_root }
    }

    pub fn dir(&self, id: &str) -> PathBuf {
        self.path.join(id)
    }

    pub fn load(&self, id: &str) -> Result<Record> {
        crate::config::check_id(id)?;
        let text = std::fs::read(self.dir(id).join(STATE)).map_err(|_| not_found(id))?;
        serde_json::from_slice(&text)
            .map_err(|e| Error::Bundle(format!("{}: {e}", self.dir(id).join(STATE).display())))
    }

    /// The container's config as it was created, with its bundle's paths.
    pub fn config(&self, r: &Record) -> Result<Config> {
        let path = self.dir(&r.id).join(CONFIG);
        let spec = crate::config::load_spec(&path)?;
        Config::from_spec(&r.id, &r.bundle, &spec)
    }

    pub fn status(&self, r: &Record) -> Status {
        let alive = alive(r.pid, r.pid_start);
        let fifo = self.dir(&r.id).join(FIFO).exists();
        let frozen =
            std::fs::read_to_string(r.cgroup.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1");
        status_of(alive, fifo, frozen)
    }

    pub fn state(&self, id: &str) -> Result<State> {
        let r = self.load(id)?;
        Ok(self.state_of(&r))
    }

    fn state_of(&self, r: &Record) -> State {
        let status = self.status(r);
        State {
            oci_version: OCI_VERSION.into(),
            id: r.id.clone(),
            status,
            pid: if status == Status::Stopped { 0 } else { r.pid },
            bundle: r.bundle.clone(),
            rootfs: r.rootfs.clone(),
            created: r.created.clone(),
            annotations: r.annotations.clone(),
            owner: nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(r.owner))
                .ok()
                .flatten()
                .map_or_else(|| r.owner.to_string(), |u| u.name),
        }
    }

    fn hook_state(&self, r: &Record, status: Status) -> Vec<u8> {
        let mut s = self.state_of(r);
        s.status = status;
        // The hooks get the pid even when the program has already ended.
        s.pid = r.pid;
        serde_json::to_vec(&s).unwrap_or_default()
    }

    /// Every container under the root, in id order.
    pub fn list(&self) -> Vec<State> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids.iter()
            .filter_map(|id| self.load(id).ok())
            .map(|r| self.state_of(&r))
            .collect()
    }

    /// Creates the container `id` from `bundle`: set up, its program not yet run (unless
    /// `no_wait`, which a `run` without startContainer or poststart hooks uses: nothing then
    /// happens between create and start). Returns its pid.
    pub fn create(&self, id: &str, bundle: &Path, o: &CreateOptions) -> Result<Created> {
        crate::config::check_id(id)?;
        let bundle = std::fs::canonicalize(bundle)
            .map_err(|e| Error::Bundle(format!("{}: {e}", bundle.display())))?;
        let spec_path = bundle.join(CONFIG);
        let spec = crate::config::load_spec(&spec_path)?;
        let cfg = Config::from_spec(id, &bundle, &spec)?;
        std::fs::create_dir_all(&self.path)
            .map_err(|e| Error::Spawn(format!("creating {}: {e}", self.path.display())))?;
        let dir = self.dir(id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists(id.to_string()));
            }
            Err(e) => return Err(Error::Spawn(format!("creating {}: {e}", dir.display()))),
        }
        let hooks_between =
            !cfg.hooks.start_container.is_empty() || !cfg.hooks.poststart.is_empty();
        let o = CreateOptions {
            pid_file: o.pid_file.clone(),
            console_socket: o.console_socket.clone(),
            no_wait: o.no_wait && !hooks_between,
            preserve_fds: o.preserve_fds,
        };
        let r = self
            .create_in(&dir, id, &bundle, (&spec_path, &spec), &cfg, &o)
            .map(|pid| Created {
                pid,
                started: o.no_wait,
            });
        if r.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        r
    }

    fn create_in(
        &self,
        dir: &Path,
        id: &str,
        bundle: &Path,
        (spec_path, spec): (&Path, &oci_spec::runtime::Spec),
        cfg: &Config,
        o: &CreateOptions,
    ) -> Result<i32> {
        std::fs::copy(spec_path, dir.join(CONFIG))
            .map_err(|e| Error::Spawn(format!("keeping the config: {e}")))?;
        let fifo = dir.join(FIFO);
        if !o.no_wait {
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
                .map_err(|e| Error::Spawn(format!("making {}: {e}", fifo.display())))?;
            // Writable by anyone (past the umask): the container's first process may be
            // another uid on the host (a user namespace), and it opens the FIFO to write.
            std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
                .map_err(|e| Error::Spawn(format!("chmod {}: {e}", fifo.display())))?;
        }
        let rootfs = match &cfg.rootfs {
            crate::config::Rootfs::Dir(p) => p.clone(),
            crate::config::Rootfs::Overlay { lower, .. } => {
                lower.first().cloned().unwrap_or_default()
            }
        };
        let mut record = Record {
            id: id.to_string(),
            pid: 0,
            pid_start: 0,
            bundle: bundle.to_path_buf(),
            rootfs,
            cgroup: self.cgroup_root.join(&cfg.cgroup_path),
            created: now_rfc3339(),
            annotations: spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            owner: nix::unistd::geteuid().as_raw(),
            late_hooks: !cfg.hooks.poststart.is_empty() || !cfg.hooks.poststop.is_empty(),
        };
        let mut hook_state = serde_json::to_value(self.state_of(&record)).unwrap_or_default();
        // The suite (and crun) give the create-time hooks the status `created`.
        if let Some(m) = hook_state.as_object_mut() {
            m.insert("status".into(), "created".into());
        }
        let lc = Lifecycle {
            fifo: (!o.no_wait).then(|| fifo.clone()),
            console: o
                .console_socket
                .as_deref()
                .map(connect_console)
                .transpose()?,
            state: hook_state,
        };
        let opts = SpawnOptions {
            cgroup_root: self.cgroup_root.clone(),
            run_root: self.path.clone(),
            shim: None,
        };
        let mut cfg = cfg.clone();
        cfg.preserve_fds = o.preserve_fds;
        let starting = crate::spawn::spawn_with(&cfg, Stdio::default(), &opts, lc)?;
        let c = if o.no_wait {
            starting.finish()?
        } else {
            starting.wait_created()?
        };
        record.pid = c.pid;
        record.pid_start = proc_stat(c.pid).map_or(0, |(_, t)| t);
        write_atomic(
            &dir.join(STATE),
            &serde_json::to_vec(&record).unwrap_or_default(),
        )?;
        if let Some(p) = &o.pid_file {
            write_atomic(p, c.pid.to_string().as_bytes())?;
        }
        Ok(c.pid)
    }

    /// Lets a created container's program run; then the poststart hooks.
    pub fn start(&self, id: &str) -> Result<()> {
        let r = self.load(id)?;
        match self.status(&r) {
            Status::Created => {}
            s => {
                return Err(Error::State(format!(
                    "cannot start a container that is {s}"
                )));
            }
        }
        let fifo = self.dir(id).join(FIFO);
        let reader = open_fifo_reader(&fifo)?;
        // The child opens the FIFO for writing and writes a byte; its end stays open until
        // the exec closes it, so end-of-file after the byte says the program runs (or the child
        // ended). If it died before writing, nothing comes, and its end is seen instead.
        let mut f = std::fs::File::from(reader);
        let mut byte = [0u8; 1];
        let mut got = false;
        loop {
            let mut fds = [nix::poll::PollFd::new(
                f.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
            match f.read(&mut byte) {
                Ok(1) => got = true,
                // A reader opened before any writer reads end-of-file at once: only after the
                // byte does it mean the exec.
                Ok(_) if got => break,
                Ok(_) | Err(_) if !alive(r.pid, r.pid_start) => {
                    if got {
                        break;
                    }
                    return Err(Error::State(
                        "the container stopped before it started".into(),
                    ));
                }
                _ => {}
            }
        }
        let _ = std::fs::remove_file(&fifo);
        if !r.late_hooks {
            return Ok(());
        }
        let cfg = self.config(&r)?;
        if !cfg.hooks.poststart.is_empty() {
            settle(r.pid, r.pid_start, Duration::from_millis(100));
        }
        // The spec: a failed poststart hook is a warning; the others and the container go on.
        crate::hooks::run_warning(
            "poststart",
            &cfg.hooks.poststart,
            &self.hook_state(&r, Status::Running),
        );
        Ok(())
    }

    /// Sends `sig` to the container's first process, or with `all` to every process in it.
    pub fn kill(&self, id: &str, sig: Signal, all: bool) -> Result<()> {
        let r = self.load(id)?;
        if self.status(&r) == Status::Stopped {
            return Err(Error::State("container not running".into()));
        }
        if all {
            for pid in (Cgroup {
                path: r.cgroup.clone(),
            })
            .pids()
            {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
            }
            Ok(())
        } else {
            nix::sys::signal::kill(Pid::from_raw(r.pid), sig)
                .map_err(|e| Error::State(format!("signalling the container: {e}")))
        }
    }

    /// Removes a stopped container; with `force`, a created, running or paused one too,
    /// killed first.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let r = match self.load(id) {
            Ok(r) => r,
            // A folder without a record is a create that did not finish: with force, gone.
            Err(Error::NotFound(_)) if force && self.dir(id).exists() => {
                let _ = std::fs::remove_dir_all(self.dir(id));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let cg = Cgroup {
            path: r.cgroup.clone(),
        };
        match self.status(&r) {
            Status::Stopped => {}
            // The spec: deleting a container that is not stopped is an error, a created one
            // included (runc and crun end a created one instead; the suite's `delete` test
            // holds them to the spec).
            s if force => {
                kill_all(&r, &cg);
                if s == Status::Paused {
                    let _ = std::fs::write(r.cgroup.join("cgroup.freeze"), "0");
                }
            }
            s => {
                return Err(Error::State(format!(
                    "cannot delete container {id} that is not stopped: {s}"
                )));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(r.pid, r.pid_start) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let cfg = if r.late_hooks {
            self.config(&r).ok()
        } else {
            None
        };
        let removed = if r.cgroup.exists() {
            cg.remove(Duration::from_secs(2))
        } else {
            Ok(())
        };
        let _ = std::fs::remove_dir_all(self.dir(id));
        if let Some(cfg) = cfg {
            crate::hooks::run_warning(
                "poststop",
                &cfg.hooks.poststop,
                &self.hook_state(&r, Status::Stopped),
            );
        }
        removed
    }

    /// Freezes (`true`) or thaws the container's cgroup, and waits until the kernel says so.
    pub fn freeze(&self, id: &str, frozen: bool) -> Result<()> {
        let r = self.load(id)?;
        let s = self.status(&r);
        match (s, frozen) {
            (Status::Running, true) | (Status::Paused, false) => {}
            (s, true) => {
                return Err(Error::State(format!(
                    "cannot pause a container that is {s}"
                )));
            }
            (s, false) => {
                return Err(Error::State(format!(
                    "cannot resume a container that is {s}"
                )));
            }
        }
        let cg_err = |what: &str| {
            let what = what.to_string();
            let path = r.cgroup.display().to_string();
            move |source| Error::Cgroup { path, what, source }
        };
        std::fs::write(
            r.cgroup.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )
        .map_err(cg_err("writing cgroup.freeze"))?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let events = std::fs::read_to_string(r.cgroup.join("cgroup.events"))
                .map_err(cg_err("reading cgroup.events"))?;
            if events.lines().any(|l| l == want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::State(format!(
                    "the cgroup did not become {want} within 5 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The pids of every process in the container, as this PID namespace sees them.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        let r = self.load(id)?;
        Ok(Cgroup { path: r.cgroup }.pids())
    }

    /// One file of a container's cgroup (`memory.max`), trimmed.
    pub fn read_cgroup(&self, id: &str, file: &str) -> Result<String> {
        let r = self.load(id)?;
        Cgroup { path: r.cgroup }.read(file)
    }

    /// Sets new limits on a container's cgroup.
    pub fn update(&self, id: &str, res: &Resources) -> Result<()> {
        let r = self.load(id)?;
        if self.status(&r) == Status::Stopped {
            return Err(Error::State("container not running".into()));
        }
        Cgroup { path: r.cgroup }.apply(res)
    }

    /// Starts `process` in the container: returns the helper's pid (see
    /// [`crate::exec::spawn_process_in`]) and the container's config with that process.
    pub fn exec(
        &self,
        id: &str,
        process: crate::config::Process,
        o: &crate::exec::InOptions,
    ) -> Result<i32> {
        let r = self.load(id)?;
        match self.status(&r) {
            Status::Created | Status::Running => {}
            s => {
                return Err(Error::State(format!(
                    "cannot exec in a container that is {s}"
                )));
            }
        }
        let mut cfg = self.config(&r)?;
        cfg.process = process;
        crate::exec::spawn_process_in(
            r.pid,
            &Cgroup {
                path: r.cgroup.clone(),
            },
            &cfg,
            o,
        )
    }
}

fn kill_all(r: &Record, cg: &Cgroup) {
    if std::fs::write(r.cgroup.join("cgroup.kill"), "1").is_err() {
        for pid in cg.pids() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let _ = nix::sys::signal::kill(Pid::from_raw(r.pid), Signal::SIGKILL);
}

/// What this runtime supports, as `runc features` reports it (runtime-spec `features.md`).
pub fn features() -> serde_json::Value {
    let caps: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "dev", "diratime", "dirsync", "exec", "mand", "noatime",
            "nodev", "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime", "nosuid",
            "private", "rbind", "relatime", "remount", "ro", "rprivate", "rshared", "rslave",
            "runbindable", "rw", "shared", "slave", "strictatime", "suid", "sync", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps,
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false, "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": [
                    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"
                ],
                "operators": [
                    "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"
                ],
                "archs": [std::env::consts::ARCH],
                "knownFlags": ["SECCOMP_FILTER_FLAG_TSYNC"],
                "supportedFlags": ["SECCOMP_FILTER_FLAG_TSYNC"]
            },
            "apparmor": {"enabled": crate::lsm::apparmor_enabled()},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": false}}
        },
        "annotations": {
            "org.opencontainers.runc.checkpoint.enabled": "false",
            crate::config::OVERLAY_ANNOTATION: "true: the root is an overlay with a tmpfs upper layer",
            crate::config::INIT_ANNOTATION: "true: a minimal init runs as PID 1"
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_process_the_fifo_and_the_freezer() {
        assert_eq!(status_of(false, true, true), Status::Stopped);
        assert_eq!(status_of(true, true, false), Status::Created);
        assert_eq!(status_of(true, false, true), Status::Paused);
        assert_eq!(status_of(true, false, false), Status::Running);
    }

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_stat(line), Some(('S', 98765)));
        assert_eq!(parse_stat("garbage"), None);
        let me = proc_stat(i32::try_from(std::process::id()).expect("pid")).expect("self");
        assert!(alive(i32::try_from(std::process::id()).expect("pid"), me.1));
        assert!(!alive(
            i32::try_from(std::process::id()).expect("pid"),
            me.1 + 1
        ));
    }

    #[test]
    fn the_state_json_has_the_spec_fields() {
        let root = Root::new("/nonexistent".into(), "/nonexistent".into());
        let r = Record {
            id: "c1".into(),
            pid: 0,
            pid_start: 0,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            cgroup: "/nonexistent/c1".into(),
            created: "2026-11-28T00:00:00Z".into(),
            annotations: BTreeMap::from([("k".to_string(), "v".to_string())]),
            owner: 0,
            late_hooks: false,
        };
        let v = serde_json::to_value(root.state_of(&r)).expect("json");
        assert_eq!(v["ociVersion"], OCI_VERSION);
        assert_eq!(v["id"], "c1");
        assert_eq!(v["status"], "stopped");
        assert_eq!(v["pid"], 0);
        assert_eq!(v["bundle"], "/b");
        assert_eq!(v["annotations"]["k"], "v");
    }
}
