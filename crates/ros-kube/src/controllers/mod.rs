//! The controllers that run inside the server process, each a loop over the store's watch:
//! namespaces (a `default` service account in each; a deleted namespace's contents removed,
//! then the namespace itself), deployments and replicasets (`workloads`), the scheduler,
//! garbage collection by ownerReferences, and the nodes' lifecycle (a node whose Lease lapses
//! turns NotReady, and its pods are replaced elsewhere after a grace period).

pub mod podcidr;
pub mod scheduler;
pub mod workloads;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::Api;
use crate::objects::{ApiError, DeleteOptions, FieldValidation, name_of, now_rfc3339};
use crate::patch::PatchType;
use crate::resources::{RESOURCES, Resource};
use crate::store::Event;
use workloads::Act;

/// How the controllers behave where a cluster may want otherwise.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A node whose Lease is older than this is NotReady.
    pub node_lease_timeout: Duration,
    /// Pods on a NotReady node are deleted (and replaced) after this.
    pub pod_eviction_grace: Duration,
    /// The pods' addresses: each node is given a /24 of it (its `spec.podCIDR`).
    pub cluster_cidr: ipnet::Ipv4Net,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            node_lease_timeout: Duration::from_secs(40),
            pod_eviction_grace: Duration::from_secs(300),
            cluster_cidr: podcidr::DEFAULT_CLUSTER_CIDR,
        }
    }
}

pub fn start(api: Arc<Api>, settings: Settings) {
    tokio::spawn(namespaces(api.clone()));
    tokio::spawn(workloads_loop(api.clone()));
    tokio::spawn(scheduler_loop(api.clone()));
    tokio::spawn(gc_loop(api.clone()));
    tokio::spawn(nodes_loop(api, settings));
}

fn res(plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.plural == plural)
}

fn ns_of(o: &Value) -> Option<&str> {
    o.pointer("/metadata/namespace").and_then(Value::as_str)
}

/// Watches on these resources, merged: the loop wakes on any of their changes.
async fn watch_all(api: &Api, plurals: &[&str]) -> Option<UnboundedReceiver<Event>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let rev = api.objects.store.revision();
    for p in plurals {
        let r = res(p)?;
        let mut w = match api.objects.store.watch(&r.prefix(None), rev).await {
            Ok(w) => w,
            Err(e) => {
                eprintln!("ros-kube: a controller cannot watch {p}: {e}");
                return None;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(e) = w.recv().await {
                if tx.send(e).is_err() {
                    return;
                }
            }
        });
    }
    Some(rx)
}

/// Waits for a change (or the resync period), then lets a burst of changes settle.
async fn next_round(events: &mut UnboundedReceiver<Event>, resync: Duration) -> bool {
    tokio::select! {
        e = events.recv() => if e.is_none() { return false },
        _ = tokio::time::sleep(resync) => {}
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    while events.try_recv().is_ok() {}
    true
}

/// Records an Event about `about` (what `kubectl describe` shows).
pub async fn record(
    api: &Api,
    about: &Value,
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let Some(evr) = res("events") else { return };
    let kind = about.get("kind").and_then(Value::as_str).unwrap_or("");
    let ns = ns_of(about).unwrap_or("default").to_string();
    let now = now_rfc3339();
    let ev = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{}.{}", name_of(about), crate::pki::random_hex(8).unwrap_or_default())},
        "involvedObject": {"kind": kind, "namespace": ns_of(about), "name": name_of(about),
                           "uid": workloads::uid_of(about), "apiVersion": about.get("apiVersion"),
                           "resourceVersion": about.pointer("/metadata/resourceVersion")},
        "reason": reason, "message": message, "type": type_,
        "source": {"component": component}, "reportingComponent": component,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    let _ = api
        .objects
        .create(evr, Some(&ns), ev, FieldValidation::Ignore)
        .await;
}

/// Carries out a plan for `owner` (of resource `own`), whose children are of resource `child`.
async fn execute(
    api: &Api,
    own: &Resource,
    child: &Resource,
    owner: &Value,
    acts: Vec<Act>,
    component: &str,
) -> Result<(), ApiError> {
    let ns = ns_of(owner).map(str::to_string);
    let ns = ns.as_deref();
    let name = name_of(owner).to_string();
    for a in acts {
        match a {
            Act::Create(o) => {
                if let Err(e) = api
                    .objects
                    .create(child, ns, o, FieldValidation::Ignore)
                    .await
                    && e.code != 409
                {
                    record(api, owner, "Warning", "FailedCreate", &e.message, component).await;
                    return Err(e);
                }
            }
            Act::Patch { name: n, patch } => {
                api.objects
                    .patch(
                        child,
                        ns,
                        &n,
                        PatchType::Merge,
                        &patch,
                        None,
                        FieldValidation::Ignore,
                    )
                    .await?;
            }
            Act::Delete(n) => {
                let opts = DeleteOptions {
                    propagation: Some("Background".into()),
                    ..DeleteOptions::default()
                };
                match api.objects.delete(child, ns, &n, &opts).await {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            Act::Status(st) => {
                let mut o = owner.clone();
                o["status"] = st;
                api.objects
                    .update(own, ns, &name, o, Some("status"), FieldValidation::Ignore)
                    .await?;
            }
            Act::PatchSelf(p) => {
                api.objects
                    .patch(
                        own,
                        ns,
                        &name,
                        PatchType::Merge,
                        &p,
                        None,
                        FieldValidation::Ignore,
                    )
                    .await?;
            }
            Act::Event { reason, message } => {
                record(api, owner, "Normal", &reason, &message, component).await
            }
        }
    }
    Ok(())
}

/// The objects among `all` that `owner` controls (same namespace, controller reference).
fn owned(all: &[Value], owner: &Value) -> Vec<Value> {
    all.iter()
        .filter(|o| {
            ns_of(o) == ns_of(owner) && workloads::controlled_by(o, workloads::uid_of(owner))
        })
        .cloned()
        .collect()
}

/// Deployments and replicasets, planned again on every change to them or to pods.
async fn workloads_loop(api: Arc<Api>) {
    let (Some(dr), Some(rr), Some(pr)) = (res("deployments"), res("replicasets"), res("pods"))
    else {
        return;
    };
    let Some(mut events) = watch_all(&api, &["deployments", "replicasets", "pods"]).await else {
        return;
    };
    loop {
        // A failed list waits for the next round like any other (no spinning on an error).
        if let (Ok((deps, _)), Ok((rss, _))) = (
            api.objects.list(dr, None).await,
            api.objects.list(rr, None).await,
        ) {
            for d in &deps {
                let acts = workloads::plan_deployment(d, &owned(&rss, d), &now_rfc3339());
                if !acts.is_empty() {
                    let _ = execute(&api, dr, rr, d, acts, "deployment-controller").await;
                }
            }
        }
        if let (Ok((rss, _)), Ok((pods, _))) = (
            api.objects.list(rr, None).await,
            api.objects.list(pr, None).await,
        ) {
            for rs in &rss {
                let acts = workloads::plan_replicaset(rs, &owned(&pods, rs));
                if !acts.is_empty() {
                    let _ = execute(&api, rr, pr, rs, acts, "replicaset-controller").await;
                }
            }
        }
        if !next_round(&mut events, Duration::from_secs(5)).await {
            return;
        }
    }
}

/// Sets a pod's PodScheduled condition (`cond`: its status, reason and message).
async fn scheduled(api: &Api, pr: &Resource, pod: &Value, mut cond: Value) {
    cond["type"] = json!("PodScheduled");
    cond["lastTransitionTime"] = json!(now_rfc3339());
    let patch = json!({"status": {"conditions": [cond]}});
    let _ = api
        .objects
        .patch(
            pr,
            ns_of(pod),
            name_of(pod),
            PatchType::Strategic,
            &patch,
            Some("status"),
            FieldValidation::Ignore,
        )
        .await;
}

/// Binds each unscheduled pod to a node, or says why it cannot (condition and event).
async fn scheduler_loop(api: Arc<Api>) {
    let (Some(nr), Some(pr)) = (res("nodes"), res("pods")) else {
        return;
    };
    let Some(mut events) = watch_all(&api, &["nodes", "pods"]).await else {
        return;
    };
    loop {
        if let (Ok((nodes, _)), Ok((mut pods, _))) = (
            api.objects.list(nr, None).await,
            api.objects.list(pr, None).await,
        ) {
            let pending: Vec<Value> = pods
                .iter()
                .filter(|p| {
                    p.pointer("/spec/nodeName")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .is_empty()
                        && p.pointer("/metadata/deletionTimestamp").is_none()
                })
                .cloned()
                .collect();
            for pod in pending {
                let name = name_of(&pod).to_string();
                let ns = ns_of(&pod).map(str::to_string);
                match scheduler::choose(&pod, &nodes, &pods) {
                    Ok(node) => {
                        let patch = json!({"metadata": {"resourceVersion": pod.pointer("/metadata/resourceVersion")},
                                           "spec": {"nodeName": node}});
                        if api
                            .objects
                            .patch(
                                pr,
                                ns.as_deref(),
                                &name,
                                PatchType::Merge,
                                &patch,
                                None,
                                FieldValidation::Ignore,
                            )
                            .await
                            .is_ok()
                        {
                            scheduled(&api, pr, &pod, json!({"status": "True"})).await;
                            record(
                                &api,
                                &pod,
                                "Normal",
                                "Scheduled",
                                &format!(
                                    "Successfully assigned {}/{name} to {node}",
                                    ns.as_deref().unwrap_or("")
                                ),
                                "default-scheduler",
                            )
                            .await;
                            if let Some(p) = pods
                                .iter_mut()
                                .find(|p| name_of(p) == name && ns_of(p) == ns.as_deref())
                            {
                                p["spec"]["nodeName"] = json!(node);
                            }
                        }
                    }
                    Err(why) => {
                        let already = pod
                            .pointer("/status/conditions")
                            .and_then(Value::as_array)
                            .is_some_and(|cs| {
                                cs.iter().any(|c| {
                                    c.get("reason").and_then(Value::as_str) == Some("Unschedulable")
                                        && c.get("message").and_then(Value::as_str)
                                            == Some(why.as_str())
                                })
                            });
                        if !already {
                            let cond = json!({"status": "False", "reason": "Unschedulable", "message": why});
                            scheduled(&api, pr, &pod, cond).await;
                            record(
                                &api,
                                &pod,
                                "Warning",
                                "FailedScheduling",
                                &why,
                                "default-scheduler",
                            )
                            .await;
                        }
                    }
                }
            }
        }
        if !next_round(&mut events, Duration::from_secs(10)).await {
            return;
        }
    }
}

/// Garbage collection by ownerReferences: dependents of a gone owner are deleted
/// (background); an owner held by `foregroundDeletion` waits until its dependents are gone;
/// one held by `orphan` lets them go free.
async fn gc_loop(api: Arc<Api>) {
    let kinds = [
        "deployments",
        "replicasets",
        "pods",
        "configmaps",
        "secrets",
        "services",
        "endpoints",
        "events",
        "leases",
        "serviceaccounts",
    ];
    let Some(mut events) = watch_all(&api, &kinds).await else {
        return;
    };
    loop {
        let mut all: Vec<(&'static Resource, Value)> = vec![];
        for k in kinds {
            if let Some(r) = res(k)
                && let Ok((items, _)) = api.objects.list(r, None).await
            {
                all.extend(items.into_iter().map(|o| (r, o)));
            }
        }
        let uids: std::collections::HashSet<String> = all
            .iter()
            .map(|(_, o)| workloads::uid_of(o).to_string())
            .collect();
        for (r, o) in &all {
            let refs: Vec<Value> = o
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !refs.is_empty()
                && refs
                    .iter()
                    .all(|x| !uids.contains(x.get("uid").and_then(Value::as_str).unwrap_or("")))
                && o.pointer("/metadata/deletionTimestamp").is_none()
            {
                let opts = DeleteOptions {
                    propagation: Some("Background".into()),
                    ..DeleteOptions::default()
                };
                let _ = api.objects.delete(r, ns_of(o), name_of(o), &opts).await;
            }
            let finalizers: Vec<String> = o
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            if o.pointer("/metadata/deletionTimestamp").is_none() || finalizers.is_empty() {
                continue;
            }
            let uid = workloads::uid_of(o).to_string();
            let dependents: Vec<&(&'static Resource, Value)> = all
                .iter()
                .filter(|(_, d)| {
                    d.pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .is_some_and(|rs| {
                            rs.iter()
                                .any(|x| x.get("uid").and_then(Value::as_str) == Some(uid.as_str()))
                        })
                })
                .collect();
            let ours = |f: &str| f == "foregroundDeletion" || f == "orphan";
            if finalizers.iter().any(|f| f == "orphan") {
                for (dr, d) in &dependents {
                    let keep: Vec<Value> = d
                        .pointer("/metadata/ownerReferences")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter(|x| x.get("uid").and_then(Value::as_str) != Some(uid.as_str()))
                        .cloned()
                        .collect();
                    let _ = api
                        .objects
                        .patch(
                            dr,
                            ns_of(d),
                            name_of(d),
                            PatchType::Merge,
                            &json!({"metadata": {"ownerReferences": keep}}),
                            None,
                            FieldValidation::Ignore,
                        )
                        .await;
                }
            } else if finalizers.iter().any(|f| f == "foregroundDeletion") {
                if !dependents.is_empty() {
                    for (dr, d) in &dependents {
                        if d.pointer("/metadata/deletionTimestamp").is_none() {
                            let opts = DeleteOptions {
                                propagation: Some("Foreground".into()),
                                ..DeleteOptions::default()
                            };
                            let _ = api.objects.delete(dr, ns_of(d), name_of(d), &opts).await;
                        }
                    }
                    continue;
                }
            } else {
                continue;
            }
            let left: Vec<String> = finalizers.into_iter().filter(|f| !ours(f)).collect();
            let _ = api
                .objects
                .patch(
                    r,
                    ns_of(o),
                    name_of(o),
                    PatchType::Merge,
                    &json!({"metadata": {"finalizers": left}}),
                    None,
                    FieldValidation::Ignore,
                )
                .await;
        }
        if !next_round(&mut events, Duration::from_secs(5)).await {
            return;
        }
    }
}

/// A node whose Lease lapses turns NotReady (Ready Unknown) with the unreachable taint; its
/// pods are deleted after the eviction grace, for their replicasets to replace elsewhere.
async fn nodes_loop(api: Arc<Api>, settings: Settings) {
    let (Some(nr), Some(lr), Some(pr)) = (res("nodes"), res("leases"), res("pods")) else {
        return;
    };
    let mut tick =
        tokio::time::interval(Duration::from_secs(2).min(settings.node_lease_timeout / 4));
    loop {
        tick.tick().await;
        let Ok((nodes, _)) = api.objects.list(nr, None).await else {
            continue;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        // Each node without a pod range is given the lowest free one.
        let mut taken = podcidr::taken(&nodes);
        for node in nodes
            .iter()
            .filter(|n| n.pointer("/spec/podCIDR").is_none())
        {
            let Some(cidr) = podcidr::allocate(settings.cluster_cidr, &taken) else {
                record(
                    &api,
                    node,
                    "Warning",
                    "CIDRNotAvailable",
                    &format!(
                        "Node {} gets no pod range: every /24 of {} is taken",
                        name_of(node),
                        settings.cluster_cidr
                    ),
                    "node-ipam-controller",
                )
                .await;
                continue;
            };
            let patch =
                json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
            if api
                .objects
                .patch(
                    nr,
                    None,
                    name_of(node),
                    PatchType::Merge,
                    &patch,
                    None,
                    FieldValidation::Ignore,
                )
                .await
                .is_ok()
            {
                taken.insert(cidr);
            }
        }
        for node in nodes {
            let name = name_of(&node).to_string();
            let renewed = api
                .objects
                .get(lr, Some("kube-node-lease"), &name)
                .await
                .ok()
                .and_then(|l| {
                    l.pointer("/spec/renewTime")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.timestamp_micros() as f64 / 1e6);
            let Some(renewed) = renewed else { continue };
            let age = now - renewed;
            let ready = node
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                        .cloned()
                });
            let ready_status = ready
                .as_ref()
                .and_then(|c| c.get("status"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if age > settings.node_lease_timeout.as_secs_f64() && ready_status == "True" {
                let cond = json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                    "message": "Kubelet stopped posting node status.", "lastTransitionTime": now_rfc3339(), "lastHeartbeatTime": now_rfc3339()}]}});
                let _ = api
                    .objects
                    .patch(
                        nr,
                        None,
                        &name,
                        PatchType::Strategic,
                        &cond,
                        Some("status"),
                        FieldValidation::Ignore,
                    )
                    .await;
                let mut taints: Vec<Value> = node
                    .pointer("/spec/taints")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if !taints.iter().any(|t| {
                    t.get("key").and_then(Value::as_str) == Some("node.kubernetes.io/unreachable")
                }) {
                    taints.push(json!({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": now_rfc3339()}));
                    let _ = api
                        .objects
                        .patch(
                            nr,
                            None,
                            &name,
                            PatchType::Merge,
                            &json!({"spec": {"taints": taints}}),
                            None,
                            FieldValidation::Ignore,
                        )
                        .await;
                }
                record(
                    &api,
                    &node,
                    "Normal",
                    "NodeNotReady",
                    &format!("Node {name} status is now: NodeNotReady"),
                    "node-controller",
                )
                .await;
            }
            if age > (settings.node_lease_timeout + settings.pod_eviction_grace).as_secs_f64()
                && let Ok((pods, _)) = api.objects.list(pr, None).await
            {
                for p in pods.iter().filter(|p| {
                    p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(name.as_str())
                }) {
                    record(
                        &api,
                        p,
                        "Warning",
                        "NodeLost",
                        &format!(
                            "Node {name} which was running pod {} is unresponsive",
                            name_of(p)
                        ),
                        "node-controller",
                    )
                    .await;
                    let opts = DeleteOptions {
                        grace_seconds: Some(0),
                        ..DeleteOptions::default()
                    };
                    let _ = api.objects.delete(pr, ns_of(p), name_of(p), &opts).await;
                }
            }
        }
    }
}

/// Reacts to every namespace change, and every two seconds retries what is unfinished (a
/// terminating namespace whose contents are still going).
async fn namespaces(api: Arc<Api>) {
    let (Some(nsr), Some(sar)) = (res("namespaces"), res("serviceaccounts")) else {
        return;
    };
    let mut events = match api
        .objects
        .store
        .watch(&nsr.prefix(None), api.objects.store.revision())
        .await
    {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("ros-kube: the namespace controller cannot watch: {e}");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            ev = events.recv() => if ev.is_none() { return },
            _ = tick.tick() => {}
        }
        let Ok((all, _)) = api.objects.list(nsr, None).await else {
            continue;
        };
        for ns in all {
            let name = name_of(&ns).to_string();
            if ns.pointer("/metadata/deletionTimestamp").is_none() {
                if api.objects.get(sar, Some(&name), "default").await.is_err() {
                    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
                    let _ = api
                        .objects
                        .create(sar, Some(&name), sa, FieldValidation::Ignore)
                        .await;
                }
                continue;
            }
            if empty_namespace(&api, &name).await {
                let finalizers: Vec<Value> = ns
                    .pointer("/spec/finalizers")
                    .and_then(Value::as_array)
                    .map(|f| {
                        f.iter()
                            .filter(|x| x.as_str() != Some("kubernetes"))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                let patch = json!({"spec": {"finalizers": finalizers}});
                let _ = api
                    .objects
                    .patch(
                        nsr,
                        None,
                        &name,
                        crate::patch::PatchType::Merge,
                        &patch,
                        None,
                        FieldValidation::Ignore,
                    )
                    .await;
                if let Ok(kv) = api.objects.store.get(&nsr.key(None, &name)).await
                    && kv.is_some()
                {
                    let _ = api.objects.store.delete(&nsr.key(None, &name), None).await;
                }
            }
        }
    }
}

/// Deletes what is left in the namespace; true once nothing is.
async fn empty_namespace(api: &Api, ns: &str) -> bool {
    let mut left = false;
    for r in RESOURCES.iter().filter(|r| r.namespaced) {
        let Ok((items, _)) = api.objects.list(r, Some(ns)).await else {
            left = true;
            continue;
        };
        for o in items {
            left = true;
            if o.pointer("/metadata/deletionTimestamp").is_none() {
                let opts = DeleteOptions {
                    propagation: Some("Background".into()),
                    ..DeleteOptions::default()
                };
                let _ = api.objects.delete(r, Some(ns), name_of(&o), &opts).await;
            }
        }
    }
    !left
}
