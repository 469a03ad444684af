//! `ros-runtime`: runs OCI bundles with ros's runtime, as `runc run` and `crun run` do.
//!
//! `ros-runtime run [--bundle DIR] ID` runs the bundle's process in the foreground, passes
//! SIGINT/SIGTERM/SIGHUP/SIGQUIT on to it, and exits with its status (128 + signal when killed).
//! `ros-runtime spec [--bundle DIR] [-- ARGS...]` writes a default `config.json`.
//! Exit codes: the container's, or 125 when the runtime itself failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use ros_runtime::{Config, SpawnOptions, Stdio};

#[derive(Parser)]
#[command(name = "ros-runtime", version, about = "ros's OCI container runtime")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a bundle's container in the foreground.
    Run {
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
        /// Folder for containers' working folders.
        #[arg(long, default_value = "/run/ros-runtime")]
        root: PathBuf,
        /// The cgroup2 root [default: where cgroup2 is mounted].
        #[arg(long)]
        cgroup_root: Option<PathBuf>,
        id: String,
    },
    /// Write a default config.json into the bundle folder.
    Spec {
        #[arg(long, short, default_value = ".")]
        bundle: PathBuf,
        /// The process to run [default: sh].
        #[arg(last = true)]
        args: Vec<String>,
    },
}

const RUNTIME_FAILED: u8 = 125;

fn main() -> ExitCode {
    // This binary is also the containers' shim (see ros_runtime::shim).
    ros_runtime::shim::run_if_shim();
    match Cli::parse().command {
        Cmd::Run {
            bundle,
            root,
            cgroup_root,
            id,
        } => match run(&bundle, root, cgroup_root, &id) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("ros-runtime: {e:#}");
                ExitCode::from(RUNTIME_FAILED)
            }
        },
        Cmd::Spec { bundle, args } => match spec(&bundle, args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ros-runtime: {e:#}");
                ExitCode::from(RUNTIME_FAILED)
            }
        },
    }
}

fn run(
    bundle: &std::path::Path,
    root: PathBuf,
    cgroup_root: Option<PathBuf>,
    id: &str,
) -> anyhow::Result<u8> {
    let cfg = Config::from_bundle(id, bundle)?;
    let opts = SpawnOptions {
        cgroup_root: match cgroup_root {
            Some(r) => r,
            None => ros_runtime::cgroup::system_root()?,
        },
        run_root: root,
        shim: Some(PathBuf::from("/proc/self/exe")),
    };
    // Signals are taken with sigwait; the container starts with none blocked.
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        set.add(s);
    }
    set.thread_block()?;
    let c = ros_runtime::spawn(&cfg, Stdio::default(), &opts)?;
    let pid = Pid::from_raw(c.pid);
    let code = loop {
        match set.wait()? {
            Signal::SIGCHLD => match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => {
                    break u8::try_from(code).unwrap_or(RUNTIME_FAILED);
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    break 128u8.saturating_add(u8::try_from(sig as i32).unwrap_or(0));
                }
                _ => {}
            },
            other => {
                let _ = nix::sys::signal::kill(pid, other);
            }
        }
    };
    c.destroy(Duration::from_secs(2))?;
    Ok(code)
}

fn spec(bundle: &std::path::Path, args: Vec<String>) -> anyhow::Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        anyhow::bail!("{} exists", path.display());
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
