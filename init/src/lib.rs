//! ros's init (PID 1). `boot` runs the phases in order; each phase's decisions live in a module
//! of its own (mount table, module loading, config sources, hostname and sysctls, network) and
//! reach the kernel through the [`sys::Sys`] seam, so they are unit-tested without root.
//! `ARCHITECTURE.md` walks through the boot.

pub mod api;
pub mod boot;
pub mod clock;
pub mod images;
pub mod kmod;
pub mod logger;
pub mod metadata;
pub mod mounts;
pub mod network;
pub mod nocloud;
pub mod power;
pub mod ready;
pub mod services;
pub mod shutdown;
pub mod sources;
pub mod state;
pub mod supervisor;
pub mod switch_root;
pub mod sys;
pub mod system;
pub mod uevent;
