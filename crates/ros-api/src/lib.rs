//! The local API of a ros machine, shared by the init (the server) and the `ros` CLI (the
//! client), with the paths both agree on ([`paths`]) and the reports the init makes
//! ([`report`]). One request per connection on a Unix stream socket that only root may use (the
//! server checks the caller with `SO_PEERCRED` before it reads anything): the client writes one
//! JSON line (an [`Envelope`]), the server answers with JSON lines: any number of
//! [`Reply::Line`] (log lines, for streams), then one [`Reply::Ok`] (a typed [`Response`]) or
//! [`Reply::Error`] (a followed stream has none and ends when the client goes away).
//!
//! `service_exec` sends descriptors with the request line (SCM_RIGHTS): the caller's three
//! standard streams, which the process runs on, or with `tty` one end of a socket pair, over
//! which the process sends the master of a terminal made in its container (as runc's console
//! socket). The reply ([`Response::Exited`]) comes when the process ends.
//!
//! The protocol is versioned by [`VERSION`]: fields may be added; a change of meaning or a
//! removal makes a new version, and a server refuses a version it does not speak with a clear
//! error. Newline-delimited JSON over a blocking socket is all this needs; an RPC framework
//! would add size to the init and the CLI for nothing used here.

pub mod paths;
pub mod report;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use ros_config::ConfigError;
use serde::{Deserialize, Serialize};

pub use paths::{SOCKET, SOCKET_DIR};
pub use report::{Ready, ServiceReport};

/// The protocol version this build speaks.
pub const VERSION: u32 = 2;
/// A request line longer than this is refused (a merged user-data is at most 1 MiB; its JSON
/// encoding is larger).
pub const MAX_REQUEST: usize = 3 << 20;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    pub request: Request,
}

/// The requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The value of a dotted key in the config as the sources give it now (or all of it).
    ConfigGet {
        key: Option<String>,
    },
    /// Sets a key in the persisted config. `value` is read as TOML when it is a TOML value
    /// (`true`, `1500`, `["a", "b"]`), else as text (or a comma list, where a list is wanted).
    ConfigSet {
        key: String,
        value: String,
    },
    ConfigUnset {
        key: String,
    },
    /// Merges a TOML user-data into the persisted config.
    ConfigMerge {
        toml: String,
    },
    /// The persisted config as TOML, or (`full`) the effective config of every source.
    ConfigExport {
        full: bool,
    },
    /// Where each effective value comes from.
    ConfigSources,
    /// Checks the machine's config as the sources give it now (every error, as the boot sees
    /// them).
    ConfigValidate,
    ServiceList,
    ServiceStatus {
        name: String,
    },
    Service {
        name: String,
        action: ServiceAction,
    },
    ServiceLogs {
        name: String,
        lines: usize,
        follow: bool,
    },
    /// Runs `args` in the running service's container, on the standard streams sent with the
    /// request; with `tty`, on a terminal of its container whose master goes back over the
    /// socket sent instead.
    ServiceExec {
        name: String,
        args: Vec<String>,
        #[serde(default)]
        tty: bool,
    },
    /// The init's log (boot, services, errors).
    Logs {
        lines: usize,
        follow: bool,
    },
    /// Boot timeline, config errors, services health.
    Status,
    OsInfo,
    Power {
        action: PowerAction,
    },
    /// Pulls an image into the store; its progress comes as lines (`ros-pull`'s JSON events).
    ImagePull {
        reference: String,
    },
    /// The images: the boot image's and those pulled.
    ImageList,
    /// Forgets a pulled image (its content goes at the next prune).
    ImageRemove {
        reference: String,
    },
    /// Removes what no image and no service's image needs.
    ImagePrune,
}

/// An image `ros image list` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// The canonical reference, or the boot image's name.
    pub reference: String,
    /// `registry` (pulled into the store) or `boot` (in the initramfs).
    pub source: String,
    /// The image manifest's digest, for a pulled image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Compressed size (config and layers), for a pulled image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub layers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
    Enable,
    Disable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    Reboot,
    Poweroff,
}

/// What the server answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Ok {
        result: Response,
        /// Things the caller should know (e.g. "takes effect at the next boot").
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        notes: Vec<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
        /// Each problem, when there are several (config errors).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        details: Vec<String>,
    },
    /// One line of a stream (logs).
    Line { line: String },
}

/// The answer to each request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Response {
    /// `config_get`: the value at the key (the config's own shape), or all of it.
    Value(serde_json::Value),
    /// `config_export`: TOML text.
    Toml(String),
    /// `config_sources`.
    Sources(Box<Sources>),
    /// `config_set`, `config_unset`, `config_merge`: the file written.
    Changed {
        file: String,
    },
    /// `config_validate`: the machine's config as the sources give it now.
    Validation(Validation),
    /// `service_list`.
    Services(Vec<ServiceReport>),
    /// `service_status`.
    Service(Box<ServiceStatus>),
    /// A service action or a power request, accepted.
    Done(Done),
    /// `status`: the ready report, with the services, the network and the uptime as they are now.
    Status(Box<Ready>),
    OsInfo(Box<OsInfo>),
    /// The end of a stream that was not followed.
    End,
    /// `image_list`.
    Images(Vec<ImageInfo>),
    /// `image_pull`: the image now in the store.
    Image(Box<ImageInfo>),
    /// `service_exec`: the process ended with this status (128 + the signal when killed).
    Exited {
        code: i32,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sources {
    pub sources: Vec<SourceErrors>,
    pub keys: Vec<KeySource>,
}

/// A source and the errors read in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceErrors {
    pub source: String,
    pub errors: Vec<String>,
}

/// A key in force, its value and the source it comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeySource {
    pub key: String,
    pub value: serde_json::Value,
    pub source: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validation {
    pub valid: bool,
    pub errors: Vec<ConfigError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    #[serde(flatten)]
    pub service: ServiceReport,
    pub log_tail: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// The service acted on, for service actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub action: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OsInfo {
    pub name: String,
    pub version: String,
    pub api_version: u32,
    pub arch: String,
    pub kernel: String,
    pub hostname: String,
    pub uptime_ms: u64,
    pub memory: report::Memory,
    pub state: report::StateDisk,
}

impl Response {
    /// What `-o json` prints: the answer's data alone.
    pub fn data(&self) -> serde_json::Value {
        let v = serde_json::to_value(self).unwrap_or_default();
        v.get("data").cloned().unwrap_or(serde_json::Value::Null)
    }
}

impl Reply {
    pub fn ok(result: Response) -> Reply {
        Reply::Ok {
            result,
            notes: Vec::new(),
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::Error {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// The JSON line of this reply.
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"reply":"error","code":"failed","message":"cannot encode: {e}"}}"#)
        });
        s.push('\n');
        s
    }
}

/// Why a request failed; each has its own exit code in the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request could not be read, or its version is not spoken here.
    BadRequest,
    /// No such service or key.
    NotFound,
    /// The config it would make does not validate.
    Invalid,
    /// The caller is not root.
    Denied,
    /// It was understood and could not be done.
    Failed,
}

impl ErrorCode {
    /// The CLI's exit code (documented in `docs/cli.md`).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorCode::Failed => 1,
            ErrorCode::BadRequest => 2,
            ErrorCode::NotFound => 3,
            ErrorCode::Invalid => 4,
            ErrorCode::Denied => 5,
        }
    }
}

/// Reads a request line as the server does; the error is the reply to send.
pub fn parse_request(line: &str) -> Result<Request, Reply> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let v: Versioned = serde_json::from_str(line)
        .map_err(|e| Reply::error(ErrorCode::BadRequest, format!("not a ros API request: {e}")))?;
    if v.version != VERSION {
        return Err(Reply::error(
            ErrorCode::BadRequest,
            format!(
                "API version {} is not spoken here (this init speaks {VERSION}); use the `ros` of this machine",
                v.version
            ),
        ));
    }
    serde_json::from_str::<Envelope>(line)
        .map(|e| e.request)
        .map_err(|e| Reply::error(ErrorCode::BadRequest, format!("bad request: {e}")))
}

/// A client failure that is not the server's answer.
#[derive(Debug)]
pub enum ClientError {
    /// The socket is not there or refuses the connection.
    Connect(std::io::Error),
    /// The connection broke or the answer could not be read.
    Io(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "cannot reach the init's API at {SOCKET}: {e}"),
            ClientError::Io(e) => write!(f, "the API connection failed: {e}"),
        }
    }
}

/// Sends `request` to the socket at `socket`; each streamed line goes to `on_line`; returns the
/// final reply (or, for a followed stream that the server ends, the last line's absence).
pub fn call(
    socket: &Path,
    request: Request,
    on_line: impl FnMut(&str),
) -> Result<Reply, ClientError> {
    call_with_fds(socket, request, &[], on_line)
}

/// [`call`], sending `fds` with the request line (`service_exec`'s standard streams).
pub fn call_with_fds(
    socket: &Path,
    request: Request,
    fds: &[std::os::fd::BorrowedFd<'_>],
    mut on_line: impl FnMut(&str),
) -> Result<Reply, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(ClientError::Connect)?;
    let follow = matches!(
        request,
        Request::Logs { follow: true, .. }
            | Request::ServiceLogs { follow: true, .. }
            | Request::ServiceExec { .. }
    );
    if !follow {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    }
    let mut line = serde_json::to_string(&Envelope {
        version: VERSION,
        request,
    })
    .map_err(|e| ClientError::Io(e.to_string()))?;
    line.push('\n');
    // A server that refuses may close before reading everything; its answer is still there.
    let written = send_fds(&stream, line.as_bytes(), fds).and_then(|n| {
        line.as_bytes()
            .get(n..)
            .map_or(Ok(()), |rest| stream.write_all(rest))
    });
    let mut reader = BufReader::new(stream);
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = reader
            .read_line(&mut buf)
            .map_err(|e| ClientError::Io(e.to_string()))?;
        if n == 0 {
            return Err(ClientError::Io(match &written {
                Err(e) => e.to_string(),
                Ok(()) => "the init closed the connection".into(),
            }));
        }
        let reply: Reply = serde_json::from_str(buf.trim_end())
            .map_err(|e| ClientError::Io(format!("unreadable answer: {e}")))?;
        match reply {
            Reply::Line { line } => on_line(&line),
            other => return Ok(other),
        }
    }
}

/// Writes the start of `data` with `fds` attached (none: a plain write); how much was written.
fn send_fds(
    stream: &UnixStream,
    data: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    if fds.is_empty() {
        return Ok(0);
    }
    let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    nix::sys::socket::sendmsg::<()>(
        stream.as_raw_fd(),
        &[std::io::IoSlice::new(data)],
        &[nix::sys::socket::ControlMessage::ScmRights(&raw)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_round_trip_as_one_json_line() {
        let reqs = [
            Request::ConfigSet {
                key: "hostname".into(),
                value: "n1".into(),
            },
            Request::Service {
                name: "ntp".into(),
                action: ServiceAction::Restart,
            },
            Request::ServiceLogs {
                name: "web".into(),
                lines: 10,
                follow: true,
            },
            Request::Power {
                action: PowerAction::Reboot,
            },
        ];
        for r in reqs {
            let line = serde_json::to_string(&Envelope {
                version: VERSION,
                request: r.clone(),
            })
            .unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(parse_request(&line).unwrap(), r);
        }
        let line = r#"{"version":2,"request":{"op":"config_get","key":"hostname"}}"#;
        assert_eq!(
            parse_request(line).unwrap(),
            Request::ConfigGet {
                key: Some("hostname".into())
            }
        );
    }

    #[test]
    fn other_versions_and_garbage_are_clear_errors() {
        let e = parse_request(r#"{"version":1,"request":{"op":"status"}}"#).unwrap_err();
        assert!(
            matches!(&e, Reply::Error { code: ErrorCode::BadRequest, message, .. } if message.contains("version 1")),
            "{e:?}"
        );
        assert!(parse_request("hello").is_err());
        let e = parse_request(r#"{"version":2,"request":{"op":"fly"}}"#).unwrap_err();
        assert!(matches!(e, Reply::Error { .. }));
    }

    #[test]
    fn a_call_streams_lines_then_returns_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let req = parse_request(line.trim()).unwrap();
            let mut w = s;
            w.write_all(Reply::Line { line: "a".into() }.line().as_bytes())
                .unwrap();
            w.write_all(
                Reply::ok(Response::Toml(format!("{req:?}")))
                    .line()
                    .as_bytes(),
            )
            .unwrap();
        });
        let mut lines = Vec::new();
        let reply = call(&sock, Request::Status, |l| lines.push(l.to_string())).unwrap();
        server.join().unwrap();
        assert_eq!(lines, ["a"]);
        assert!(matches!(reply, Reply::Ok { result: Response::Toml(t), .. } if t == "Status"));
        assert!(matches!(
            call(&dir.path().join("none"), Request::Status, |_| {}),
            Err(ClientError::Connect(_))
        ));
    }

    #[test]
    fn error_codes_have_distinct_exit_codes() {
        let codes: std::collections::BTreeSet<u8> = [
            ErrorCode::Failed,
            ErrorCode::BadRequest,
            ErrorCode::NotFound,
            ErrorCode::Invalid,
            ErrorCode::Denied,
        ]
        .iter()
        .map(|c| c.exit_code())
        .collect();
        assert_eq!(codes.len(), 5);
    }
}
