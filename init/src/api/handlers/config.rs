//! The config requests. Every one runs on the config worker (reading, editing and checking up
//! to 1 MiB of TOML must not hold the main loop); a change goes through `ros_config::load::change`
//! (the checks the boot makes), is written atomically, and is applied by the main loop as the
//! typed difference from the config in force.

use std::sync::Arc;

use ros_api::paths::STATE_USER_DATA;
use ros_api::{ErrorCode, KeySource, Reply, Response, SourceErrors, Sources, Validation};
use ros_config::ConfigError;

use super::super::Ctx;
use crate::api::route::failed;
use crate::boot::main_loop::ToMain;
use crate::config::{sources, worker};

fn invalid(message: &str, errors: &[ConfigError]) -> Reply {
    Reply::Error {
        code: ErrorCode::Invalid,
        message: message.to_string(),
        details: errors.iter().map(ToString::to_string).collect(),
    }
}

/// Runs `f` on the worker; a worker failure is the reply.
async fn on_worker(f: impl FnOnce() -> Reply + Send + 'static) -> Reply {
    worker::run(f).await.unwrap_or_else(failed)
}

pub async fn get(ctx: &Ctx, key: Option<String>) -> Reply {
    let current = ctx.current.get();
    on_worker(move || {
        let j = ros_config::edit::to_json(&current.data);
        match key {
            None => Reply::ok(Response::Value(j)),
            Some(k) => match ros_config::edit::get(&j, &k) {
                Some(v) => Reply::ok(Response::Value(v.clone())),
                None => Reply::error(
                    ErrorCode::NotFound,
                    format!("`{k}` is not set by any source (its default applies)"),
                ),
            },
        }
    })
    .await
}

pub async fn export(ctx: &Ctx, full: bool) -> Reply {
    let current = ctx.current.get();
    on_worker(move || {
        if full {
            let toml = ros_config::edit::to_toml(&ros_config::edit::to_json(&current.data));
            return Reply::ok(Response::Toml(toml));
        }
        match sources::read_capped(
            std::path::Path::new(STATE_USER_DATA),
            ros_config::load::MAX_BYTES,
        ) {
            ros_config::Input::Absent => Reply::ok(Response::Toml(String::new())),
            ros_config::Input::Bytes(b) => match ros_config::load::decode(&b) {
                Ok(t) => Reply::ok(Response::Toml(t)),
                Err(e) => failed(format!("{STATE_USER_DATA}: {e}")),
            },
            ros_config::Input::Unreadable(e) => failed(format!("{STATE_USER_DATA}: {e}")),
        }
    })
    .await
}

pub async fn sources(ctx: &Ctx) -> Reply {
    let current = ctx.current.get();
    on_worker(move || {
        let statuses = current
            .sources
            .iter()
            .map(|s| SourceErrors {
                source: s.source.clone(),
                errors: current
                    .errors
                    .iter()
                    .filter(|e| e.source == s.source)
                    .map(ToString::to_string)
                    .collect(),
            })
            .collect();
        let keys = ros_config::edit::origins(&current.each)
            .into_iter()
            .map(|(key, (source, value))| KeySource { key, value, source })
            .collect();
        Reply::ok(Response::Sources(Box::new(Sources {
            sources: statuses,
            keys,
        })))
    })
    .await
}

pub async fn validate(ctx: &Ctx) -> Reply {
    let cctx = Arc::clone(&ctx.current.ctx);
    let cmdline = ctx.cmdline.clone();
    on_worker(move || {
        let l = ros_config::load(&sources::read_all(), &cmdline, &cctx);
        Reply::ok(Response::Validation(Validation {
            valid: l.errors.is_empty(),
            errors: l.errors,
        }))
    })
    .await
}

pub async fn set(ctx: &Ctx, key: String, value: String) -> Reply {
    let source = sources::state_source();
    let hint = key.clone();
    change(ctx, Some(hint), move |t| {
        ros_config::edit::set(&source, t, &key, &value)
    })
    .await
}

pub async fn unset(ctx: &Ctx, key: String) -> Reply {
    let source = sources::state_source();
    change(ctx, None, move |t| {
        ros_config::edit::unset(&source, t, &key)
    })
    .await
}

pub async fn merge(ctx: &Ctx, toml: String) -> Reply {
    let source = sources::state_source();
    change(ctx, None, move |t| {
        ros_config::edit::merge(&source, t, "merged file", &toml)
    })
    .await
}

/// A change of the persisted config: edited, checked as the boot checks, written atomically
/// (on the worker), then applied live by the main loop. `key_hint` names the key set, to say
/// when a higher source overrides it.
pub async fn change(
    ctx: &Ctx,
    key_hint: Option<String>,
    edit: impl FnOnce(&str) -> Result<String, Vec<ConfigError>> + Send + 'static,
) -> Reply {
    let _one_at_a_time = ctx.config_lock.lock().await;
    let current = ctx.current.get();
    let cctx = Arc::clone(&ctx.current.ctx);
    let cmdline = ctx.cmdline.clone();
    let worked = worker::run(move || {
        let sources = sources::read_all();
        let changed = ros_config::load::change(&sources, sources::PERSISTED, &cmdline, &cctx, edit)
            .map_err(|e| invalid("the change was not made; the config stays as it was", &e))?;
        sources::write_atomic(
            std::path::Path::new(STATE_USER_DATA),
            changed.text.as_bytes(),
        )
        .map_err(|e| failed(format!("writing {STATE_USER_DATA}: {e}")))?;
        let diff = ros_config::diff::diff(Some(&current), &changed.after, &cctx);
        let overridden = key_hint.and_then(|k| overriding_source(&changed.after, &k));
        Ok::<_, Reply>((diff, Arc::new(changed.after), overridden))
    })
    .await;
    let (diff, after, overridden) = match worked {
        Ok(Ok(w)) => w,
        Ok(Err(reply)) => return reply,
        Err(e) => return failed(e),
    };
    let mut notes = Vec::new();
    if !ctx.persistent {
        notes.push(
            "there is no state disk: this change lasts until the machine powers off".to_string(),
        );
    }
    if let Some(src) = overridden {
        notes.push(format!(
            "`{src}` sets this key too, and wins over the persisted config"
        ));
    }
    match ctx
        .ask(|reply| ToMain::Apply {
            diff: Box::new(diff),
            after,
            reply,
        })
        .await
    {
        Ok(n) if n.done.is_empty() && n.errors.is_empty() => {
            notes.push("applied live: nothing running changes".into());
        }
        Ok(n) => {
            notes.extend(n.done.into_iter().map(|d| format!("applied live: {d}")));
            notes.extend(n.errors);
        }
        Err(e) => notes.push(format!(
            "saved but not applied ({e}); it takes effect at the next boot"
        )),
    }
    Reply::Ok {
        result: Response::Changed {
            file: STATE_USER_DATA.into(),
        },
        notes,
    }
}

/// The source above the persisted config that sets `key` (or a key under it), if one does.
fn overriding_source(l: &ros_config::Loaded, key: &str) -> Option<String> {
    let dotted = ros_config::edit::key_path(key).ok()?.join(".");
    let origins = ros_config::edit::origins(&l.each);
    origins
        .iter()
        .find(|(k, _)| **k == dotted || k.starts_with(&format!("{dotted}.")))
        .map(|(_, (src, _))| src.clone())
        .filter(|src| *src != sources::state_source())
}
