//! ros's init (PID 1). Its folders follow the boot (`ARCHITECTURE.md` walks through it):
//! [`boot`] runs the phases in order and then the main loop, the one owner of what runs;
//! [`platform`] is what faces the kernel (mounts, modules, the state disk, power, the shutdown)
//! behind the [`platform::sys::Sys`] seam; [`config`] reads the user-data's sources and applies
//! a config (at boot, and every live change) through one [`config::apply`]; [`network`] keeps
//! the interfaces and their leases; [`services`] runs the system services as containers under
//! the supervisor; [`api`] serves the `ros` CLI.

pub mod api;
pub mod boot;
pub mod config;
pub mod network;
pub mod platform;
pub mod services;
