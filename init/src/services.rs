//! The services phase of the boot: what containers need (modules, the root off the initramfs
//! mount, the image store, the folders and files services mount), the service definitions (the
//! image's, then the user-data's over them), and the supervisor started.

use std::collections::BTreeMap;
use std::path::Path;

use ros_config::{ConfigError, Service, UserData};
use ros_runtime::SpawnOptions;

use crate::images::{self, ImageStore};
use crate::kmod::Loader;
use crate::mounts;
use crate::supervisor::Supervisor;
use crate::supervisor::spec::Paths;
use crate::switch_root;
use crate::sys::Sys;

/// Modules containers need: overlayfs for roots.
pub const CONTAINER_MODULES: &[&str] = &["overlay"];

/// Modules for layers kept as erofs images (`ros-image --layer-store erofs`), loaded only then.
pub const EROFS_MODULES: &[&str] = &["loop", "erofs"];

/// Where the image ships service definitions.
pub const SHIPPED: &str = "/usr/lib/ros/services";

/// The shipped definitions, each file read as user-data (its errors named by file).
pub fn shipped(dir: &Path) -> (BTreeMap<String, Service>, Vec<ConfigError>) {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut all = UserData::default();
    let mut errors = Vec::new();
    for f in files {
        let source = format!("image:{}", f.display());
        match std::fs::read_to_string(&f) {
            Ok(text) => {
                let r = ros_config::from_toml(&source, &text);
                errors.extend(r.errors);
                all.merge(r.data);
            }
            Err(e) => errors.push(ConfigError::new(
                &source,
                ros_config::Pos::default(),
                "",
                format!("cannot read: {e}"),
            )),
        }
    }
    (all.services, errors)
}

/// The `console` table as a change to the console service: its SSH port (the server's and the
/// health check's) and whether its writable layer persists.
fn console_settings(c: &ros_config::Console, errors: &mut Vec<ConfigError>) -> Service {
    let mut text = String::from("[services.console]\n");
    if let Some(p) = c.ssh_port {
        text.push_str(&format!(
            "env = {{ ROS_SSH_PORT = \"{p}\" }}\nhealth = {{ tcp = {p}, interval = \"10s\", timeout = \"3s\", retries = 3 }}\n"
        ));
    }
    if let Some(p) = c.persistent {
        text.push_str(&format!("persistent = {p}\n"));
    }
    let r = ros_config::from_toml("console", &text);
    errors.extend(r.errors);
    r.data.services.into_values().next().unwrap_or_default()
}

/// The shipped system services `runcmd` waits for.
const SYSTEM_SERVICES: &[&str] = &["syslog", "ntp", "console"];

/// `bootcmd` and `runcmd` as one-shot services: privileged busybox containers that share the
/// host's network, PID, IPC and UTS namespaces, with the host's root at `/host`. `bootcmd` runs
/// before every other service starts; `runcmd` once the system services run.
fn host_commands(
    cfg: &UserData,
    services: &mut BTreeMap<String, Service>,
    errors: &mut Vec<ConfigError>,
) {
    fn add(
        services: &mut BTreeMap<String, Service>,
        errors: &mut Vec<ConfigError>,
        name: &str,
        cmds: &[ros_config::host::Command],
        deps: Vec<String>,
    ) {
        if services.contains_key(name) {
            errors.push(ConfigError::new(
                "services",
                ros_config::Pos::default(),
                &format!("services.{name}"),
                format!("`{name}` is the name of the `{name}` commands' service; this definition is ignored"),
            ));
        }
        let script =
            serde_json::to_string(&ros_config::host::script(name, cmds)).unwrap_or_default();
        let deps = serde_json::to_string(&deps).unwrap_or_default();
        let text = format!(
            "[services.{name}]\nimage = \"busybox\"\ncommand = [\"/bin/sh\", \"-c\", {script}]\n\
             oneshot = true\nprivileged = true\nhost_namespaces = [\"net\", \"pid\", \"ipc\", \"uts\"]\n\
             volumes = [\"/:/host\"]\ndepends_on = {deps}\n"
        );
        let r = ros_config::from_toml(name, &text);
        errors.extend(r.errors);
        services.extend(r.data.services);
    }
    if let Some(cmds) = &cfg.bootcmd {
        add(services, errors, "bootcmd", cmds, Vec::new());
        for (name, s) in services.iter_mut() {
            if name != "bootcmd" && s.enabled != Some(false) {
                let mut deps = s.depends_on.clone().unwrap_or_default();
                deps.push(ros_config::service::Located {
                    value: "bootcmd".into(),
                    source: "bootcmd".into(),
                    pos: ros_config::Pos::default(),
                });
                s.depends_on = Some(deps);
            }
        }
    }
    if let Some(cmds) = &cfg.runcmd {
        let deps: Vec<String> = SYSTEM_SERVICES
            .iter()
            .filter(|n| services.get(**n).is_some_and(|s| s.enabled != Some(false)))
            .map(|n| n.to_string())
            .collect();
        add(services, errors, "runcmd", cmds, deps);
    }
}

/// Writes the user-data's SSH keys where the console service mounts them from.
fn authorized_keys(paths: &Paths, keys: Option<&[String]>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = paths.run.join("ssh");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let file = dir.join("authorized_keys");
    let mut text = String::new();
    for k in keys.into_iter().flatten() {
        text.push_str(k);
        text.push('\n');
    }
    std::fs::write(&file, text).map_err(|e| format!("writing {}: {e}", file.display()))?;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())
}

/// Writes the user-data's `users` where the console makes them from: `users` (one
/// `name:uid:shell:group,group` line each) and `keys/<name>`.
fn users(paths: &Paths, users: Option<&[ros_config::host::User]>) -> Result<(), String> {
    let dir = paths.run.join("ssh");
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).map_err(|e| format!("creating {}: {e}", keys.display()))?;
    let mut list = String::new();
    for u in users.into_iter().flatten() {
        list.push_str(&format!(
            "{}:{}:{}:{}\n",
            u.name,
            u.uid,
            u.shell,
            u.groups.join(",")
        ));
        let mut k = u.ssh_authorized_keys.join("\n");
        k.push('\n');
        let f = keys.join(&u.name);
        std::fs::write(&f, k).map_err(|e| format!("writing {}: {e}", f.display()))?;
    }
    let f = dir.join("users");
    std::fs::write(&f, list).map_err(|e| format!("writing {}: {e}", f.display()))
}

/// Everything before the first container, then the supervisor, started. Problems go to
/// `errors` (runtime) and `config_errors` (definitions); the boot goes on without services
/// when containers cannot run at all.
/// The service definitions and the services' shared environment a user-data makes: the shipped
/// definitions, the `console` table, `[services.*]` over them, `bootcmd`/`runcmd`;
/// `environment` and the NTP servers.
fn definitions(
    cfg: &UserData,
    config_errors: &mut Vec<ConfigError>,
) -> (BTreeMap<String, Service>, Vec<String>) {
    let (mut services, shipped_errors) = shipped(Path::new(SHIPPED));
    config_errors.extend(shipped_errors);
    // The `console` table changes the shipped console; `[services.console]` still wins.
    if let Some(c) = services.get_mut("console") {
        c.merge(console_settings(&cfg.console, config_errors));
    }
    for (name, s) in &cfg.services {
        services.entry(name.clone()).or_default().merge(s.clone());
    }
    host_commands(cfg, &mut services, config_errors);
    let ntp = cfg
        .ntp
        .servers
        .clone()
        .unwrap_or_else(|| vec!["pool.ntp.org".into()]);
    // Only the ntp service reads its servers, so only it restarts when they change.
    if let Some(s) = services.get_mut("ntp") {
        s.env
            .entry("ROS_NTP_SERVERS".into())
            .or_insert_with(|| ntp.join(","));
    }
    let env: Vec<String> = cfg
        .environment
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    (services, env)
}

/// The parts of a user-data the services are made from.
pub fn service_inputs_differ(a: &UserData, b: &UserData) -> bool {
    a.services != b.services
        || a.environment != b.environment
        || a.ntp != b.ntp
        || a.console != b.console
        || a.users != b.users
        || a.ssh_authorized_keys != b.ssh_authorized_keys
}

/// Applies a changed user-data to the running services: the SSH keys and users rewritten (the
/// console restarted when its users changed), then every service whose definition changed
/// restarted the new way, new ones started, disabled ones stopped. `bootcmd` and `runcmd` run
/// once per boot and keep their definitions (the API says their change waits for a boot).
/// Returns a line per change, and problems.
pub fn redefine(
    sup: &mut Supervisor,
    before: &UserData,
    after: &UserData,
    now: u64,
) -> Vec<String> {
    let paths = Paths::system();
    let mut notes = Vec::new();
    if before.ssh_authorized_keys != after.ssh_authorized_keys {
        match authorized_keys(&paths, after.ssh_authorized_keys.as_deref()) {
            Ok(()) => notes.push("ssh_authorized_keys: rewritten".into()),
            Err(e) => notes.push(format!("ssh keys: {e}")),
        }
    }
    let mut errors = Vec::new();
    let (services, env) = definitions(after, &mut errors);
    let (changed, problems) = sup.redefine(&services, &env, &["bootcmd", "runcmd"], now);
    notes.extend(changed);
    if before.users != after.users {
        match users(&paths, after.users.as_deref()) {
            Ok(()) => {
                if !notes.iter().any(|n| n.starts_with("console:"))
                    && sup.restart_by_request("console", now).is_ok()
                {
                    notes.push("console: restarted for its new users".into());
                }
            }
            Err(e) => notes.push(format!("users: {e}")),
        }
    }
    notes.extend(errors.iter().chain(&problems).map(ToString::to_string));
    notes
}

pub fn start(
    sys: &dyn Sys,
    loader: Option<&mut Loader>,
    cfg: &UserData,
    extra_mounts: &[&str],
    now: u64,
    errors: &mut Vec<String>,
    config_errors: &mut Vec<ConfigError>,
) -> Option<Supervisor> {
    let mut loader = loader;
    let mut load = |names: &[&str]| {
        if let Some(l) = loader.as_deref_mut() {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            l.load(sys, &names);
        }
    };
    load(CONTAINER_MODULES);
    // The base mounts directly under `/`, and the state disk's (what is under those comes along).
    let tops: Vec<&str> = mounts::MOUNTS
        .iter()
        .map(|m| m.target)
        .filter(|t| t.matches('/').count() == 1)
        .chain(extra_mounts.iter().copied())
        .collect();
    log::debug!(
        "services: modules loaded at {} ms",
        crate::clock::uptime_ms()
    );
    if let Err(e) = switch_root::switch(&tops) {
        errors.push(format!("root: {e}; containers cannot start"));
        return None;
    }
    let paths = Paths::system();
    for d in [
        paths.run.join("containers"),
        paths.run.join("syslog"),
        paths.logs.join("services"),
        paths.state.clone(),
    ] {
        if let Err(e) = std::fs::create_dir_all(&d) {
            errors.push(format!("creating {}: {e}", d.display()));
        }
    }
    if let Err(e) = authorized_keys(&paths, cfg.ssh_authorized_keys.as_deref()) {
        errors.push(format!("ssh keys: {e}"));
    }
    if let Err(e) = users(&paths, cfg.users.as_deref()) {
        errors.push(format!("users: {e}"));
    }
    log::debug!(
        "services: root switched at {} ms",
        crate::clock::uptime_ms()
    );
    let store = match ImageStore::open(Path::new(images::STORE), Path::new(images::MOUNTS)) {
        Ok(s) => s,
        Err(e) => {
            errors.push(format!("images: {e}"));
            return None;
        }
    };
    if store.has_erofs_layers() {
        load(EROFS_MODULES);
    }
    log::debug!("services: images read at {} ms", crate::clock::uptime_ms());
    let (services, env) = definitions(cfg, config_errors);
    let opts = SpawnOptions {
        cgroup_root: "/sys/fs/cgroup".into(),
        run_root: paths.run.join("containers"),
        // The init's own binary is the containers' shim (`main.rs` runs it as such).
        shim: Some("/proc/self/exe".into()),
    };
    log::debug!(
        "services: definitions read at {} ms",
        crate::clock::uptime_ms()
    );
    let mut sup = Supervisor::new(&services, store, paths, &env, opts);
    config_errors.append(&mut sup.errors);
    sup.start(now);
    Some(sup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_shipped_definitions() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../system-services/services");
        let (services, errors) = shipped(&dir);
        assert!(errors.is_empty(), "{errors:?}");
        for name in ["console", "ntp", "syslog"] {
            assert!(services.contains_key(name), "{name}");
        }
        let (checked, blocked) = ros_config::service::check(
            &services,
            &["console", "ntp", "syslog", "busybox"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        );
        assert!(checked.is_empty() && blocked.is_empty(), "{checked:?}");
    }
}
