//! ros's container runtime: a container is a process in new namespaces (each may instead be
//! the host's), on an overlay (or folder) root reached by `pivot_root`, in a cgroup v2 group with
//! limits, with capabilities dropped, no_new_privs, a seccomp filter, its own ids and rlimits.
//! Modelled on the OCI runtime spec: [`Config::from_bundle`] reads a bundle, and the
//! `ros-runtime run --bundle DIR ID` command runs one, so it can be compared with crun and runc.
//! The init's supervisor uses [`spawn_starting`] directly, and waits for each start on its own
//! event loop.

pub mod cgroup;
pub mod config;
pub mod console;
pub mod devices;
pub mod error;
pub mod exec;
pub mod forksafe;
pub mod hooks;
pub mod lsm;
pub mod mounts;
pub mod oci;
pub mod process;
pub mod seccomp;
pub mod setup;
pub mod shim;
pub mod spawn;

pub use cgroup::Cgroup;
pub use config::{Capabilities, Config, Namespaces, NsMode, Process, Resources, Rootfs};
pub use error::{Error, Result};
pub use seccomp::SeccompConfig;
pub use spawn::{Container, SpawnOptions, Starting, Stdio, spawn, spawn_starting};
