//! What each request does: the config ([`config`]), the services ([`services`]), the logs
//! ([`logs`]), the machine ([`system`]), the images ([`images`]).

pub mod config;
pub mod images;
pub mod logs;
pub mod services;
pub mod system;
