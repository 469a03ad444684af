//! `ros`: the admin CLI of a ros machine. It speaks to the init over the local API socket
//! (`crates/ros-api`); `ros config validate FILE` and `ros completions` work anywhere, without
//! a ros machine. Exit codes: 0 done; 1 failed; 2 bad usage or request; 3 no such service or
//! key; 4 the config would not validate; 5 not root; 6 the init's API cannot be reached.

#![allow(clippy::print_stdout, reason = "printing is what a CLI does")]

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use ros_api::{PowerAction, Reply, Request, ServiceAction};
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
    /// Checks a user-data file (- for standard input); on any Linux host. Without FILE, the
    /// machine's persisted config.
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
enum OsCmd {
    Version,
    Info,
}

const EXIT_UNREACHABLE: u8 = 6;

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

fn run(cli: &Cli) -> Result<(), u8> {
    let req = match &cli.cmd {
        Cmd::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "ros", &mut std::io::stdout());
            return Ok(());
        }
        Cmd::Config(ConfigCmd::Validate { file }) => return validate(cli, file.as_deref()),
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
            ConfigCmd::Validate { .. } => unreachable_validate(),
        },
        Cmd::Service(s) => match s {
            ServiceCmd::List => Request::ServiceList,
            ServiceCmd::Status { name } => Request::ServiceStatus { name: name.clone() },
            ServiceCmd::Enable { name } => action(name, ServiceAction::Enable),
            ServiceCmd::Disable { name } => action(name, ServiceAction::Disable),
            ServiceCmd::Start { name } => action(name, ServiceAction::Start),
            ServiceCmd::Stop { name } => action(name, ServiceAction::Stop),
            ServiceCmd::Restart { name } => action(name, ServiceAction::Restart),
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
        Cmd::Os(_) => Request::OsInfo,
        Cmd::Reboot => Request::Power {
            action: PowerAction::Reboot,
        },
        Cmd::Poweroff => Request::Power {
            action: PowerAction::Poweroff,
        },
    };
    let mut out = std::io::stdout().lock();
    let reply = ros_api::call(&cli.socket, req, |line| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    })
    .map_err(|e| {
        match e {
            ros_api::ClientError::Connect(e) => eprintln!(
                "ros: cannot reach the init's API at {}: {e} (is this a ros machine, and is the \
                 API's folder mounted here?)",
                cli.socket.display()
            ),
            other => eprintln!("ros: {other}"),
        }
        EXIT_UNREACHABLE
    })?;
    drop(out);
    match reply {
        Reply::Ok { result, notes } => {
            show(cli, &result);
            for n in notes {
                eprintln!("ros: {n}");
            }
            Ok(())
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

/// `Validate` is answered before requests are built.
fn unreachable_validate() -> Request {
    Request::Status
}

fn action(name: &str, action: ServiceAction) -> Request {
    Request::Service {
        name: name.to_string(),
        action,
    }
}

/// `ros config validate`: every error, with source, line, column and key.
fn validate(cli: &Cli, file: Option<&str>) -> Result<(), u8> {
    let (source, text) = match file {
        Some("-") => ("stdin".to_string(), read_input("-")?),
        Some(f) => (f.to_string(), read_input(f)?),
        None => {
            let p = "/var/lib/ros/config/user-data.toml";
            match std::fs::read_to_string(p) {
                Ok(t) => (p.to_string(), t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("{p}: no persisted config (nothing to check)");
                    return Ok(());
                }
                Err(e) => {
                    eprintln!("ros: reading {p}: {e}");
                    return Err(1);
                }
            }
        }
    };
    let r = ros_config::from_toml(&source, &text);
    if cli.output == Output::Json {
        println!(
            "{}",
            serde_json::json!({"source": source, "valid": r.errors.is_empty(), "errors": r.errors})
        );
    } else if r.errors.is_empty() {
        println!("{source}: valid");
    } else {
        for e in &r.errors {
            eprintln!("{e}");
        }
        eprintln!(
            "{source}: {} error{}",
            r.errors.len(),
            if r.errors.len() == 1 { "" } else { "s" }
        );
    }
    if r.errors.is_empty() { Ok(()) } else { Err(4) }
}

fn show(cli: &Cli, result: &Value) {
    if cli.output == Output::Json {
        if !result.is_null() {
            println!("{result}");
        }
        return;
    }
    match &cli.cmd {
        Cmd::Config(ConfigCmd::Get { .. }) => match result {
            Value::String(s) => println!("{s}"),
            Value::Object(_) => println!("{}", ros_config::edit::to_toml(result).trim_end()),
            other => println!("{other}"),
        },
        Cmd::Config(ConfigCmd::Export { .. }) => {
            print!("{}", result["toml"].as_str().unwrap_or_default());
        }
        Cmd::Config(ConfigCmd::Sources) => {
            let rows: Vec<Vec<String>> = result["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|k| {
                    vec![
                        k["key"].as_str().unwrap_or_default().to_string(),
                        compact(&k["value"]),
                        k["source"].as_str().unwrap_or_default().to_string(),
                    ]
                })
                .collect();
            table(&["KEY", "VALUE", "SOURCE"], &rows);
            for s in result["sources"].as_array().into_iter().flatten() {
                for e in s["errors"].as_array().into_iter().flatten() {
                    eprintln!("ros: {}", e.as_str().unwrap_or_default());
                }
            }
        }
        Cmd::Service(ServiceCmd::List) => services_table(result),
        Cmd::Service(ServiceCmd::Status { .. }) => {
            for (k, v) in result.as_object().into_iter().flatten() {
                if k != "log_tail" {
                    println!("{k}: {}", compact(v));
                }
            }
            println!("log:");
            for l in result["log_tail"].as_array().into_iter().flatten() {
                println!("  {}", l.as_str().unwrap_or_default());
            }
        }
        Cmd::Status => status(result),
        Cmd::Os(OsCmd::Version) => {
            println!("ros {}", result["version"].as_str().unwrap_or_default());
        }
        Cmd::Os(OsCmd::Info) => {
            for (k, v) in result.as_object().into_iter().flatten() {
                println!("{k}: {}", compact(v));
            }
        }
        Cmd::Service(_) | Cmd::Config(_) | Cmd::Reboot | Cmd::Poweroff => {
            if std::io::stdout().is_terminal() || !result.is_null() {
                // Actions answer with what was done; say it briefly.
                if let Some(a) = result.get("action") {
                    let what = result
                        .get("service")
                        .and_then(Value::as_str)
                        .map(|s| format!(" {s}"))
                        .unwrap_or_default();
                    println!("{}{what}: done", a.as_str().unwrap_or_default());
                }
            }
        }
        Cmd::Logs { .. } | Cmd::Completions { .. } => {}
    }
}

fn service_row(s: &Value) -> Vec<String> {
    let get = |k: &str| match &s[k] {
        Value::Null => "-".to_string(),
        v => compact(v),
    };
    vec![
        get("name"),
        get("image"),
        get("state"),
        get("pid"),
        get("restarts"),
        get("health"),
        get("detail"),
    ]
}

fn status(r: &Value) {
    println!(
        "ros {} on {} ({}), {}, up {:.1} s",
        r["ros_version"].as_str().unwrap_or_default(),
        r["hostname"].as_str().unwrap_or_default(),
        r["arch"].as_str().unwrap_or_default(),
        r["kernel"].as_str().unwrap_or_default(),
        r["uptime_ms"].as_f64().unwrap_or_default() / 1000.0
    );
    let st = &r["state"];
    if st["persistent"] == true {
        println!(
            "state disk: {}{}",
            st["device"].as_str().unwrap_or_default(),
            if st["formatted"] == true {
                " (formatted at this boot)"
            } else {
                ""
            }
        );
    } else {
        println!(
            "state disk: none ({})",
            st["detail"]
                .as_str()
                .unwrap_or("config, volumes and logs are in memory")
        );
    }
    println!("boot:");
    for p in r["timeline"].as_array().into_iter().flatten() {
        let (s, e) = (
            p["start_ms"].as_u64().unwrap_or_default(),
            p["end_ms"].as_u64().unwrap_or_default(),
        );
        println!(
            "  {:<9} {:>6} ms  ({} ms)",
            p["phase"].as_str().unwrap_or_default(),
            s,
            e.saturating_sub(s)
        );
    }
    let errors = r["config_errors"].as_array().cloned().unwrap_or_default();
    println!("config errors: {}", errors.len());
    for e in &errors {
        println!(
            "  {}:{}:{}: {}: {}",
            e["source"].as_str().unwrap_or_default(),
            e["line"],
            e["column"],
            e["key"].as_str().unwrap_or_default(),
            e["message"].as_str().unwrap_or_default()
        );
    }
    for e in r["errors"].as_array().into_iter().flatten() {
        println!("error: {}", e.as_str().unwrap_or_default());
    }
    println!("services:");
    services_table(&r["services"]);
}

fn services_table(list: &Value) {
    let rows: Vec<Vec<String>> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(service_row)
        .collect();
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
