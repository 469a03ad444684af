//! `ros-runtime`: ros's OCI runtime with runc's command line, so that engines (podman) and the
//! OCI validation suite drive it as they drive runc and crun: `create`, `start`, `state`,
//! `kill`, `delete`, `run`, `exec`, `list`, `ps`, `pause`, `resume`, `update`, `features`, and
//! `spec` to write a default `config.json`. State is kept under `--root` (see
//! [`ros_runtime::oci`]), so separate invocations make up one lifecycle.
//!
//! Exit codes, as runc and crun: 0, or 1 when the runtime failed; `run` and `exec` in the
//! foreground end with the process's status (128 + the signal when it was killed).

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use ros_runtime::oci::{CreateOptions, Root};

#[derive(Parser)]
#[command(name = "ros-runtime", version, about = "ros's OCI container runtime")]
struct Cli {
    /// Where containers' state is kept.
    #[arg(long, global = true, default_value = ros_runtime::oci::DEFAULT_ROOT)]
    root: PathBuf,
    /// Also write warnings and errors to this file.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log more (accepted for runc's command line).
    #[arg(long, global = true)]
    debug: bool,
    /// systemd's cgroup manager: not supported (ros has no systemd); refused, never ignored.
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// The cgroup2 root [default: where cgroup2 is mounted].
    #[arg(long, global = true)]
    cgroup_root: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct CreateArgs {
    /// The bundle folder (holding config.json).
    #[arg(long, short, default_value = ".")]
    bundle: PathBuf,
    /// Write the container's pid here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// A unix socket that receives the terminal's master, for a process with `terminal`.
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Accepted for runc's command line; pivot_root is always used.
    #[arg(long)]
    no_pivot: bool,
    /// Accepted for runc's command line; no session keyring is made.
    #[arg(long)]
    no_new_keyring: bool,
    /// Pass this many descriptors after the standard streams (3, 4, ...) to the process.
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    id: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a container: set up, its program waiting for `start`.
    Create(CreateArgs),
    /// Run a created container's program.
    Start { id: String },
    /// Print a container's state (JSON).
    State { id: String },
    /// Send a signal (default TERM) to a container's first process, or to all with --all.
    Kill {
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
        #[arg(long, short)]
        all: bool,
    },
    /// Remove a stopped container (a running one too with --force).
    Delete {
        #[arg(long, short)]
        force: bool,
        id: String,
    },
    /// Create and start a container; wait for it unless --detach.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(long, short)]
        detach: bool,
    },
    /// Run a new process in a running container.
    Exec {
        /// The process as OCI JSON (process.json); else the arguments after the id.
        #[arg(long, short)]
        process: Option<PathBuf>,
        #[arg(long, short)]
        tty: bool,
        #[arg(long, short)]
        detach: bool,
        /// More environment (KEY=VALUE), repeatable.
        #[arg(long, short)]
        env: Vec<String>,
        #[arg(long)]
        cwd: Option<String>,
        /// UID[:GID]
        #[arg(long, short)]
        user: Option<String>,
        /// Extra groups, repeatable.
        #[arg(long, short = 'g')]
        additional_gids: Vec<u32>,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        /// Accepted for runc's command line.
        #[arg(long)]
        preserve_fds: Option<u32>,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List the containers.
    List {
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[arg(long, short)]
        quiet: bool,
    },
    /// The processes in a container.
    Ps {
        #[arg(long, short, value_enum, default_value_t = Format::Table)]
        format: Format,
        id: String,
        /// Options for ps(1) [default: -ef].
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change a container's limits.
    Update {
        /// linux.resources as JSON (`-` for standard input).
        #[arg(long, short)]
        resources: Option<PathBuf>,
        #[arg(long)]
        memory: Option<i64>,
        #[arg(long)]
        memory_swap: Option<i64>,
        #[arg(long)]
        pids_limit: Option<i64>,
        #[arg(long)]
        cpu_quota: Option<i64>,
        #[arg(long)]
        cpu_period: Option<u64>,
        #[arg(long)]
        cpu_share: Option<u64>,
        id: String,
    },
    /// What this runtime supports (JSON).
    Features,
    /// Write a default config.json into the bundle folder.
    Spec {
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
        /// The process to run [default: sh].
        #[arg(last = true)]
        args: Vec<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

/// Warnings and errors to stderr and, with --log, to a file (runc's text or JSON lines).
struct Logger {
    file: Option<std::sync::Mutex<std::fs::File>>,
    json: bool,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = match r.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warning",
            _ => "info",
        };
        let msg = r.args().to_string();
        let _ = writeln!(std::io::stderr(), "ros-runtime: {level}: {msg}");
        if let Some(f) = &self.file
            && let Ok(mut f) = f.lock()
        {
            let time = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            let line = if self.json {
                serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
            } else {
                format!("time=\"{time}\" level={level} msg={msg:?}")
            };
            let _ = writeln!(f, "{line}");
        }
    }

    fn flush(&self) {}
}

fn main() -> ExitCode {
    // This binary is also the containers' shim (see ros_runtime::shim).
    ros_runtime::shim::run_if_shim();
    let cli = Cli::parse();
    let file = cli.log.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let logger = Box::leak(Box::new(Logger {
        file: file.map(std::sync::Mutex::new),
        json: matches!(cli.log_format, LogFormat::Json),
    }));
    let _ = log::set_logger(logger);
    log::set_max_level(log::LevelFilter::Warn);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Errors go to stderr and the log once, through the logger.
            log::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

fn root_of(cli: &Cli) -> anyhow::Result<Root> {
    if cli.systemd_cgroup {
        bail!("--systemd-cgroup: systemd's cgroup manager is not supported (cgroupfs only)");
    }
    let cgroup_root = match &cli.cgroup_root {
        Some(r) => r.clone(),
        None => ros_runtime::cgroup::system_root()?,
    };
    Ok(Root::new(cli.root.clone(), cgroup_root))
}

fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let root = || root_of(&cli);
    match &cli.command {
        Cmd::Create(a) => {
            root()?.create(&a.id, &a.bundle, &create_options(a, false))?;
        }
        Cmd::Start { id } => root()?.start(id)?,
        Cmd::State { id } => {
            let s = root()?.state(id)?;
            print(&format!("{}\n", serde_json::to_string_pretty(&s)?));
        }
        Cmd::Kill { id, signal, all } => root()?.kill(id, parse_signal(signal)?, *all)?,
        Cmd::Delete { force, id } => root()?.delete(id, *force)?,
        Cmd::Run { create, detach } => return run_container(&root()?, create, *detach),
        Cmd::Exec {
            process,
            tty,
            detach,
            env,
            cwd,
            user,
            additional_gids,
            pid_file,
            console_socket,
            preserve_fds: _,
            id,
            args,
        } => {
            let root = root()?;
            let r = root.load(id)?;
            let base = root.config(&r)?.process;
            let mut p = match process {
                Some(path) => {
                    let text = std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let oci: oci_spec::runtime::Process = serde_json::from_slice(&text)
                        .with_context(|| format!("{}", path.display()))?;
                    ros_runtime::config::Process::from_oci(&oci)?
                }
                None => {
                    if args.is_empty() {
                        bail!("exec: give the command after the container id, or --process");
                    }
                    ros_runtime::config::Process {
                        args: args.clone(),
                        terminal: *tty,
                        ..base
                    }
                }
            };
            p.env.extend(env.iter().cloned());
            if let Some(c) = cwd {
                p.cwd.clone_from(c);
            }
            if let Some(u) = user {
                let (uid, gid) = u.split_once(':').unwrap_or((u, "0"));
                p.uid = uid.parse().with_context(|| format!("--user {u}"))?;
                p.gid = gid.parse().with_context(|| format!("--user {u}"))?;
            }
            if !additional_gids.is_empty() {
                p.additional_gids.clone_from(additional_gids);
            }
            return exec(
                &root,
                id,
                p,
                *detach,
                pid_file.as_deref(),
                console_socket.as_deref(),
            );
        }
        Cmd::List { format, quiet } => {
            let list = root()?.list();
            if *quiet {
                print(
                    &list
                        .iter()
                        .map(|s| format!("{}\n", s.id))
                        .collect::<String>(),
                );
            } else if *format == Format::Json {
                print(&format!("{}\n", serde_json::to_string(&list)?));
            } else {
                let mut out = String::from("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER\n");
                for s in &list {
                    out.push_str(&format!(
                        "{}\t{}\t{}\t{}\t{}\t{}\n",
                        s.id,
                        s.pid,
                        s.status,
                        s.bundle.display(),
                        s.created,
                        s.owner
                    ));
                }
                print(&out);
            }
        }
        Cmd::Ps {
            format,
            id,
            ps_args,
        } => {
            let pids = root()?.pids(id)?;
            if *format == Format::Json {
                print(&format!("{}\n", serde_json::to_string(&pids)?));
            } else {
                print(&ps_table(&pids, ps_args)?);
            }
        }
        Cmd::Pause { id } => root()?.freeze(id, true)?,
        Cmd::Resume { id } => root()?.freeze(id, false)?,
        Cmd::Update {
            resources,
            memory,
            memory_swap,
            pids_limit,
            cpu_quota,
            cpu_period,
            cpu_share,
            id,
        } => {
            let mut res = match resources {
                Some(p) => {
                    let text = if p == Path::new("-") {
                        let mut v = Vec::new();
                        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
                        v
                    } else {
                        std::fs::read(p).with_context(|| format!("reading {}", p.display()))?
                    };
                    let oci: oci_spec::runtime::LinuxResources = serde_json::from_slice(&text)
                        .with_context(|| {
                            if p == Path::new("-") {
                                "linux.resources on standard input".to_string()
                            } else {
                                p.display().to_string()
                            }
                        })?;
                    ros_runtime::Resources::from_oci(&oci)?
                }
                None => ros_runtime::Resources::default(),
            };
            if memory.is_some() {
                res.memory_max = *memory;
            }
            if let Some(total) = memory_swap {
                // runc's --memory-swap is memory+swap: without --memory, the limit in force.
                let mem = match res.memory_max {
                    Some(m) => Some(m),
                    None => {
                        let now = root()?.read_cgroup(id, "memory.max")?;
                        now.parse().ok()
                    }
                };
                res.memory_swap_max = Some(ros_runtime::config::swap_from_total(*total, mem)?);
            }
            if pids_limit.is_some() {
                res.pids_max = *pids_limit;
            }
            res.set_cpu(*cpu_quota, *cpu_period);
            if let Some(s) = cpu_share {
                res.cpu_weight = Some(ros_runtime::config::shares_to_weight(*s));
            }
            root()?.update(id, &res)?;
        }
        Cmd::Features => {
            print(&format!(
                "{}\n",
                serde_json::to_string_pretty(&ros_runtime::oci::features())?
            ));
        }
        Cmd::Spec { bundle, args } => spec(bundle, args.clone())?,
    }
    Ok(0)
}

fn create_options(a: &CreateArgs, no_wait: bool) -> CreateOptions {
    CreateOptions {
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        no_wait,
        preserve_fds: a.preserve_fds,
    }
}

/// A signal by name (`KILL`, `SIGKILL`) or number.
fn parse_signal(s: &str) -> anyhow::Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).with_context(|| format!("signal {s}"));
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<Signal>()
        .map_err(|_| anyhow::anyhow!("unknown signal `{s}`"))
}

fn exit_code(status: WaitStatus) -> Option<u8> {
    match status {
        WaitStatus::Exited(_, code) => Some(u8::try_from(code).unwrap_or(1)),
        WaitStatus::Signaled(_, sig, _) => {
            Some(128u8.saturating_add(u8::try_from(sig as i32).unwrap_or(0)))
        }
        _ => None,
    }
}

/// The signals passed on to a foreground container, taken with sigwait.
fn forwarded() -> anyhow::Result<SigSet> {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    set.thread_block()?;
    Ok(set)
}

/// Reaps every child that ended (as a subreaper, adopted processes too) without waiting;
/// returns `pid`'s exit code when it was among them.
fn reap(pid: Pid) -> Option<u8> {
    let mut code = None;
    loop {
        match waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(s) if s.pid() == Some(pid) => code = code.or(exit_code(s)),
            Ok(WaitStatus::StillAlive) | Err(_) => return code,
            Ok(_) => {}
        }
    }
}

/// Waits for `pid` (a child or, as subreaper, an adopted process), passing signals on.
fn wait_forwarding(set: &SigSet, pid: Pid) -> anyhow::Result<u8> {
    loop {
        // Collect first: the process may have ended before the signals were blocked.
        if let Some(code) = reap(pid) {
            return Ok(code);
        }
        match set.wait()? {
            Signal::SIGCHLD => {}
            other => {
                let _ = nix::sys::signal::kill(pid, other);
            }
        }
    }
}

fn run_container(root: &Root, a: &CreateArgs, detach: bool) -> anyhow::Result<u8> {
    let set = if detach { None } else { Some(forwarded()?) };
    // A terminal in the foreground without a console socket: this process takes the master
    // (over a socket of its own, as runc's recvtty does) and shows the terminal on its own.
    let own_tty = !detach
        && a.console_socket.is_none()
        && ros_runtime::config::load_spec(&a.bundle.join("config.json"))
            .ok()
            .and_then(|s| s.process().as_ref().and_then(|p| p.terminal()))
            .unwrap_or(false);
    let listener = if own_tty {
        std::fs::create_dir_all(&root.path)
            .with_context(|| format!("creating {}", root.path.display()))?;
        let path = root.path.join(format!(".{}.tty", a.id));
        let _ = std::fs::remove_file(&path);
        let l = std::os::unix::net::UnixListener::bind(&path)
            .with_context(|| format!("listening on {}", path.display()))?;
        Some((l, path))
    } else {
        None
    };
    let mut opts = create_options(a, true);
    if let Some((_, path)) = &listener {
        opts.console_socket = Some(path.clone());
    }
    // Without hooks between create and start, the program runs as soon as it is set up: no
    // FIFO, no second step.
    let created = root.create(&a.id, &a.bundle, &opts);
    if let Some((_, path)) = &listener {
        let _ = std::fs::remove_file(path);
    }
    let c = created?;
    if !c.started
        && let Err(e) = root.start(&a.id)
    {
        let _ = root.delete(&a.id, true);
        return Err(e.into());
    }
    let pid = Pid::from_raw(c.pid);
    let Some(set) = set else {
        return Ok(0);
    };
    let code = match listener {
        Some((l, _)) => {
            // The runtime connected during create: the connection waits in the backlog.
            let shown = l
                .accept()
                .context("taking the terminal")
                .and_then(|(conn, _)| {
                    ros_tty::recv_master(std::os::fd::AsFd::as_fd(&conn))
                        .map_err(|e| anyhow::anyhow!("taking the terminal: {e}"))
                })
                .and_then(|master| show_terminal(master, &set, pid));
            match shown {
                Ok(code) => code,
                Err(e) => {
                    let _ = root.delete(&a.id, true);
                    return Err(e);
                }
            }
        }
        None => wait_forwarding(&set, pid)?,
    };
    root.delete(&a.id, true)?;
    Ok(code)
}

/// Shows a container's terminal on this process's own until `pid` ends, passing signals on
/// (SIGWINCH gives the terminal this one's new size); returns its exit code.
fn show_terminal(master: OwnedFd, set: &SigSet, pid: Pid) -> anyhow::Result<u8> {
    let sfd = nix::sys::signalfd::SignalFd::with_flags(
        set,
        nix::sys::signalfd::SfdFlags::SFD_NONBLOCK | nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
    )?;
    let mut proxy = ros_tty::Proxy::new(master);
    let mut code = None;
    proxy.run(Some(std::os::fd::AsFd::as_fd(&sfd)), |_, proxy| {
        while let Ok(Some(info)) = sfd.read_signal() {
            match Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0)) {
                Ok(Signal::SIGCHLD) | Err(_) => {}
                Ok(Signal::SIGWINCH) => proxy.resize(),
                Ok(sig) => {
                    let _ = nix::sys::signal::kill(pid, sig);
                }
            }
        }
        // Stop when `pid` ended.
        code = code.or(reap(pid));
        code.is_some()
    });
    drop(proxy);
    Ok(code.unwrap_or(1))
}

fn exec(
    root: &Root,
    id: &str,
    p: ros_runtime::config::Process,
    detach: bool,
    pid_file: Option<&Path>,
    console_socket: Option<&Path>,
) -> anyhow::Result<u8> {
    if p.terminal && console_socket.is_none() && detach {
        bail!("exec --tty --detach needs --console-socket to send the terminal to");
    }
    // Without a console socket the terminal is shown here: one end of a socket pair is the
    // console socket, the master comes back over the other.
    let mut own_tty = None;
    let console = match console_socket {
        Some(s) => Some(
            std::os::unix::net::UnixStream::connect(s)
                .map(OwnedFd::from)
                .with_context(|| format!("connecting to {}", s.display()))?,
        ),
        None if p.terminal => {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
            own_tty = Some(OwnedFd::from(ours));
            Some(OwnedFd::from(theirs))
        }
        None => None,
    };
    // The helper reports the process's pid and ends; the process is then this one's (a
    // subreaper) to wait for, or, detached, the nearest subreaper's above (conmon's).
    nix::sys::prctl::set_child_subreaper(true)?;
    let set = if detach { None } else { Some(forwarded()?) };
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let helper = root.exec(
        id,
        p,
        &ros_runtime::exec::InOptions {
            console: console.as_ref(),
            report_pid: Some(w),
            ..Default::default()
        },
    )?;
    let helper_status = waitpid(Pid::from_raw(helper), None)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut text)?;
    let Ok(pid) = text.trim().parse::<i32>() else {
        bail!(
            "exec: the process did not start ({})",
            exit_code(helper_status).map_or_else(|| "no status".into(), |c| format!("status {c}"))
        );
    };
    if let Some(f) = pid_file {
        let tmp = f.with_extension("tmp");
        std::fs::write(&tmp, pid.to_string())
            .and_then(|()| std::fs::rename(&tmp, f))
            .with_context(|| format!("writing {}", f.display()))?;
    }
    drop(console);
    match (set, own_tty) {
        (None, _) => Ok(0),
        (Some(set), Some(ours)) => {
            let master = ros_tty::recv_master(std::os::fd::AsFd::as_fd(&ours))
                .map_err(|e| anyhow::anyhow!("taking the terminal: {e}"))?;
            show_terminal(master, &set, Pid::from_raw(pid))
        }
        (Some(set), None) => wait_forwarding(&set, Pid::from_raw(pid)),
    }
}

/// `ps` output for the container's processes: its header and the lines of those pids.
fn ps_table(pids: &[i32], args: &[String]) -> anyhow::Result<String> {
    let args: Vec<String> = if args.is_empty() {
        vec!["-ef".into()]
    } else {
        args.to_vec()
    };
    let out = std::process::Command::new("ps")
        .args(&args)
        .output()
        .context("running ps")?;
    if !out.status.success() {
        bail!(
            "ps {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .context("ps printed no PID column")?;
    let mut table = format!("{header}\n");
    for l in lines {
        let pid = l
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            table.push_str(l);
            table.push('\n');
        }
    }
    Ok(table)
}

fn spec(bundle: &Path, args: Vec<String>) -> anyhow::Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!("{} exists", path.display());
    }
    let mut spec = oci_spec::runtime::Spec::default();
    if let Some(mut process) = spec.process().clone() {
        if !args.is_empty() {
            process.set_args(Some(args));
        }
        process.set_terminal(Some(false));
        spec.set_process(Some(process));
    }
    spec.set_hostname(Some("ros".into()));
    spec.save(&path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("KILL").ok(), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("sigterm").ok(), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("9").ok(), Some(Signal::SIGKILL));
        assert!(parse_signal("NOPE").is_err());
    }
}
