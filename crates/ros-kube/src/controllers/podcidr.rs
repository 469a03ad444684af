//! The node IPAM controller's choice, pure: each node gets a /24 of the cluster's pod range
//! (k3s's 10.42.0.0/16 by default), the lowest one no node holds, kept in its `spec.podCIDR`.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;
use serde_json::Value;

pub const DEFAULT_CLUSTER_CIDR: Ipv4Net =
    match Ipv4Net::new(std::net::Ipv4Addr::new(10, 42, 0, 0), 16) {
        Ok(n) => n,
        Err(_) => panic!("10.42.0.0/16 is a network"),
    };

/// The ranges the nodes hold.
pub fn taken(nodes: &[Value]) -> BTreeSet<Ipv4Net> {
    nodes
        .iter()
        .filter_map(|n| n.pointer("/spec/podCIDR").and_then(Value::as_str))
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// The lowest /24 of `cluster` that overlaps none of `taken`.
pub fn allocate(cluster: Ipv4Net, taken: &BTreeSet<Ipv4Net>) -> Option<Ipv4Net> {
    let len = cluster.prefix_len().max(24);
    cluster
        .subnets(len)
        .ok()?
        .take(65536)
        .find(|c| !taken.iter().any(|t| t.contains(c) || c.contains(t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nodes_get_the_lowest_free_slash_24() {
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap_or_else(|e| panic!("{e}"));
        let nodes = [
            json!({"spec": {"podCIDR": "10.42.0.0/24"}}),
            json!({"spec": {"podCIDR": "10.42.2.0/24"}}),
            json!({"spec": {}}),
        ];
        let t = taken(&nodes);
        assert_eq!(
            allocate(DEFAULT_CLUSTER_CIDR, &t),
            Some(net("10.42.1.0/24"))
        );
        let full: BTreeSet<Ipv4Net> = [net("10.42.0.0/16")].into();
        assert_eq!(allocate(DEFAULT_CLUSTER_CIDR, &full), None);
        // A range smaller than a /24 is given whole.
        assert_eq!(
            allocate(net("192.168.9.0/26"), &BTreeSet::new()),
            Some(net("192.168.9.0/26"))
        );
    }
}
