//! The service requests: the list and one service's status from the main loop (which owns the
//! supervisor), start/stop/restart as messages to it, enable/disable as config changes (they
//! last) followed by a start or stop now.

use ros_api::{Done, ErrorCode, Reply, Response, ServiceAction, ServiceReport, ServiceStatus};

use super::super::Ctx;
use crate::api::route::failed;
use crate::boot::main_loop::{self, ToMain};

async fn list_of(ctx: &Ctx) -> Result<Vec<ServiceReport>, Reply> {
    ctx.ask(ToMain::Services).await.map_err(failed)
}

pub async fn list(ctx: &Ctx) -> Reply {
    match list_of(ctx).await {
        Ok(l) => Reply::ok(Response::Services(l)),
        Err(r) => r,
    }
}

/// The service `name` or a not-found reply that suggests the near names.
pub fn find<'a>(list: &'a [ServiceReport], name: &str) -> Result<&'a ServiceReport, Reply> {
    list.iter().find(|s| s.name == name).ok_or_else(|| {
        let mut near: Vec<(f64, &str)> = list
            .iter()
            .map(|s| (strsim::jaro_winkler(name, &s.name), s.name.as_str()))
            .filter(|(d, _)| *d > 0.75)
            .collect();
        near.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut msg = format!("there is no service `{name}`");
        if let Some((_, n)) = near.first() {
            msg.push_str(&format!("; did you mean `{n}`?"));
        } else {
            let all: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
            msg.push_str(&format!(" (services: {})", all.join(", ")));
        }
        Reply::error(ErrorCode::NotFound, msg)
    })
}

pub async fn status(ctx: &Ctx, name: &str) -> Reply {
    let list = match list_of(ctx).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    match find(&list, name) {
        Ok(s) => Reply::ok(Response::Service(Box::new(ServiceStatus {
            service: s.clone(),
            log_tail: ros_logstore::tail(&ros_api::paths::service_log(name), 10),
        }))),
        Err(r) => r,
    }
}

pub async fn action(ctx: &Ctx, name: &str, action: ServiceAction) -> Reply {
    let done = || Done {
        service: Some(name.to_string()),
        action: format!("{action:?}").to_lowercase(),
    };
    let mut notes = Vec::new();
    let now = match action {
        ServiceAction::Enable | ServiceAction::Disable => {
            let on = action == ServiceAction::Enable;
            let key = format!("services.{name}.enabled");
            let source = crate::config::sources::state_source();
            // A name that is no service anywhere is refused by the change's checks (a service
            // with no image), not written.
            match super::config::change(ctx, None, move |t| {
                ros_config::edit::set(&source, t, &key, if on { "true" } else { "false" })
            })
            .await
            {
                Reply::Ok { notes: n, .. } => notes.extend(n),
                other => return other,
            }
            if !on {
                // Disabled: the change stopped it.
                return Reply::Ok {
                    result: Response::Done(done()),
                    notes,
                };
            }
            main_loop::ServiceAction::Start
        }
        ServiceAction::Start => main_loop::ServiceAction::Start,
        ServiceAction::Stop => main_loop::ServiceAction::Stop,
        ServiceAction::Restart => main_loop::ServiceAction::Restart,
    };
    let list = match list_of(ctx).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    if let Err(r) = find(&list, name) {
        return r;
    }
    match ctx
        .ask(|reply| ToMain::Service {
            name: name.to_string(),
            action: now,
            reply,
        })
        .await
    {
        Ok(Ok(())) => Reply::Ok {
            result: Response::Done(done()),
            notes,
        },
        Ok(Err(e)) => failed(e),
        Err(e) => failed(e),
    }
}

/// `ros service exec`: a process in the running service's container, on the caller's three
/// streams, or with `tty` on a terminal whose master goes back over the one socket sent (see
/// `ros_api`); the answer is its exit status, when it ends.
pub async fn exec(
    ctx: &Ctx,
    name: &str,
    args: Vec<String>,
    tty: bool,
    mut fds: Vec<std::os::fd::OwnedFd>,
) -> Reply {
    use crate::services::supervisor::ExecIo;
    let io = match (tty, fds.len()) {
        (true, 1) => fds.pop().map(ExecIo::Terminal),
        (false, 3) => <[std::os::fd::OwnedFd; 3]>::try_from(fds)
            .ok()
            .map(ExecIo::Streams),
        _ => None,
    };
    let Some(io) = io else {
        return Reply::error(
            ErrorCode::BadRequest,
            "service_exec needs, sent with the request, the caller's standard input, output and \
             error, or with tty one socket for the terminal",
        );
    };
    let list = match list_of(ctx).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    if let Err(r) = find(&list, name) {
        return r;
    }
    let started = ctx
        .ask(|reply| ToMain::Exec {
            name: name.to_string(),
            args,
            io,
            reply,
        })
        .await;
    match started {
        Ok(Ok(exited)) => match exited.await {
            Ok(code) => Reply::ok(Response::Exited { code }),
            Err(_) => failed("the process's end was not seen (the supervisor stopped)"),
        },
        Ok(Err(e)) => failed(e),
        Err(e) => failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_services_suggest_the_near_names() {
        let report = |n: &str| ServiceReport {
            name: n.into(),
            image: "x".into(),
            state: "running".into(),
            ..ServiceReport::default()
        };
        let list = vec![report("console"), report("ntp"), report("syslog")];
        let Err(Reply::Error { code, message, .. }) = find(&list, "consle") else {
            panic!("found");
        };
        assert_eq!(code, ErrorCode::NotFound);
        assert!(message.contains("did you mean `console`"), "{message}");
        let Err(Reply::Error { message, .. }) = find(&list, "zzz") else {
            panic!("found");
        };
        assert!(message.contains("console, ntp, syslog"), "{message}");
    }
}
