//! Kubernetes's rules for what the `[cluster]` table names: node names, labels and taints.
//! Here, not in ros-kube, so that the user-data is checked when it is read (with the line and
//! key of a mistake) by the same code the cluster's program uses for its flags.

/// A node label, `KEY=VALUE` (the key may carry a DNS `prefix/`; the value may be empty).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("a label is KEY=VALUE, found `{s}`"))?;
    label_key(k)?;
    if !v.is_empty() {
        word(v).map_err(|e| format!("label value `{v}`: {e}"))?;
    }
    Ok((k.to_string(), v.to_string()))
}

/// A node taint as `kubectl taint` writes it: `KEY[=VALUE]:EFFECT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
    pub effect: String,
}

pub fn parse_taint(s: &str) -> Result<Taint, String> {
    let (kv, effect) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("a taint is KEY[=VALUE]:EFFECT, found `{s}`"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "taint `{s}`: the effect is NoSchedule, PreferNoSchedule or NoExecute, found `{effect}`"
        ));
    }
    let (k, v) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (kv, None),
    };
    label_key(k).map_err(|e| format!("taint `{s}`: {e}"))?;
    if let Some(v) = v.filter(|v| !v.is_empty()) {
        word(v).map_err(|e| format!("taint `{s}`: value: {e}"))?;
    }
    Ok(Taint {
        key: k.to_string(),
        value: v.filter(|v| !v.is_empty()).map(str::to_string),
        effect: effect.to_string(),
    })
}

/// A node's name: a DNS subdomain in lower case, at most 253 characters (RFC 1123).
pub fn node_name(s: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.is_empty() || s.len() > 253 || !s.split('.').all(label_ok) {
        return Err(format!(
            "`{s}` is not a node name: lower-case letters, digits, `-` and `.`, each part \
             starting and ending with a letter or digit, at most 253 characters"
        ));
    }
    Ok(())
}

fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        node_name(p).map_err(|_| format!("key prefix `{p}` is not a DNS subdomain"))?;
    }
    word(name).map_err(|e| format!("key `{k}`: {e}"))
}

/// A label's name part or value (Kubernetes's "qualified name" rules).
fn word(w: &str) -> Result<(), String> {
    if w.is_empty() || w.len() > 63 {
        return Err("1 to 63 characters".into());
    }
    let ok = w
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && w.starts_with(|c: char| c.is_ascii_alphanumeric())
        && w.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok {
        return Err(
            "letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_taints_and_names_follow_kubernetes() {
        assert_eq!(
            parse_label("node-role.kubernetes.io/worker=true"),
            Ok(("node-role.kubernetes.io/worker".into(), "true".into()))
        );
        assert_eq!(parse_label("zone="), Ok(("zone".into(), String::new())));
        assert_eq!(
            parse_label("Zone_A=Rack.1"),
            Ok(("Zone_A".into(), "Rack.1".into()))
        );
        for bad in [
            "zone",
            "=x",
            "-zone=a",
            "zone=a b",
            "Bad_Prefix/x=1",
            "x=-a",
        ] {
            assert!(parse_label(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_taint("dedicated=gpu:NoSchedule"),
            Ok(Taint {
                key: "dedicated".into(),
                value: Some("gpu".into()),
                effect: "NoSchedule".into()
            })
        );
        assert_eq!(
            parse_taint("example.com/spot:NoExecute"),
            Ok(Taint {
                key: "example.com/spot".into(),
                value: None,
                effect: "NoExecute".into()
            })
        );
        let e = parse_taint("dedicated=gpu:Never").expect_err("effect");
        assert!(
            e.contains("NoSchedule, PreferNoSchedule or NoExecute"),
            "{e}"
        );
        assert!(parse_taint("dedicated=gpu").is_err());
        assert!(parse_taint("bad key:NoSchedule").is_err());
        assert!(node_name("node-b.example").is_ok());
        for bad in ["", "Node-B", "a..b", "-a", "a_b", &"a".repeat(64)] {
            assert!(node_name(bad).is_err(), "{bad}");
        }
    }
}
