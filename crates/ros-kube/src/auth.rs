//! Who is asking (a client certificate signed by the cluster's CA, or a bearer token) and what
//! they may do: `system:masters` everything; a node (`system:node:<name>` in `system:nodes`)
//! reads, and writes only its own Node and Lease, its pods' status and events.

use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }

    pub fn node(&self) -> Option<&str> {
        if self.groups.iter().any(|g| g == "system:nodes") {
            self.name.strip_prefix("system:node:")
        } else {
            None
        }
    }
}

/// The user a verified client certificate names: CN the user, O the groups.
pub fn from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some(User { name, groups })
}

/// Bearer tokens from a file of `TOKEN USER GROUP,GROUP` lines (`#` comments).
#[derive(Debug, Default, Clone)]
pub struct Tokens(HashMap<String, User>);

impl Tokens {
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tokens::default()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut f = line.split_whitespace();
            let (Some(tok), Some(user)) = (f.next(), f.next()) else {
                return Err(format!(
                    "{}:{}: expected TOKEN USER [GROUP,...]",
                    path.display(),
                    i + 1
                ));
            };
            let groups = f
                .next()
                .map(|g| g.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            map.insert(
                tok.to_string(),
                User {
                    name: user.to_string(),
                    groups,
                },
            );
        }
        Ok(Tokens(map))
    }

    pub fn insert(&mut self, token: &str, user: User) {
        self.0.insert(token.to_string(), user);
    }

    pub fn user(&self, token: &str) -> Option<&User> {
        self.0.get(token)
    }
}

/// What the authorizer says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
    /// Allowed if the pod is bound to this node (checked against the stored pod).
    IfPodOnNode(String),
    /// A create allowed only for an object of this name (a node's own Node or Lease).
    IfNamed(String),
}

pub fn authorize(
    user: &User,
    verb: &str,
    resource: &str,
    ns: Option<&str>,
    name: Option<&str>,
    sub: Option<&str>,
) -> Decision {
    if user.is_admin() {
        return Decision::Allow;
    }
    let deny = || {
        Decision::Deny(format!(
            "User \"{}\" cannot {verb} resource \"{resource}{}\"{}",
            user.name,
            sub.map(|s| format!("/{s}")).unwrap_or_default(),
            ns.map(|n| format!(" in the namespace \"{n}\""))
                .unwrap_or_default()
        ))
    };
    let Some(node) = user.node() else {
        return deny();
    };
    let write = matches!(verb, "create" | "update" | "patch" | "delete");
    if !write {
        return if sub == Some("exec") || sub == Some("log") {
            deny()
        } else {
            Decision::Allow
        };
    }
    match resource {
        "nodes" | "leases" if resource == "nodes" || ns == Some("kube-node-lease") => match name {
            None if verb == "create" => Decision::IfNamed(node.to_string()),
            Some(n) if n == node && verb != "delete" => Decision::Allow,
            _ => deny(),
        },
        "events" => Decision::Allow,
        "pods" if sub == Some("status") || (verb == "delete" && sub.is_none()) => {
            Decision::IfPodOnNode(node.to_string())
        }
        _ => deny(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_write_only_their_own() {
        let n = User {
            name: "system:node:a".into(),
            groups: vec!["system:nodes".into()],
        };
        assert_eq!(
            authorize(&n, "update", "nodes", None, Some("a"), Some("status")),
            Decision::Allow
        );
        assert!(matches!(
            authorize(&n, "update", "nodes", None, Some("b"), None),
            Decision::Deny(_)
        ));
        assert_eq!(
            authorize(&n, "create", "nodes", None, None, None),
            Decision::IfNamed("a".into())
        );
        assert!(matches!(
            authorize(&n, "create", "leases", Some("default"), Some("a"), None),
            Decision::Deny(_)
        ));
        assert_eq!(
            authorize(&n, "patch", "pods", Some("d"), Some("p"), Some("status")),
            Decision::IfPodOnNode("a".into())
        );
        assert!(matches!(
            authorize(&n, "create", "secrets", Some("d"), None, None),
            Decision::Deny(_)
        ));
        let nobody = User {
            name: "x".into(),
            groups: vec![],
        };
        assert!(matches!(
            authorize(&nobody, "get", "pods", None, None, None),
            Decision::Deny(_)
        ));
    }
}
