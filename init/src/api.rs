//! The init's local API (`crates/ros-api` has the protocol): a Unix socket at
//! [`ros_api::SOCKET`], root callers only (checked with `SO_PEERCRED`, so that others get a
//! clear refusal rather than a permission error). Each connection is a task: config requests
//! are served there (the persisted config file, under a lock); service actions, the service
//! list and power requests go to the main loop, which owns the supervisor.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ros_api::{ErrorCode, PowerAction, Reply, Request, ServiceAction};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::sources::{self, STATE_USER_DATA};
use crate::supervisor::ServiceReport;

/// What the main loop must do for a request.
#[derive(Debug)]
pub enum ToMain {
    Services {
        reply: oneshot::Sender<Vec<ServiceReport>>,
    },
    Service {
        name: String,
        action: ServiceAction,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Power(PowerAction),
    /// Apply a changed config (before, after) to the services.
    Redefine {
        both: Box<(ros_config::UserData, ros_config::UserData)>,
        reply: oneshot::Sender<Vec<String>>,
    },
    /// Apply this network config live (when given), then report the network as it is.
    Network {
        cfg: Option<Box<ros_config::Network>>,
        reply: oneshot::Sender<NetworkReply>,
    },
}

/// What the main loop answers to [`ToMain::Network`].
#[derive(Debug)]
pub struct NetworkReply {
    /// One line per interface the change touched, and its errors.
    pub notes: Vec<String>,
    /// `interfaces`, `missing_interfaces`, `routes`, `dns` as in the ready line.
    pub view: Value,
}

/// What the connection tasks share.
#[derive(Debug)]
pub struct Ctx {
    pub cmdline: String,
    /// Whether the state disk is mounted (else the persisted config lasts until power-off).
    pub persistent: bool,
    /// The ready report, once printed.
    pub ready: Mutex<Value>,
    pub tx: mpsc::UnboundedSender<ToMain>,
}

/// Serves a request in the main loop, which owns the supervisor.
pub fn on_main(req: ToMain, sup: Option<&mut crate::supervisor::Supervisor>, now: u64) {
    match req {
        ToMain::Services { reply } => {
            let _ = reply.send(sup.map(|s| s.report()).unwrap_or_default());
        }
        ToMain::Service {
            name,
            action,
            reply,
        } => {
            let r = match sup {
                None => Err("the supervisor is not running".to_string()),
                Some(s) => match action {
                    ServiceAction::Start | ServiceAction::Enable => s.start_by_request(&name, now),
                    ServiceAction::Stop | ServiceAction::Disable => s.stop_by_request(&name, now),
                    ServiceAction::Restart => s.restart_by_request(&name, now),
                },
            };
            if r.is_ok() {
                log::info!("service {name}: {action:?} asked through the API");
            }
            let _ = reply.send(r);
        }
        // Handled by the main loop itself (it owns the shutdown).
        ToMain::Redefine { both, reply } => {
            let notes = match sup {
                Some(s) => crate::services::redefine(s, &both.0, &both.1, now),
                None => vec!["there is no supervisor (see the boot's errors)".into()],
            };
            let _ = reply.send(notes);
        }
        ToMain::Power(_) | ToMain::Network { .. } => {}
    }
}

/// One writer of the persisted config at a time.
static CONFIG_LOCK: Mutex<()> = Mutex::new(());

/// Makes the socket's folder and binds the socket (anyone may connect; the server checks).
pub fn bind() -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(ros_api::SOCKET_DIR)?;
    std::fs::set_permissions(ros_api::SOCKET_DIR, std::fs::Permissions::from_mode(0o755))?;
    let _ = std::fs::remove_file(ros_api::SOCKET);
    let l = UnixListener::bind(ros_api::SOCKET)?;
    std::fs::set_permissions(ros_api::SOCKET, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

/// Accepts connections for ever.
pub async fn serve(listener: UnixListener, ctx: Arc<Ctx>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, ctx.clone()));
            }
            Err(e) => {
                log::warn!("api: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, r: &Reply) -> bool {
    w.write_all(r.line().as_bytes()).await.is_ok()
}

async fn connection(stream: UnixStream, ctx: Arc<Ctx>) {
    let uid = stream.peer_cred().map(|c| c.uid());
    let (r, mut w) = stream.into_split();
    // The request is read before any refusal, so that the client is never cut off mid-write.
    let mut reader = BufReader::new(r).take(ros_api::MAX_REQUEST as u64);
    let mut line = String::new();
    match tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }
    match uid {
        Ok(0) => {}
        Ok(uid) => {
            let _ = send(
                &mut w,
                &Reply::error(
                    ErrorCode::Denied,
                    format!("the ros API is for root only (you are uid {uid})"),
                ),
            )
            .await;
            return;
        }
        Err(e) => {
            log::warn!("api: SO_PEERCRED: {e}");
            return;
        }
    }
    let req = match ros_api::parse_request(line.trim_end()) {
        Ok(r) => r,
        Err(reply) => {
            let _ = send(&mut w, &reply).await;
            return;
        }
    };
    log::debug!("api: {req:?}");
    match req {
        Request::Logs { lines, follow } => logs(&mut w, lines, follow).await,
        Request::ServiceLogs {
            name,
            lines,
            follow,
        } => service_logs(&mut w, &ctx, &name, lines, follow).await,
        other => {
            let reply = handle(&ctx, other).await;
            let _ = send(&mut w, &reply).await;
        }
    }
}

fn errors_reply(message: &str, errors: &[ros_config::ConfigError]) -> Reply {
    Reply::Error {
        code: ErrorCode::Invalid,
        message: message.to_string(),
        details: errors.iter().map(ToString::to_string).collect(),
    }
}

async fn services(ctx: &Ctx) -> Result<Vec<ServiceReport>, Reply> {
    let (tx, rx) = oneshot::channel();
    ctx.tx
        .send(ToMain::Services { reply: tx })
        .map_err(|_| Reply::error(ErrorCode::Failed, "the supervisor is not running"))?;
    rx.await
        .map_err(|_| Reply::error(ErrorCode::Failed, "the supervisor did not answer"))
}

/// The service `name` or a not-found reply that suggests the near names.
fn find<'a>(list: &'a [ServiceReport], name: &str) -> Result<&'a ServiceReport, Reply> {
    list.iter().find(|s| s.name == name).ok_or_else(|| {
        let mut near: Vec<(f64, &str)> = list
            .iter()
            .map(|s| (strsim::jaro_winkler(name, &s.name), s.name.as_str()))
            .filter(|(d, _)| *d > 0.75)
            .collect();
        near.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut msg = format!("there is no service `{name}`");
        if let Some((_, n)) = near.first() {
            msg.push_str(&format!("; did you mean `{n}`?"));
        } else {
            let all: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
            msg.push_str(&format!(" (services: {})", all.join(", ")));
        }
        Reply::error(ErrorCode::NotFound, msg)
    })
}

fn state_source() -> String {
    format!("state:{STATE_USER_DATA}")
}

/// Writes `data` to `path` so that a crash leaves the old file or the new one, never a mix:
/// a temporary file beside it, fsync, rename over, fsync of the folder.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A config change written, and what of it the main loop must apply live.
struct Changed {
    reply: Reply,
    network: Option<ros_config::Network>,
    /// The config before and after, when what the services are made from changed.
    services: Option<Box<(ros_config::UserData, ros_config::UserData)>>,
}

impl Changed {
    fn only(reply: Reply) -> Changed {
        Changed {
            reply,
            network: None,
            services: None,
        }
    }
}

/// Applies a change of the persisted config: validated text in, written atomically, then
/// applied where it can be live (hostname and sysctls here; a changed network and changed
/// service inputs are returned for the main loop to apply).
fn change(
    ctx: &Ctx,
    key_hint: Option<&str>,
    edit: impl FnOnce(&str) -> Result<String, Vec<ros_config::ConfigError>>,
) -> Changed {
    let Ok(_guard) = CONFIG_LOCK.lock() else {
        return Changed::only(Reply::error(
            ErrorCode::Failed,
            "the config lock is poisoned",
        ));
    };
    let path = Path::new(STATE_USER_DATA);
    let before_text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Changed::only(Reply::error(
                ErrorCode::Failed,
                format!("reading {STATE_USER_DATA}: {e}"),
            ));
        }
    };
    let new_text = match edit(&before_text) {
        Ok(t) => t,
        Err(errors) => {
            return Changed::only(errors_reply(
                "the change was not made; the config stays as it was",
                &errors,
            ));
        }
    };
    let before = sources::gather(&sources::system_files(), &ctx.cmdline)
        .read
        .data;
    if let Err(e) = write_atomic(path, new_text.as_bytes()) {
        return Changed::only(Reply::error(
            ErrorCode::Failed,
            format!("writing {STATE_USER_DATA}: {e}"),
        ));
    }
    let after = sources::gather(&sources::system_files(), &ctx.cmdline)
        .read
        .data;
    let mut notes = Vec::new();
    if !ctx.persistent {
        notes.push(
            "there is no state disk: this change lasts until the machine powers off".to_string(),
        );
    }
    if let Some(key) = key_hint {
        let each = sources::read_each(&sources::system_files(), &ctx.cmdline);
        let named: Vec<(String, ros_config::UserData)> =
            each.into_iter().map(|(n, r)| (n, r.data)).collect();
        let origins = ros_config::edit::origins(&named);
        let key_dotted = ros_config::edit::key_path(key)
            .map(|p| p.join("."))
            .unwrap_or_default();
        if let Some((src, _)) = origins
            .iter()
            .find(|(k, _)| **k == key_dotted || k.starts_with(&format!("{key_dotted}.")))
            .map(|(_, v)| v)
            && *src != state_source()
        {
            notes.push(format!(
                "`{src}` sets {key} too, and wins over the persisted config"
            ));
        }
    }
    let mut live = Vec::new();
    if before.hostname != after.hostname
        && let Some(h) = &after.hostname
    {
        let errs =
            crate::system::set_hostname(&crate::sys::RealSys, Path::new("/etc"), &h.to_string());
        if errs.is_empty() {
            live.push(format!("hostname is now {h}"));
        } else {
            notes.extend(errs);
        }
    }
    if before.sysctl != after.sysctl {
        let errs =
            crate::system::set_sysctls(&crate::sys::RealSys, Path::new("/proc/sys"), &after.sysctl);
        if errs.is_empty() {
            live.push("sysctls written".into());
        } else {
            notes.extend(errs);
        }
    }
    let network = (before.network != after.network).then(|| after.network.clone());
    let services = crate::services::service_inputs_differ(&before, &after)
        .then(|| Box::new((before.clone(), after.clone())));
    // What is left takes a reboot: modules, write_files, bootcmd and runcmd.
    if before.modules != after.modules
        || before.write_files != after.write_files
        || before.bootcmd != after.bootcmd
        || before.runcmd != after.runcmd
    {
        notes.push(
            "saved; the rest of this change takes effect at the next boot (`ros reboot`)".into(),
        );
    }
    notes.extend(live);
    Changed {
        reply: Reply::Ok {
            result: json!({"file": STATE_USER_DATA}),
            notes,
        },
        network,
        services,
    }
}

/// Sends the main loop a request made around a reply channel; its answer, within 30 s.
async fn ask<T>(ctx: &Ctx, req: impl FnOnce(oneshot::Sender<T>) -> ToMain) -> Result<T, String> {
    let (tx, rx) = oneshot::channel();
    ctx.tx
        .send(req(tx))
        .map_err(|_| "the init's main loop is gone".to_string())?;
    tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .map_err(|_| "the init's main loop did not answer within 30 s".to_string())?
        .map_err(|_| "the init's main loop dropped the request".to_string())
}

/// Has the main loop apply `cfg` to the running network (when given); the network as it is
/// afterwards, and what was done.
async fn network(ctx: &Ctx, cfg: Option<ros_config::Network>) -> Result<NetworkReply, String> {
    ask(ctx, |reply| ToMain::Network {
        cfg: cfg.map(Box::new),
        reply,
    })
    .await
}

/// A config change, then its service and network parts applied live.
async fn change_and_apply(
    ctx: &Ctx,
    key_hint: Option<&str>,
    edit: impl FnOnce(&str) -> Result<String, Vec<ros_config::ConfigError>>,
) -> Reply {
    let Changed {
        mut reply,
        network: net,
        services,
    } = change(ctx, key_hint, edit);
    if let (Some(both), Reply::Ok { notes, .. }) = (services, &mut reply) {
        match ask(ctx, |reply| ToMain::Redefine { both, reply }).await {
            Ok(n) if n.is_empty() => notes.push("services applied live: none changed".into()),
            Ok(n) => notes.push(format!("services applied live: {}", n.join("; "))),
            Err(e) => notes.push(format!(
                "services saved but not applied ({e}); they take effect at the next boot"
            )),
        }
    }
    if let (Some(cfg), Reply::Ok { notes, .. }) = (net, &mut reply) {
        match network(ctx, Some(cfg)).await {
            Ok(r) if r.notes.is_empty() => {
                notes.push("network applied live: the interfaces stay as they were".into());
            }
            Ok(r) => notes.push(format!("network applied live: {}", r.notes.join("; "))),
            Err(e) => notes.push(format!(
                "network saved but not applied ({e}); it takes effect at the next boot"
            )),
        }
    }
    reply
}

async fn handle(ctx: &Ctx, req: Request) -> Reply {
    let source = state_source();
    match req {
        Request::ConfigGet { key } => {
            let data = sources::gather(&sources::system_files(), &ctx.cmdline)
                .read
                .data;
            let j = ros_config::edit::to_json(&data);
            match key {
                None => Reply::ok(j),
                Some(k) => match ros_config::edit::get(&j, &k) {
                    Some(v) => Reply::ok(v.clone()),
                    None => Reply::error(
                        ErrorCode::NotFound,
                        format!("`{k}` is not set by any source (its default applies)"),
                    ),
                },
            }
        }
        Request::ConfigSet { key, value } => {
            change_and_apply(ctx, Some(&key), |t| {
                ros_config::edit::set(&source, t, &key, &value)
            })
            .await
        }
        Request::ConfigUnset { key } => {
            change_and_apply(ctx, None, |t| ros_config::edit::unset(&source, t, &key)).await
        }
        Request::ConfigMerge { toml } => {
            change_and_apply(ctx, None, |t| {
                ros_config::edit::merge(&source, t, "merged file", &toml)
            })
            .await
        }
        Request::ConfigExport { full } => {
            if full {
                let data = sources::gather(&sources::system_files(), &ctx.cmdline)
                    .read
                    .data;
                Reply::ok(
                    json!({"toml": ros_config::edit::to_toml(&ros_config::edit::to_json(&data))}),
                )
            } else {
                let text = std::fs::read_to_string(STATE_USER_DATA).unwrap_or_default();
                Reply::ok(json!({"toml": text}))
            }
        }
        Request::ConfigSources => {
            let each = sources::read_each(&sources::system_files(), &ctx.cmdline);
            let statuses: Vec<Value> = each
                .iter()
                .map(|(n, r)| json!({"source": n, "errors": r.errors.iter().map(ToString::to_string).collect::<Vec<_>>()}))
                .collect();
            let named: Vec<(String, ros_config::UserData)> =
                each.into_iter().map(|(n, r)| (n, r.data)).collect();
            let keys: Vec<Value> = ros_config::edit::origins(&named)
                .into_iter()
                .map(|(k, (src, v))| json!({"key": k, "value": v, "source": src}))
                .collect();
            Reply::ok(json!({"sources": statuses, "keys": keys}))
        }
        Request::ServiceList => match services(ctx).await {
            Ok(list) => Reply::ok(json!(list)),
            Err(r) => r,
        },
        Request::ServiceStatus { name } => match services(ctx).await {
            Ok(list) => match find(&list, &name) {
                Ok(s) => {
                    let log = Path::new(crate::state::LOGS)
                        .join("services")
                        .join(format!("{name}.log"));
                    let mut v = json!(s);
                    v["log_tail"] = json!(ros_logstore::tail(&log, 10));
                    Reply::ok(v)
                }
                Err(r) => r,
            },
            Err(r) => r,
        },
        Request::Service { name, action } => service_action(ctx, &name, action).await,
        Request::Status => {
            let mut v = ctx.ready.lock().map(|r| r.clone()).unwrap_or_default();
            if let Ok(list) = services(ctx).await {
                v["services"] = json!(list);
            }
            // The network as it is now, not as it was at the ready line.
            if let Ok(r) = network(ctx, None).await
                && let (Some(obj), Value::Object(view)) = (v.as_object_mut(), r.view)
            {
                obj.extend(view);
            }
            v["uptime_ms"] = json!(crate::clock::uptime_ms());
            Reply::ok(v)
        }
        Request::OsInfo => {
            let ready = ctx.ready.lock().map(|r| r.clone()).unwrap_or_default();
            let hostname = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default();
            Reply::ok(json!({
                "name": "ros",
                "version": env!("CARGO_PKG_VERSION"),
                "api_version": ros_api::VERSION,
                "arch": std::env::consts::ARCH,
                "kernel": ready["kernel"],
                "hostname": hostname,
                "uptime_ms": crate::clock::uptime_ms(),
                "memory": crate::ready::memory(),
                "state": ready["state"],
            }))
        }
        Request::Power { action } => {
            if ctx.tx.send(ToMain::Power(action)).is_err() {
                return Reply::error(ErrorCode::Failed, "the init's main loop is not running");
            }
            Reply::ok(json!({"action": action}))
        }
        Request::Logs { .. } | Request::ServiceLogs { .. } => {
            Reply::error(ErrorCode::BadRequest, "streams are served elsewhere")
        }
    }
}

async fn service_action(ctx: &Ctx, name: &str, action: ServiceAction) -> Reply {
    let list = match services(ctx).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let known = list.iter().any(|s| s.name == name);
    let mut notes = Vec::new();
    // Enable and disable are config changes (they last), then a start or stop now.
    if matches!(action, ServiceAction::Enable | ServiceAction::Disable) {
        let on = action == ServiceAction::Enable;
        let source = state_source();
        let key = format!("services.{name}.enabled");
        // A name that is no service anywhere is refused rather than written.
        let defined = known
            || sources::gather(&sources::system_files(), &ctx.cmdline)
                .read
                .data
                .services
                .contains_key(name)
            || crate::services::shipped(Path::new(crate::services::SHIPPED))
                .0
                .contains_key(name);
        if !defined {
            return find(&list, name)
                .err()
                .unwrap_or_else(|| Reply::error(ErrorCode::NotFound, name.to_string()));
        }
        match change(ctx, None, |t| {
            ros_config::edit::set(&source, t, &key, if on { "true" } else { "false" })
        })
        .reply
        {
            Reply::Ok { notes: n, .. } => {
                notes.extend(n.into_iter().filter(|n| !n.contains("next boot")))
            }
            other => return other,
        }
        if !known {
            notes.push(format!(
                "service `{name}` is {} from the next boot",
                if on { "enabled" } else { "disabled" }
            ));
            return Reply::Ok {
                result: json!({"service": name, "action": action}),
                notes,
            };
        }
    } else if let Err(r) = find(&list, name) {
        return r;
    }
    let now_action = match action {
        ServiceAction::Enable => ServiceAction::Start,
        ServiceAction::Disable => ServiceAction::Stop,
        a => a,
    };
    let (tx, rx) = oneshot::channel();
    if ctx
        .tx
        .send(ToMain::Service {
            name: name.to_string(),
            action: now_action,
            reply: tx,
        })
        .is_err()
    {
        return Reply::error(ErrorCode::Failed, "the supervisor is not running");
    }
    match rx.await {
        Ok(Ok(())) => Reply::Ok {
            result: json!({"service": name, "action": action}),
            notes,
        },
        Ok(Err(e)) => Reply::error(ErrorCode::Failed, e),
        Err(_) => Reply::error(ErrorCode::Failed, "the supervisor did not answer"),
    }
}

/// The last `n` lines of the init's log, then (`follow`) each new one.
async fn logs(w: &mut tokio::net::unix::OwnedWriteHalf, n: usize, follow: bool) {
    let (lines, mut seq) = crate::logger::since(0);
    let skip = lines.len().saturating_sub(n);
    for l in &lines[skip..] {
        if !send(
            w,
            &Reply::Line {
                line: l.trim_end().to_string(),
            },
        )
        .await
        {
            return;
        }
    }
    if !follow {
        let _ = send(w, &Reply::ok(Value::Null)).await;
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (new, next) = crate::logger::since(seq);
        seq = next;
        for l in new {
            if !send(
                w,
                &Reply::Line {
                    line: l.trim_end().to_string(),
                },
            )
            .await
            {
                return;
            }
        }
    }
}

/// A service's log file: its last `n` lines, then (`follow`) what is appended (a rotation,
/// seen as the file getting shorter, starts over at the new file's beginning).
async fn service_logs(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    ctx: &Ctx,
    name: &str,
    n: usize,
    follow: bool,
) {
    match services(ctx).await {
        Ok(list) => {
            if let Err(r) = find(&list, name) {
                let _ = send(w, &r).await;
                return;
            }
        }
        Err(r) => {
            let _ = send(w, &r).await;
            return;
        }
    }
    let path = Path::new(crate::state::LOGS)
        .join("services")
        .join(format!("{name}.log"));
    for l in ros_logstore::tail(&path, n) {
        if !send(w, &Reply::Line { line: l }).await {
            return;
        }
    }
    if !follow {
        let _ = send(w, &Reply::ok(Value::Null)).await;
        return;
    }
    let mut pos = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut partial = String::new();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            pos = 0;
        }
        if len == pos {
            continue;
        }
        let chunk = match read_range(&path, pos, len) {
            Ok(c) => c,
            Err(_) => continue,
        };
        pos = len;
        partial.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = partial.find('\n') {
            let line: String = partial.drain(..=i).collect();
            if !send(
                w,
                &Reply::Line {
                    line: line.trim_end().to_string(),
                },
            )
            .await
            {
                return;
            }
        }
    }
}

fn read_range(path: &Path, from: u64, to: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    let mut buf = vec![0; usize::try_from(to - from).unwrap_or(0).min(1 << 20)];
    let n = f.read(&mut buf)?;
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("config/user-data.toml");
        write_atomic(&p, b"hostname = \"a\"\n").expect("write");
        write_atomic(&p, b"hostname = \"b\"\n").expect("write");
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "hostname = \"b\"\n"
        );
        let names: Vec<_> = std::fs::read_dir(p.parent().expect("dir"))
            .expect("ls")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }

    #[test]
    fn unknown_services_suggest_the_near_names() {
        let report = |n: &str| ServiceReport {
            name: n.into(),
            image: "x".into(),
            state: "running",
            pid: None,
            restarts: 0,
            health: None,
            last_exit: None,
            oom_kills: 0,
            detail: None,
        };
        let list = vec![report("console"), report("ntp"), report("syslog")];
        let Err(Reply::Error { code, message, .. }) = find(&list, "consle") else {
            panic!("found");
        };
        assert_eq!(code, ErrorCode::NotFound);
        assert!(message.contains("did you mean `console`"), "{message}");
        let Err(Reply::Error { message, .. }) = find(&list, "zzz") else {
            panic!("found");
        };
        assert!(message.contains("console, ntp, syslog"), "{message}");
    }
}
