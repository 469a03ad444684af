//! The scheduler's choice, pure: which node a pod goes to, or why none fits. Nodes are
//! filtered (Ready, schedulable, nodeSelector, taints against tolerations, requests against
//! what is left of allocatable, the pod count) and the fitting ones scored (fewest pods of the
//! same owner first, to spread replicas; then fewest pods).

use serde_json::Value;

use crate::objects::name_of;
use crate::quantity::{parse_milli, parse_units, pod_requests};

fn ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

fn tolerates(pod: &Value, taint: &Value) -> bool {
    let key = taint.get("key").and_then(Value::as_str).unwrap_or("");
    let value = taint.get("value").and_then(Value::as_str).unwrap_or("");
    let effect = taint.get("effect").and_then(Value::as_str).unwrap_or("");
    pod.pointer("/spec/tolerations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|t| {
            let tk = t.get("key").and_then(Value::as_str).unwrap_or("");
            let op = t.get("operator").and_then(Value::as_str).unwrap_or("Equal");
            let te = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let key_ok = tk.is_empty() && op == "Exists" || tk == key;
            let value_ok =
                op == "Exists" || t.get("value").and_then(Value::as_str).unwrap_or("") == value;
            let effect_ok = te.is_empty() || te == effect;
            key_ok && value_ok && effect_ok
        })
}

fn alloc(node: &Value, res: &str) -> Option<i128> {
    let v = node.pointer(&format!("/status/allocatable/{res}"))?;
    let s = v
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string());
    if res == "cpu" {
        parse_milli(&s).ok()
    } else {
        parse_units(&s).ok()
    }
}

fn owner_uid(p: &Value) -> Option<&str> {
    p.pointer("/metadata/ownerReferences/0/uid")
        .and_then(Value::as_str)
}

/// The node for `pod`, or the reason none fits ("0/2 nodes are available: ...").
pub fn choose(pod: &Value, nodes: &[Value], pods: &[Value]) -> Result<String, String> {
    let (cpu, mem) = pod_requests(pod);
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    let mut best: Option<((usize, usize), String)> = None;
    for node in nodes {
        let name = name_of(node);
        let on_node: Vec<&Value> = pods
            .iter()
            .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(name))
            .filter(|p| {
                !matches!(
                    p.pointer("/status/phase").and_then(Value::as_str),
                    Some("Succeeded" | "Failed")
                )
            })
            .collect();
        let why = if !ready(node) {
            Some("node(s) were not ready".to_string())
        } else if node.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
            Some("node(s) were unschedulable".to_string())
        } else if let Some(sel) = pod.pointer("/spec/nodeSelector").and_then(Value::as_object)
            && !sel
                .iter()
                .all(|(k, v)| node.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(v))
        {
            Some("node(s) didn't match Pod's node affinity/selector".to_string())
        } else if let Some(t) = node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|t| {
                matches!(
                    t.get("effect").and_then(Value::as_str),
                    Some("NoSchedule" | "NoExecute")
                ) && !tolerates(pod, t)
            })
        {
            Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.get("key").and_then(Value::as_str).unwrap_or(""),
                t.get("value").and_then(Value::as_str).unwrap_or("")
            ))
        } else {
            let used_cpu: i128 = on_node.iter().map(|p| pod_requests(p).0).sum();
            let used_mem: i128 = on_node.iter().map(|p| pod_requests(p).1).sum();
            if alloc(node, "cpu").is_some_and(|a| used_cpu + cpu > a) {
                Some("Insufficient cpu".to_string())
            } else if alloc(node, "memory").is_some_and(|a| used_mem + mem > a) {
                Some("Insufficient memory".to_string())
            } else if alloc(node, "pods").is_some_and(|a| on_node.len() as i128 + 1 > a) {
                Some("Too many pods".to_string())
            } else {
                None
            }
        };
        match why {
            Some(w) => *reasons.entry(w).or_default() += 1,
            None => {
                let siblings = on_node
                    .iter()
                    .filter(|p| owner_uid(p).is_some() && owner_uid(p) == owner_uid(pod))
                    .count();
                let score = (siblings, on_node.len());
                if best
                    .as_ref()
                    .is_none_or(|(s, n)| (score, name) < (*s, n.as_str()))
                {
                    best = Some((score, name.to_string()));
                }
            }
        }
    }
    if let Some((_, n)) = best {
        return Ok(n);
    }
    let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    Err(format!(
        "0/{} nodes are available{}{}.",
        nodes.len(),
        if detail.is_empty() { "" } else { ": " },
        detail.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints},
               "status": {"conditions": [{"type": "Ready", "status": "True"}],
                          "allocatable": {"cpu": "2", "memory": "1Gi", "pods": "110"}}})
    }

    #[test]
    fn filters_and_spreads() {
        let nodes = vec![
            node("a", json!({"disk": "ssd"}), json!([])),
            node(
                "b",
                json!({}),
                json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]),
            ),
        ];
        let pod = json!({"metadata": {"ownerReferences": [{"uid": "rs"}]}, "spec": {"containers": [{"resources": {"requests": {"memory": "512Mi"}}}]}});
        assert_eq!(choose(&pod, &nodes, &[]), Ok("a".into()));
        let mut tolerant = pod.clone();
        tolerant["spec"]["tolerations"] = json!([{"key": "gpu", "operator": "Exists"}]);
        let sibling_on_a = json!({"metadata": {"ownerReferences": [{"uid": "rs"}]}, "spec": {"nodeName": "a", "containers": []}});
        assert_eq!(
            choose(&tolerant, &nodes, &[sibling_on_a]),
            Ok("b".into()),
            "spread"
        );
        let mut big = pod.clone();
        big["spec"]["containers"][0]["resources"]["requests"]["memory"] = json!("2Gi");
        let err = choose(&big, &nodes, &[]).unwrap_err();
        assert_eq!(
            err,
            "0/2 nodes are available: 1 Insufficient memory, 1 node(s) had untolerated taint {gpu: yes}."
        );
        let mut sel = pod;
        sel["spec"]["nodeSelector"] = json!({"disk": "hdd"});
        assert!(
            choose(&sel, &nodes, &[])
                .unwrap_err()
                .contains("didn't match Pod's node affinity/selector")
        );
    }
}
