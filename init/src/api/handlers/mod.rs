//! What each request does: the config ([`config`]), the services ([`services`]), the logs
//! ([`logs`]), the machine ([`system`]).

pub mod config;
pub mod logs;
pub mod services;
pub mod system;
