//! From a pod's container and its image to the OCI bundle's `config.json` the runtime runs,
//! and from what the containers did to the pod's status. Pure.

use serde_json::{Map, Value, json};

use crate::quantity::{parse_milli, parse_units};

/// What the agent knows of an image: its config's entrypoint, command, env, working folder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

impl ImageConfig {
    /// From the OCI image config's `config` object.
    pub fn from_oci(cfg: &Value) -> ImageConfig {
        let list = |k: &str| {
            cfg.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        ImageConfig {
            entrypoint: list("Entrypoint"),
            cmd: list("Cmd"),
            env: list("Env"),
            working_dir: cfg
                .get("WorkingDir")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            user: cfg
                .get("User")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        }
    }
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    })
}

/// The program: Kubernetes' command replaces the entrypoint, its args the image's cmd.
pub fn args(c: &Value, img: &ImageConfig) -> Result<Vec<String>, String> {
    let command = strings(c.get("command"));
    let cargs = strings(c.get("args"));
    let out: Vec<String> = match (command, cargs) {
        (Some(cmd), Some(a)) => cmd.into_iter().chain(a).collect(),
        (Some(cmd), None) => cmd,
        (None, Some(a)) => img.entrypoint.iter().cloned().chain(a).collect(),
        (None, None) => img
            .entrypoint
            .iter()
            .chain(img.cmd.iter())
            .cloned()
            .collect(),
    };
    if out.is_empty() {
        return Err("the image has no entrypoint or command and the container gives none".into());
    }
    Ok(out)
}

/// `$(VAR)` references expanded from the variables defined before, as the kubelet does.
fn expand(s: &str, vars: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("$(") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find(')') {
            Some(j) => {
                let name = &after[..j];
                match vars.iter().rev().find(|(k, _)| k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => {
                        out.push_str("$(");
                        out.push_str(name);
                        out.push(')');
                    }
                }
                rest = &after[j + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The environment: the image's, then the container's `env` (values given, or from the pod's
/// fields; configMap and secret references are resolved by the caller into `resolved`).
pub fn env(
    c: &Value,
    img: &ImageConfig,
    pod: &Value,
    resolved: &dyn Fn(&Value) -> Result<Option<String>, String>,
) -> Result<Vec<String>, String> {
    let mut vars: Vec<(String, String)> = img
        .env
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let put = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        vars.retain(|(x, _)| *x != k);
        vars.push((k, v));
    };
    if !vars.iter().any(|(k, _)| k == "PATH") {
        put(
            &mut vars,
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    put(
        &mut vars,
        "HOSTNAME".into(),
        pod.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .into(),
    );
    for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
        let name = e
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            continue;
        }
        let value = if let Some(v) = e.get("value").and_then(Value::as_str) {
            Some(expand(v, &vars))
        } else if let Some(src) = e.get("valueFrom") {
            if let Some(path) = src.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
                Some(field(pod, path)?)
            } else {
                resolved(src)?
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            put(&mut vars, name, v);
        }
    }
    Ok(vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// A pod field as `fieldRef` names it.
pub fn field(pod: &Value, path: &str) -> Result<String, String> {
    let s = |p: &str| {
        pod.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    Ok(match path {
        "metadata.name" => s("/metadata/name"),
        "metadata.namespace" => s("/metadata/namespace"),
        "metadata.uid" => s("/metadata/uid"),
        "spec.nodeName" => s("/spec/nodeName"),
        "spec.serviceAccountName" => s("/spec/serviceAccountName"),
        "status.hostIP" => s("/status/hostIP"),
        "status.podIP" => s("/status/podIP"),
        p => {
            if let Some(k) = p
                .strip_prefix("metadata.labels['")
                .and_then(|r| r.strip_suffix("']"))
            {
                pod.pointer("/metadata/labels")
                    .and_then(|l| l.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            } else if let Some(k) = p
                .strip_prefix("metadata.annotations['")
                .and_then(|r| r.strip_suffix("']"))
            {
                pod.pointer("/metadata/annotations")
                    .and_then(|l| l.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            } else {
                return Err(format!("fieldRef {p} is not supported"));
            }
        }
    })
}

/// The cgroup limits: memory.max from limits.memory, cpu.max from limits.cpu (100 ms period).
pub fn resources(c: &Value) -> Result<Value, String> {
    let mut r = Map::new();
    let lim = |k: &str| {
        c.pointer(&format!("/resources/limits/{k}"))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            })
    };
    if let Some(m) = lim("memory") {
        let bytes = parse_units(&m).map_err(|e| format!("resources.limits.memory: {e}"))?;
        r.insert(
            "memory".into(),
            json!({"limit": bytes as i64, "swap": bytes as i64}),
        );
    }
    if let Some(cpu) = lim("cpu") {
        let milli = parse_milli(&cpu).map_err(|e| format!("resources.limits.cpu: {e}"))?;
        r.insert(
            "cpu".into(),
            json!({"quota": (milli * 100) as i64, "period": 100_000}),
        );
    }
    r.insert("devices".into(), json!([]));
    Ok(Value::Object(r))
}

/// Paths of one container on this node.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The pod's network namespace (a bind-mounted file).
    pub netns: String,
    /// The container's cgroup, relative to the cgroup2 root.
    pub cgroup: String,
    /// `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf` made for the pod.
    pub etc: String,
    /// Volumes: (host folder, container path, read-only).
    pub mounts: Vec<(String, String, bool)>,
}

/// The bundle's config.json: the runtime's default spec (`ros-runtime spec`) with the
/// container's program, environment, limits, the pod's network namespace and files.
pub fn bundle(
    template: &Value,
    pod: &Value,
    c: &Value,
    img: &ImageConfig,
    env: Vec<String>,
    paths: &Paths,
) -> Result<Value, String> {
    let mut s = template.clone();
    s["process"]["args"] = json!(args(c, img)?);
    s["process"]["env"] = json!(env);
    s["process"]["terminal"] = json!(false);
    let cwd = c
        .get("workingDir")
        .and_then(Value::as_str)
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| {
            if img.working_dir.is_empty() {
                "/".into()
            } else {
                img.working_dir.clone()
            }
        });
    s["process"]["cwd"] = json!(cwd);
    let uid = c
        .pointer("/securityContext/runAsUser")
        .or_else(|| pod.pointer("/spec/securityContext/runAsUser"))
        .and_then(Value::as_u64)
        .or_else(|| img.user.split(':').next().and_then(|u| u.parse().ok()))
        .unwrap_or(0);
    let gid = c
        .pointer("/securityContext/runAsGroup")
        .or_else(|| pod.pointer("/spec/securityContext/runAsGroup"))
        .and_then(Value::as_u64)
        .or_else(|| img.user.split(':').nth(1).and_then(|g| g.parse().ok()))
        .unwrap_or(0);
    s["process"]["user"] = json!({"uid": uid, "gid": gid});
    s["root"] = json!({"path": "rootfs", "readonly": c.pointer("/securityContext/readOnlyRootFilesystem") == Some(&json!(true))});
    s["hostname"] = json!(
        pod.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    );
    if c.pointer("/securityContext/privileged") == Some(&json!(true)) {
        return Err("privileged containers are not supported by this agent yet".into());
    }
    security(&mut s, pod, c, uid)?;
    if let Some(groups) = supplemental_groups(pod)? {
        s["process"]["user"]["additionalGids"] = json!(groups);
    }
    let mut nss = vec![];
    for t in ["pid", "ipc", "uts", "mount", "cgroup"] {
        nss.push(json!({"type": t}));
    }
    nss.push(json!({"type": "network", "path": paths.netns}));
    s["linux"]["namespaces"] = json!(nss);
    s["linux"]["cgroupsPath"] = json!(paths.cgroup);
    s["linux"]["resources"] = resources(c)?;
    let mut mounts: Vec<Value> = s["mounts"].as_array().cloned().unwrap_or_default();
    for f in ["hosts", "hostname", "resolv.conf"] {
        mounts.push(json!({"destination": format!("/etc/{f}"), "type": "bind",
            "source": format!("{}/{f}", paths.etc), "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}));
    }
    for (src, dst, ro) in &paths.mounts {
        let mut opts = vec!["rbind", "nosuid", "nodev"];
        if *ro {
            opts.push("ro");
        }
        mounts.push(json!({"destination": dst, "type": "bind", "source": src, "options": opts}));
    }
    s["mounts"] = json!(mounts);
    let mut ann = s
        .get("annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    // The minimal init as PID 1: signals reach programs that handle none, orphans are reaped.
    ann.insert(ros_init_annotation().into(), json!("true"));
    s["annotations"] = Value::Object(ann);
    Ok(s)
}

/// The Linux capabilities by name, as Kubernetes writes them (without `CAP_`).
const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability of a securityContext as the OCI spec names it (`CAP_NET_ADMIN`).
fn capability(name: &str) -> Result<String, String> {
    let bare = name.trim_start_matches("CAP_").to_ascii_uppercase();
    if CAPABILITIES.contains(&bare.as_str()) {
        Ok(format!("CAP_{bare}"))
    } else {
        Err(format!(
            "securityContext.capabilities: no capability {name:?}"
        ))
    }
}

/// The container's securityContext (over the pod's where both may say) applied to the spec:
/// capabilities added and dropped (from the runtime's default set, runc's three), privilege
/// escalation, runAsNonRoot, the seccomp profile. A setting this agent cannot apply is an
/// error, never dropped.
fn security(s: &mut Value, pod: &Value, c: &Value, uid: u64) -> Result<(), String> {
    let own = |k: &str| {
        c.pointer(&format!("/securityContext/{k}"))
            .filter(|v| !v.is_null())
    };
    let either = |k: &str| {
        own(k).or_else(|| {
            pod.pointer(&format!("/spec/securityContext/{k}"))
                .filter(|v| !v.is_null())
        })
    };
    if let Some(caps) = own("capabilities") {
        let list = |k: &str| -> Vec<String> {
            caps.get(k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect()
        };
        let (add, drop) = (list("add"), list("drop"));
        // A dropped capability leaves every set; an added one joins the three a process holds
        // it by (the runtime's ambient and inheritable sets stay within them).
        for set in [
            "bounding",
            "effective",
            "permitted",
            "inheritable",
            "ambient",
        ] {
            let mut have: Vec<String> = s["process"]["capabilities"][set]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            if drop.iter().any(|d| d.eq_ignore_ascii_case("ALL")) {
                have.clear();
            } else {
                for d in &drop {
                    let d = capability(d)?;
                    have.retain(|h| *h != d);
                }
            }
            for a in add
                .iter()
                .filter(|_| !matches!(set, "inheritable" | "ambient"))
            {
                if a.eq_ignore_ascii_case("ALL") {
                    have = CAPABILITIES.iter().map(|c| format!("CAP_{c}")).collect();
                    continue;
                }
                let a = capability(a)?;
                if !have.contains(&a) {
                    have.push(a);
                }
            }
            s["process"]["capabilities"][set] = json!(have);
        }
    }
    match own("allowPrivilegeEscalation").map(Value::as_bool) {
        None => {}
        Some(Some(allow)) => s["process"]["noNewPrivileges"] = json!(!allow),
        Some(None) => return Err("securityContext.allowPrivilegeEscalation: a boolean".into()),
    }
    if either("runAsNonRoot") == Some(&json!(true)) && uid == 0 {
        return Err(
            "runAsNonRoot is set and the container would run as root (uid 0): give it runAsUser, or an image whose user is a non-zero number"
                .into(),
        );
    }
    match either("seccompProfile")
        .and_then(|p| p.get("type"))
        .and_then(Value::as_str)
    {
        None | Some("Unconfined") => {}
        Some("RuntimeDefault") => {
            let mut ann = s
                .get("annotations")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            ann.insert(seccomp_default_annotation().into(), json!("true"));
            s["annotations"] = Value::Object(ann);
        }
        Some(other) => {
            return Err(format!(
                "securityContext.seccompProfile: type {other} is not supported by this agent (RuntimeDefault and Unconfined are)"
            ));
        }
    }
    for k in [
        "seLinuxOptions",
        "appArmorProfile",
        "procMount",
        "windowsOptions",
    ] {
        if let Some(v) = own(k)
            && !(k == "procMount" && v == "Default")
        {
            return Err(format!(
                "securityContext.{k} is not supported by this agent"
            ));
        }
    }
    for k in [
        "sysctls",
        "seLinuxOptions",
        "appArmorProfile",
        "fsGroupChangePolicy",
    ] {
        if pod
            .pointer(&format!("/spec/securityContext/{k}"))
            .is_some_and(|v| !v.is_null() && v != &json!([]))
        {
            return Err(format!(
                "the pod's securityContext.{k} is not supported by this agent"
            ));
        }
    }
    Ok(())
}

/// The pod's supplementalGroups and fsGroup, as the process's extra groups.
fn supplemental_groups(pod: &Value) -> Result<Option<Vec<u64>>, String> {
    let mut out = vec![];
    for v in pod
        .pointer("/spec/securityContext/supplementalGroups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push(
            v.as_u64()
                .ok_or("securityContext.supplementalGroups: numbers")?,
        );
    }
    if let Some(g) = pod
        .pointer("/spec/securityContext/fsGroup")
        .filter(|v| !v.is_null())
    {
        out.push(g.as_u64().ok_or("securityContext.fsGroup: a number")?);
    }
    Ok((!out.is_empty()).then_some(out))
}

fn seccomp_default_annotation() -> &'static str {
    "org.ros.seccomp.default"
}

fn ros_init_annotation() -> &'static str {
    "org.ros.init"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_env_and_limits() -> Result<(), String> {
        let img = ImageConfig {
            entrypoint: vec!["/bin/app".into()],
            cmd: vec!["-v".into()],
            env: vec!["A=1".into(), "PATH=/bin".into()],
            ..Default::default()
        };
        assert_eq!(args(&json!({}), &img)?, ["/bin/app", "-v"]);
        assert_eq!(args(&json!({"args": ["-q"]}), &img)?, ["/bin/app", "-q"]);
        assert_eq!(
            args(&json!({"command": ["sh"], "args": ["-c", "x"]}), &img)?,
            ["sh", "-c", "x"]
        );
        let pod = json!({"metadata": {"name": "p", "namespace": "d", "labels": {"app": "w"}}, "spec": {"nodeName": "n1"}});
        let c = json!({"env": [{"name": "B", "value": "$(A)-2"}, {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                               {"name": "L", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                               {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]});
        let e = env(&c, &img, &pod, &|_| Ok(Some("from-cm".into())))?;
        assert_eq!(
            e,
            [
                "A=1",
                "PATH=/bin",
                "HOSTNAME=p",
                "B=1-2",
                "N=n1",
                "L=w",
                "C=from-cm"
            ]
        );
        let r = resources(&json!({"resources": {"limits": {"memory": "64Mi", "cpu": "250m"}}}))?;
        assert_eq!(r["memory"]["limit"], 64 << 20);
        assert_eq!(r["cpu"], json!({"quota": 25000, "period": 100000}));
        Ok(())
    }

    #[test]
    fn security_contexts_are_applied_or_refused() {
        let template = json!({"process": {"noNewPrivileges": true, "capabilities": {
            "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
            "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]}}});
        let pod = json!({"spec": {"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}}});
        let c = json!({"securityContext": {"allowPrivilegeEscalation": true,
            "capabilities": {"drop": ["KILL"], "add": ["NET_ADMIN", "CAP_SYS_TIME"]}}});
        let mut s = template.clone();
        security(&mut s, &pod, &c, 1000).expect("applied");
        assert_eq!(
            s["process"]["capabilities"]["effective"],
            json!([
                "CAP_AUDIT_WRITE",
                "CAP_NET_BIND_SERVICE",
                "CAP_NET_ADMIN",
                "CAP_SYS_TIME"
            ])
        );
        assert_eq!(s["process"]["noNewPrivileges"], false);
        assert_eq!(s["annotations"]["org.ros.seccomp.default"], "true");
        let mut s = template.clone();
        let all = json!({"securityContext": {"capabilities": {"drop": ["ALL"]}}});
        security(&mut s, &json!({}), &all, 0).expect("applied");
        assert_eq!(s["process"]["capabilities"]["bounding"], json!([]));
        for (pod, c, uid, why) in [
            (pod.clone(), json!({}), 0, "runAsNonRoot"),
            (
                json!({}),
                json!({"securityContext": {"capabilities": {"add": ["FLY"]}}}),
                0,
                "no capability",
            ),
            (
                json!({}),
                json!({"securityContext": {"seccompProfile": {"type": "Localhost"}}}),
                0,
                "Localhost is not supported",
            ),
            (
                json!({}),
                json!({"securityContext": {"seLinuxOptions": {"level": "s0"}}}),
                0,
                "seLinuxOptions",
            ),
            (
                json!({"spec": {"securityContext": {"sysctls": [{"name": "net.x", "value": "1"}]}}}),
                json!({}),
                0,
                "sysctls",
            ),
        ] {
            let e = security(&mut template.clone(), &pod, &c, uid).expect_err(why);
            assert!(e.contains(why), "{e}");
        }
        assert_eq!(
            supplemental_groups(
                &json!({"spec": {"securityContext": {"supplementalGroups": [5], "fsGroup": 2000}}})
            ),
            Ok(Some(vec![5, 2000]))
        );
    }
}
