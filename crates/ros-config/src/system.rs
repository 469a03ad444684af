//! The services a user-data makes: the definitions shipped with ros, the `console` table as a
//! change to the console service, the user-data's `[services.*]` over them key by key,
//! `bootcmd`/`runcmd` as one-shot services, the NTP servers for the ntp service, and the
//! `environment` every service gets. Pure: the boot, every live change, `ros config validate`
//! and `ros-image` all build the services through [`services`].

use std::collections::BTreeMap;

use crate::error::{ConfigError, Pos};
use crate::service::{HostNs, Located, Service, Volume, VolumeSource};
use crate::{UserData, host};

/// What the machine is, where the services depend on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The serial console's device (`/dev/ttyS0`, `/dev/ttyAMA0`), which the console service
    /// takes for its login there.
    pub serial_console: Option<String>,
}

/// The services and the environment they share.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Services {
    pub defs: BTreeMap<String, Service>,
    /// `NAME=value` for every service (each service's own `env` wins).
    pub env: Vec<String>,
}

/// The services that run once per boot and keep their definitions until the next one.
pub const ONCE_PER_BOOT: &[&str] = &["bootcmd", "runcmd"];

/// The shipped system services `runcmd` waits for.
const SYSTEM_SERVICES: &[&str] = &["syslog", "ntp", "console"];

/// The NTP servers when the user-data names none.
pub const DEFAULT_NTP: &str = "pool.ntp.org";

/// The services `cfg` makes over `shipped`; problems (a user service that takes a name ros
/// uses) go to `errors`.
pub fn services(
    cfg: &UserData,
    shipped: &BTreeMap<String, Service>,
    facts: &Facts,
    errors: &mut Vec<ConfigError>,
) -> Services {
    let mut defs = shipped.clone();
    // The `console` table changes the shipped console; `[services.console]` still wins.
    if let Some(c) = defs.get_mut("console") {
        c.merge(console(&cfg.console, facts));
    }
    // The `cluster` table turns the shipped cluster service on.
    if let Some(c) = defs.get_mut("cluster") {
        c.merge(cluster(&cfg.cluster, errors));
    }
    for (name, s) in &cfg.services {
        defs.entry(name.clone()).or_default().merge(s.clone());
    }
    host_commands(cfg, &mut defs, errors);
    // Only the ntp service reads its servers, so only it restarts when they change.
    if let Some(s) = defs.get_mut("ntp") {
        let servers = cfg
            .ntp
            .servers
            .clone()
            .unwrap_or_else(|| vec![DEFAULT_NTP.into()]);
        s.env
            .entry("ROS_NTP_SERVERS".into())
            .or_insert_with(|| servers.join(","));
    }
    let env = cfg
        .environment
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    Services { defs, env }
}

/// The `cluster` table as a change to the cluster service: a server (with its port, its
/// datastore and, unless `agent = false`, an agent for its own node) or an agent joining a
/// server. The token reaches the agent in its environment, off its command line.
fn cluster(c: &crate::schema::Cluster, errors: &mut Vec<ConfigError>) -> Service {
    let mut s = Service::default();
    let Some(role) = &c.role else {
        return s;
    };
    let words = |w: &[&str]| w.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let runs_agent = role.value == "agent" || c.agent != Some(false);
    let mut node_args: Vec<String> = vec![];
    if runs_agent {
        node_args.extend(words(&[
            "--runtime",
            "/usr/bin/ros-runtime",
            "--registries",
            "/run/ros-host/registries.json",
            "--pod-network",
        ]));
        if let Some(n) = &c.node_name {
            node_args.extend(["--node-name".to_string(), n.clone()]);
        }
        if let Some(ip) = &c.node_ip {
            node_args.extend(["--node-ip".to_string(), ip.to_string()]);
        }
        for (k, v) in &c.node_labels {
            node_args.extend(["--node-label".to_string(), format!("{k}={v}")]);
        }
        for t in c.node_taints.iter().flatten() {
            node_args.extend(["--node-taint".to_string(), t.clone()]);
        }
    }
    let health = |port: u16| crate::service::Health {
        check: crate::service::HealthCheck::Tcp(port),
        interval: std::time::Duration::from_secs(10),
        timeout: std::time::Duration::from_secs(3),
        retries: 3,
    };
    let misplaced = |errors: &mut Vec<ConfigError>, keys: &[(&str, bool)], why: &str| {
        for (k, set) in keys {
            if *set {
                errors.push(ConfigError::new(
                    &role.source,
                    role.pos,
                    k,
                    format!("{k} {why}"),
                ));
            }
        }
    };
    match role.value.as_str() {
        "server" => {
            s.enabled = Some(true);
            let port = c.api_port.unwrap_or(6443);
            let mut cmd = words(&[
                "/usr/bin/ros-kube",
                "server",
                "--data-dir",
                "/var/lib/ros-kube",
                "--listen",
                &format!("0.0.0.0:{port}"),
                "--publish",
                "/run/ros/cluster",
            ]);
            if let Some(d) = &c.datastore {
                cmd.extend(["--datastore".to_string(), d.clone()]);
            }
            if let Some(n) = &c.cluster_cidr {
                cmd.extend(["--cluster-cidr".to_string(), n.to_string()]);
            }
            if runs_agent {
                cmd.push("--agent".to_string());
            }
            cmd.extend(node_args);
            s.command = Some(cmd);
            s.health = Some(health(port));
            misplaced(
                errors,
                &[
                    ("cluster.server", c.server.is_some()),
                    ("cluster.token", c.token.is_some()),
                ],
                "is for an agent; a server (cluster.role = \"server\") makes its own token",
            );
        }
        _ => {
            let missing: Vec<&str> = [
                ("cluster.server", c.server.is_none()),
                ("cluster.token", c.token.is_none()),
            ]
            .iter()
            .filter(|(_, m)| *m)
            .map(|(k, _)| *k)
            .collect();
            if !missing.is_empty() {
                errors.push(ConfigError::new(
                    &role.source,
                    role.pos,
                    "cluster.role",
                    format!(
                        "an agent needs {} to join its server",
                        missing.join(" and ")
                    ),
                ));
                return s;
            }
            misplaced(
                errors,
                &[
                    ("cluster.api_port", c.api_port.is_some()),
                    ("cluster.datastore", c.datastore.is_some()),
                    ("cluster.agent", c.agent.is_some()),
                    ("cluster.cluster_cidr", c.cluster_cidr.is_some()),
                ],
                "is for a server (cluster.role = \"server\"); an agent serves no API",
            );
            s.enabled = Some(true);
            let mut cmd = words(&[
                "/usr/bin/ros-kube",
                "agent",
                "--server",
                c.server.as_deref().unwrap_or_default(),
                "--data-dir",
                "/var/lib/ros-kube",
                "--publish",
                "/run/ros/cluster",
            ]);
            cmd.extend(node_args);
            s.command = Some(cmd);
            s.env.insert(
                "ROS_KUBE_TOKEN".to_string(),
                c.token.clone().unwrap_or_default(),
            );
            // The agent's endpoint (logs and exec for the server), bound before it joins.
            s.health = Some(health(10250));
        }
    }
    s
}

/// The `console` table as a change to the console service: its SSH port (the server's and the
/// health check's), whether its writable layer persists, and the serial console it logs in on.
fn console(c: &crate::Console, facts: &Facts) -> Service {
    let mut s = Service::default();
    if let Some(p) = c.ssh_port {
        s.env.insert("ROS_SSH_PORT".into(), p.to_string());
        s.health = Some(crate::service::Health {
            check: crate::service::HealthCheck::Tcp(p),
            interval: std::time::Duration::from_secs(10),
            timeout: std::time::Duration::from_secs(3),
            retries: 3,
        });
    }
    s.persistent = c.persistent;
    let login = if c.autologin == Some(true) {
        "autologin"
    } else if c.root_password_hash.is_some() {
        "password"
    } else {
        "none"
    };
    s.env.insert("ROS_SERIAL_LOGIN".into(), login.into());
    if let Some(tty) = &facts.serial_console {
        s.env.insert("ROS_SERIAL".into(), tty.clone());
        s.devices = Some(vec![crate::service::DeviceSpec {
            host: tty.clone(),
            container: tty.clone(),
            read: true,
            write: true,
            mknod: false,
        }]);
    }
    s
}

/// `bootcmd` and `runcmd` as one-shot services: privileged busybox containers that share the
/// host's network, PID, IPC and UTS namespaces, with the host's root at `/host`. `bootcmd` runs
/// before every other service starts; `runcmd` once the system services run.
fn host_commands(
    cfg: &UserData,
    defs: &mut BTreeMap<String, Service>,
    errors: &mut Vec<ConfigError>,
) {
    let mut add = |defs: &mut BTreeMap<String, Service>,
                   name: &str,
                   cmds: &[host::Command],
                   deps: Vec<String>| {
        if let Some(theirs) = defs.get(name) {
            let (source, pos) = theirs
                .image
                .as_ref()
                .map_or(("services".to_string(), Pos::default()), |i| {
                    (i.source.clone(), i.pos)
                });
            errors.push(ConfigError::new(
                &source,
                pos,
                &format!("services.{name}"),
                format!(
                    "`{name}` is the name of the `{name}` commands' service; this definition is ignored"
                ),
            ));
        }
        let located = |v: &str| Located::builtin(v.to_string(), name);
        defs.insert(
            name.to_string(),
            Service {
                image: Some(located("busybox")),
                command: Some(vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    host::script(name, cmds),
                ]),
                oneshot: Some(true),
                privileged: Some(true),
                host_namespaces: Some(vec![HostNs::Net, HostNs::Pid, HostNs::Ipc, HostNs::Uts]),
                volumes: Some(vec![Volume {
                    source: VolumeSource::Host("/".into()),
                    target: "/host".into(),
                    read_only: false,
                }]),
                depends_on: Some(deps.iter().map(|d| located(d)).collect()),
                ..Service::default()
            },
        );
    };
    if let Some(cmds) = &cfg.bootcmd {
        add(defs, "bootcmd", cmds, Vec::new());
        for (name, s) in defs.iter_mut() {
            if name != "bootcmd" && s.is_enabled() {
                s.depends_on
                    .get_or_insert_with(Vec::new)
                    .push(Located::builtin("bootcmd".into(), "bootcmd"));
            }
        }
    }
    if let Some(cmds) = &cfg.runcmd {
        let deps: Vec<String> = SYSTEM_SERVICES
            .iter()
            .filter(|n| defs.get(**n).is_some_and(Service::is_enabled))
            .map(|n| n.to_string())
            .collect();
        add(defs, "runcmd", cmds, deps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> BTreeMap<String, Service> {
        crate::shipped::get().services.clone()
    }

    #[test]
    fn the_cluster_table_turns_the_server_on_and_checks_an_agent() {
        let facts = Facts::default();
        let run = |toml: &str| {
            let cfg = crate::from_toml("t", toml);
            let mut errors = cfg.errors.clone();
            let s = services(&cfg.data, &shipped(), &facts, &mut errors);
            (s, errors)
        };
        let (s, errors) = run("");
        assert!(errors.is_empty(), "{errors:?}");
        assert!(
            !s.defs["cluster"].is_enabled(),
            "off without a [cluster] table"
        );
        let (s, errors) = run("[cluster]\nrole = \"server\"\napi_port = 7443\n");
        assert!(errors.is_empty(), "{errors:?}");
        assert!(s.defs["cluster"].is_enabled());
        assert!(
            s.defs["cluster"]
                .command
                .as_ref()
                .is_some_and(|c| c.contains(&"0.0.0.0:7443".to_string()))
        );
        let (_, errors) = run("[cluster]\nrole = \"agent\"\nserver = \"https://10.0.0.1:6443\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            (errors[0].key.as_str(), errors[0].line),
            ("cluster.role", 2)
        );
        assert!(
            errors[0].message.contains("cluster.token"),
            "{}",
            errors[0].message
        );
        let (s, errors) =
            run("[cluster]\nrole = \"server\"\ndatastore = \"etcd://10.0.0.9:2379\"\n");
        assert!(errors.is_empty(), "{errors:?}");
        let cmd = s.defs["cluster"].command.clone().unwrap_or_default();
        assert!(
            cmd.windows(2)
                .any(|w| w[0] == "--datastore" && w[1] == "etcd://10.0.0.9:2379"),
            "{cmd:?}"
        );
        assert!(cmd.contains(&"--agent".to_string()), "{cmd:?}");
        // An agent: joins with the token in its environment, node settings as flags.
        let token = format!("K10{}::server:pw", "a".repeat(64));
        let (s, errors) = run(&format!(
            "[cluster]\nrole = \"agent\"\nserver = \"https://10.0.0.1:6443\"\ntoken = \"{token}\"\nnode_name = \"node-b\"\nnode_ip = \"192.168.76.2\"\nnode_labels = {{ \"example.com/rack\" = \"r1\" }}\nnode_taints = [\"dedicated=gpu:NoSchedule\"]\n"
        ));
        assert!(errors.is_empty(), "{errors:?}");
        let svc = &s.defs["cluster"];
        assert!(svc.is_enabled());
        let cmd = svc.command.clone().unwrap_or_default();
        for pair in [
            ["agent", "--server"],
            ["--server", "https://10.0.0.1:6443"],
            ["--node-name", "node-b"],
            ["--node-ip", "192.168.76.2"],
            ["--node-label", "example.com/rack=r1"],
            ["--node-taint", "dedicated=gpu:NoSchedule"],
        ] {
            assert!(cmd.windows(2).any(|w| w == pair), "{pair:?} in {cmd:?}");
        }
        assert!(
            !cmd.iter().any(|w| w.contains("K10")),
            "no token in {cmd:?}"
        );
        assert_eq!(svc.env.get("ROS_KUBE_TOKEN"), Some(&token));
        assert_eq!(
            svc.health.as_ref().map(|h| h.check.clone()),
            Some(crate::service::HealthCheck::Tcp(10250))
        );
        // Server keys on an agent, and bad node settings, are named.
        let (_, errors) = run(&format!(
            "[cluster]\nrole = \"agent\"\nserver = \"https://h\"\ntoken = \"{token}\"\napi_port = 7000\nnode_name = \"Node_B\"\nnode_taints = [\"x:Never\"]\nnode_labels = {{ \"-x\" = \"1\" }}\n"
        ));
        let keys: Vec<(&str, u32)> = errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert_eq!(
            keys,
            [
                ("cluster.node_name", 6),
                ("cluster.node_taints[0]", 7),
                ("cluster.node_labels.-x", 8),
                ("cluster.api_port", 2),
            ],
            "{errors:?}"
        );
        // A server without its own agent.
        let (s, errors) = run("[cluster]\nrole = \"server\"\ncluster_cidr = \"10.50.0.0/16\"\n");
        assert!(errors.is_empty(), "{errors:?}");
        let cmd = s.defs["cluster"].command.clone().unwrap_or_default();
        assert!(
            cmd.windows(2)
                .any(|w| w[0] == "--cluster-cidr" && w[1] == "10.50.0.0/16"),
            "{cmd:?}"
        );
        for (bad, why) in [
            ("10.50.0.1/16", "did you mean 10.50.0.0/16?"),
            ("10.50.0.0/30", "a /28 at most"),
            ("fd00::/64", "an IPv4 network"),
        ] {
            let (_, errors) = run(&format!(
                "[cluster]\nrole = \"server\"\ncluster_cidr = \"{bad}\"\n"
            ));
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert_eq!(
                (errors[0].key.as_str(), errors[0].line),
                ("cluster.cluster_cidr", 3)
            );
            assert!(errors[0].message.contains(why), "{}", errors[0].message);
        }
        let (s, errors) = run("[cluster]\nrole = \"server\"\nagent = false\n");
        assert!(errors.is_empty(), "{errors:?}");
        let cmd = s.defs["cluster"].command.clone().unwrap_or_default();
        assert!(
            !cmd.contains(&"--agent".to_string()) && !cmd.contains(&"--runtime".to_string()),
            "{cmd:?}"
        );
        let (_, errors) = run(
            "[cluster]\nrole = \"leader\"\ntoken = \"K10abc\"\nserver = \"http://x\"\ndatastore = \"mysql://h\"\n",
        );
        let keys: Vec<(&str, u32)> = errors.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert_eq!(
            keys,
            [
                ("cluster.role", 2),
                ("cluster.token", 3),
                ("cluster.server", 4),
                ("cluster.datastore", 5)
            ],
            "{errors:?}"
        );
        assert!(
            errors[3]
                .message
                .contains("expected `embedded` or `etcd://HOST:PORT`")
        );
    }

    #[test]
    fn the_console_table_ntp_servers_and_environment_reach_their_services() {
        let cfg = crate::from_toml(
            "t",
            "[console]\nssh_port = 2222\nautologin = true\n[ntp]\nservers = [\"10.0.2.2\"]\n[environment]\nTZ = \"UTC\"\n",
        );
        assert!(cfg.errors.is_empty(), "{:?}", cfg.errors);
        let facts = Facts {
            serial_console: Some("/dev/ttyS0".into()),
        };
        let mut errors = Vec::new();
        let s = services(&cfg.data, &shipped(), &facts, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let console = &s.defs["console"];
        assert_eq!(console.env["ROS_SSH_PORT"], "2222");
        assert_eq!(console.env["ROS_SERIAL_LOGIN"], "autologin");
        assert_eq!(
            console.devices.as_ref().map(|d| d[0].host.as_str()),
            Some("/dev/ttyS0")
        );
        assert_eq!(
            console.health.as_ref().map(|h| h.check.clone()),
            Some(crate::service::HealthCheck::Tcp(2222))
        );
        assert_eq!(s.defs["ntp"].env["ROS_NTP_SERVERS"], "10.0.2.2");
        assert_eq!(s.env, ["TZ=UTC"]);
    }

    #[test]
    fn commands_become_one_shot_services_built_as_values() {
        // A DEL character broke the TOML text these were once written as.
        let cfg = crate::from_toml(
            "t",
            "bootcmd = [\"echo \\u007f\"]\nruncmd = [[\"echo\", \"it's\"]]\n[services.bootcmd]\nimage = \"busybox\"\n",
        );
        assert!(cfg.errors.is_empty(), "{:?}", cfg.errors);
        let mut errors = Vec::new();
        let s = services(&cfg.data, &shipped(), &Facts::default(), &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "services.bootcmd");
        assert_eq!(errors[0].line, 4);
        let boot = &s.defs["bootcmd"];
        assert!(boot.command.as_ref().expect("command")[2].contains('\u{7f}'));
        assert_eq!(boot.privileged, Some(true));
        assert!(s.defs["console"].depends().any(|d| d == "bootcmd"));
        let run = &s.defs["runcmd"];
        let deps: Vec<&str> = run.depends().collect();
        assert_eq!(deps, ["syslog", "ntp", "console"]);
        let (errors, blocked) = crate::check::services(&s.defs, &crate::shipped::get().images);
        assert!(errors.is_empty() && blocked.is_empty(), "{errors:?}");
    }
}
