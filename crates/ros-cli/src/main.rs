//! `ros`: the admin CLI of a ros machine. It speaks to the init over the local API socket
//! (`crates/ros-api`); `ros config validate FILE` and `ros completions` work anywhere, without
//! a ros machine. Exit codes: 0 done; 1 failed; 2 bad usage or request; 3 no such service or
//! key; 4 the config would not validate; 5 not root; 6 the init's API cannot be reached.

#![allow(clippy::print_stdout, reason = "printing is what a CLI does")]

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use ros_api::report::Ready;
use ros_api::{PowerAction, Reply, Request, Response, ServiceAction, ServiceReport};
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(
    name = "ros",
    version,
    about = "Manage a ros machine: config, services, logs, the OS"
)]
struct Cli {
    /// Output: human tables, or JSON (on every listing).
    #[arg(short, long, value_enum, global = true, default_value = "table")]
    output: Output,
    /// The init's API socket.
    #[arg(long, global = true, env = "ROS_SOCKET", default_value = ros_api::SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The machine's config (the user-data): read, change, check.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// The system and user services.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// The init's log: the boot, the services' starts and exits, errors.
    Logs {
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// How many of the last lines.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
    },
    /// The boot timeline, config errors, the state disk and the services' health.
    Status,
    /// Images: those of the boot image, and those pulled from registries.
    #[command(subcommand)]
    Image(ImageCmd),
    /// The k3s-like cluster this machine serves: its admin kubeconfig, join token, status.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// The OS.
    #[command(subcommand)]
    Os(OsCmd),
    /// Stop the services in order and reboot.
    Reboot,
    /// Stop the services in order and power off.
    Poweroff,
    /// Shell completions.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// A value of the config as the sources give it now (all of it without KEY).
    Get { key: Option<String> },
    /// Sets a key in the persisted config (validated first; applied live where it can be).
    Set { key: String, value: String },
    /// Removes a key from the persisted config.
    Unset { key: String },
    /// Merges a TOML user-data file (or - for standard input) into the persisted config.
    Merge { file: String },
    /// The persisted config, or (--full) what all sources make together.
    Export {
        #[arg(long)]
        full: bool,
    },
    /// Checks a user-data file (- for standard input) as the boot would, on any Linux host.
    /// Without FILE, the machine's config as its sources give it now (through the API).
    Validate { file: Option<String> },
    /// Which source each value comes from.
    Sources,
}

#[derive(Debug, Subcommand)]
enum ServiceCmd {
    List,
    Status {
        name: String,
    },
    /// Enable it in the persisted config and start it.
    Enable {
        name: String,
    },
    /// Disable it in the persisted config and stop it.
    Disable {
        name: String,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
    },
    Restart {
        name: String,
    },
    /// Run a command in the running service's container; exits with its status.
    Exec {
        name: String,
        /// Give the command a terminal (for an interactive shell).
        #[arg(short, long)]
        tty: bool,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// The service's output (from its log file).
    Logs {
        name: String,
        #[arg(short, long)]
        follow: bool,
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCmd {
    /// Pull an image (REF: `nginx:1.27`, `10.0.2.2:5000/hello:1`, `name@sha256:...`) into the
    /// store, with the user-data's registry settings.
    Pull { reference: String },
    /// The images: the boot image's and the pulled ones.
    List,
    /// Forget a pulled image (its content goes at the next prune).
    Rm { reference: String },
    /// Remove what no image and no service's image needs.
    Prune,
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// An admin kubeconfig (context `default`, server https://127.0.0.1:6443).
    Kubeconfig {
        /// The server's address as the kubeconfig's user will reach it.
        #[arg(long)]
        server: Option<String>,
    },
    /// The token an agent joins with (`[cluster] token = ...` on the agent).
    Token,
    /// The server's state: its API, nodes (Ready of all), the store's revision.
    Status,
}

#[derive(Debug, Subcommand)]
enum OsCmd {
    Version,
    Info,
}

const EXIT_UNREACHABLE: u8 = 6;

mod exec;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => ExitCode::from(code),
    }
}

fn read_input(file: &str) -> Result<String, u8> {
    let mut text = String::new();
    let r = if file == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(file).map(|t| text = t)
    };
    r.map_err(|e| {
        eprintln!("ros: reading {file}: {e}");
        1
    })?;
    Ok(text)
}

/// What the cluster's server publishes for this CLI (`ros-kube server --publish`).
fn cluster_dir() -> std::path::PathBuf {
    std::env::var_os("ROS_CLUSTER_DIR").map_or_else(|| "/run/ros/cluster".into(), Into::into)
}

/// The server this machine is an agent of, when it is one (its published status says so).
fn agent_of(dir: &std::path::Path) -> Option<String> {
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("status.json")).ok()?).ok()?;
    (st.get("role")?.as_str()? == "agent").then(|| {
        st.get("server")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_string()
    })
}

fn cluster(c: &ClusterCmd) -> Result<(), u8> {
    let dir = cluster_dir();
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                eprintln!(
                    "ros: no cluster server runs on this machine ({} has no {name}); set `[cluster] role = \"server\"` in the user-data",
                    dir.display()
                );
            } else {
                eprintln!("ros: reading {}: {e}", dir.join(name).display());
            }
            1
        })
    };
    match c {
        ClusterCmd::Kubeconfig { .. } | ClusterCmd::Token if agent_of(&dir).is_some() => {
            eprintln!(
                "ros: this machine is an agent of {}; the kubeconfig and the token are on that server (`ros cluster kubeconfig` there)",
                agent_of(&dir).unwrap_or_default()
            );
            return Err(1);
        }
        ClusterCmd::Kubeconfig { server } => {
            let mut kc = read("kubeconfig")?;
            if let Some(s) = server {
                let s = if s.starts_with("https://") {
                    s.clone()
                } else {
                    format!("https://{s}")
                };
                kc = kc
                    .lines()
                    .map(|l| {
                        if l.trim_start().starts_with("server: ") {
                            format!("    server: {s}")
                        } else {
                            l.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
                    + "\n";
            }
            print!("{kc}");
        }
        ClusterCmd::Token => print!("{}", read("token")?),
        ClusterCmd::Status => {
            let st: serde_json::Value =
                serde_json::from_str(&read("status.json")?).map_err(|e| {
                    eprintln!("ros: the cluster's status.json: {e}");
                    1
                })?;
            let g = |k: &str| {
                st.get(k)
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .unwrap_or_default()
            };
            println!("role: {}", g("role"));
            if g("role") == "agent" {
                println!("server: {}", g("server"));
                println!("node: {}", g("node"));
                println!("state: {}", g("state"));
                println!("message: {}", g("message"));
                println!("updated: {}", g("updated"));
                return Ok(());
            }
            println!("api: {}", g("api"));
            println!("version: {}", g("version"));
            println!("nodes: {} ({} ready)", g("nodes"), g("nodes_ready"));
            println!("store revision: {}", g("revision"));
            println!("started: {}", g("started"));
            println!("updated: {}", g("updated"));
        }
    }
    Ok(())
}

fn run(cli: &Cli) -> Result<(), u8> {
    let req = match &cli.cmd {
        Cmd::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "ros", &mut std::io::stdout());
            return Ok(());
        }
        Cmd::Config(ConfigCmd::Validate { file: Some(f) }) => return validate(cli, f),
        Cmd::Cluster(c) => return cluster(c),
        Cmd::Service(ServiceCmd::Exec { name, tty, command }) => {
            return exec::run(cli, name, *tty, command);
        }
        Cmd::Config(c) => match c {
            ConfigCmd::Get { key } => Request::ConfigGet { key: key.clone() },
            ConfigCmd::Set { key, value } => Request::ConfigSet {
                key: key.clone(),
                value: value.clone(),
            },
            ConfigCmd::Unset { key } => Request::ConfigUnset { key: key.clone() },
            ConfigCmd::Merge { file } => Request::ConfigMerge {
                toml: read_input(file)?,
            },
            ConfigCmd::Export { full } => Request::ConfigExport { full: *full },
            ConfigCmd::Sources => Request::ConfigSources,
            ConfigCmd::Validate { .. } => Request::ConfigValidate,
        },
        Cmd::Service(s) => match s {
            ServiceCmd::List => Request::ServiceList,
            ServiceCmd::Status { name } => Request::ServiceStatus { name: name.clone() },
            ServiceCmd::Enable { name } => action(name, ServiceAction::Enable),
            ServiceCmd::Disable { name } => action(name, ServiceAction::Disable),
            ServiceCmd::Start { name } => action(name, ServiceAction::Start),
            ServiceCmd::Stop { name } => action(name, ServiceAction::Stop),
            ServiceCmd::Restart { name } => action(name, ServiceAction::Restart),
            ServiceCmd::Exec { .. } => return Err(2),
            ServiceCmd::Logs {
                name,
                follow,
                lines,
            } => Request::ServiceLogs {
                name: name.clone(),
                lines: *lines,
                follow: *follow,
            },
        },
        Cmd::Logs { follow, lines } => Request::Logs {
            lines: *lines,
            follow: *follow,
        },
        Cmd::Status => Request::Status,
        Cmd::Image(i) => match i {
            ImageCmd::Pull { reference } => Request::ImagePull {
                reference: reference.clone(),
            },
            ImageCmd::List => Request::ImageList,
            ImageCmd::Rm { reference } => Request::ImageRemove {
                reference: reference.clone(),
            },
            ImageCmd::Prune => Request::ImagePrune,
        },
        Cmd::Os(_) => Request::OsInfo,
        Cmd::Reboot => Request::Power {
            action: PowerAction::Reboot,
        },
        Cmd::Poweroff => Request::Power {
            action: PowerAction::Poweroff,
        },
    };
    let pulling = matches!(req, Request::ImagePull { .. });
    let terminal = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    let reply = call(cli, req, &[], |line| {
        if pulling {
            // A pull's progress events: a line that rewrites itself on a terminal, the events
            // themselves with `-o json`, nothing otherwise.
            if cli.output == Output::Json {
                let _ = writeln!(out, "{line}");
            } else if terminal {
                let _ = write!(out, "\r\x1b[K{}", progress(line));
            }
        } else {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    })?;
    if pulling && terminal && cli.output != Output::Json {
        let _ = write!(out, "\r\x1b[K");
    }
    drop(out);
    match reply {
        Reply::Ok { result, notes } => {
            let code = show(cli, &result);
            for n in notes {
                eprintln!("ros: {n}");
            }
            if code == 0 { Ok(()) } else { Err(code) }
        }
        Reply::Error {
            code,
            message,
            details,
        } => {
            eprintln!("ros: {message}");
            for d in details {
                eprintln!("  {d}");
            }
            Err(code.exit_code())
        }
        Reply::Line { .. } => Err(1),
    }
}

/// Sends a request (with `fds`, for `service_exec`); the reply, or the exit code of a failure
/// to reach the init, said on stderr.
fn call(
    cli: &Cli,
    req: Request,
    fds: &[std::os::fd::BorrowedFd<'_>],
    on_line: impl FnMut(&str),
) -> Result<Reply, u8> {
    ros_api::call_with_fds(&cli.socket, req, fds, on_line).map_err(|e| {
        match e {
            // The socket is root's alone: the kernel refuses others before the init can.
            ros_api::ClientError::Connect(e)
                if e.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                eprintln!(
                    "ros: the ros API is for root only (you are uid {})",
                    current_uid()
                );
                return ros_api::ErrorCode::Denied.exit_code();
            }
            ros_api::ClientError::Connect(e) => eprintln!(
                "ros: cannot reach the init's API at {}: {e} (is this a ros machine, and is the \
                 API's folder mounted here?)",
                cli.socket.display()
            ),
            other => eprintln!("ros: {other}"),
        }
        EXIT_UNREACHABLE
    })
}

/// The caller's uid, from `/proc/self/status` (no libc call needed for one number).
fn current_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(str::to_string))
        })
        .unwrap_or_else(|| "unknown".into())
}

fn action(name: &str, action: ServiceAction) -> Request {
    Request::Service {
        name: name.to_string(),
        action,
    }
}

/// Prints validation errors (or `valid`); the exit code.
fn report_validation(cli: &Cli, source: &str, errors: &[ros_config::ConfigError]) -> u8 {
    if cli.output == Output::Json {
        println!(
            "{}",
            serde_json::json!({"source": source, "valid": errors.is_empty(), "errors": errors})
        );
    } else if errors.is_empty() {
        println!("{source}: valid");
    } else {
        for e in errors {
            eprintln!("{e}");
        }
        eprintln!(
            "{source}: {} error{}",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" }
        );
    }
    if errors.is_empty() { 0 } else { 4 }
}

/// `ros config validate FILE`: the checks the boot makes (the file alone, then the services it
/// makes with ros's own, their dependencies and images), every error with source, line, column
/// and key. A file that is not text (binary, bad gzip, too large) is an error like any other.
fn validate(cli: &Cli, file: &str) -> Result<(), u8> {
    let (source, input) = if file == "-" {
        let mut b = Vec::new();
        std::io::stdin().read_to_end(&mut b).map_err(|e| {
            eprintln!("ros: reading standard input: {e}");
            1
        })?;
        ("stdin".to_string(), ros_config::Input::Bytes(b))
    } else {
        let input = match std::fs::read(file) {
            Ok(b) => ros_config::Input::Bytes(b),
            Err(e) => ros_config::Input::Unreadable(e.to_string()),
        };
        (file.to_string(), input)
    };
    let ctx = ros_config::Context::shipped(ros_config::system::Facts::default());
    let l = ros_config::load(&[ros_config::Source::new(&source, input)], "", &ctx);
    match report_validation(cli, &source, &l.errors) {
        0 => Ok(()),
        code => Err(code),
    }
}

/// Prints an answer; the exit code (0, or 4 for a config that does not validate).
fn show(cli: &Cli, result: &Response) -> u8 {
    if let Response::Validation(v) = result {
        return report_validation(cli, "the machine's config", &v.errors);
    }
    if cli.output == Output::Json {
        let data = result.data();
        if !data.is_null() {
            println!("{data}");
        }
        return 0;
    }
    match result {
        Response::Value(v) => match v {
            Value::String(s) => println!("{s}"),
            Value::Object(_) => println!("{}", ros_config::edit::to_toml(v).trim_end()),
            other => println!("{other}"),
        },
        Response::Toml(t) => print!("{t}"),
        Response::Sources(s) => {
            let rows: Vec<Vec<String>> = s
                .keys
                .iter()
                .map(|k| vec![k.key.clone(), compact(&k.value), k.source.clone()])
                .collect();
            table(&["KEY", "VALUE", "SOURCE"], &rows);
            for e in s.sources.iter().flat_map(|s| &s.errors) {
                eprintln!("ros: {e}");
            }
        }
        Response::Services(list) => services_table(list),
        Response::Service(st) => {
            let v = serde_json::to_value(&st.service).unwrap_or_default();
            for (k, v) in v.as_object().into_iter().flatten() {
                println!("{k}: {}", compact(v));
            }
            println!("log:");
            for l in &st.log_tail {
                println!("  {l}");
            }
        }
        Response::Status(r) => status(r),
        Response::OsInfo(i) => {
            if matches!(cli.cmd, Cmd::Os(OsCmd::Version)) {
                println!("ros {}", i.version);
            } else {
                let v = serde_json::to_value(i).unwrap_or_default();
                for (k, v) in v.as_object().into_iter().flatten() {
                    println!("{k}: {}", compact(v));
                }
            }
        }
        Response::Done(d) => {
            if std::io::stdout().is_terminal() {
                let what = d
                    .service
                    .as_deref()
                    .map(|s| format!(" {s}"))
                    .unwrap_or_default();
                println!("{}{what}: done", d.action);
            }
        }
        Response::Images(list) => {
            let rows: Vec<Vec<String>> = list.iter().map(image_row).collect();
            table(
                &["REFERENCE", "SOURCE", "PLATFORM", "SIZE", "MANIFEST"],
                &rows,
            );
        }
        Response::Image(i) => {
            println!(
                "{}: {}",
                i.reference,
                i.manifest.as_deref().unwrap_or("pulled")
            );
        }
        Response::Changed { .. }
        | Response::End
        | Response::Validation(_)
        | Response::Exited { .. } => {}
    }
    0
}

/// One progress event of a pull, as a short line.
fn progress(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    let mib = |n: &serde_json::Value| n.as_u64().unwrap_or(0) as f64 / (1 << 20) as f64;
    let short = |d: &serde_json::Value| {
        let d = d.as_str().unwrap_or("?");
        d.trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect::<String>()
    };
    match v["event"].as_str() {
        Some("resolved") => format!(
            "{} layers, {} to fetch, {:.1} MiB",
            v["layers"],
            v["missing"],
            mib(&v["size"])
        ),
        Some("layer") => format!(
            "layer {}: {:.1} / {:.1} MiB",
            short(&v["digest"]),
            mib(&v["done"]),
            mib(&v["total"])
        ),
        Some("layer_fetched") => format!("layer {}: fetched", short(&v["digest"])),
        Some("unpacking") => format!("unpacking {} layers", v["layers"]),
        Some("layer_done") => format!("layer {}: unpacked", short(&v["digest"])),
        _ => String::new(),
    }
}

fn image_row(i: &ros_api::ImageInfo) -> Vec<String> {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    vec![
        i.reference.clone(),
        i.source.clone(),
        or_dash(i.platform.clone()),
        or_dash(
            i.size
                .map(|s| format!("{:.1} MiB", s as f64 / (1 << 20) as f64)),
        ),
        or_dash(i.manifest.clone()),
    ]
}

fn service_row(s: &ServiceReport) -> Vec<String> {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    vec![
        s.name.clone(),
        s.image.clone(),
        s.state.clone(),
        or_dash(s.pid.map(|p| p.to_string())),
        s.restarts.to_string(),
        or_dash(s.health.map(|h| format!("{h:?}").to_lowercase())),
        or_dash(s.detail.clone()),
    ]
}

fn status(r: &Ready) {
    println!(
        "ros {} on {} ({}), {}, up {:.1} s",
        r.ros_version,
        r.hostname,
        r.arch,
        r.kernel,
        r.uptime_ms as f64 / 1000.0
    );
    let st = &r.state;
    if st.persistent {
        println!(
            "state disk: {}{}",
            st.device.as_deref().unwrap_or_default(),
            if st.formatted {
                " (formatted at this boot)"
            } else {
                ""
            }
        );
    } else {
        println!(
            "state disk: none ({})",
            st.detail
                .as_deref()
                .unwrap_or("config, volumes and logs are in memory")
        );
    }
    println!("boot:");
    for p in &r.timeline {
        println!(
            "  {:<10} {:>6} ms  ({} ms)",
            p.phase,
            p.start_ms,
            p.end_ms.saturating_sub(p.start_ms)
        );
    }
    println!(
        "init: {} KiB resident, longest busy turn of its main loop {} ms",
        r.init.rss_kib, r.init.max_stall_ms
    );
    println!(
        "config errors: {}",
        r.config_errors.len() + r.config_errors_omitted
    );
    for e in &r.config_errors {
        println!("  {e}");
    }
    if r.config_errors_omitted > 0 {
        println!(
            "  ... and {} more (`ros config validate`)",
            r.config_errors_omitted
        );
    }
    for e in &r.errors {
        println!("error: {e}");
    }
    println!("services:");
    services_table(&r.services);
}

fn services_table(list: &[ServiceReport]) {
    let rows: Vec<Vec<String>> = list.iter().map(service_row).collect();
    table(
        &[
            "NAME", "IMAGE", "STATE", "PID", "RESTARTS", "HEALTH", "DETAIL",
        ],
        &rows,
    );
}

/// A JSON value on one line: text without quotes.
fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn table(head: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(head.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
