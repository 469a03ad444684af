//! The three patch types a PATCH may carry: JSON patch (RFC 6902) and JSON merge patch
//! (RFC 7386), both by the json-patch crate, and Kubernetes' strategic merge patch, written here
//! (no crate does it): lists of objects merged by their key (containers by name, ports by
//! number, ...), the `$patch`, `$retainKeys`, `$deleteFromPrimitiveList` and `$setElementOrder`
//! directives. The merge keys are the ones the Kubernetes types declare for the kinds served.

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }
}

pub fn apply(kind: PatchType, target: &Value, patch: &Value) -> Result<Value, String> {
    let mut doc = target.clone();
    match kind {
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| format!("the JSON patch: {e}"))?;
            json_patch::patch(&mut doc, &p).map_err(|e| format!("the JSON patch: {e}"))?;
        }
        PatchType::Merge => {
            if !patch.is_object() {
                return Err("a merge patch must be a JSON object".into());
            }
            json_patch::merge(&mut doc, patch);
        }
        PatchType::Strategic => {
            if !patch.is_object() {
                return Err("a strategic merge patch must be a JSON object".into());
            }
            strategic(&mut doc, patch, &[])?;
        }
    }
    Ok(doc)
}

/// The key a list of objects is merged by, from the field's name and where it is.
fn merge_key(path: &[String], field: &str) -> Option<&'static str> {
    let in_container = path.iter().any(|p| {
        matches!(
            p.as_str(),
            "containers" | "initContainers" | "ephemeralContainers"
        )
    });
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "ports" if in_container => "containerPort",
        "ports" => "port",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" | "addresses" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Lists of strings merged as sets.
fn primitive_merge(path: &[String], field: &str) -> bool {
    field == "finalizers" && path.last().is_some_and(|p| p == "metadata")
}

fn is_directive(k: &str) -> bool {
    k.starts_with('$')
}

/// The patch's own value, without directives, for where nothing is there to merge into.
fn strip(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !is_directive(k))
                .map(|(k, v)| (k.clone(), strip(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .filter(|x| x.get("$patch").is_none())
                .map(strip)
                .collect(),
        ),
        v => v.clone(),
    }
}

fn strategic(orig: &mut Value, patch: &Value, path: &[String]) -> Result<(), String> {
    let Some(pm) = patch.as_object() else {
        *orig = patch.clone();
        return Ok(());
    };
    match pm.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *orig = strip(patch);
            return Ok(());
        }
        Some("delete") => {
            *orig = Value::Object(Map::new());
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown $patch directive {other:?}")),
    }
    if !orig.is_object() {
        *orig = Value::Object(Map::new());
    }
    let Some(om) = orig.as_object_mut() else {
        return Ok(());
    };
    for (k, pv) in pm {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(gone)) = (om.get_mut(field), pv.as_array()) {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if is_directive(k) {
            continue;
        }
        if pv.is_null() {
            om.remove(k);
            continue;
        }
        let mut sub = path.to_vec();
        sub.push(k.clone());
        match (om.get_mut(k), pv) {
            (Some(ov @ Value::Object(_)), Value::Object(_)) => strategic(ov, pv, &sub)?,
            (Some(Value::Array(ol)), Value::Array(pl)) => merge_list(ol, pl, path, k)?,
            _ => {
                om.insert(k.clone(), strip(pv));
            }
        }
    }
    if let Some(keep) = pm.get("$retainKeys").and_then(Value::as_array) {
        om.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
    Ok(())
}

fn merge_list(
    orig: &mut Vec<Value>,
    patch: &[Value],
    path: &[String],
    field: &str,
) -> Result<(), String> {
    if patch
        .iter()
        .any(|x| x.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *orig = patch
            .iter()
            .filter(|x| x.get("$patch").is_none())
            .map(strip)
            .collect();
        return Ok(());
    }
    if primitive_merge(path, field) {
        for p in patch {
            if !orig.contains(p) {
                orig.push(p.clone());
            }
        }
        return Ok(());
    }
    let Some(key) = merge_key(path, field) else {
        *orig = patch.iter().map(strip).collect();
        return Ok(());
    };
    let mut sub = path.to_vec();
    sub.push(field.to_string());
    for p in patch {
        let Some(kv) = p.get(key) else {
            return Err(format!(
                "{}: an item of {field} has no {key}, the list's merge key",
                sub.join(".")
            ));
        };
        let pos = orig.iter().position(|o| o.get(key) == Some(kv));
        if p.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                orig.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => strategic(&mut orig[i], p, &sub)?,
            None => orig.push(strip(p)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(a: Value, p: Value) -> Value {
        apply(PatchType::Strategic, &a, &p).unwrap_or_else(|e| json!({"error": e}))
    }

    #[test]
    fn containers_merge_by_name_and_keep_ports() {
        let dep = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "side", "image": "s:1"}]}}}});
        let out = smp(
            dep,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "a:2"}]}}}}),
        );
        assert_eq!(
            out,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "web", "image": "a:2", "ports": [{"containerPort": 80}]},
                {"name": "side", "image": "s:1"}]}}}})
        );
    }

    #[test]
    fn directives() {
        let o = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "tolerations": [{"key": "k"}]}});
        let out = smp(
            o,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"], "labels": {"x": null}},
            "spec": {"containers": [{"name": "a", "$patch": "delete"}],
                     "$setElementOrder/containers": [{"name": "b"}],
                     "tolerations": [{"key": "j"}]}}),
        );
        assert_eq!(
            out,
            json!({"metadata": {"finalizers": ["b"], "labels": {"y": "2"}},
            "spec": {"containers": [{"name": "b"}], "tolerations": [{"key": "j"}]}})
        );
        let r = smp(
            json!({"spec": {"a": 1, "b": 2}}),
            json!({"spec": {"$retainKeys": ["b", "c"], "c": 3}}),
        );
        assert_eq!(r, json!({"spec": {"b": 2, "c": 3}}));
        let f = smp(
            json!({"metadata": {"finalizers": ["a"]}}),
            json!({"metadata": {"finalizers": ["b", "a"]}}),
        );
        assert_eq!(f, json!({"metadata": {"finalizers": ["a", "b"]}}));
    }

    #[test]
    fn service_ports_by_port_and_json_and_merge_patches() -> Result<(), String> {
        let svc = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443}]}});
        let out = smp(
            svc,
            json!({"spec": {"ports": [{"port": 443, "name": "https"}]}}),
        );
        assert_eq!(
            out,
            json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}})
        );
        let m = apply(
            PatchType::Merge,
            &json!({"spec": {"replicas": 1, "x": 1}}),
            &json!({"spec": {"replicas": 5, "x": null}}),
        )?;
        assert_eq!(m, json!({"spec": {"replicas": 5}}));
        let j = apply(
            PatchType::Json,
            &json!({"a": [1]}),
            &json!([{"op": "add", "path": "/a/-", "value": 2}]),
        )?;
        assert_eq!(j, json!({"a": [1, 2]}));
        assert!(
            apply(
                PatchType::Json,
                &json!({}),
                &json!([{"op": "test", "path": "/a", "value": 1}])
            )
            .is_err()
        );
        Ok(())
    }
}
