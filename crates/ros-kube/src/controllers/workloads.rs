//! Deployments and replicasets. Each is a pure plan from the objects as they are to the writes
//! that move them toward what they ask (`plan_deployment`, `plan_replicaset`), and a thin
//! executor that makes the writes through the object operations; the loop runs the plans again
//! whenever a deployment, replicaset or pod changes.
//!
//! A deployment owns one replicaset per pod template (`<name>-<hash>`, label
//! `pod-template-hash`, annotation `deployment.kubernetes.io/revision`); a rolling update grows
//! the new one and shrinks the old ones within maxSurge and maxUnavailable; a replicaset owns
//! its pods (`<rs>-<5 chars>`) and keeps their number.

use serde_json::{Map, Value, json};
use sha2::Digest;

use crate::objects::name_of;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const HASH_LABEL: &str = "pod-template-hash";

/// One write a plan asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Act {
    Create(Value),
    /// A merge patch to the named object (of the kind the plan is about: replicasets for a
    /// deployment's plan, pods for a replicaset's).
    Patch {
        name: String,
        patch: Value,
    },
    Delete(String),
    /// The planned object's own status.
    Status(Value),
    /// A merge patch to the planned object itself (its metadata).
    PatchSelf(Value),
    Event {
        reason: String,
        message: String,
    },
}

fn i(o: &Value, p: &str) -> i64 {
    o.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

pub fn uid_of(o: &Value) -> &str {
    o.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Whether `o` is controlled by the object with this uid.
pub fn controlled_by(o: &Value, uid: &str) -> bool {
    o.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter().any(|r| {
                r.get("uid").and_then(Value::as_str) == Some(uid)
                    && r.get("controller") == Some(&json!(true))
            })
        })
}

fn owner_ref(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!([{"apiVersion": api_version, "kind": kind, "name": name_of(owner),
            "uid": uid_of(owner), "controller": true, "blockOwnerDeletion": true}])
}

/// Ten characters from the template's canonical JSON, in the alphabet Kubernetes uses.
pub fn template_hash(template: &Value) -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut t = template.clone();
    if let Some(l) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        l.remove(HASH_LABEL);
    }
    let d = sha2::Sha256::digest(serde_json::to_vec(&t).unwrap_or_default());
    d.iter()
        .take(10)
        .map(|b| ALPHA[*b as usize % ALPHA.len()] as char)
        .collect()
}

fn revision(rs: &Value) -> i64 {
    rs.pointer("/metadata/annotations")
        .and_then(|a| a.get(REVISION))
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// An int-or-percent of `of`, rounded up or down.
fn resolve(v: Option<&Value>, default: &str, of: i64, up: bool) -> i64 {
    let s = match v {
        Some(Value::Number(n)) => return n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s.clone(),
        _ => default.to_string(),
    };
    match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
        Some(p) if up => (p * of + 99) / 100,
        Some(p) => p * of / 100,
        None => s.parse().unwrap_or(0),
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: &str,
    old: Option<&Value>,
) -> Value {
    let st = if status { "True" } else { "False" };
    let same = old.is_some_and(|o| o.get("status").and_then(Value::as_str) == Some(st));
    let transition = if same {
        old.and_then(|o| o.get("lastTransitionTime"))
            .cloned()
            .unwrap_or(json!(now))
    } else {
        json!(now)
    };
    let unchanged =
        same && old.and_then(|o| o.get("reason")).and_then(Value::as_str) == Some(reason);
    let update = if unchanged {
        old.and_then(|o| o.get("lastUpdateTime"))
            .cloned()
            .unwrap_or(json!(now))
    } else {
        json!(now)
    };
    json!({"type": type_, "status": st, "reason": reason, "message": message,
           "lastUpdateTime": update, "lastTransitionTime": transition})
}

fn old_condition<'a>(o: &'a Value, t: &str) -> Option<&'a Value> {
    o.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(t))
}

/// The writes that move a deployment toward its spec, given the replicasets it controls.
pub fn plan_deployment(dep: &Value, owned: &[Value], now: &str) -> Vec<Act> {
    let mut acts = vec![];
    if dep.pointer("/metadata/deletionTimestamp").is_some() {
        return acts;
    }
    let name = name_of(dep);
    let replicas = dep
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let template = dep.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let hash = template_hash(&template);
    let new = owned.iter().find(|rs| {
        rs.pointer(&format!("/metadata/labels/{HASH_LABEL}"))
            .and_then(Value::as_str)
            == Some(hash.as_str())
    });
    let mut olds: Vec<&Value> = owned.iter().filter(|rs| Some(*rs) != new).collect();
    olds.sort_by_key(|rs| revision(rs));
    let max_old_rev = olds.iter().map(|rs| revision(rs)).max().unwrap_or(0);
    let recreate = dep.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("Recreate");
    let ru = dep.pointer("/spec/strategy/rollingUpdate");
    let mut max_surge = resolve(ru.and_then(|r| r.get("maxSurge")), "25%", replicas, true);
    let mut max_unavail = resolve(
        ru.and_then(|r| r.get("maxUnavailable")),
        "25%",
        replicas,
        false,
    );
    if recreate {
        max_surge = 0;
        max_unavail = replicas;
    } else if max_surge == 0 && max_unavail == 0 {
        max_unavail = 1;
    }
    let spec_of = |rs: &Value| i(rs, "/spec/replicas");
    let avail_of = |rs: &Value| i(rs, "/status/availableReplicas");
    let old_spec: i64 = olds.iter().map(|rs| spec_of(rs)).sum();
    let old_running: i64 = olds.iter().map(|rs| i(rs, "/status/replicas")).sum();

    let Some(new) = new else {
        // The first replicaset of this template: created at the size the strategy allows now.
        let size = if recreate {
            if old_spec > 0 || old_running > 0 {
                0
            } else {
                replicas
            }
        } else {
            (replicas + max_surge - old_spec).clamp(0, replicas)
        };
        let rev = max_old_rev + 1;
        let mut labels = template
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        labels.insert(HASH_LABEL.into(), json!(hash));
        let mut tpl = template.clone();
        tpl["metadata"]["labels"] = Value::Object(labels.clone());
        let mut selector = dep.pointer("/spec/selector").cloned().unwrap_or(json!({}));
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        let mut annotations = Map::new();
        annotations.insert(REVISION.into(), json!(rev.to_string()));
        if let Some(cause) = dep
            .pointer("/metadata/annotations/kubernetes.io~1change-cause")
            .cloned()
        {
            annotations.insert("kubernetes.io/change-cause".into(), cause);
        }
        let rs_name = format!("{name}-{hash}");
        acts.push(Act::Create(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": rs_name, "labels": labels, "annotations": annotations,
                         "ownerReferences": owner_ref(dep, "apps/v1", "Deployment")},
            "spec": {"replicas": size, "selector": selector, "template": tpl,
                     "minReadySeconds": dep.pointer("/spec/minReadySeconds").cloned().unwrap_or(json!(0))},
        })));
        acts.push(Act::PatchSelf(
            json!({"metadata": {"annotations": {REVISION: rev.to_string()}}}),
        ));
        acts.push(Act::Event {
            reason: "ScalingReplicaSet".into(),
            message: format!("Scaled up replica set {rs_name} from 0 to {size}"),
        });
        return acts;
    };
    let new_name = name_of(new).to_string();
    // Rolled back to an older template: its replicaset becomes the newest revision.
    if revision(new) <= max_old_rev {
        let rev = (max_old_rev + 1).to_string();
        acts.push(Act::Patch {
            name: new_name.clone(),
            patch: json!({"metadata": {"annotations": {REVISION: rev}}}),
        });
        acts.push(Act::PatchSelf(
            json!({"metadata": {"annotations": {REVISION: rev}}}),
        ));
    } else if dep
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(REVISION))
        .and_then(Value::as_str)
        != Some(revision(new).to_string().as_str())
    {
        acts.push(Act::PatchSelf(
            json!({"metadata": {"annotations": {REVISION: revision(new).to_string()}}}),
        ));
    }

    let mut new_spec = spec_of(new);
    let mut old_specs: Vec<i64> = olds.iter().map(|rs| spec_of(rs)).collect();
    if recreate {
        if old_spec > 0 {
            old_specs.iter_mut().for_each(|s| *s = 0);
        } else if old_running == 0 {
            new_spec = replicas;
        }
    } else {
        if new_spec > replicas {
            new_spec = replicas;
        } else if new_spec < replicas {
            let total = new_spec + old_spec;
            let max_total = replicas + max_surge;
            if total < max_total {
                new_spec += (max_total - total).min(replicas - new_spec);
            }
        }
        // Old replicas go only while enough pods stay available.
        let min_avail = replicas - max_unavail;
        let total: i64 = new_spec + old_specs.iter().sum::<i64>();
        let new_unavail = (new_spec - avail_of(new)).max(0);
        let mut budget = total - min_avail - new_unavail;
        // First the old pods that are not available anyway.
        for (k, rs) in olds.iter().enumerate() {
            if budget <= 0 {
                break;
            }
            let unhealthy = (old_specs[k] - avail_of(rs)).max(0);
            let take = unhealthy.min(budget);
            old_specs[k] -= take;
            budget -= take;
        }
        let available: i64 = avail_of(new) + olds.iter().map(|rs| avail_of(rs)).sum::<i64>();
        let mut down = (available - min_avail).max(0).min(budget.max(0));
        for spec in old_specs.iter_mut() {
            if down <= 0 {
                break;
            }
            let take = (*spec).min(down);
            *spec -= take;
            down -= take;
        }
    }
    if new_spec != spec_of(new) {
        acts.push(Act::Patch {
            name: new_name.clone(),
            patch: json!({"spec": {"replicas": new_spec}}),
        });
        acts.push(Act::Event {
            reason: "ScalingReplicaSet".into(),
            message: format!(
                "Scaled {} replica set {new_name} from {} to {new_spec}",
                if new_spec > spec_of(new) {
                    "up"
                } else {
                    "down"
                },
                spec_of(new)
            ),
        });
    }
    for (k, rs) in olds.iter().enumerate() {
        if old_specs[k] != spec_of(rs) {
            acts.push(Act::Patch {
                name: name_of(rs).to_string(),
                patch: json!({"spec": {"replicas": old_specs[k]}}),
            });
            acts.push(Act::Event {
                reason: "ScalingReplicaSet".into(),
                message: format!(
                    "Scaled down replica set {} from {} to {}",
                    name_of(rs),
                    spec_of(rs),
                    old_specs[k]
                ),
            });
        }
    }
    // Old, empty replicasets beyond the history limit.
    let limit = dep
        .pointer("/spec/revisionHistoryLimit")
        .and_then(Value::as_i64)
        .unwrap_or(10);
    let empty: Vec<&&Value> = olds
        .iter()
        .filter(|rs| spec_of(rs) == 0 && i(rs, "/status/replicas") == 0)
        .collect();
    let extra = empty.len() as i64 - limit;
    for rs in empty.iter().take(extra.max(0) as usize) {
        acts.push(Act::Delete(name_of(rs).to_string()));
    }

    // Status, from the replicasets as they report.
    let sum = |p: &str| owned.iter().map(|rs| i(rs, p)).sum::<i64>();
    let (total, ready, available) = (
        sum("/status/replicas"),
        sum("/status/readyReplicas"),
        sum("/status/availableReplicas"),
    );
    let updated = i(new, "/status/replicas");
    let complete = updated == replicas
        && total == replicas
        && available == replicas
        && old_specs.iter().all(|s| *s == 0);
    let min_ok = available >= replicas - max_unavail;
    let conds = vec![
        condition(
            "Available",
            min_ok,
            if min_ok {
                "MinimumReplicasAvailable"
            } else {
                "MinimumReplicasUnavailable"
            },
            if min_ok {
                "Deployment has minimum availability."
            } else {
                "Deployment does not have minimum availability."
            },
            now,
            old_condition(dep, "Available"),
        ),
        if complete {
            condition(
                "Progressing",
                true,
                "NewReplicaSetAvailable",
                &format!("ReplicaSet \"{new_name}\" has successfully progressed."),
                now,
                old_condition(dep, "Progressing"),
            )
        } else {
            condition(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                &format!("ReplicaSet \"{new_name}\" is progressing."),
                now,
                old_condition(dep, "Progressing"),
            )
        },
    ];
    let mut status = json!({
        "observedGeneration": i(dep, "/metadata/generation"),
        "replicas": total, "updatedReplicas": updated, "readyReplicas": ready,
        "availableReplicas": available, "unavailableReplicas": (replicas - available).max(0),
        "conditions": conds,
    });
    for k in [
        "replicas",
        "updatedReplicas",
        "readyReplicas",
        "availableReplicas",
        "unavailableReplicas",
    ] {
        if status[k] == json!(0)
            && let Some(m) = status.as_object_mut()
        {
            m.remove(k);
        }
    }
    if dep.get("status") != Some(&status) {
        acts.push(Act::Status(status));
    }
    acts
}

fn pod_ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

fn active(p: &Value) -> bool {
    p.pointer("/metadata/deletionTimestamp").is_none()
        && !matches!(
            p.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        )
}

/// The writes that keep a replicaset's number of pods, given the pods it controls.
pub fn plan_replicaset(rs: &Value, owned: &[Value]) -> Vec<Act> {
    let mut acts = vec![];
    if rs.pointer("/metadata/deletionTimestamp").is_some() {
        return acts;
    }
    let name = name_of(rs);
    let want = rs
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let mut live: Vec<&Value> = owned.iter().filter(|p| active(p)).collect();
    let diff = want - live.len() as i64;
    if diff > 0 {
        let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
        for _ in 0..diff.min(500) {
            acts.push(Act::Create(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": format!("{name}-"),
                             "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
                             "annotations": template.pointer("/metadata/annotations").cloned().unwrap_or(json!({})),
                             "ownerReferences": owner_ref(rs, "apps/v1", "ReplicaSet")},
                "spec": template.get("spec").cloned().unwrap_or(json!({})),
            })));
        }
        acts.push(Act::Event {
            reason: "SuccessfulCreate".into(),
            message: format!(
                "Created {} pod{}",
                diff.min(500),
                if diff == 1 { "" } else { "s" }
            ),
        });
    } else if diff < 0 {
        // The pods least along go first: unscheduled, pending, not ready, then the newest.
        live.sort_by_key(|p| {
            let unscheduled = p
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty();
            let pending = p.pointer("/status/phase").and_then(Value::as_str) == Some("Pending");
            let created = p
                .pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            (
                !unscheduled,
                !pending,
                pod_ready(p),
                std::cmp::Reverse(created),
            )
        });
        for p in live.iter().take((-diff) as usize) {
            acts.push(Act::Delete(name_of(p).to_string()));
            acts.push(Act::Event {
                reason: "SuccessfulDelete".into(),
                message: format!("Deleted pod: {}", name_of(p)),
            });
        }
    }
    let ready = owned.iter().filter(|p| active(p) && pod_ready(p)).count() as i64;
    let count = owned.iter().filter(|p| active(p)).count() as i64;
    let mut status = json!({"replicas": count, "fullyLabeledReplicas": count, "readyReplicas": ready,
                            "availableReplicas": ready, "observedGeneration": i(rs, "/metadata/generation")});
    for k in ["readyReplicas", "availableReplicas"] {
        if status[k] == json!(0)
            && let Some(m) = status.as_object_mut()
        {
            m.remove(k);
        }
    }
    if rs.get("status") != Some(&status) {
        acts.push(Act::Status(status));
    }
    acts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dep(replicas: i64, image: &str) -> Value {
        json!({"metadata": {"name": "web", "uid": "d1", "generation": 1},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    fn rs_from(acts: &[Act]) -> Value {
        let Some(Act::Create(rs)) = acts.first() else {
            return json!(null);
        };
        let mut rs = rs.clone();
        rs["metadata"]["uid"] = json!("r1");
        rs
    }

    fn with_status(mut rs: Value, replicas: i64, available: i64) -> Value {
        rs["status"] = json!({"replicas": replicas, "availableReplicas": available, "readyReplicas": available});
        rs
    }

    #[test]
    fn a_new_deployment_makes_its_replicaset_at_full_size() {
        let acts = plan_deployment(&dep(3, "a:1"), &[], "t");
        let rs = rs_from(&acts);
        assert_eq!(rs["spec"]["replicas"], 3);
        assert_eq!(rs["metadata"]["annotations"][REVISION], "1");
        let hash = rs["metadata"]["labels"][HASH_LABEL].as_str().unwrap_or("");
        assert_eq!(rs["metadata"]["name"], format!("web-{hash}"));
        assert_eq!(rs["spec"]["selector"]["matchLabels"][HASH_LABEL], hash);
        assert_eq!(rs["metadata"]["ownerReferences"][0]["uid"], "d1");
    }

    #[test]
    fn a_rolling_update_stays_within_surge_and_unavailability() {
        // 4 replicas, 25%: surge 1, unavailable 1.
        let old = with_status(rs_from(&plan_deployment(&dep(4, "a:1"), &[], "t")), 4, 4);
        let d2 = dep(4, "a:2");
        let acts = plan_deployment(&d2, std::slice::from_ref(&old), "t");
        let new = rs_from(&acts);
        assert_eq!(new["spec"]["replicas"], 1, "one surge pod");
        assert_eq!(new["metadata"]["annotations"][REVISION], "2");
        let new = with_status(new, 1, 0);
        let acts = plan_deployment(&d2, &[old.clone(), new.clone()], "t");
        // The old one may drop one (4 + 1 - 3 available minimum - 1 new unavailable = 1).
        assert!(
            acts.contains(&Act::Patch {
                name: name_of(&old).into(),
                patch: json!({"spec": {"replicas": 3}})
            }),
            "{acts:?}"
        );
        // Never below 3 available: with the new pod not ready, the old stays at 3 next time.
        let mut old3 = old.clone();
        old3["spec"]["replicas"] = json!(3);
        let old3 = with_status(old3, 3, 3);
        let acts = plan_deployment(&d2, &[old3.clone(), new.clone()], "t");
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a, Act::Patch { name, .. } if name == name_of(&old3))),
            "{acts:?}"
        );
    }

    #[test]
    fn replicasets_create_and_remove_pods() {
        let rs = json!({"metadata": {"name": "web-x", "uid": "r1", "generation": 1},
                        "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}}}});
        let acts = plan_replicaset(&rs, &[]);
        let creates = acts.iter().filter(|a| matches!(a, Act::Create(_))).count();
        assert_eq!(creates, 2);
        let pods: Vec<Value> = ["a", "b", "c"]
            .iter()
            .map(|n| json!({"metadata": {"name": n, "creationTimestamp": format!("2026-01-01T00:00:0{}Z", n.len())},
                            "spec": {"nodeName": if *n == "b" { "" } else { "n1" }}, "status": {"phase": "Running"}}))
            .collect();
        let acts = plan_replicaset(&rs, &pods);
        assert!(
            acts.contains(&Act::Delete("b".into())),
            "the unscheduled pod goes first: {acts:?}"
        );
    }
}
