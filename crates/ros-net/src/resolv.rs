//! `/etc/resolv.conf` contents: nameservers and search domains from the config when it sets
//! them, else from DHCP leases.

use std::fmt::Write;
use std::net::IpAddr;

/// Glibc and musl read at most three nameservers.
const MAX_NAMESERVERS: usize = 3;

pub fn render(nameservers: &[IpAddr], search: &[String]) -> String {
    let mut out = String::from("# written by ros init\n");
    let mut seen = Vec::new();
    for ns in nameservers {
        if seen.contains(ns) || seen.len() == MAX_NAMESERVERS {
            continue;
        }
        seen.push(*ns);
        let _ = writeln!(out, "nameserver {ns}");
    }
    if !search.is_empty() {
        let _ = writeln!(out, "search {}", search.join(" "));
    }
    out
}

/// The effective DNS: the config's lists win, key by key, over what leases gave.
pub fn choose(
    cfg_ns: Option<&[IpAddr]>,
    cfg_search: Option<&[String]>,
    lease_ns: &[IpAddr],
    lease_search: &[String],
) -> (Vec<IpAddr>, Vec<String>) {
    (
        cfg_ns.map_or_else(|| lease_ns.to_vec(), <[IpAddr]>::to_vec),
        cfg_search.map_or_else(|| lease_search.to_vec(), <[String]>::to_vec),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_deduplicated_and_capped() {
        let ns: Vec<IpAddr> = ["10.0.2.3", "10.0.2.3", "1.1.1.1", "8.8.8.8", "9.9.9.9"]
            .iter()
            .map(|s| s.parse().expect("ip"))
            .collect();
        assert_eq!(
            render(&ns, &["a.example".into(), "b".into()]),
            "# written by ros init\nnameserver 10.0.2.3\nnameserver 1.1.1.1\nnameserver 8.8.8.8\nsearch a.example b\n"
        );
    }

    #[test]
    fn config_wins_over_leases() {
        let lease: Vec<IpAddr> = vec!["10.0.2.3".parse().expect("ip")];
        let cfg: Vec<IpAddr> = vec!["1.1.1.1".parse().expect("ip")];
        let (ns, search) = choose(Some(&cfg), None, &lease, &["lease.dom".into()]);
        assert_eq!(ns, cfg);
        assert_eq!(search, ["lease.dom"]);
    }
}
