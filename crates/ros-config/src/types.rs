//! Validated value types: each can only be built by parsing, so a `Hostname` always is one.
//! Parse errors are lower-case sentences saying what was expected.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Serialize, Serializer};

/// A hostname: 1-64 characters, dot-separated labels of letters, digits and `-` (RFC 1123), no
/// label starting or ending with `-`. 64 is the kernel's limit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Hostname(String);

impl FromStr for Hostname {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 64 {
            return Err(format!(
                "a hostname has 1 to 64 characters, found {}",
                s.len()
            ));
        }
        for label in s.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(format!("`{s}` has an empty or over-long label"));
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(format!(
                    "`{s}` holds `{c}`; a hostname has only letters, digits, `-` and `.`"
                ));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(format!("`{s}` has a label that starts or ends with `-`"));
            }
        }
        Ok(Hostname(s.to_string()))
    }
}

impl Hostname {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An Ethernet MAC address, written `52:54:00:12:34:56` (`-` separators are accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected a MAC address like 52:54:00:12:34:56, found `{s}`");
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A duration written with a unit: `500ms`, `10s`, `2m`, `1h`; a bare number means seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("expected a duration like `10s` or `500ms`, found `{s}`"))?;
        let ms = match unit.trim() {
            "ms" => Some(n),
            "" | "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` in `{s}`; use ms, s, m or h"
                ));
            }
        };
        ms.map(|ms| Dur(Duration::from_millis(ms)))
            .ok_or_else(|| format!("duration `{s}` is too long"))
    }
}

impl Dur {
    /// Whole milliseconds (saturating: a `Dur` is at most a day by the ranges of its keys).
    pub fn millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Written with the largest unit that is exact: `1h`, `90s`, `1500ms`.
impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.millis();
        match ms {
            0 => f.write_str("0s"),
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1000) => write!(f, "{}s", ms / 1000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}ms", self.0.as_millis()))
    }
}

/// The range a duration key accepts (documented with each key in `docs/user-data.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurRange {
    pub min: Duration,
    pub max: Duration,
}

impl DurRange {
    pub const fn ms(min: u64, max: u64) -> DurRange {
        DurRange {
            min: Duration::from_millis(min),
            max: Duration::from_millis(max),
        }
    }
}

/// Every duration key's range, in one place.
pub mod ranges {
    use super::DurRange;

    const S: u64 = 1000;
    const M: u64 = 60 * S;
    const H: u64 = 60 * M;

    /// `network.online_timeout`, `ros.datasource.timeout`.
    pub const ONLINE_TIMEOUT: DurRange = DurRange::ms(0, 10 * M);
    /// `services.*.backoff.initial`.
    pub const BACKOFF_INITIAL: DurRange = DurRange::ms(10, H);
    /// `services.*.backoff.max`.
    pub const BACKOFF_MAX: DurRange = DurRange::ms(10, 24 * H);
    /// `services.*.stop_timeout`.
    pub const STOP_TIMEOUT: DurRange = DurRange::ms(0, H);
    /// `services.*.health.interval`.
    pub const HEALTH_INTERVAL: DurRange = DurRange::ms(100, 24 * H);
    /// `services.*.health.timeout`.
    pub const HEALTH_TIMEOUT: DurRange = DurRange::ms(100, H);
}

/// A kernel module name. `-` and `_` are the same to the kernel; the name is kept with `_`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ModuleName(String);

impl FromStr for ModuleName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 55 {
            return Err(format!("a module name has 1 to 55 characters, found `{s}`"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(format!(
                "module name `{s}` holds `{c}`; expected letters, digits, `_`, `-`"
            ));
        }
        Ok(ModuleName(s.replace('-', "_")))
    }
}

impl ModuleName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A sysctl key, dotted (`net.ipv4.ip_forward`) or as a path under /proc/sys
/// (`net/ipv4/conf/eth0.100/rp_filter`, the form needed when a part holds a dot).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SysctlKey(String);

impl FromStr for SysctlKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/');
        let key = s.trim_matches('/');
        let sep = if key.contains('/') { '/' } else { '.' };
        if key.is_empty()
            || !key.chars().all(ok_char)
            || key
                .split(sep)
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(format!(
                "expected a sysctl key like `net.ipv4.ip_forward`, found `{s}`"
            ));
        }
        Ok(SysctlKey(key.to_string()))
    }
}

impl SysctlKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The path under /proc/sys, e.g. `net/ipv4/ip_forward`.
    pub fn proc_path(&self) -> String {
        if self.0.contains('/') {
            self.0.clone()
        } else {
            self.0.replace('.', "/")
        }
    }
}

/// A network interface name as the kernel allows it: 1-15 bytes, no `/`, `:` or whitespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct IfName(String);

impl FromStr for IfName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 15 {
            return Err(format!(
                "an interface name has 1 to 15 characters, found `{s}`"
            ));
        }
        if s == "." || s == ".." || s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
            return Err(format!("`{s}` is not a valid interface name"));
        }
        Ok(IfName(s.to_string()))
    }
}

impl IfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A server written as `host`, `host:port`, an IPv6 address alone (`2001:db8::1`) or
/// `[2001:db8::1]:port`: its host (without brackets) and port (`default_port` when none).
pub fn parse_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let bad = |why: &str| {
        format!(
            "`{s}` is not a server like `pool.ntp.org`, `10.0.2.2:123` or `[2001:db8::1]:123`: {why}"
        )
    };
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("bad port"))
    };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| bad("no `]`"))?;
        let port = match after {
            "" => default_port,
            p => port(p.strip_prefix(':').ok_or_else(|| bad("junk after `]`"))?)?,
        };
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address in brackets"));
        }
        (h.to_string(), port)
    } else if s.parse::<std::net::Ipv6Addr>().is_ok() {
        (s.to_string(), default_port)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h.to_string(), port(p)?),
            None => (s.to_string(), default_port),
        }
    };
    if host.is_empty()
        || host.len() > 253
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
    {
        return Err(bad("not a host name or address"));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port() {
        let hp = |s| parse_host_port(s, 123);
        assert_eq!(hp("pool.ntp.org"), Ok(("pool.ntp.org".into(), 123)));
        assert_eq!(hp("10.0.2.2:4123"), Ok(("10.0.2.2".into(), 4123)));
        assert_eq!(hp("2001:db8::1"), Ok(("2001:db8::1".into(), 123)));
        assert_eq!(hp("[2001:db8::1]:9"), Ok(("2001:db8::1".into(), 9)));
        assert_eq!(hp("[fe80::1]"), Ok(("fe80::1".into(), 123)));
        for bad in [
            "",
            "a b",
            "x:0",
            "x:99999",
            "[1.2.3.4]:5",
            "[::1",
            "h:1:2",
            "a\nb",
        ] {
            assert!(hp(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostnames() {
        assert!("node-1.example".parse::<Hostname>().is_ok());
        assert!("a".parse::<Hostname>().is_ok());
        for bad in ["", "-a", "a-", "a..b", "a_b", "a b", &"x".repeat(65)] {
            assert!(bad.parse::<Hostname>().is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn macs() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().expect("mac");
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0x0f]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert!("52-54-00-ab-cd-0f".parse::<MacAddr>().is_ok());
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!("500ms".parse::<Dur>(), Ok(Dur(Duration::from_millis(500))));
        assert_eq!("10s".parse::<Dur>(), Ok(Dur(Duration::from_secs(10))));
        assert_eq!("10".parse::<Dur>(), Ok(Dur(Duration::from_secs(10))));
        assert_eq!("2m".parse::<Dur>(), Ok(Dur(Duration::from_secs(120))));
        assert!("10 days".parse::<Dur>().is_err());
        assert!("s".parse::<Dur>().is_err());
        assert!("99999999999999999999h".parse::<Dur>().is_err());
        for (text, shown) in [
            ("90", "90s"),
            ("1500ms", "1500ms"),
            ("120s", "2m"),
            ("60m", "1h"),
        ] {
            assert_eq!(
                text.parse::<Dur>().map(|d| d.to_string()).as_deref(),
                Ok(shown)
            );
        }
    }

    #[test]
    fn module_names_normalise_dashes() {
        assert_eq!(
            "virtio-net".parse::<ModuleName>().map(|m| m.0),
            Ok("virtio_net".into())
        );
        assert!("../evil".parse::<ModuleName>().is_err());
    }

    #[test]
    fn sysctl_keys() {
        let k: SysctlKey = "net.ipv4.ip_forward".parse().expect("key");
        assert_eq!(k.proc_path(), "net/ipv4/ip_forward");
        let k: SysctlKey = "net/ipv4/conf/eth0.100/rp_filter".parse().expect("key");
        assert_eq!(k.proc_path(), "net/ipv4/conf/eth0.100/rp_filter");
        assert!("net..x".parse::<SysctlKey>().is_err());
        assert!("net/../../etc".parse::<SysctlKey>().is_err());
        assert!("net/ipv4/ip forward".parse::<SysctlKey>().is_err());
    }

    #[test]
    fn interface_names() {
        assert!("eth0".parse::<IfName>().is_ok());
        assert!("a-very-long-name0".parse::<IfName>().is_err());
        assert!("eth0:1".parse::<IfName>().is_err());
    }
}
