//! ros networking. [`plan`] decides, purely, what each interface gets from the config and the
//! links present; [`apply`] carries a plan out over netlink ([`netlink::Net`], a thin wrapper over
//! rtnetlink); [`dhcp`] is a DHCPv4 client whose state machine is pure and whose driver runs it
//! on a packet socket; [`dhcp6`] is the DHCPv6 client, built the same way.

pub mod apply;
pub mod dhcp;
pub mod dhcp6;
pub mod netlink;
pub mod plan;
pub mod resolv;
pub mod types;

pub use netlink::{Net, NetError};
pub use plan::{IfacePlan, Plan, plan};
pub use types::{AddrInfo, Ipv6Link, LinkInfo, RaFlags, RouteInfo};
