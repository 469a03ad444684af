//! `[registries]`: where images are pulled from, with k3s's `registries.yaml` meaning.
//! `mirrors."NAME".endpoints` are tried in order, then the registry itself (`NAME` is a
//! registry as images name it, `docker.io`, `host:port`, or `*` for all); an `http://`
//! endpoint is the only way to plain HTTP. `configs."HOST"` (an endpoint's or a registry's
//! `host[:port]`) gives credentials, a CA, or `insecure_skip_verify`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::node::Node;
use crate::walk::{Walker, join};

crate::table! {
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
    pub struct Registries {
        planned: [],
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        mirrors: BTreeMap<String, Mirror> = "mirrors" => read_mirrors,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        configs: BTreeMap<String, HostConfig> = "configs" => read_configs,
    }
}

crate::table! {
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
    pub struct Mirror {
        planned: [],
        #[serde(skip_serializing_if = "Option::is_none")]
        endpoints: Option<Vec<String>> = "endpoints" => |w, p, n| w.list(p, n, endpoint),
    }
}

crate::table! {
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
    pub struct HostConfig {
        planned: [],
        #[serde(skip_serializing_if = "Option::is_none")]
        username: Option<String> = "username" => |w, p, n| w.string(p, n),
        #[serde(skip_serializing_if = "Option::is_none")]
        password: Option<String> = "password" => |w, p, n| w.string(p, n),
        /// base64 of `username:password`.
        #[serde(skip_serializing_if = "Option::is_none")]
        auth: Option<String> = "auth" => auth,
        /// A PEM file on the machine with the CA(s) the registry's certificate chains to.
        #[serde(skip_serializing_if = "Option::is_none")]
        ca_file: Option<String> = "ca_file" => crate::service::abs_path,
        /// The same, inline.
        #[serde(skip_serializing_if = "Option::is_none")]
        ca: Option<String> = "ca" => ca_pem,
        #[serde(skip_serializing_if = "Option::is_none")]
        insecure_skip_verify: Option<bool> = "insecure_skip_verify" => |w, p, n| w.bool(p, n),
    }
}

fn endpoint(w: &mut Walker<'_>, path: &str, node: &Node) -> Option<String> {
    let s = w.string(path, node)?;
    let (scheme, rest) = s.split_once("://").unwrap_or(("https", s.as_str()));
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if !matches!(scheme, "http" | "https") || !ros_registry::reference::valid_registry(host) {
        w.err(
            node.pos,
            path,
            format!("`{s}` is not an endpoint: expected http://HOST[:PORT] or https://HOST[:PORT]"),
        );
        return None;
    }
    Some(format!("{scheme}://{host}"))
}

fn auth(w: &mut Walker<'_>, path: &str, node: &Node) -> Option<String> {
    use base64::Engine as _;
    let s = w.string(path, node)?;
    let ok = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|t| t.contains(':'));
    if !ok {
        w.err(node.pos, path, "expected base64 of `username:password`");
        return None;
    }
    Some(s)
}

fn ca_pem(w: &mut Walker<'_>, path: &str, node: &Node) -> Option<String> {
    let s = w.string(path, node)?;
    if !s.contains("-----BEGIN CERTIFICATE-----") {
        w.err(
            node.pos,
            path,
            "expected PEM text with a `-----BEGIN CERTIFICATE-----` block",
        );
        return None;
    }
    Some(s)
}

fn read_mirrors(w: &mut Walker<'_>, path: &str, node: &Node) -> BTreeMap<String, Mirror> {
    let mut out = BTreeMap::new();
    for e in w.map(path, node).unwrap_or_default() {
        let p = join(path, &e.key);
        if e.key != "*" && !ros_registry::reference::valid_registry(&e.key) {
            w.err(
                e.key_pos,
                &p,
                format!(
                    "`{}` is not a registry (HOST[:PORT], e.g. docker.io, or `*`)",
                    e.key
                ),
            );
            continue;
        }
        out.insert(e.key.clone(), Mirror::read(w, &p, &e.node));
    }
    out
}

fn read_configs(w: &mut Walker<'_>, path: &str, node: &Node) -> BTreeMap<String, HostConfig> {
    let mut out = BTreeMap::new();
    for e in w.map(path, node).unwrap_or_default() {
        let p = join(path, &e.key);
        if !ros_registry::reference::valid_registry(&e.key) {
            w.err(
                e.key_pos,
                &p,
                format!("`{}` is not a registry host (HOST[:PORT])", e.key),
            );
            continue;
        }
        let c = HostConfig::read(w, &p, &e.node);
        if c.username.is_some() != c.password.is_some() {
            w.err(e.node.pos, &p, "username and password go together");
        }
        if c.auth.is_some() && c.username.is_some() {
            w.err(
                e.node.pos,
                &p,
                "give either auth or username and password, not both",
            );
        }
        if c.ca.is_some() && c.ca_file.is_some() {
            w.err(e.node.pos, &p, "give either ca or ca_file, not both");
        }
        out.insert(e.key.clone(), c);
    }
    out
}

impl Registries {
    pub fn is_empty(&self) -> bool {
        self.mirrors.is_empty() && self.configs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    fn errors(text: &str) -> Vec<String> {
        let src = crate::Source::new("user-data", crate::Input::Bytes(text.as_bytes().to_vec()));
        let ctx = crate::Context::shipped(crate::system::Facts::default());
        crate::load(&[src], "", &ctx)
            .errors
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn registries_read_as_k3s_writes_them() {
        let ok = r#"
[registries.mirrors."docker.io"]
endpoints = ["https://mirror.example:5000", "http://10.0.2.2:5000/"]
[registries.mirrors."*"]
endpoints = ["http://10.0.2.2:5001"]
[registries.configs."mirror.example:5000"]
username = "ros"
password = "s3cret"
ca_file = "/var/lib/ros/ca.pem"
[registries.configs."10.0.2.2:5000"]
auth = "cm9zOnMzY3JldA=="
insecure_skip_verify = true
"#;
        assert_eq!(errors(ok), Vec::<String>::new());
    }

    #[test]
    fn bad_registry_settings_are_named() {
        for (text, says) in [
            (
                "[registries.mirrors.\"docker.io\"]\nendpoints = [\"ftp://x\"]\n",
                "registries.mirrors.\"docker.io\".endpoints",
            ),
            (
                "[registries.mirrors.\"a b\"]\nendpoints = []\n",
                "is not a registry",
            ),
            (
                "[registries.configs.\"h:5000\"]\nusername = \"u\"\n",
                "username and password go together",
            ),
            (
                "[registries.configs.\"h:5000\"]\nauth = \"nope\"\n",
                "base64 of `username:password`",
            ),
            (
                "[registries.configs.\"h:5000\"]\nca = \"x\"\n",
                "BEGIN CERTIFICATE",
            ),
            (
                "[registries.configs.\"h:5000\"]\nca_file = \"ca.pem\"\n",
                "absolute path",
            ),
            (
                "[registries.configs.\"h:5000\"]\nverify = false\n",
                "verify",
            ),
        ] {
            let e = errors(text);
            assert!(e.iter().any(|m| m.contains(says)), "{text}: {e:?}");
        }
    }
}
