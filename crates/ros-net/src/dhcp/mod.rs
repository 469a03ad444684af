//! DHCPv4: the client state machine (pure), its wire format, and the driver that runs it on an
//! interface with real sockets and applies leases over netlink.

pub mod client;
pub mod driver;
pub mod msg;
pub mod socket;
pub mod wire;

#[cfg(test)]
mod tests;

pub use client::{Action, Client, ClientConfig, Dest, Lease, State};
