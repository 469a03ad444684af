//! DHCPv6: the client state machine (pure), its messages, and the driver that picks the mode from
//! the router's advertisement and runs the client on an interface.

pub mod client;
pub mod driver;
pub mod msg;

#[cfg(test)]
mod tests;

pub use client::{Action, Client, ClientConfig, Lease, Mode, State};
