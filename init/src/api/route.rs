//! Each request to its handler. Streams (logs) write lines as they come; every other request
//! gets one reply.

use ros_api::{Reply, Request};

use super::Ctx;
use super::handlers::{config, images, logs, services, system};
use super::transport::Writer;

pub async fn route(ctx: &Ctx, req: Request, fds: Vec<std::os::fd::OwnedFd>, w: &mut Writer) {
    let reply = match req {
        Request::ServiceExec { name, args, tty } => {
            services::exec(ctx, &name, args, tty, fds).await
        }
        Request::Logs { lines, follow } => return logs::init(w, lines, follow).await,
        Request::ServiceLogs {
            name,
            lines,
            follow,
        } => return logs::service(w, ctx, &name, lines, follow).await,
        Request::ConfigGet { key } => config::get(ctx, key).await,
        Request::ConfigSet { key, value } => config::set(ctx, key, value).await,
        Request::ConfigUnset { key } => config::unset(ctx, key).await,
        Request::ConfigMerge { toml } => config::merge(ctx, toml).await,
        Request::ConfigExport { full } => config::export(ctx, full).await,
        Request::ConfigSources => config::sources(ctx).await,
        Request::ConfigValidate => config::validate(ctx).await,
        Request::ServiceList => services::list(ctx).await,
        Request::ServiceStatus { name } => services::status(ctx, &name).await,
        Request::Service { name, action } => services::action(ctx, &name, action).await,
        Request::Status => system::status(ctx).await,
        Request::OsInfo => system::os_info(ctx),
        Request::Power { action } => system::power(ctx, action),
        Request::ImagePull { reference } => images::pull(w, &reference).await,
        Request::ImageList => images::list().await,
        Request::ImageRemove { reference } => images::remove(ctx, &reference).await,
        Request::ImagePrune => images::prune(ctx).await,
    };
    let _ = w.send(&reply).await;
}

/// An error reply for a failure of the init's own.
pub fn failed(message: impl Into<String>) -> Reply {
    Reply::error(ros_api::ErrorCode::Failed, message)
}
