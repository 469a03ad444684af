//! The machine: `ros status` (the ready report with the services, the network, the uptime and
//! the init's memory as they are now), `ros os info`, and power requests.

use ros_api::{Done, OsInfo, PowerAction, Reply, Response};

use super::super::Ctx;
use crate::api::route::failed;
use crate::boot::main_loop::ToMain;
use crate::boot::ready;
use crate::platform::clock::uptime_ms;
use crate::platform::power::{Action, Request};

pub async fn status(ctx: &Ctx) -> Reply {
    let mut r = ctx.ready();
    if let Ok(list) = ctx.ask(ToMain::Services).await {
        r.services = list;
    }
    // The network as it is now, not as it was at the ready line.
    if let Ok(n) = ctx.ask(ToMain::Network).await {
        r.interfaces = n.interfaces;
        r.missing_interfaces = n.missing_interfaces;
        r.routes = n.routes;
        r.dns = n.dns;
    }
    r.uptime_ms = uptime_ms();
    r.init.rss_kib = ready::rss_kib();
    r.init.max_stall_ms = ctx.stall.max_ms();
    r.memory = ready::memory();
    Reply::ok(Response::Status(Box::new(r)))
}

pub fn os_info(ctx: &Ctx) -> Reply {
    let ready = ctx.ready();
    Reply::ok(Response::OsInfo(Box::new(OsInfo {
        name: "ros".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        api_version: ros_api::VERSION,
        arch: std::env::consts::ARCH.into(),
        kernel: ready.kernel,
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        uptime_ms: uptime_ms(),
        memory: ready::memory(),
        state: ready.state,
    })))
}

pub fn power(ctx: &Ctx, action: PowerAction) -> Reply {
    let (a, name) = match action {
        PowerAction::Reboot => (Action::Reboot, "reboot"),
        PowerAction::Poweroff => (Action::Poweroff, "poweroff"),
    };
    let req = Request {
        action: a,
        reason: "asked through the API".into(),
    };
    if ctx.tx.send(ToMain::Power(req)).is_err() {
        return failed("the init's main loop is not running");
    }
    Reply::ok(Response::Done(Done {
        service: None,
        action: name.into(),
    }))
}
