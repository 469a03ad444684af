//! `/etc/resolv.conf` contents: nameservers and search domains from the config when it sets
//! them, else from DHCP leases. A name a DHCP server gives is written only if it is a DNS name
//! (RFC 1035 labels): a domain holding a newline or a space would add lines of the server's
//! choosing to the file.

use std::fmt::Write;
use std::net::IpAddr;

/// Glibc and musl read at most three nameservers.
const MAX_NAMESERVERS: usize = 3;

/// Whether `name` is a DNS name as resolv.conf may hold it: dot-separated labels of 1-63
/// letters, digits and `-` (not first or last), at most 253 characters in all (RFC 1035 §2.3,
/// RFC 1123 §2.1); a trailing dot is allowed.
pub fn is_dns_name(name: &str) -> bool {
    let n = name.strip_suffix('.').unwrap_or(name);
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// `names` split into the DNS names and the others (to drop, and say so).
pub fn keep_dns_names(names: Vec<String>) -> (Vec<String>, Vec<String>) {
    names.into_iter().partition(|n| is_dns_name(n))
}

/// The file's text. Search domains that are not DNS names are left out.
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
    let search: Vec<&str> = search
        .iter()
        .map(String::as_str)
        .filter(|s| is_dns_name(s))
        .collect();
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
    fn only_dns_names_reach_the_file() {
        for ok in ["example.com", "a-b.c", "x", "example.com.", "a1.b2"] {
            assert!(is_dns_name(ok), "{ok}");
        }
        for bad in [
            "evil\nnameserver 6.6.6.6",
            "a b",
            "",
            ".",
            "-a.b",
            "a-.b",
            "a..b",
            "a_b",
            &"x".repeat(64),
            &format!("{}.com", "a.".repeat(130)),
        ] {
            assert!(!is_dns_name(bad), "{bad:?}");
        }
        let text = render(
            &[],
            &["good.example".into(), "bad\nnameserver 6.6.6.6".into()],
        );
        assert_eq!(text, "# written by ros init\nsearch good.example\n");
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
