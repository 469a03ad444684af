//! `ros image`: pulls (progress streamed as lines), the list, removal and pruning, each done by
//! `ros-pull` on a blocking thread (see `services/supervisor/pulls.rs`), never in the init.

use ros_api::{ErrorCode, ImageInfo, Reply, Response};

use super::super::Ctx;
use crate::api::route::failed;
use crate::api::transport::Writer;
use crate::boot::main_loop::ToMain;
use crate::services::images::{PULLED, STORE};
use crate::services::supervisor::pulls;

/// The last line of a `ros-pull` run (its verdict), sending the others to `each`.
async fn drain(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
    mut each: impl FnMut(&str) -> bool,
) -> Option<serde_json::Value> {
    let mut last = None;
    while let Some(l) = rx.recv().await {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
        if matches!(
            v["event"].as_str(),
            Some("done" | "error" | "pruned" | "removed")
        ) || v.is_array()
        {
            last = Some(v);
        } else if !each(&l) {
            break;
        }
    }
    last
}

fn error_of(v: &serde_json::Value) -> Reply {
    let code = match v["kind"].as_str() {
        Some("not_found") => ErrorCode::NotFound,
        Some("invalid") => ErrorCode::Invalid,
        _ => ErrorCode::Failed,
    };
    Reply::error(code, v["message"].as_str().unwrap_or("failed").to_string())
}

fn info(rec: &serde_json::Value) -> ImageInfo {
    ImageInfo {
        reference: rec["reference"].as_str().unwrap_or_default().into(),
        source: "registry".into(),
        manifest: rec["manifest"].as_str().map(Into::into),
        platform: rec["platform"].as_str().map(Into::into),
        size: rec["size"].as_u64(),
        layers: rec["layers"].as_array().map_or(0, Vec::len),
    }
}

fn canonical(reference: &str) -> Result<String, Reply> {
    ros_registry::Reference::parse(reference)
        .map(|r| r.to_string())
        .map_err(|e| Reply::error(ErrorCode::Invalid, e))
}

pub async fn pull(w: &mut Writer, reference: &str) -> Reply {
    if let Err(r) = canonical(reference) {
        return r;
    }
    let mut rx = pulls::run(
        PULLED.into(),
        vec![
            "--policy".into(),
            "always".into(),
            "pull".into(),
            reference.into(),
        ],
    );
    // Progress goes to the caller as it comes; a caller that went away does not stop the pull.
    let (mut last, mut caller) = (None, true);
    while let Some(l) = rx.recv().await {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
        if matches!(v["event"].as_str(), Some("done" | "error")) {
            last = Some(v);
        } else if caller {
            caller = w.send(&Reply::Line { line: l }).await;
        }
    }
    match last {
        Some(v) if v["event"] == "done" => Reply::ok(Response::Image(Box::new(info(&v["image"])))),
        Some(v) => error_of(&v),
        None => failed("ros-pull gave no answer"),
    }
}

/// The boot image's names (from the initramfs's OCI index).
fn baked() -> Vec<(String, usize)> {
    let index: serde_json::Value = std::fs::read(format!("{STORE}/oci/index.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let name = m["annotations"]["org.opencontainers.image.ref.name"].as_str()?;
            Some((name.to_string(), 0))
        })
        .collect()
}

pub async fn list() -> Reply {
    let rx = pulls::run(PULLED.into(), vec!["list".into()]);
    let last = drain(rx, |_| true).await;
    let mut out: Vec<ImageInfo> = baked()
        .into_iter()
        .map(|(name, layers)| ImageInfo {
            reference: name,
            source: "boot".into(),
            layers,
            ..Default::default()
        })
        .collect();
    match last {
        Some(v) if v.is_array() => {
            out.extend(v.as_array().into_iter().flatten().map(info));
            Reply::ok(Response::Images(out))
        }
        Some(v) => error_of(&v),
        None => failed("ros-pull gave no answer"),
    }
}

/// The canonical references services name now.
async fn in_use(ctx: &Ctx) -> Result<Vec<(String, String)>, Reply> {
    let list = ctx.ask(ToMain::Services).await.map_err(failed)?;
    Ok(list
        .into_iter()
        .filter_map(|s| {
            let c = ros_registry::Reference::parse(&s.image).ok()?.to_string();
            Some((s.name, c))
        })
        .collect())
}

pub async fn remove(ctx: &Ctx, reference: &str) -> Reply {
    let c = match canonical(reference) {
        Ok(c) => c,
        Err(r) => return r,
    };
    match in_use(ctx).await {
        Ok(used) => {
            if let Some((svc, _)) = used.iter().find(|(_, i)| *i == c) {
                return Reply::error(
                    ErrorCode::Failed,
                    format!(
                        "{c} is the image of service `{svc}`; change or disable the service first"
                    ),
                );
            }
        }
        Err(r) => return r,
    }
    let last = drain(
        pulls::run(PULLED.into(), vec!["rm".into(), c.clone()]),
        |_| true,
    )
    .await;
    match last {
        Some(v) if v["event"] == "removed" => Reply::ok(Response::Done(ros_api::Done {
            service: None,
            action: format!("removed {c}"),
        })),
        Some(v) => error_of(&v),
        None => failed("ros-pull gave no answer"),
    }
}

pub async fn prune(ctx: &Ctx) -> Reply {
    let used = match in_use(ctx).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    // What the services' images name is kept even if their references were removed.
    let mut args = Vec::new();
    for (_, c) in used {
        let rec = std::path::Path::new(PULLED)
            .join("refs")
            .join(ros_registry::record::ref_file(&c));
        let Some(r) = std::fs::read(rec)
            .ok()
            .and_then(|b| serde_json::from_slice::<ros_registry::ImageRecord>(&b).ok())
        else {
            continue;
        };
        for d in r
            .layers
            .iter()
            .chain([&r.manifest, &r.config])
            .chain(r.index.iter())
        {
            args.extend(["--keep".to_string(), d.clone()]);
        }
    }
    args.push("prune".into());
    match drain(pulls::run(PULLED.into(), args), |_| true).await {
        Some(v) if v["event"] == "pruned" => Reply::ok(Response::Done(ros_api::Done {
            service: None,
            action: format!("removed {} blobs and {} layers", v["blobs"], v["layers"]),
        })),
        Some(v) => error_of(&v),
        None => failed("ros-pull gave no answer"),
    }
}
