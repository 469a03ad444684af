//! The object operations every caller goes through (the HTTP handlers, later the controllers
//! in the same process): create, read, list, update, patch, delete, with the API's meaning:
//! names, uids, timestamps, generations, status kept apart from spec, resourceVersions as
//! compare-and-set, finalizers holding a delete, field validation.

use serde_json::{Map, Value, json};

use crate::patch::{self, PatchType};
use crate::resources::Resource;
use crate::store::{self, Backend, KeyValue};
use crate::validate;

/// An API error, answered as a `Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: Value::Null,
        }
    }

    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn invalid(r: &Resource, name: &str, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!("{} \"{name}\" is invalid: {}", r.kind, message.into()),
        );
        e.details = json!({"name": name, "group": r.group, "kind": r.kind});
        e
    }

    pub fn not_found(r: &Resource, name: &str) -> ApiError {
        let mut e = ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(r)),
        );
        e.details = json!({"name": name, "group": r.group, "kind": r.plural});
        e
    }

    pub fn status(&self) -> Value {
        let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code});
        if !self.details.is_null()
            && let Some(o) = s.as_object_mut()
        {
            o.insert("details".into(), self.details.clone());
        }
        s
    }
}

fn qualified(r: &Resource) -> String {
    if r.group.is_empty() {
        r.plural.to_string()
    } else {
        format!("{}.{}", r.plural, r.group)
    }
}

fn storage_error(r: &Resource, name: &str, e: store::Error) -> ApiError {
    match e {
        store::Error::Exists { .. } => {
            let mut x = ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified(r)),
            );
            x.details = json!({"name": name, "group": r.group, "kind": r.plural});
            x
        }
        store::Error::NotFound { .. } => ApiError::not_found(r, name),
        store::Error::Conflict { .. } => {
            let mut x = ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                    qualified(r)
                ),
            );
            x.details = json!({"name": name, "group": r.group, "kind": r.plural});
            x
        }
        store::Error::Compacted { asked, oldest } => ApiError::new(
            410,
            "Expired",
            format!("too old resource version: {asked} ({oldest})"),
        ),
        store::Error::Storage(m) => ApiError::new(500, "InternalError", m),
    }
}

/// How unknown fields are treated (`?fieldValidation=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> Result<FieldValidation, ApiError> {
        match s {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(o) => Err(ApiError::bad(format!(
                "fieldValidation: invalid value {o:?}: must be Ignore, Warn or Strict"
            ))),
        }
    }
}

pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

fn uid() -> String {
    let mut b = [0u8; 16];
    let _ = graviola::random::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::pki::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Five characters for `generateName`, from the alphabet Kubernetes uses (no vowels).
pub fn suffix() -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut b = [0u8; 5];
    let _ = graviola::random::fill(&mut b);
    b.iter()
        .map(|x| ALPHA[*x as usize % ALPHA.len()] as char)
        .collect()
}

/// DNS-1123: a label (namespaces, services) or a subdomain (most names).
pub fn check_name(name: &str, label: bool) -> Result<(), String> {
    let max = if label { 63 } else { 253 };
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.');
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty()
        || name.len() > max
        || !name.chars().all(ok_char)
        || !alnum(name.chars().next())
        || !alnum(name.chars().last())
    {
        return Err(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 {} must consist of lower case alphanumeric characters, '-'{}, must start and end with an alphanumeric character and be at most {max} characters",
            if label { "label" } else { "subdomain" },
            if label { "" } else { " or '.'" }
        ));
    }
    Ok(())
}

fn meta(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.is_object() {
        *obj = json!({});
    }
    let m = &mut obj["metadata"];
    if !m.is_object() {
        *m = json!({});
    }
    match m {
        Value::Object(m) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

pub fn name_of(o: &Value) -> &str {
    o.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn rv_of(o: &Value) -> Option<u64> {
    o.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
}

/// A stored row as the API shows it.
pub fn decode(r: &Resource, kv: &KeyValue) -> Value {
    decode_bytes(r, &kv.value, kv.mod_revision)
}

pub fn decode_bytes(r: &Resource, value: &[u8], rev: u64) -> Value {
    let mut o: Value = serde_json::from_slice(value).unwrap_or_else(|_| json!({}));
    if let Some(m) = o.as_object_mut() {
        m.insert("apiVersion".into(), json!(r.api_version()));
        m.insert("kind".into(), json!(r.kind));
    }
    meta(&mut o).insert("resourceVersion".into(), json!(rev.to_string()));
    o
}

fn encode(o: &Value) -> Vec<u8> {
    let mut o = o.clone();
    meta(&mut o).remove("resourceVersion");
    serde_json::to_vec(&o).unwrap_or_default()
}

/// What a write returns: the object and any warnings (unknown fields under `Warn`).
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub propagation: Option<String>,
    pub grace_seconds: Option<i64>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Objects {
    pub store: Backend,
}

impl Objects {
    pub fn new(store: Backend) -> Objects {
        Objects { store }
    }

    pub async fn get(&self, r: &Resource, ns: Option<&str>, name: &str) -> Result<Value, ApiError> {
        match self
            .store
            .get(&r.key(ns, name))
            .await
            .map_err(|e| storage_error(r, name, e))?
        {
            Some(kv) => Ok(decode(r, &kv)),
            None => Err(ApiError::not_found(r, name)),
        }
    }

    pub async fn list(
        &self,
        r: &Resource,
        ns: Option<&str>,
    ) -> Result<(Vec<Value>, u64), ApiError> {
        let (kvs, rev) = self
            .store
            .list(&r.prefix(ns))
            .await
            .map_err(|e| storage_error(r, "", e))?;
        Ok((kvs.iter().map(|kv| decode(r, kv)).collect(), rev))
    }

    fn validate(
        &self,
        r: &Resource,
        obj: &mut Value,
        v: FieldValidation,
    ) -> Result<Vec<String>, ApiError> {
        let name = name_of(obj).to_string();
        let unknown = validate::check(r.kind, obj).map_err(|e| ApiError::bad(e.to_string()))?;
        if unknown.is_empty() || v == FieldValidation::Ignore {
            return Ok(vec![]);
        }
        let msgs: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        if v == FieldValidation::Strict {
            let mut e = ApiError::bad(format!(
                "{} in {} {}",
                msgs.join(", "),
                r.kind,
                if name.is_empty() { "" } else { &name }
            ));
            e.message = format!("strict decoding error: {}", msgs.join(", "));
            return Err(e);
        }
        Ok(msgs)
    }

    fn check_kind(r: &Resource, obj: &Value) -> Result<(), ApiError> {
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or(r.kind);
        let av = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| r.api_version());
        if kind != r.kind || av != r.api_version() {
            return Err(ApiError::bad(format!(
                "the body is {av} {kind}, this path serves {} {}",
                r.api_version(),
                r.kind
            )));
        }
        Ok(())
    }

    pub async fn create(
        &self,
        r: &Resource,
        ns: Option<&str>,
        mut obj: Value,
        v: FieldValidation,
    ) -> Result<Written, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad("the body must be a JSON object"));
        }
        Self::check_kind(r, &obj)?;
        let ns = if r.namespaced { ns } else { None };
        {
            let m = meta(&mut obj);
            if let Some(body_ns) = m.get("namespace").and_then(Value::as_str)
                && Some(body_ns) != ns
                && r.namespaced
            {
                return Err(ApiError::bad(format!(
                    "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({})",
                    ns.unwrap_or("")
                )));
            }
            if m.get("resourceVersion")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
            {
                return Err(ApiError::invalid(
                    r,
                    m.get("name").and_then(Value::as_str).unwrap_or(""),
                    "metadata.resourceVersion: Invalid value: must be empty when creating an object",
                ));
            }
            let has_name = m
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            if !has_name {
                match m.get("generateName").and_then(Value::as_str) {
                    Some(g) if !g.is_empty() => {
                        let n = format!("{g}{}", suffix());
                        m.insert("name".into(), json!(n));
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            r,
                            "",
                            "metadata.name: Required value: name or generateName is required",
                        ));
                    }
                }
            }
            if let Some(ns) = ns {
                m.insert("namespace".into(), json!(ns));
            } else {
                m.remove("namespace");
            }
            m.insert("uid".into(), json!(uid()));
            m.insert("creationTimestamp".into(), json!(now_rfc3339()));
            m.remove("deletionTimestamp");
            m.remove("resourceVersion");
            if r.has_spec {
                m.insert("generation".into(), json!(1));
            }
        }
        let name = name_of(&obj).to_string();
        check_name(&name, matches!(r.plural, "namespaces" | "services"))
            .map_err(|e| ApiError::invalid(r, &name, e))?;
        if let Some(ns) = ns {
            let nsr = Resource::find("", "v1", "namespaces")
                .ok_or_else(|| ApiError::bad("no namespaces"))?;
            match self.get(nsr, None, ns).await {
                Ok(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
                    return Err(ApiError::new(
                        403,
                        "Forbidden",
                        format!(
                            "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                            qualified(r)
                        ),
                    ));
                }
                Ok(_) => {}
                Err(_) => {
                    let mut e = ApiError::not_found(nsr, ns);
                    e.details = json!({"name": ns, "kind": "namespaces"});
                    return Err(e);
                }
            }
        }
        let warnings = self.validate(r, &mut obj, v)?;
        prepare_create(r, &mut obj);
        let ev = self
            .store
            .create(&r.key(ns, &name), encode(&obj))
            .await
            .map_err(|e| storage_error(r, &name, e))?;
        Ok(Written {
            object: decode_bytes(r, &ev.value, ev.revision),
            warnings,
        })
    }

    /// PUT: the whole object (or its status, with `sub = Some("status")`).
    pub async fn update(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        sub: Option<&str>,
        v: FieldValidation,
    ) -> Result<Written, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad("the body must be a JSON object"));
        }
        Self::check_kind(r, &obj)?;
        let body_name = name_of(&obj);
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let old = self.get(r, ns, name).await?;
        let expect = rv_of(&obj);
        self.replace(r, ns, name, &old, obj, sub, expect, v).await
    }

    /// Writes `new` over `old`, carrying what a client may not change.
    #[allow(clippy::too_many_arguments)]
    async fn replace(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        old: &Value,
        mut new: Value,
        sub: Option<&str>,
        expect: Option<u64>,
        v: FieldValidation,
    ) -> Result<Written, ApiError> {
        let ns = if r.namespaced { ns } else { None };
        if sub == Some("status") {
            let mut merged = old.clone();
            merged["status"] = new.get("status").cloned().unwrap_or(json!({}));
            new = merged;
        } else if r.has_status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(o) = new.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
        }
        {
            let om = old.get("metadata").cloned().unwrap_or(json!({}));
            let m = meta(&mut new);
            m.insert("name".into(), json!(name));
            match ns {
                Some(ns) => m.insert("namespace".into(), json!(ns)),
                None => m.remove("namespace"),
            };
            for k in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match om.get(k) {
                    Some(x) => m.insert(k.into(), x.clone()),
                    None => m.remove(k),
                };
            }
        }
        let warnings = self.validate(r, &mut new, v)?;
        if r.has_spec && old.get("spec") != new.get("spec") {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta(&mut new).insert("generation".into(), json!(g + 1));
        }
        let key = r.key(ns, name);
        let expect = expect.or_else(|| rv_of(old));
        // A delete held by finalizers completes when the last one is removed.
        let finalizers_left = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let namespace_held = r.plural == "namespaces"
            && new
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty());
        if new.pointer("/metadata/deletionTimestamp").is_some()
            && !finalizers_left
            && !namespace_held
            && !graceful_pod(r, &new)
        {
            let ev = self
                .store
                .delete(&key, expect)
                .await
                .map_err(|e| storage_error(r, name, e))?;
            let mut o = new;
            meta(&mut o).insert("resourceVersion".into(), json!(ev.revision.to_string()));
            return Ok(Written {
                object: o,
                warnings,
            });
        }
        let ev = self
            .store
            .update(&key, encode(&new), expect)
            .await
            .map_err(|e| storage_error(r, name, e))?;
        Ok(Written {
            object: decode_bytes(r, &ev.value, ev.revision),
            warnings,
        })
    }

    /// PATCH: read, patch, write with the read's revision; a conflict with another writer is
    /// retried on the newer object unless the patch itself names a resourceVersion.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        kind: PatchType,
        patch_body: &Value,
        sub: Option<&str>,
        v: FieldValidation,
    ) -> Result<Written, ApiError> {
        let pinned = patch_body
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<u64>().ok());
        let mut tries = 0;
        loop {
            let old = self.get(r, ns, name).await?;
            let new = patch::apply(kind, &old, patch_body).map_err(ApiError::bad)?;
            let expect = pinned.or_else(|| rv_of(&old));
            match self.replace(r, ns, name, &old, new, sub, expect, v).await {
                Err(e) if e.reason == "Conflict" && pinned.is_none() && tries < 5 => tries += 1,
                other => return other,
            }
        }
    }

    /// DELETE: removed at once, or marked (deletionTimestamp) while finalizers, a foreground
    /// deletion or a running pod's grace period hold it.
    pub async fn delete(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let ns = if r.namespaced { ns } else { None };
        let mut o = self.get(r, ns, name).await?;
        if let Some(u) = &opts.precondition_uid
            && o.pointer("/metadata/uid").and_then(Value::as_str) != Some(u)
        {
            return Err(ApiError::new(
                409,
                "Conflict",
                format!(
                    "Precondition failed: UID in precondition: {u}, UID in object meta: {}",
                    o.pointer("/metadata/uid")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                ),
            ));
        }
        let expect = opts.precondition_rv.or_else(|| rv_of(&o));
        let key = r.key(ns, name);
        if o.pointer("/metadata/deletionTimestamp").is_some() {
            // Already being deleted: a shorter grace period may end a pod's wait.
            if r.plural == "pods" && opts.grace_seconds == Some(0) {
                let ev = self
                    .store
                    .delete(&key, expect)
                    .await
                    .map_err(|e| storage_error(r, name, e))?;
                meta(&mut o).insert("resourceVersion".into(), json!(ev.revision.to_string()));
            }
            return Ok(o);
        }
        let mut finalizers: Vec<Value> = o
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        match opts.propagation.as_deref() {
            Some("Foreground") => finalizers.push(json!("foregroundDeletion")),
            Some("Orphan") => finalizers.push(json!("orphan")),
            Some("Background") | None => {}
            Some(p) => {
                return Err(ApiError::bad(format!(
                    "propagationPolicy: unknown value {p:?}: must be Foreground, Background or Orphan"
                )));
            }
        }
        let grace = if r.plural == "pods" {
            opts.grace_seconds
                .or_else(|| {
                    o.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30)
        } else {
            0
        };
        let bound_pod = r.plural == "pods" && on_a_node(&o) && grace > 0;
        if finalizers.is_empty() && !bound_pod && r.plural != "namespaces" {
            let ev = self
                .store
                .delete(&key, expect)
                .await
                .map_err(|e| storage_error(r, name, e))?;
            meta(&mut o).insert("resourceVersion".into(), json!(ev.revision.to_string()));
            return Ok(o);
        }
        {
            let m = meta(&mut o);
            m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(grace));
            if !finalizers.is_empty() {
                m.insert("finalizers".into(), Value::Array(finalizers));
            }
        }
        if r.plural == "namespaces" {
            o["status"] = json!({"phase": "Terminating"});
        }
        let ev = self
            .store
            .update(&key, encode(&o), expect)
            .await
            .map_err(|e| storage_error(r, name, e))?;
        Ok(decode_bytes(r, &ev.value, ev.revision))
    }
}

fn on_a_node(pod: &Value) -> bool {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
}

/// A pod on a node with a grace period is deleted by its node's agent, not by the last
/// finalizer's removal.
fn graceful_pod(r: &Resource, o: &Value) -> bool {
    r.plural == "pods"
        && on_a_node(o)
        && o.pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0
}

/// The defaults a new object gets, per kind.
fn prepare_create(r: &Resource, o: &mut Value) {
    match r.plural {
        "namespaces" => {
            o["status"] = json!({"phase": "Active"});
            o["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        "pods" => {
            o["status"] = json!({"phase": "Pending", "qosClass": qos_class(o)});
        }
        "deployments" | "replicasets" => {
            o["status"] = json!({});
        }
        "services" => {
            o["status"] = json!({"loadBalancer": {}});
            if o.pointer("/spec/type").is_none() {
                o["spec"]["type"] = json!("ClusterIP");
            }
        }
        "secrets" if o.get("type").is_none() => {
            o["type"] = json!("Opaque");
        }
        _ => {}
    }
}

/// Guaranteed when every container's limits equal its requests for cpu and memory,
/// BestEffort when none has any, Burstable otherwise.
pub fn qos_class(pod: &Value) -> &'static str {
    let cs: Vec<&Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    let any = cs.iter().any(|c| {
        c.pointer("/resources/limits")
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
            || c.pointer("/resources/requests")
                .and_then(Value::as_object)
                .is_some_and(|m| !m.is_empty())
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = cs.iter().all(|c| {
        ["cpu", "memory"].iter().all(|res| {
            let lim = c.pointer(&format!("/resources/limits/{res}"));
            let req = c.pointer(&format!("/resources/requests/{res}")).or(lim);
            lim.is_some() && lim == req
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}
