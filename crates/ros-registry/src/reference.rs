//! Image references as Docker and k3s read them: `nginx` is `docker.io/library/nginx:latest`,
//! `10.0.2.2:5000/hello:1` names its registry, `name@sha256:...` pins a manifest.

use std::fmt;

/// A parsed reference. `registry` is as written (`docker.io` for names without one);
/// `repository` is the path on it; a reference has a tag, a digest, or both (the digest wins).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// A content digest, `algorithm:hex`; only sha256 and sha512 are accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    pub algorithm: String,
    pub hex: String,
}

pub const DOCKER_HUB: &str = "docker.io";

impl Digest {
    pub fn parse(s: &str) -> Result<Digest, String> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}` is not a digest (algorithm:hex)"))?;
        let len = match alg {
            "sha256" => 64,
            "sha512" => 128,
            _ => {
                return Err(format!(
                    "`{s}`: digest algorithm `{alg}` is not sha256 or sha512"
                ));
            }
        };
        if hex.len() != len
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "`{s}`: a {alg} digest is {len} lowercase hex digits"
            ));
        }
        Ok(Digest {
            algorithm: alg.into(),
            hex: hex.into(),
        })
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest {
            algorithm: "sha256".into(),
            hex: hex(&sha2::Sha256::digest(bytes)),
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

fn valid_component(c: &str) -> bool {
    // Lowercase letters and digits, separated by one `.` or `_`, two `_`, or any `-`s.
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    if !b
        .iter()
        .all(|&x| x.is_ascii_digit() || x.is_ascii_lowercase() || matches!(x, b'.' | b'_' | b'-'))
    {
        return false;
    }
    // No `..`, `._`, `_.`, or three `_`.
    !c.contains("..") && !c.contains("._") && !c.contains("_.") && !c.contains("___")
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'))
}

/// Whether `r` is a registry's `host[:port]` (a name, an IPv4 or a bracketed IPv6 address).
pub fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || r.starts_with('[') => (h, Some(p)),
        _ => (r, None),
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, String> {
        let bad = |why: &str| format!("`{s}` is not an image reference: {why}");
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > 1024 {
            return Err(bad("it is over 1024 characters"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d).map_err(|e| bad(&e))?)),
            None => (s, None),
        };
        // A tag is after the last `:` that follows the last `/` (a registry's port comes before).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(bad(&format!(
                "tag `{t}`: letters, digits, `_`, `.` and `-`, at most 128, not starting with `.` or `-`"
            )));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if !valid_registry(&registry) {
            return Err(bad(&format!("registry `{registry}` is not a host[:port]")));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if let Some(c) = repository.split('/').find(|c| !valid_component(c)) {
            return Err(bad(&format!(
                "name component `{c}`: lowercase letters and digits, separated by `.`, `_`, `__` or `-`"
            )));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What the manifest is asked for by: the digest when there is one, else the tag.
    pub fn target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// The host the distribution API of `registry` is served from by default (Docker Hub's
    /// API is not on `docker.io` itself).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_names_are_normalised_as_docker_does() {
        for (given, canonical) in [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.27", "docker.io/library/nginx:1.27"),
            (
                "docker.io/library/nginx:1.27",
                "docker.io/library/nginx:1.27",
            ),
            ("bitnami/redis", "docker.io/bitnami/redis:latest"),
            ("10.0.2.2:5000/hello:1", "10.0.2.2:5000/hello:1"),
            ("localhost/a/b", "localhost/a/b:latest"),
            ("ghcr.io/o/p/q:v1.2-rc_3", "ghcr.io/o/p/q:v1.2-rc_3"),
            ("[::1]:5000/x", "[::1]:5000/x:latest"),
        ] {
            let r = Reference::parse(given).unwrap();
            assert_eq!(r.to_string(), canonical, "{given}");
        }
        let r = Reference::parse(&format!("10.0.2.2:5000/hello@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.target(), D);
        assert_eq!(r.registry, "10.0.2.2:5000");
        let r = Reference::parse(&format!("busybox:1@{D}")).unwrap();
        assert_eq!(r.target(), D, "the digest wins over the tag");
        assert_eq!(
            Reference::parse("nginx").unwrap().api_host(),
            "registry-1.docker.io"
        );
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        for (given, says) in [
            ("", "empty"),
            ("Nginx", "name component `Nginx`"),
            ("a//b", "name component ``"),
            ("nginx:", "tag ``"),
            ("nginx:-x", "tag `-x`"),
            ("nginx@sha256:abc", "64 lowercase hex"),
            ("nginx@md5:abc", "not sha256 or sha512"),
            ("host:99999/x", "registry `host:99999`"),
            ("a..b/c", "registry `a..b`"),
            ("ex ample.com/x", "registry"),
        ] {
            let e = Reference::parse(given).unwrap_err();
            assert!(e.contains(says), "{given}: {e}");
        }
    }
}
