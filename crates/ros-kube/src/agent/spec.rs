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
}
