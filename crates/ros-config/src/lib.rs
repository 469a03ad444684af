//! The ros user-data: one versioned TOML schema (see `docs/user-data.md`), read from several
//! sources, each validated on its own, then layered and checked as a whole ([`load`]). Reading
//! never fails: every problem becomes a [`ConfigError`] naming source, line, column and key,
//! and the key it names keeps the value of a lower source or its default, so a typo never stops
//! a boot. Every write of the persisted config goes through [`load::change`], and what a change
//! means for the machine is a typed [`diff::Diff`].

pub mod check;
pub mod cluster;
pub mod cmdline;
pub mod diff;
pub mod edit;
pub mod error;
pub mod host;
pub mod layered;
pub mod load;
pub mod node;
pub mod registries;
pub mod schema;
pub mod service;
pub mod shipped;
pub mod system;
pub mod toml_src;
pub mod types;
pub mod walk;

pub use error::{ConfigError, Pos};
pub use load::{Context, Input, Loaded, Source, load};
pub use schema::{Console, Dns, Interface, Network, Ntp, Route, SCHEMA_VERSION, UserData};
pub use service::Service;
pub use types::{Dur, Hostname, IfName, MacAddr, ModuleName, SysctlKey};

/// A user-data read from one source.
#[derive(Debug, Clone, Default)]
pub struct Read {
    pub data: UserData,
    pub errors: Vec<ConfigError>,
}

/// Reads TOML user-data text; `source` names it in errors (e.g. `fw_cfg:opt/ros/user-data`).
pub fn from_toml(source: &str, text: &str) -> Read {
    let (node, mut errors) = toml_src::parse(source, text);
    let mut w = walk::Walker::new(source);
    let data = schema::read(&mut w, &node);
    errors.extend(w.errors);
    errors.sort_by_key(|e| (e.line, e.column));
    Read { data, errors }
}

/// Reads the `ros.*` keys of a kernel command line.
pub fn from_cmdline(cmdline: &str) -> Read {
    const SOURCE: &str = "cmdline";
    let params = cmdline::split(cmdline);
    let (node, mut errors) = cmdline::user_data(SOURCE, &params);
    let mut w = walk::Walker::new(SOURCE);
    let data = schema::read(&mut w, &node);
    errors.extend(w.errors);
    errors.sort_by_key(|e| (e.line, e.column));
    Read { data, errors }
}

/// Layers reads, lowest precedence first, into one user-data and the errors of all of them.
pub fn layer(reads: impl IntoIterator<Item = Read>) -> Read {
    let mut out = Read::default();
    for r in reads {
        out.data.merge(r.data);
        out.errors.extend(r.errors);
    }
    out
}
