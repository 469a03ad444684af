//! Request bodies in Kubernetes' protobuf encoding, read into the JSON the server keeps.
//! kubectl's typed commands (`create namespace|configmap|secret|serviceaccount|deployment|
//! service`) send protobuf and do not fall back to JSON on a 415, so the server reads them.
//!
//! The envelope is `k8s\0` and a `runtime.Unknown` (type meta, the object's bytes). Objects are
//! decoded by a table of the messages those commands send, field numbers as the Kubernetes
//! `generated.proto` files give them. Go writes every non-pointer field, zero or not; zero
//! values of those are dropped (as JSON's omitempty would), pointer fields keep theirs. A field
//! the table does not know is an error when it carries a value, never dropped.
//!
//! Written here rather than with prost: the schema would be the whole Kubernetes API, built by
//! protoc; these few messages are a table.

use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Copy)]
enum T {
    Str,
    Int,
    Bool,
    Msg(&'static str),
    /// map<string, string>, map<string, bytes>, map<string, Quantity>
    MapStr,
    MapBytes,
    MapQuantity,
    Time,
    IntOrString,
}

#[derive(Debug)]
struct F {
    n: u64,
    name: &'static str,
    t: T,
    repeated: bool,
    /// A Go pointer field: its zero value is a value.
    ptr: bool,
}

const fn f(n: u64, name: &'static str, t: T) -> F {
    F {
        n,
        name,
        t,
        repeated: false,
        ptr: false,
    }
}
const fn r(n: u64, name: &'static str, t: T) -> F {
    F {
        n,
        name,
        t,
        repeated: true,
        ptr: false,
    }
}
const fn p(n: u64, name: &'static str, t: T) -> F {
    F {
        n,
        name,
        t,
        repeated: false,
        ptr: true,
    }
}

use T::*;

fn schema(msg: &str) -> Option<&'static [F]> {
    Some(match msg {
        "ObjectMeta" => {
            const {
                &[
                    f(1, "name", Str),
                    f(2, "generateName", Str),
                    f(3, "namespace", Str),
                    f(4, "selfLink", Str),
                    f(5, "uid", Str),
                    f(6, "resourceVersion", Str),
                    f(7, "generation", Int),
                    f(8, "creationTimestamp", Time),
                    f(9, "deletionTimestamp", Time),
                    p(10, "deletionGracePeriodSeconds", Int),
                    f(11, "labels", MapStr),
                    f(12, "annotations", MapStr),
                    r(13, "ownerReferences", Msg("OwnerReference")),
                    r(14, "finalizers", Str),
                ]
            }
        }
        "OwnerReference" => {
            const {
                &[
                    f(5, "apiVersion", Str),
                    f(1, "kind", Str),
                    f(3, "name", Str),
                    f(4, "uid", Str),
                    p(6, "controller", Bool),
                    p(7, "blockOwnerDeletion", Bool),
                ]
            }
        }
        "LabelSelector" => {
            const {
                &[
                    f(1, "matchLabels", MapStr),
                    r(2, "matchExpressions", Msg("LabelSelectorRequirement")),
                ]
            }
        }
        "LabelSelectorRequirement" => {
            const { &[f(1, "key", Str), f(2, "operator", Str), r(3, "values", Str)] }
        }
        "Namespace" => {
            const {
                &[
                    f(1, "metadata", Msg("ObjectMeta")),
                    f(2, "spec", Msg("NamespaceSpec")),
                    f(3, "status", Msg("NamespaceStatus")),
                ]
            }
        }
        "NamespaceSpec" => const { &[r(1, "finalizers", Str)] },
        "NamespaceStatus" => const { &[f(1, "phase", Str)] },
        "ConfigMap" => {
            const {
                &[
                    f(1, "metadata", Msg("ObjectMeta")),
                    p(4, "immutable", Bool),
                    f(2, "data", MapStr),
                    f(3, "binaryData", MapBytes),
                ]
            }
        }
        "Secret" => {
            const {
                &[
                    f(1, "metadata", Msg("ObjectMeta")),
                    p(5, "immutable", Bool),
                    f(2, "data", MapBytes),
                    f(4, "stringData", MapStr),
                    f(3, "type", Str),
                ]
            }
        }
        "ServiceAccount" => {
            const {
                &[
                    f(1, "metadata", Msg("ObjectMeta")),
                    r(2, "secrets", Msg("ObjectReference")),
                    r(3, "imagePullSecrets", Msg("LocalObjectReference")),
                    p(4, "automountServiceAccountToken", Bool),
                ]
            }
        }
        "ObjectReference" => {
            const {
                &[
                    f(1, "kind", Str),
                    f(2, "namespace", Str),
                    f(3, "name", Str),
                    f(4, "uid", Str),
                    f(5, "apiVersion", Str),
                    f(6, "resourceVersion", Str),
                    f(7, "fieldPath", Str),
                ]
            }
        }
        "LocalObjectReference" => const { &[f(1, "name", Str)] },
        "Deployment" => {
            const {
                &[
                    f(1, "metadata", Msg("ObjectMeta")),
                    f(2, "spec", Msg("DeploymentSpec")),
                    f(3, "status", Msg("Empty")),
                ]
            }
        }
        "DeploymentSpec" => {
            const {
                &[
                    p(1, "replicas", Int),
                    f(2, "selector", Msg("LabelSelector")),
                    f(3, "template", Msg("PodTemplateSpec")),
                    f(4, "strategy", Msg("DeploymentStrategy")),
                    f(5, "minReadySeconds", Int),
                    p(6, "revisionHistoryLimit", Int),
                    f(7, "paused", Bool),
                    p(9, "progressDeadlineSeconds", Int),
                ]
            }
        }
        "DeploymentStrategy" => {
            const {
                &[
                    f(1, "type", Str),
                    f(2, "rollingUpdate", Msg("RollingUpdateDeployment")),
                ]
            }
        }
        "RollingUpdateDeployment" => {
            const {
                &[
                    p(1, "maxUnavailable", IntOrString),
                    p(2, "maxSurge", IntOrString),
                ]
            }
        }
        "PodTemplateSpec" => {
            const {
                &[
                    f(1, "metadata", Msg("ObjectMeta")),
                    f(2, "spec", Msg("PodSpec")),
                ]
            }
        }
        "PodSpec" => {
            const {
                &[
                    r(20, "initContainers", Msg("Container")),
                    r(2, "containers", Msg("Container")),
                    f(3, "restartPolicy", Str),
                    p(4, "terminationGracePeriodSeconds", Int),
                    p(5, "activeDeadlineSeconds", Int),
                    f(6, "dnsPolicy", Str),
                    f(7, "nodeSelector", MapStr),
                    f(8, "serviceAccountName", Str),
                    f(9, "serviceAccount", Str),
                    p(21, "automountServiceAccountToken", Bool),
                    f(10, "nodeName", Str),
                    f(11, "hostNetwork", Bool),
                    f(12, "hostPID", Bool),
                    f(13, "hostIPC", Bool),
                    r(15, "imagePullSecrets", Msg("LocalObjectReference")),
                    f(16, "hostname", Str),
                    f(17, "subdomain", Str),
                    f(19, "schedulerName", Str),
                    f(24, "priorityClassName", Str),
                    p(25, "priority", Int),
                    p(30, "enableServiceLinks", Bool),
                ]
            }
        }
        "Container" => {
            const {
                &[
                    f(1, "name", Str),
                    f(2, "image", Str),
                    r(3, "command", Str),
                    r(4, "args", Str),
                    f(5, "workingDir", Str),
                    r(6, "ports", Msg("ContainerPort")),
                    r(7, "env", Msg("EnvVar")),
                    f(8, "resources", Msg("ResourceRequirements")),
                    f(13, "terminationMessagePath", Str),
                    f(20, "terminationMessagePolicy", Str),
                    f(14, "imagePullPolicy", Str),
                    f(16, "stdin", Bool),
                    f(17, "stdinOnce", Bool),
                    f(18, "tty", Bool),
                ]
            }
        }
        "ContainerPort" => {
            const {
                &[
                    f(1, "name", Str),
                    f(2, "hostPort", Int),
                    f(3, "containerPort", Int),
                    f(4, "protocol", Str),
                    f(5, "hostIP", Str),
                ]
            }
        }
        "EnvVar" => const { &[f(1, "name", Str), f(2, "value", Str)] },
        "ResourceRequirements" => {
            const { &[f(1, "limits", MapQuantity), f(2, "requests", MapQuantity)] }
        }
        "Service" => {
            const {
                &[
                    f(1, "metadata", Msg("ObjectMeta")),
                    f(2, "spec", Msg("ServiceSpec")),
                    f(3, "status", Msg("Empty")),
                ]
            }
        }
        "ServiceSpec" => {
            const {
                &[
                    r(1, "ports", Msg("ServicePort")),
                    f(2, "selector", MapStr),
                    f(3, "clusterIP", Str),
                    r(18, "clusterIPs", Str),
                    f(4, "type", Str),
                    r(5, "externalIPs", Str),
                    f(7, "sessionAffinity", Str),
                    f(10, "externalName", Str),
                    f(11, "externalTrafficPolicy", Str),
                    r(19, "ipFamilies", Str),
                    p(17, "ipFamilyPolicy", Str),
                    p(20, "allocateLoadBalancerNodePorts", Bool),
                    p(22, "internalTrafficPolicy", Str),
                ]
            }
        }
        "ServicePort" => {
            const {
                &[
                    f(1, "name", Str),
                    f(2, "protocol", Str),
                    p(6, "appProtocol", Str),
                    f(3, "port", Int),
                    f(4, "targetPort", IntOrString),
                    f(5, "nodePort", Int),
                ]
            }
        }
        // A status a create carries only as zeros.
        "Empty" => const { &[] },
        _ => return None,
    })
}

/// The messages a kind's object is, for the kinds read from protobuf.
fn root(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Namespace" => "Namespace",
        "ConfigMap" => "ConfigMap",
        "Secret" => "Secret",
        "ServiceAccount" => "ServiceAccount",
        "Deployment" => "Deployment",
        "Service" => "Service",
        _ => return None,
    })
}

/// A protobuf field as read off the wire.
#[derive(Debug, Clone)]
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed(u64),
}

fn varint(b: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b
            .get(*pos)
            .ok_or("the protobuf body ends inside a number")?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("a protobuf number is longer than 64 bits".into())
}

fn fields(b: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, String> {
    let mut out = vec![];
    let mut pos = 0;
    while pos < b.len() {
        let key = varint(b, &mut pos)?;
        let (n, wt) = (key >> 3, key & 7);
        let w = match wt {
            0 => Wire::Varint(varint(b, &mut pos)?),
            1 => {
                let s = b
                    .get(pos..pos + 8)
                    .ok_or("the protobuf body ends inside a field")?;
                pos += 8;
                Wire::Fixed(u64::from_le_bytes(s.try_into().map_err(|_| "bad fixed64")?))
            }
            2 => {
                let len = varint(b, &mut pos)? as usize;
                let s = b
                    .get(pos..pos.checked_add(len).ok_or("a protobuf length overflows")?)
                    .ok_or("the protobuf body ends inside a field")?;
                pos += len;
                Wire::Bytes(s)
            }
            5 => {
                let s = b
                    .get(pos..pos + 4)
                    .ok_or("the protobuf body ends inside a field")?;
                pos += 4;
                Wire::Fixed(u64::from(u32::from_le_bytes(
                    s.try_into().map_err(|_| "bad fixed32")?,
                )))
            }
            other => return Err(format!("protobuf wire type {other} is not supported")),
        };
        out.push((n, w));
    }
    Ok(out)
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Bool(b) => !b,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
    }
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a protobuf string is not UTF-8".to_string())
}

fn bytes_of<'a>(w: &Wire<'a>, what: &str) -> Result<&'a [u8], String> {
    match w {
        Wire::Bytes(b) => Ok(b),
        _ => Err(format!("{what}: expected a length-delimited field")),
    }
}

fn map_entry(b: &[u8], value: T) -> Result<(String, Value), String> {
    let (mut k, mut v) = (String::new(), Value::String(String::new()));
    for (n, w) in fields(b)? {
        match n {
            1 => k = text(bytes_of(&w, "a map key")?)?,
            2 => v = scalar(value, &w, "a map value")?,
            _ => {}
        }
    }
    Ok((k, v))
}

fn scalar(t: T, w: &Wire<'_>, what: &str) -> Result<Value, String> {
    Ok(match (t, w) {
        (Str, w) => json!(text(bytes_of(w, what)?)?),
        (MapBytes, w) => {
            use base64::Engine;
            json!(base64::engine::general_purpose::STANDARD.encode(bytes_of(w, what)?))
        }
        (Int, Wire::Varint(v)) => json!(*v as i64),
        (Bool, Wire::Varint(v)) => json!(*v != 0),
        (MapQuantity, w) => {
            let mut s = String::new();
            for (n, x) in fields(bytes_of(w, what)?)? {
                if n == 1 {
                    s = text(bytes_of(&x, what)?)?;
                }
            }
            json!(s)
        }
        (MapStr, w) => json!(text(bytes_of(w, what)?)?),
        (Time, w) => {
            let (mut secs, mut nanos) = (0i64, 0i64);
            for (n, x) in fields(bytes_of(w, what)?)? {
                if let Wire::Varint(v) = x {
                    match n {
                        1 => secs = v as i64,
                        2 => nanos = v as i64,
                        _ => {}
                    }
                }
            }
            if secs == 0 && nanos == 0 {
                Value::Null
            } else {
                json!(
                    chrono::DateTime::from_timestamp(secs, 0)
                        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                )
            }
        }
        (IntOrString, w) => {
            let (mut ty, mut i, mut s) = (0u64, 0i64, String::new());
            for (n, x) in fields(bytes_of(w, what)?)? {
                match (n, &x) {
                    (1, Wire::Varint(v)) => ty = *v,
                    (2, Wire::Varint(v)) => i = *v as i32 as i64,
                    (3, x) => s = text(bytes_of(x, what)?)?,
                    _ => {}
                }
            }
            if ty == 1 { json!(s) } else { json!(i) }
        }
        (Msg(m), w) => message(m, bytes_of(w, what)?, what)?,
        (t, _) => return Err(format!("{what}: the wire type does not fit {t:?}")),
    })
}

fn message(msg: &str, b: &[u8], path: &str) -> Result<Value, String> {
    let schema = schema(msg).ok_or_else(|| format!("{path}: message {msg} is not known"))?;
    let mut out = Map::new();
    for (n, w) in fields(b)? {
        let Some(fd) = schema.iter().find(|fd| fd.n == n) else {
            // Go writes zero values of fields we do not read; a value is refused.
            let zero = match &w {
                Wire::Varint(v) | Wire::Fixed(v) => *v == 0,
                Wire::Bytes(b) => {
                    b.is_empty()
                        || fields(b).is_ok_and(|fs| {
                            fs.iter().all(|(_, x)| {
                                matches!(x, Wire::Varint(0))
                                    || matches!(x, Wire::Bytes(b) if b.is_empty())
                            })
                        })
                }
            };
            if zero {
                continue;
            }
            return Err(format!(
                "{path}: field {n} of {msg} is not read from protobuf by this server; send the object as JSON (kubectl apply or create -f)"
            ));
        };
        let sub = if path.is_empty() {
            fd.name.to_string()
        } else {
            format!("{path}.{}", fd.name)
        };
        match fd.t {
            MapStr | MapBytes | MapQuantity => {
                let (k, v) = map_entry(bytes_of(&w, &sub)?, fd.t)?;
                let m = out.entry(fd.name).or_insert_with(|| json!({}));
                if let Some(m) = m.as_object_mut() {
                    m.insert(k, v);
                }
            }
            t if fd.repeated => {
                let v = scalar(t, &w, &sub)?;
                let a = out.entry(fd.name).or_insert_with(|| json!([]));
                if let Some(a) = a.as_array_mut() {
                    a.push(v);
                }
            }
            t => {
                out.insert(fd.name.into(), scalar(t, &w, &sub)?);
            }
        }
    }
    out.retain(|k, v| {
        let ptr = schema.iter().any(|fd| fd.name == k && fd.ptr);
        !is_zero(v) || (ptr && !v.is_null())
    });
    Ok(Value::Object(out))
}

/// A protobuf request body as the JSON object it encodes.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(b"k8s\0")
        .ok_or("a protobuf body must begin with the k8s\\0 magic")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, w) in fields(rest)? {
        match n {
            1 => {
                for (m, x) in fields(bytes_of(&w, "typeMeta")?)? {
                    match m {
                        1 => api_version = text(bytes_of(&x, "apiVersion")?)?,
                        2 => kind = text(bytes_of(&x, "kind")?)?,
                        _ => {}
                    }
                }
            }
            2 => raw = bytes_of(&w, "raw")?,
            3 if !bytes_of(&w, "contentEncoding")?.is_empty() => {
                return Err("compressed protobuf bodies are not supported".into());
            }
            _ => {}
        }
    }
    let msg = root(&kind).ok_or_else(|| {
        format!("{api_version} {kind} is not read from protobuf by this server; send it as JSON")
    })?;
    let mut obj = message(msg, raw, "")?;
    if let Some(o) = obj.as_object_mut() {
        o.insert("apiVersion".into(), json!(api_version));
        o.insert("kind".into(), json!(kind));
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, wt: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![];
        let mut key = (n << 3) | wt;
        loop {
            let b = (key & 0x7f) as u8;
            key >>= 7;
            if key == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        if wt == 2 {
            out.push(payload.len() as u8);
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn a_configmap_as_kubectl_create_sends_it() -> Result<(), String> {
        // ObjectMeta: name "c1", generateName "" (a zero Go writes), generation 0, labels {a: b}.
        let mut meta = field(1, 2, b"c1");
        meta.extend(field(2, 2, b""));
        meta.extend(field(7, 0, &[0]));
        meta.extend(field(8, 2, &[]));
        let mut entry = field(1, 2, b"a");
        entry.extend(field(2, 2, b"b"));
        meta.extend(field(11, 2, &entry));
        let mut cm = field(1, 2, &meta);
        let mut d = field(1, 2, b"k");
        d.extend(field(2, 2, b"v"));
        cm.extend(field(2, 2, &d));
        let mut tm = field(1, 2, b"v1");
        tm.extend(field(2, 2, b"ConfigMap"));
        let mut body = b"k8s\0".to_vec();
        body.extend(field(1, 2, &tm));
        body.extend(field(2, 2, &cm));
        body.extend(field(3, 2, b""));
        body.extend(field(4, 2, b""));
        let v = decode(&body)?;
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "c1", "labels": {"a": "b"}}, "data": {"k": "v"}})
        );
        // A field the table does not read, with a value: refused, not dropped.
        let mut bad = cm.clone();
        bad.extend(field(9, 2, b"x"));
        let mut body = b"k8s\0".to_vec();
        body.extend(field(1, 2, &tm));
        body.extend(field(2, 2, &bad));
        assert!(decode(&body).unwrap_err().contains("field 9 of ConfigMap"));
        Ok(())
    }
}
