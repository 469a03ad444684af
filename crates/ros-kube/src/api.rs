//! The HTTP side of the API server: paths to resources, discovery, the verbs, watches as
//! chunked JSON lines, Tables for `kubectl get`, the small OpenAPI v3 document that lets kubectl
//! leave field validation to the server.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::auth::{self, Decision, User};
use crate::objects::{ApiError, DeleteOptions, FieldValidation, Objects, decode_bytes};
use crate::patch::PatchType;
use crate::resources::{self, RESOURCES, Resource};
use crate::select::{Fields, Labels};
use crate::store;
use crate::table::{self, Include};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The largest request body taken (the real server's limit is 3 MiB).
const MAX_BODY: usize = 3 << 20;

/// The version this server answers `/version` with: the Kubernetes API it follows.
pub const KUBE_VERSION: &str = "v1.33.0";

#[derive(Debug)]
pub struct Api {
    pub objects: Objects,
    pub ca_pem: String,
    /// How often an idle watch that asked for them gets a bookmark.
    pub bookmark_every: Duration,
    /// The CA, certificate and key the server calls agents' endpoints with.
    pub kubelet_client: std::sync::OnceLock<(String, String, String)>,
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed_unsync()
}

pub fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

/// `%XX` and `+` decoded.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: Option<&str>) -> Query {
        Query(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (unescape(k), unescape(v)),
                    None => (unescape(p), String::new()),
                })
                .collect(),
        )
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated key (`command=a&command=b`).
    pub fn all(&self, k: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1" | ""))
    }
}

/// A request's target once its path is read.
#[derive(Debug)]
struct Target {
    res: &'static Resource,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

/// After the resource: a name, and a subresource after it.
fn name_and_sub<'a>(tail: &[&'a str]) -> Result<(Option<&'a str>, Option<&'a str>), ApiError> {
    match tail {
        [] => Ok((None, None)),
        [n] => Ok((Some(*n), None)),
        [n, s] => Ok((Some(*n), Some(*s))),
        _ => Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
    }
}

fn parse_target(path: &str) -> Result<Option<Target>, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", "v1", rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return Ok(None),
    };
    let find = |plural: &str| {
        Resource::find(group, version, plural).ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!("the server could not find the requested resource ({plural})"),
            )
        })
    };
    let t = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if Resource::find(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            let res = find(plural)?;
            let (name, sub) = name_and_sub(tail)?;
            Target {
                res,
                ns: Some(unescape(ns)),
                name: name.map(unescape),
                sub: sub.map(str::to_string),
            }
        }
        [plural, tail @ ..] => {
            let res = find(plural)?;
            let (name, sub) = name_and_sub(tail)?;
            if res.namespaced && name.is_some() {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ));
            }
            Target {
                res,
                ns: None,
                name: name.map(unescape),
                sub: sub.map(str::to_string),
            }
        }
        [] => return Ok(None),
    };
    if let Some(s) = &t.sub
        && !t.res.subresources.contains(&s.as_str())
    {
        return Err(ApiError::new(
            404,
            "NotFound",
            format!(
                "the server could not find the requested resource ({}/{s})",
                t.res.plural
            ),
        ));
    }
    Ok(Some(t))
}

fn verb(method: &Method, t: &Target, q: &Query) -> &'static str {
    match *method {
        Method::GET if q.flag("watch") => "watch",
        Method::GET if t.name.is_none() => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if t.name.is_none() => "deletecollection",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

fn wants_table(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

fn include_of(q: &Query) -> Include {
    match q.get("includeObject") {
        Some("None") => Include::None,
        Some("Metadata") => Include::Metadata,
        _ => Include::Object,
    }
}

async fn read_body(req: Request<Incoming>) -> Result<(Bytes, Option<String>), ApiError> {
    let ct = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // CBOR gets 415 (client-go then sends JSON); protobuf is read below.
    if let Some(c) = &ct
        && c.contains("cbor")
    {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/vnd.kubernetes.protobuf, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (not {c})"
            ),
        ));
    }
    let protobuf = ct.as_deref().is_some_and(|c| c.contains("protobuf"));
    let limited = http_body_util::Limited::new(req.into_body(), MAX_BODY);
    let body = limited
        .collect()
        .await
        .map_err(|e| {
            ApiError::new(
                413,
                "RequestEntityTooLarge",
                format!("the request body: {e}"),
            )
        })?
        .to_bytes();
    if protobuf {
        let v = crate::proto::decode(&body)
            .map_err(|e| ApiError::new(415, "UnsupportedMediaType", e))?;
        let json = Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
        return Ok((json, Some("application/json".into())));
    }
    Ok((body, ct))
}

fn parse_json(b: &[u8]) -> Result<Value, ApiError> {
    if b.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(b).map_err(|e| {
        ApiError::bad(format!(
            "the request body is not JSON (line {}, column {}): {e}",
            e.line(),
            e.column()
        ))
    })
}

fn with_warnings(mut r: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        if let Ok(v) =
            hyper::header::HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "\\\"")))
        {
            r.headers_mut().append("warning", v);
        }
    }
    r
}

impl Api {
    pub fn new(objects: Objects, ca_pem: String) -> Arc<Api> {
        Arc::new(Api {
            objects,
            ca_pem,
            bookmark_every: Duration::from_secs(10),
            kubelet_client: std::sync::OnceLock::new(),
        })
    }

    /// One request from an authenticated (or anonymous: `None`) client.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        user: Option<User>,
    ) -> Response<Body> {
        let path = req.uri().path().to_string();
        // Open to all: the CA (what an agent checks against its token) and liveness.
        match path.as_str() {
            "/cacerts" => return Response::new(full(self.ca_pem.clone())),
            "/ping" => return Response::new(full("pong")),
            _ => {}
        }
        let Some(user) = user else {
            return error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
        };
        match self.route(req, &path, &user).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        }
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        path: &str,
        user: &User,
    ) -> Result<Response<Body>, ApiError> {
        let q = Query::parse(req.uri().query());
        let trimmed = path.trim_end_matches('/');
        match trimmed {
            "/version" => {
                return Ok(json_response(
                    200,
                    &json!({"major": "1", "minor": "33",
                    "gitVersion": format!("{KUBE_VERSION}+ros"), "gitCommit": "", "gitTreeState": "clean",
                    "buildDate": "", "goVersion": "", "compiler": "rustc", "platform": format!("linux/{}", std::env::consts::ARCH)}),
                ));
            }
            "/healthz" | "/livez" | "/readyz" => return Ok(Response::new(full("ok"))),
            "/api" => return Ok(json_response(200, &resources::api_versions())),
            "/apis" => return Ok(json_response(200, &resources::group_list())),
            "/api/v1" => return Ok(json_response(200, &resources::resource_list("", "v1"))),
            "/openapi/v3" => return Ok(json_response(200, &openapi_root())),
            // Older kubectl (1.27) reads v2 first: an empty protobuf document is a valid, empty
            // one (it then checks no fields itself and sends fieldValidation to the server).
            "/openapi/v2" => {
                let mut r = Response::new(full(Bytes::new()));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/octet-stream"),
                );
                return Ok(r);
            }
            _ => {}
        }
        if let Some(gv) = trimmed.strip_prefix("/openapi/v3/") {
            return openapi_gv(gv).map(|d| json_response(200, &d));
        }
        if let Some(rest) = trimmed.strip_prefix("/apis/") {
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                [g] => {
                    return resources::group(g)
                        .map(|v| json_response(200, &v))
                        .ok_or_else(|| ApiError::new(404, "NotFound", format!("no group {g}")));
                }
                [g, v] => {
                    if resources::GROUPS.iter().any(|(gg, vv)| gg == g && vv == v) {
                        return Ok(json_response(200, &resources::resource_list(g, v)));
                    }
                    return Err(ApiError::new(
                        404,
                        "NotFound",
                        format!("no group version {g}/{v}"),
                    ));
                }
                _ => {}
            }
        }
        let Some(t) = parse_target(trimmed)? else {
            return Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        };
        let verb = verb(req.method(), &t, &q);
        let decision = auth::authorize(
            user,
            verb,
            t.res.plural,
            t.ns.as_deref(),
            t.name.as_deref(),
            t.sub.as_deref(),
        );
        let mut must_name = None;
        match decision {
            Decision::Allow => {}
            Decision::IfNamed(n) => must_name = Some(n),
            Decision::Deny(m) => return Err(ApiError::new(403, "Forbidden", m)),
            Decision::IfPodOnNode(node) => {
                let name = t.name.as_deref().unwrap_or("");
                let pod = self.objects.get(t.res, t.ns.as_deref(), name).await?;
                if pod.pointer("/spec/nodeName").and_then(Value::as_str) != Some(node.as_str()) {
                    return Err(ApiError::new(
                        403,
                        "Forbidden",
                        format!(
                            "User \"{}\" cannot {verb} pod \"{name}\": it is not bound to node {node}",
                            user.name
                        ),
                    ));
                }
            }
        }
        self.dispatch(req, t, q, verb, must_name.map(|n| (n, user.name.clone())))
            .await
    }

    async fn dispatch(
        &self,
        req: Request<Incoming>,
        t: Target,
        q: Query,
        verb: &str,
        must_name: Option<(String, String)>,
    ) -> Result<Response<Body>, ApiError> {
        let r = t.res;
        let ns = t.ns.as_deref();
        let table = wants_table(&req);
        let validation = FieldValidation::parse(q.get("fieldValidation"))?;
        match (verb, t.sub.as_deref()) {
            ("watch", _) => self.watch(r, ns, t.name.as_deref(), &q, table).await,
            ("list", _) => self.list(r, ns, &q, table).await,
            ("get", Some("scale")) => {
                let name = t.name.as_deref().unwrap_or("");
                let o = self.objects.get(r, ns, name).await?;
                Ok(json_response(200, &scale_of(&o)))
            }
            ("get", Some("log")) => {
                self.pod_log(r, ns, t.name.as_deref().unwrap_or(""), &q)
                    .await
            }
            ("get" | "create", Some("exec")) => {
                let name = t.name.clone().unwrap_or_default();
                self.pod_exec(req, r, ns, &name, &q).await
            }
            ("get", _) => {
                let o = self
                    .objects
                    .get(r, ns, t.name.as_deref().unwrap_or(""))
                    .await?;
                if table {
                    let rv = o
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    return Ok(json_response(
                        200,
                        &table::table(r, &[o], &rv, include_of(&q)),
                    ));
                }
                Ok(json_response(200, &o))
            }
            ("create", Some("binding")) => {
                let name = t.name.clone().unwrap_or_default();
                let (body, _) = read_body(req).await?;
                let b = parse_json(&body)?;
                let node = b
                    .pointer("/target/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if node.is_empty() {
                    return Err(ApiError::bad("a Binding needs target.name"));
                }
                let pod = self.objects.get(r, ns, &name).await?;
                if pod
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty())
                {
                    return Err(ApiError::new(
                        409,
                        "Conflict",
                        format!("pod {name} is already assigned to a node"),
                    ));
                }
                let patch = json!({"metadata": {"resourceVersion": pod.pointer("/metadata/resourceVersion")}, "spec": {"nodeName": node}});
                self.objects
                    .patch(
                        r,
                        ns,
                        &name,
                        PatchType::Merge,
                        &patch,
                        None,
                        FieldValidation::Ignore,
                    )
                    .await?;
                Ok(json_response(
                    201,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ))
            }
            ("create", Some(_)) => Err(ApiError::new(
                503,
                "ServiceUnavailable",
                "no agent serves this pod yet",
            )),
            ("create", None) => {
                let (body, _) = read_body(req).await?;
                let obj = parse_json(&body)?;
                if let Some((want, user)) = must_name {
                    let name = crate::objects::name_of(&obj);
                    if name != want {
                        return Err(ApiError::new(
                            403,
                            "Forbidden",
                            format!(
                                "{} \"{name}\" is forbidden: User \"{user}\" may create only its own ({want})",
                                r.plural
                            ),
                        ));
                    }
                }
                let w = self.objects.create(r, ns, obj, validation).await?;
                Ok(with_warnings(json_response(201, &w.object), &w.warnings))
            }
            ("update", sub) => {
                let name = t.name.as_deref().unwrap_or("");
                let (body, _) = read_body(req).await?;
                let obj = parse_json(&body)?;
                if sub == Some("scale") {
                    return self.set_scale(r, ns, name, &obj, validation).await;
                }
                let w = self
                    .objects
                    .update(r, ns, name, obj, sub, validation)
                    .await?;
                Ok(with_warnings(json_response(200, &w.object), &w.warnings))
            }
            ("patch", sub) => {
                let name = t.name.as_deref().unwrap_or("");
                let (body, ct) = read_body(req).await?;
                let ct = ct.unwrap_or_default();
                let Some(kind) = PatchType::from_content_type(&ct) else {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!(
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (not {ct:?})"
                        ),
                    ));
                };
                let p = parse_json(&body)?;
                if sub == Some("scale") {
                    let o = self.objects.get(r, ns, name).await?;
                    let scaled =
                        crate::patch::apply(kind, &scale_of(&o), &p).map_err(ApiError::bad)?;
                    return self.set_scale(r, ns, name, &scaled, validation).await;
                }
                let w = self
                    .objects
                    .patch(r, ns, name, kind, &p, sub, validation)
                    .await?;
                Ok(with_warnings(json_response(200, &w.object), &w.warnings))
            }
            ("delete", _) => {
                let name = t.name.clone().unwrap_or_default();
                let (body, _) = read_body(req).await?;
                let opts = delete_options(&q, &parse_json(&body)?)?;
                let o = self.objects.delete(r, ns, &name, &opts).await?;
                Ok(json_response(200, &o))
            }
            ("deletecollection", _) => {
                let (body, _) = read_body(req).await?;
                let opts = delete_options(&q, &parse_json(&body)?)?;
                let (items, _) = self.selected(r, ns, &q).await?;
                let mut gone = vec![];
                for o in items {
                    let name = crate::objects::name_of(&o).to_string();
                    let ons = o
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    match self.objects.delete(r, ons.as_deref(), &name, &opts).await {
                        Ok(o) => gone.push(o),
                        Err(e) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(json_response(
                    200,
                    &json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(),
                    "metadata": {"resourceVersion": self.objects.store.revision().to_string()}, "items": gone}),
                ))
            }
            _ => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )),
        }
    }

    /// Writes a Scale's `spec.replicas` to its deployment or replicaset; the new Scale.
    async fn set_scale(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        scale: &Value,
        validation: FieldValidation,
    ) -> Result<Response<Body>, ApiError> {
        let replicas = scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
        let patch = json!({"spec": {"replicas": replicas}});
        let w = self
            .objects
            .patch(r, ns, name, PatchType::Merge, &patch, None, validation)
            .await?;
        Ok(json_response(200, &scale_of(&w.object)))
    }

    /// The container a `log` or `exec` names (`?container=`, or the pod's only one).
    fn container_of(pod: &Value, name: &str, q: &Query) -> Result<String, ApiError> {
        let containers: Vec<String> = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
            .collect();
        match q.get("container") {
            Some(c) if !c.is_empty() => {
                if !containers.iter().any(|x| x == c) {
                    return Err(ApiError::bad(format!(
                        "container {c} is not valid for pod {name}"
                    )));
                }
                Ok(c.to_string())
            }
            _ if containers.len() == 1 => Ok(containers[0].clone()),
            _ => Err(ApiError::bad(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            ))),
        }
    }

    /// A client of the agent on the pod's node (its InternalIP, its endpoint's port), with
    /// the server's own certificate for agents.
    async fn agent_of(&self, pod: &Value, name: &str) -> Result<crate::client::Client, ApiError> {
        let node_name = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        if node_name.is_empty() {
            return Err(ApiError::bad(format!(
                "pod {name} is not scheduled to a node yet"
            )));
        }
        let nr = Resource::find("", "v1", "nodes").ok_or_else(|| ApiError::bad("no nodes"))?;
        let node = self.objects.get(nr, None, node_name).await?;
        let ip = node
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .find(|x| x.get("type").and_then(Value::as_str) == Some("InternalIP"))
            })
            .and_then(|x| x.get("address").and_then(Value::as_str))
            .unwrap_or("127.0.0.1")
            .to_string();
        let port = node
            .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let Some((ca, cert, key)) = self.kubelet_client.get() else {
            return Err(ApiError::new(
                503,
                "ServiceUnavailable",
                "the server has no client for agents",
            ));
        };
        if port == 0 {
            return Err(ApiError::new(
                503,
                "ServiceUnavailable",
                format!("node {node_name} serves no logs or exec"),
            ));
        }
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip
        };
        crate::client::Client::new(&format!("https://{host}:{port}"), ca, cert, key)
            .map_err(|e| ApiError::new(503, "ServiceUnavailable", format!("node {node_name}: {e}")))
    }

    /// `pods/NAME/exec` over a WebSocket: the upgrade asked of the pod's node's agent, whose
    /// answer goes back to the client, then the two connections spliced together (as the real
    /// API server proxies to the kubelet).
    async fn pod_exec(
        &self,
        mut req: Request<Incoming>,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        q: &Query,
    ) -> Result<Response<Body>, ApiError> {
        let pod = self.objects.get(r, ns, name).await?;
        let container = Self::container_of(&pod, name, q)?;
        let client = self.agent_of(&pod, name).await?;
        if !req
            .headers()
            .get(hyper::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        {
            return Err(ApiError::bad(
                "exec is served over WebSocket (v5.channel.k8s.io); SPDY is not",
            ));
        }
        let mut headers: Vec<(&str, String)> = vec![];
        for h in [
            "connection",
            "upgrade",
            "sec-websocket-key",
            "sec-websocket-version",
            "sec-websocket-protocol",
        ] {
            for v in req.headers().get_all(h) {
                if let Ok(v) = v.to_str() {
                    headers.push((h, v.to_string()));
                }
            }
        }
        let path = format!(
            "/exec/{}/{name}/{container}?{}",
            ns.unwrap_or("default"),
            req.uri().query().unwrap_or("")
        );
        let mut resp = client
            .get_upgrade(&path, &headers)
            .await
            .map_err(|e| ApiError::new(503, "ServiceUnavailable", e.to_string()))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let code = resp.status().as_u16();
            let msg = resp
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            return Err(ApiError::new(code, "BadRequest", msg));
        }
        let mut out = Response::new(full(""));
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        for (k, v) in resp.headers() {
            out.headers_mut().insert(k.clone(), v.clone());
        }
        let client_side = hyper::upgrade::on(&mut req);
        let agent_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(c), Ok(a)) = (client_side.await, agent_side.await) {
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(a)).await;
            }
        });
        Ok(out)
    }

    /// `pods/NAME/log`: the pod's node's agent asked for the container's log, its answer
    /// streamed back (`follow` keeps it open).
    async fn pod_log(
        &self,
        r: &Resource,
        ns: Option<&str>,
        name: &str,
        q: &Query,
    ) -> Result<Response<Body>, ApiError> {
        let pod = self.objects.get(r, ns, name).await?;
        let container = Self::container_of(&pod, name, q)?;
        let client = self.agent_of(&pod, name).await?;
        let mut path = format!(
            "/containerLogs/{}/{name}/{container}?",
            ns.unwrap_or("default")
        );
        for k in ["follow", "previous", "tailLines", "timestamps"] {
            if let Some(v) = q.get(k) {
                path.push_str(&format!("{k}={v}&"));
            }
        }
        let resp = client
            .get_stream(&path)
            .await
            .map_err(|e| ApiError::new(503, "ServiceUnavailable", e.to_string()))?;
        if !resp.status().is_success() {
            let code = resp.status().as_u16();
            let msg = resp
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            return Err(ApiError::new(code, "BadRequest", msg));
        }
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let mut body = resp.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data()
                    && tx.send(data).await.is_err()
                {
                    return;
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut out = Response::new(StreamBody::new(stream).boxed_unsync());
        out.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain"),
        );
        Ok(out)
    }

    async fn selected(
        &self,
        r: &Resource,
        ns: Option<&str>,
        q: &Query,
    ) -> Result<(Vec<Value>, u64), ApiError> {
        let labels = Labels::parse(q.get("labelSelector").unwrap_or("")).map_err(ApiError::bad)?;
        let fields = Fields::parse(q.get("fieldSelector").unwrap_or("")).map_err(ApiError::bad)?;
        let (items, rev) = self.objects.list(r, ns).await?;
        Ok((
            items
                .into_iter()
                .filter(|o| labels.matches(o) && fields.matches(o))
                .collect(),
            rev,
        ))
    }

    async fn list(
        &self,
        r: &Resource,
        ns: Option<&str>,
        q: &Query,
        table: bool,
    ) -> Result<Response<Body>, ApiError> {
        let (items, rev) = self.selected(r, ns, q).await?;
        let rv = rev.to_string();
        if table {
            return Ok(json_response(
                200,
                &table::table(r, &items, &rv, include_of(q)),
            ));
        }
        Ok(json_response(
            200,
            &json!({"kind": format!("{}List", r.kind), "apiVersion": r.api_version(),
            "metadata": {"resourceVersion": rv}, "items": items}),
        ))
    }

    /// A watch: synthetic ADDED events for what exists when no resourceVersion (or "0") is
    /// given, then every change after it as it commits; ERROR 410 for a compacted one.
    async fn watch(
        &self,
        r: &'static Resource,
        ns: Option<&str>,
        name: Option<&str>,
        q: &Query,
        table: bool,
    ) -> Result<Response<Body>, ApiError> {
        let labels = Labels::parse(q.get("labelSelector").unwrap_or("")).map_err(ApiError::bad)?;
        let mut fields =
            Fields::parse(q.get("fieldSelector").unwrap_or("")).map_err(ApiError::bad)?;
        if let Some(n) = name {
            fields = Fields::parse(&format!(
                "{}metadata.name={n}",
                q.get("fieldSelector")
                    .map(|f| format!("{f},"))
                    .unwrap_or_default()
            ))
            .map_err(ApiError::bad)?;
        }
        let rv = q.get("resourceVersion").unwrap_or("");
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(1800);
        let bookmarks = q.flag("allowWatchBookmarks");
        let include = include_of(q);
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let mut initial = vec![];
        let mut seen = std::collections::HashSet::new();
        // A watch that began with a list knows every object it showed: one it had not shown
        // that now matches is ADDED. From a client's resourceVersion it cannot know, and an
        // object changed (not created) is MODIFIED.
        let from_list = rv.is_empty() || rv == "0";
        let start = if from_list {
            let (items, rev) = self.objects.list(r, ns).await?;
            for o in items
                .into_iter()
                .filter(|o| labels.matches(o) && fields.matches(o))
            {
                seen.insert(key_of(&o));
                initial.push(("ADDED", o));
            }
            rev
        } else {
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad(format!("resourceVersion: invalid value {rv:?}")))?
        };
        let events = match self.objects.store.watch(&r.prefix(ns), start).await {
            Ok(rx) => Some(rx),
            Err(store::Error::Compacted { asked, oldest }) => {
                let status = ApiError::new(
                    410,
                    "Expired",
                    format!("too old resource version: {asked} ({oldest})"),
                )
                .status();
                let line = format!("{}\n", json!({"type": "ERROR", "object": status}));
                let _ = tx.try_send(Bytes::from(line));
                None
            }
            Err(e) => return Err(ApiError::new(500, "InternalError", e.to_string())),
        };
        let bookmark_every = self.bookmark_every;
        let store = self.objects.store.clone();
        tokio::spawn(async move {
            let mut first = true;
            let encode = |ty: &str, o: &Value, first: &mut bool| -> Bytes {
                let obj = if table {
                    let rv = o
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let mut t = table::table(r, std::slice::from_ref(o), &rv, include);
                    if !*first && let Some(m) = t.as_object_mut() {
                        m.insert("columnDefinitions".into(), json!([]));
                    }
                    *first = false;
                    t
                } else {
                    o.clone()
                };
                Bytes::from(format!("{}\n", json!({"type": ty, "object": obj})))
            };
            for (ty, o) in &initial {
                if tx.send(encode(ty, o, &mut first)).await.is_err() {
                    return;
                }
            }
            let Some(mut events) = events else { return };
            let deadline = tokio::time::sleep(Duration::from_secs(timeout));
            tokio::pin!(deadline);
            let mut tick = tokio::time::interval(bookmark_every);
            tick.tick().await;
            let mut last = start;
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    _ = tx.closed() => return,
                    _ = tick.tick(), if bookmarks => {
                        let rv = store.revision().max(last).to_string();
                        let b = json!({"type": "BOOKMARK", "object": {"kind": r.kind, "apiVersion": r.api_version(), "metadata": {"resourceVersion": rv}}});
                        if tx.send(Bytes::from(format!("{b}\n"))).await.is_err() { return; }
                    }
                    ev = events.recv() => {
                        let Some(ev) = ev else { return };
                        last = ev.revision;
                        let o = decode_bytes(r, &ev.value, ev.revision);
                        let k = key_of(&o);
                        let matches = labels.matches(&o) && fields.matches(&o);
                        let ty = match (ev.kind, matches, seen.contains(&k)) {
                            (store::Kind::Delete, true, _) => { seen.remove(&k); "DELETED" }
                            (store::Kind::Delete, false, true) => { seen.remove(&k); "DELETED" }
                            (store::Kind::Delete, false, false) => continue,
                            (store::Kind::Put, true, _) if ev.prev_revision == 0 => { seen.insert(k); "ADDED" }
                            (store::Kind::Put, true, true) => "MODIFIED",
                            (store::Kind::Put, true, false) => { seen.insert(k); if from_list { "ADDED" } else { "MODIFIED" } }
                            (store::Kind::Put, false, true) => { seen.remove(&k); "DELETED" }
                            (store::Kind::Put, false, false) => continue,
                        };
                        if tx.send(encode(ty, &o, &mut first)).await.is_err() { return; }
                    }
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        resp.headers_mut().insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("no-cache, private"),
        );
        Ok(resp)
    }
}

fn key_of(o: &Value) -> String {
    format!(
        "{}/{}",
        o.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or(""),
        crate::objects::name_of(o)
    )
}

fn delete_options(q: &Query, body: &Value) -> Result<DeleteOptions, ApiError> {
    let grace = match q.get("gracePeriodSeconds") {
        Some(g) => Some(
            g.parse::<i64>()
                .map_err(|_| ApiError::bad(format!("gracePeriodSeconds: {g:?} is not a number")))?,
        ),
        None => body.get("gracePeriodSeconds").and_then(Value::as_i64),
    };
    let mut propagation = q.get("propagationPolicy").map(str::to_string).or_else(|| {
        body.get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    if propagation.is_none() && body.get("orphanDependents") == Some(&json!(true)) {
        propagation = Some("Orphan".into());
    }
    Ok(DeleteOptions {
        propagation,
        grace_seconds: grace,
        precondition_uid: body
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        precondition_rv: body
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok()),
    })
}

/// The `autoscaling/v1` Scale of a deployment or replicaset.
fn scale_of(o: &Value) -> Value {
    let sel = table::labels_text(o.pointer("/spec/selector/matchLabels"));
    let md = o.get("metadata").cloned().unwrap_or(json!({}));
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": md.get("name"), "namespace": md.get("namespace"), "uid": md.get("uid"),
                     "resourceVersion": md.get("resourceVersion"), "creationTimestamp": md.get("creationTimestamp")},
        "spec": {"replicas": o.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {"replicas": o.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": sel}})
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: one document per group version.
fn openapi_root() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs = vec![("", "v1")];
    gvs.extend(resources::GROUPS.iter().copied());
    for (g, v) in gvs {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=ros1")}),
        );
    }
    json!({"paths": paths})
}

/// A group version's document: the paths and their operations, each naming its kind, with
/// the query parameters the server takes, `fieldValidation` among them (what kubectl looks
/// for before it leaves validation to the server). No schemas: the server validates.
fn openapi_gv(gv: &str) -> Result<Value, ApiError> {
    let (group, version) = match gv.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => ("", v.to_string()),
        ["apis", g, v] => (*g, v.to_string()),
        _ => {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("no OpenAPI document {gv}"),
            ));
        }
    };
    let params = json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
    ]);
    let mut paths = serde_json::Map::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let base = if r.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}",
                gv_path(group, &version),
                r.plural
            )
        } else {
            format!("/{}/{}", gv_path(group, &version), r.plural)
        };
        let op = |action: &str| json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": {}});
        paths.insert(base.clone(), json!({"get": op("list"), "post": op("post")}));
        paths.insert(format!("{base}/{{name}}"), json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}));
    }
    Ok(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": KUBE_VERSION}, "paths": paths, "components": {"schemas": {}}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_resource() -> Result<(), ApiError> {
        let t = parse_target("/api/v1/namespaces/default/pods/web-1/log")?
            .ok_or_else(|| ApiError::bad("none"))?;
        assert_eq!(
            (
                t.res.plural,
                t.ns.as_deref(),
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            ("pods", Some("default"), Some("web-1"), Some("log"))
        );
        let t =
            parse_target("/api/v1/namespaces/kube-system")?.ok_or_else(|| ApiError::bad("none"))?;
        assert_eq!(
            (t.res.plural, t.name.as_deref()),
            ("namespaces", Some("kube-system"))
        );
        let t = parse_target("/apis/apps/v1/deployments")?.ok_or_else(|| ApiError::bad("none"))?;
        assert_eq!((t.res.plural, t.ns, t.name), ("deployments", None, None));
        assert!(parse_target("/api/v1/namespaces/d/pods/x/attach").is_err());
        assert!(parse_target("/api/v1/widgets").is_err());
        let q = Query::parse(Some("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=1"));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
        Ok(())
    }
}
