//! `kubectl get`'s columns: the server answers `Accept: ...;as=Table;...` with a `Table` whose
//! columns are the ones a real cluster prints for each kind (priority 1 only with `-o wide`).

use serde_json::{Value, json};

use crate::resources::Resource;

/// Seconds since the RFC 3339 time, or None.
fn since(ts: Option<&str>, now: i64) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(ts?).ok()?;
    Some((now - t.timestamp()).max(0))
}

/// A duration as kubectl's `HumanDuration` prints it: 45s, 5m10s, 3h20m, 4d5h, 400d, 2y30d.
pub fn human(secs: i64) -> String {
    let s = secs;
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let r = s % 60;
        return if r == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{r}s")
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        let r = (s % 3600) / 60;
        return if r == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{r}m")
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        let r = h % 24;
        return if r == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{r}h", h / 24)
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    format!("{}y{}d", h / 24 / 365, (h / 24) % 365)
}

fn age(o: &Value, now: i64) -> Value {
    match since(
        o.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str),
        now,
    ) {
        Some(s) => json!(human(s)),
        None => json!("<unknown>"),
    }
}

fn s<'a>(o: &'a Value, p: &str) -> &'a str {
    o.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn n(o: &Value, p: &str) -> i64 {
    o.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

fn count(o: &Value, p: &str) -> usize {
    match o.pointer(p) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

/// A label map as a selector's text: `a=b,c=d` (empty for none).
pub fn labels_text(m: Option<&Value>) -> String {
    m.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn or_none(v: String) -> Value {
    json!(if v.is_empty() { "<none>".into() } else { v })
}

/// The containers' names and images, and the selector, as deployments and replicasets show.
fn workload_wide(o: &Value) -> [Value; 3] {
    let cs = o
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = cs
        .iter()
        .map(|c| c.get("name").and_then(Value::as_str).unwrap_or(""))
        .collect();
    let images: Vec<&str> = cs
        .iter()
        .map(|c| c.get("image").and_then(Value::as_str).unwrap_or(""))
        .collect();
    [
        json!(names.join(",")),
        json!(images.join(",")),
        or_none(labels_text(o.pointer("/spec/selector/matchLabels"))),
    ]
}

/// The pod's STATUS column, as kubectl's printer works it out.
pub fn pod_status(o: &Value) -> String {
    let mut reason = s(o, "/status/phase").to_string();
    if !s(o, "/status/reason").is_empty() {
        reason = s(o, "/status/reason").to_string();
    }
    let statuses = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut initializing = false;
    for (i, c) in statuses("/status/initContainerStatuses").iter().enumerate() {
        let term = c.pointer("/state/terminated");
        if term.is_some_and(|t| n(t, "/exitCode") == 0) {
            continue;
        }
        initializing = true;
        reason = if let Some(t) = term {
            match t.get("reason").and_then(Value::as_str) {
                Some(r) => format!("Init:{r}"),
                None => format!("Init:ExitCode:{}", n(t, "/exitCode")),
            }
        } else if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str)
            && r != "PodInitializing"
        {
            format!("Init:{r}")
        } else {
            let total = count(o, "/spec/initContainers");
            format!("Init:{i}/{total}")
        };
        break;
    }
    if !initializing {
        let mut has_running = false;
        for c in statuses("/status/containerStatuses").iter().rev() {
            if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
                reason = r.to_string();
            } else if let Some(t) = c.pointer("/state/terminated") {
                reason = match t.get("reason").and_then(Value::as_str) {
                    Some(r) => r.to_string(),
                    None if n(t, "/signal") != 0 => format!("Signal:{}", n(t, "/signal")),
                    None => format!("ExitCode:{}", n(t, "/exitCode")),
                };
            } else if c.pointer("/state/running").is_some() && c.get("ready") == Some(&json!(true))
            {
                has_running = true;
            }
        }
        if reason == "Completed" && has_running {
            reason = "Running".into();
        }
    }
    if o.pointer("/metadata/deletionTimestamp").is_some() {
        reason = "Terminating".into();
    }
    if reason.is_empty() {
        "Pending".into()
    } else {
        reason
    }
}

fn pod_row(o: &Value) -> (Vec<Value>, Vec<Value>) {
    let cs = o
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = count(o, "/spec/containers");
    let ready = cs
        .iter()
        .filter(|c| c.get("ready") == Some(&json!(true)))
        .count();
    let restarts: i64 = cs
        .iter()
        .map(|c| c.get("restartCount").and_then(Value::as_i64).unwrap_or(0))
        .sum();
    let ip = s(o, "/status/podIP");
    let node = s(o, "/spec/nodeName");
    (
        vec![
            json!(format!("{ready}/{total}")),
            json!(pod_status(o)),
            json!(restarts),
        ],
        vec![
            or_none(ip.into()),
            or_none(node.into()),
            json!("<none>"),
            json!("<none>"),
        ],
    )
}

fn node_row(o: &Value) -> (Vec<Value>, Vec<Value>) {
    let ready = o
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        })
        .map(|c| s(c, "/status").to_string());
    let mut status = match ready.as_deref() {
        Some("True") => "Ready".to_string(),
        _ => "NotReady".to_string(),
    };
    if o.pointer("/spec/unschedulable") == Some(&json!(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let roles: Vec<String> = o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let addr = |t: &str| {
        o.pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .find(|x| x.get("type").and_then(Value::as_str) == Some(t))
            })
            .map(|x| s(x, "/address").to_string())
            .unwrap_or_default()
    };
    (
        vec![json!(status), or_none(roles.join(","))],
        vec![
            json!(s(o, "/status/nodeInfo/kubeletVersion")),
            or_none(addr("InternalIP")),
            or_none(addr("ExternalIP")),
            json!(s(o, "/status/nodeInfo/osImage")),
            json!(s(o, "/status/nodeInfo/kernelVersion")),
            json!(s(o, "/status/nodeInfo/containerRuntimeVersion")),
        ],
    )
}

type Col = (&'static str, &'static str, u8);

/// Columns after NAME, before AGE (those come first and last), then those after AGE (the wide
/// ones, and a node's VERSION).
fn columns(r: &Resource) -> (Vec<Col>, Vec<Col>, bool) {
    let c = |name, ty| (name, ty, 0u8);
    let w = |name, ty| (name, ty, 1u8);
    match r.plural {
        "namespaces" => (vec![c("Status", "string")], vec![], true),
        "nodes" => (
            vec![c("Status", "string"), c("Roles", "string")],
            vec![
                c("Version", "string"),
                w("Internal-IP", "string"),
                w("External-IP", "string"),
                w("OS-Image", "string"),
                w("Kernel-Version", "string"),
                w("Container-Runtime", "string"),
            ],
            true,
        ),
        "pods" => (
            vec![
                c("Ready", "string"),
                c("Status", "string"),
                c("Restarts", "string"),
            ],
            vec![
                w("IP", "string"),
                w("Node", "string"),
                w("Nominated Node", "string"),
                w("Readiness Gates", "string"),
            ],
            true,
        ),
        "deployments" => (
            vec![
                c("Ready", "string"),
                c("Up-to-date", "string"),
                c("Available", "string"),
            ],
            vec![
                w("Containers", "string"),
                w("Images", "string"),
                w("Selector", "string"),
            ],
            true,
        ),
        "replicasets" => (
            vec![
                c("Desired", "integer"),
                c("Current", "integer"),
                c("Ready", "integer"),
            ],
            vec![
                w("Containers", "string"),
                w("Images", "string"),
                w("Selector", "string"),
            ],
            true,
        ),
        "services" => (
            vec![
                c("Type", "string"),
                c("Cluster-IP", "string"),
                c("External-IP", "string"),
                c("Port(s)", "string"),
            ],
            vec![w("Selector", "string")],
            true,
        ),
        "endpoints" => (vec![c("Endpoints", "string")], vec![], true),
        "configmaps" => (vec![c("Data", "integer")], vec![], true),
        "secrets" => (
            vec![c("Type", "string"), c("Data", "integer")],
            vec![],
            true,
        ),
        "serviceaccounts" => (vec![c("Secrets", "integer")], vec![], true),
        "leases" => (vec![c("Holder", "string")], vec![], true),
        "events" => (vec![], vec![], false),
        _ => (vec![], vec![], true),
    }
}

/// The cells after NAME, before AGE, then the wide ones.
fn cells(r: &Resource, o: &Value) -> (Vec<Value>, Vec<Value>) {
    match r.plural {
        "namespaces" => (vec![json!(s(o, "/status/phase"))], vec![]),
        "nodes" => node_row(o),
        "pods" => pod_row(o),
        "deployments" => (
            vec![
                json!(format!(
                    "{}/{}",
                    n(o, "/status/readyReplicas"),
                    n(o, "/spec/replicas")
                )),
                json!(n(o, "/status/updatedReplicas")),
                json!(n(o, "/status/availableReplicas")),
            ],
            workload_wide(o).to_vec(),
        ),
        "replicasets" => (
            vec![
                json!(n(o, "/spec/replicas")),
                json!(n(o, "/status/replicas")),
                json!(n(o, "/status/readyReplicas")),
            ],
            workload_wide(o).to_vec(),
        ),
        "services" => {
            let ports: Vec<String> = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                    match p.get("nodePort").and_then(Value::as_i64) {
                        Some(np) => format!("{}:{np}/{proto}", n(p, "/port")),
                        None => format!("{}/{proto}", n(p, "/port")),
                    }
                })
                .collect();
            let sel = labels_text(o.pointer("/spec/selector"));
            (
                vec![
                    json!(match s(o, "/spec/type") {
                        "" => "ClusterIP",
                        t => t,
                    }),
                    or_none(s(o, "/spec/clusterIP").into()),
                    json!("<none>"),
                    or_none(ports.join(",")),
                ],
                vec![or_none(sel)],
            )
        }
        "endpoints" => {
            let mut eps = vec![];
            for sub in o
                .pointer("/subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                for a in sub
                    .get("addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    for p in sub
                        .get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        eps.push(format!("{}:{}", s(a, "/ip"), n(p, "/port")));
                    }
                }
            }
            (vec![or_none(eps.join(","))], vec![])
        }
        "configmaps" => (
            vec![json!(count(o, "/data") + count(o, "/binaryData"))],
            vec![],
        ),
        "secrets" => (vec![json!(s(o, "/type")), json!(count(o, "/data"))], vec![]),
        "serviceaccounts" => (vec![json!(count(o, "/secrets"))], vec![]),
        "leases" => (vec![json!(s(o, "/spec/holderIdentity"))], vec![]),
        _ => (vec![], vec![]),
    }
}

/// What each row carries besides its cells: `includeObject=None|Metadata|Object`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

fn row(r: &Resource, o: &Value, now: i64, include: Include) -> Value {
    let mut cells_out = vec![];
    if r.plural == "events" {
        let last = o
            .get("lastTimestamp")
            .and_then(Value::as_str)
            .or_else(|| o.get("eventTime").and_then(Value::as_str))
            .or_else(|| {
                o.pointer("/metadata/creationTimestamp")
                    .and_then(Value::as_str)
            });
        let obj = format!(
            "{}/{}",
            s(o, "/involvedObject/kind").to_lowercase(),
            s(o, "/involvedObject/name")
        );
        cells_out.extend([
            json!(since(last, now).map_or("<unknown>".into(), human)),
            json!(s(o, "/type")),
            json!(s(o, "/reason")),
            json!(obj),
            json!(s(o, "/message")),
        ]);
    } else {
        cells_out.push(json!(s(o, "/metadata/name")));
        let (main, wide) = cells(r, o);
        cells_out.extend(main);
        cells_out.push(age(o, now));
        cells_out.extend(wide);
    }
    let object = match include {
        Include::None => Value::Null,
        Include::Metadata => json!({"kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata")}),
        Include::Object => o.clone(),
    };
    json!({"cells": cells_out, "object": object})
}

fn definitions(r: &Resource) -> Vec<Value> {
    let def = |name: &str, ty: &str, prio: u8| {
        json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" },
               "description": "", "priority": prio})
    };
    if r.plural == "events" {
        return ["Last Seen", "Type", "Reason", "Object", "Message"]
            .iter()
            .map(|c| def(c, "string", 0))
            .collect();
    }
    let (main, wide, with_age) = columns(r);
    let mut out = vec![def("Name", "string", 0)];
    out.extend(main.iter().map(|(n, t, p)| def(n, t, *p)));
    if with_age {
        out.push(def("Age", "string", 0));
    }
    out.extend(wide.iter().map(|(n, t, p)| def(n, t, *p)));
    out
}

pub fn table(r: &Resource, objects: &[Value], rv: &str, include: Include) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": definitions(r),
        "rows": objects.iter().map(|o| row(r, o, now, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_kubectl_does() {
        assert_eq!(human(5), "5s");
        assert_eq!(human(130), "2m10s");
        assert_eq!(human(600), "10m");
        assert_eq!(human(3 * 3600 + 120), "3h2m");
        assert_eq!(human(30 * 3600), "30h");
        assert_eq!(human(3 * 86400 + 3600), "3d1h");
        assert_eq!(human(400 * 86400), "400d");
    }

    #[test]
    fn crash_looping_and_terminating_pods() {
        let p = json!({"status": {"phase": "Running", "containerStatuses": [
            {"ready": false, "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        assert_eq!(pod_status(&p), "CrashLoopBackOff");
        let oom = json!({"status": {"phase": "Running", "containerStatuses": [
            {"ready": false, "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}});
        assert_eq!(pod_status(&oom), "OOMKilled");
        let t = json!({"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Running"}});
        assert_eq!(pod_status(&t), "Terminating");
        assert_eq!(pod_status(&json!({})), "Pending");
    }
}
