//! Field validation: which fields of an object Kubernetes does not know, and whether its known
//! fields have the right types. The object is read into k8s-openapi's type for its kind and
//! written back; a field of the input that did not come back is unknown to the type. The stored
//! object stays the client's JSON with those fields removed (as the real server drops them), so
//! numbers, quantities and times keep the spelling the client gave.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn round<T: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, String> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(t).map_err(|e| e.to_string())
}

/// The object as its kind's type reads it, or the type error.
fn typed(kind: &str, v: &Value) -> Result<Option<Value>, String> {
    Ok(Some(match kind {
        "Namespace" => round::<Namespace>(v)?,
        "Node" => round::<Node>(v)?,
        "Pod" => round::<Pod>(v)?,
        "Service" => round::<Service>(v)?,
        "Endpoints" => round::<Endpoints>(v)?,
        "ConfigMap" => round::<ConfigMap>(v)?,
        "Secret" => round::<Secret>(v)?,
        "ServiceAccount" => round::<ServiceAccount>(v)?,
        "Event" => round::<Event>(v)?,
        "Deployment" => round::<Deployment>(v)?,
        "ReplicaSet" => round::<ReplicaSet>(v)?,
        "Lease" => round::<Lease>(v)?,
        _ => return Ok(None),
    }))
}

/// Removes from `input` what is not in `known`, naming each removed field by its path.
fn prune(input: &mut Value, known: &Value, path: &str, unknown: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(m), Value::Object(k)) => {
            m.retain(|key, v| {
                if k.contains_key(key) || v.is_null() {
                    return true;
                }
                unknown.push(if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                });
                false
            });
            for (key, v) in m.iter_mut() {
                if let Some(kv) = k.get(key) {
                    let p = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    prune(v, kv, &p, unknown);
                }
            }
        }
        (Value::Array(a), Value::Array(k)) if a.len() == k.len() => {
            for (i, (v, kv)) in a.iter_mut().zip(k).enumerate() {
                prune(v, kv, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

/// Checks `obj` against its kind; returns the unknown fields' paths (removed from `obj`), or
/// the type error.
pub fn check(kind: &str, obj: &mut Value) -> Result<Vec<String>, String> {
    let Some(known) = typed(kind, obj)? else {
        return Ok(vec![]);
    };
    let mut unknown = vec![];
    prune(obj, &known, "", &mut unknown);
    Ok(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_named_and_removed() -> Result<(), String> {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"a": "b"}, "bogus": 1},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
              "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [
                {"name": "c", "image": "i", "imagePullPolicy": "IfNotPresent",
                 "resources": {"limits": {"memory": "64Mi"}}, "colour": "red",
                 "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}}}});
        let unknown = check("Deployment", &mut d)?;
        assert_eq!(
            unknown,
            vec![
                "metadata.bogus".to_string(),
                "spec.template.spec.containers[0].colour".to_string()
            ]
        );
        assert!(d.pointer("/metadata/bogus").is_none());
        assert_eq!(
            d.pointer("/spec/template/spec/containers/0/resources/limits/memory"),
            Some(&json!("64Mi"))
        );
        let mut bad =
            json!({"kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": "two"}});
        assert!(check("Deployment", &mut bad).is_err());
        let mut cm = json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "c", "resourceVersion": "5", "creationTimestamp": null}, "data": {"k": "v"}});
        assert_eq!(check("ConfigMap", &mut cm)?, Vec::<String>::new());
        Ok(())
    }
}
