//! Checks of a layered config as a whole, which no single source can be checked for: every
//! enabled service names an image that exists and dependencies that are enabled services, no
//! dependencies go round in a cycle, a service's keys agree with each other, and no two
//! interfaces select one NIC. Linear in the number of services and dependencies (a chain or a
//! cycle of 10,000 services is checked in milliseconds, without recursion).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::error::{ConfigError, Pos};
use crate::schema::Network;
use crate::service::{HostNs, Service};
use crate::types::MacAddr;
use crate::walk::{join, suggest};

/// Unknown dependencies after this many get no "did you mean" (each costs a distance per
/// service).
const MAX_SUGGESTIONS: usize = 20;
/// A cycle longer than this is shown by its start and its length.
const CYCLE_SHOWN: usize = 8;

fn key(name: &str, k: &str) -> String {
    join(&join("services", name), k)
}

/// Checks the layered services. Returns the errors and the services that must not start (their
/// names); the rest start. A key that contradicts another (a `hostname` with the host's UTS
/// namespace, a backoff `max` below its `initial`) is reported and ignored, not blocking.
pub fn services(
    services: &BTreeMap<String, Service>,
    images: &BTreeSet<String>,
) -> (Vec<ConfigError>, BTreeSet<String>) {
    let mut errors = Vec::new();
    let mut blocked = BTreeSet::new();
    let enabled: Vec<(&String, &Service)> =
        services.iter().filter(|(_, s)| s.is_enabled()).collect();
    let index: HashMap<&str, usize> = enabled
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.as_str(), i))
        .collect();
    let enabled_names: Vec<&str> = enabled.iter().map(|(n, _)| n.as_str()).collect();
    let image_list: Vec<&str> = images.iter().map(String::as_str).collect();
    let mut suggestions = MAX_SUGGESTIONS;
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); enabled.len()];
    for (i, (name, s)) in enabled.iter().enumerate() {
        match &s.image {
            None => {
                errors.push(ConfigError::new(
                    "services",
                    Pos::default(),
                    &key(name, "image"),
                    "no image given",
                ));
                blocked.insert(name.to_string());
            }
            Some(img) if !images.contains(&img.value) => {
                // Not a baked image: a registry reference, pulled before the service starts.
                // A bare name close to a baked one is taken for a typo of it (pulling it from
                // Docker Hub is still one explicit `docker.io/library/NAME` away).
                let bare = !img.value.contains(['/', ':', '@']);
                let near = if bare {
                    suggest(&img.value, &image_list)
                } else {
                    None
                };
                let problem = match (ros_registry::Reference::parse(&img.value), near) {
                    (Err(e), near) => Some(format!(
                        "there is no image `{}`{}, and {e}",
                        img.value,
                        near.map(|c| format!(" (did you mean `{c}`?)"))
                            .unwrap_or_default()
                    )),
                    (Ok(_), Some(c)) => Some(format!(
                        "there is no image `{}`; did you mean `{c}`? (to pull `{}` from Docker Hub, write `docker.io/library/{}`)",
                        img.value, img.value, img.value
                    )),
                    (Ok(_), None) => None,
                };
                if let Some(p) = problem {
                    errors.push(ConfigError::new(
                        &img.source,
                        img.pos,
                        &key(name, "image"),
                        p,
                    ));
                    blocked.insert(name.to_string());
                }
            }
            Some(_) => {}
        }
        for d in s.depends_on.iter().flatten() {
            if let Some(&j) = index.get(d.value.as_str()) {
                edges[i].push(j);
                continue;
            }
            let why = if services.contains_key(&d.value) {
                format!("depends on `{}`, which is disabled", d.value)
            } else {
                let hint = if suggestions > 0 {
                    suggestions -= 1;
                    suggest(&d.value, &enabled_names)
                        .map(|c| format!("; did you mean `{c}`?"))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                format!("depends on `{}`, which is not a service{hint}", d.value)
            };
            errors.push(ConfigError::new(
                &d.source,
                d.pos,
                &key(name, "depends_on"),
                why,
            ));
            blocked.insert(name.to_string());
        }
        if let Some(h) = &s.hostname
            && s.host_namespaces
                .iter()
                .flatten()
                .any(|n| *n == HostNs::Uts)
        {
            errors.push(ConfigError::new(
                &h.source,
                h.pos,
                &key(name, "hostname"),
                "a hostname needs the service's own UTS namespace, but `host_namespaces` shares \
                 the host's (`uts`); the host's name is kept",
            ));
        }
        if let (Some(initial), Some(max)) = (&s.backoff.initial, &s.backoff.max)
            && initial.value > *max
        {
            errors.push(ConfigError::new(
                &initial.source,
                initial.pos,
                &key(name, "backoff"),
                format!(
                    "`initial` ({}) is above `max` ({max}); every delay is {}",
                    initial.value, initial.value
                ),
            ));
        }
    }
    for cycle in cycles(&edges) {
        let names: Vec<&str> = cycle.iter().map(|i| enabled_names[*i]).collect();
        let first = names[0];
        let at = services
            .get(first)
            .and_then(|s| s.depends_on.as_ref())
            .and_then(|d| d.first())
            .map_or(("services".to_string(), Pos::default()), |d| {
                (d.source.clone(), d.pos)
            });
        let shown = if names.len() > CYCLE_SHOWN {
            format!(
                "{} -> ... ({} services in the cycle)",
                names[..CYCLE_SHOWN].join(" -> "),
                names.len()
            )
        } else {
            format!("{} -> {first}", names.join(" -> "))
        };
        errors.push(ConfigError::new(
            &at.0,
            at.1,
            &key(first, "depends_on"),
            format!("services depend on each other in a cycle: {shown}"),
        ));
        blocked.extend(names.iter().map(|n| n.to_string()));
    }
    // A service that needs a blocked one cannot start either: walk the dependents.
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); enabled.len()];
    for (i, out) in edges.iter().enumerate() {
        for &j in out {
            dependents[j].push(i);
        }
    }
    let mut queue: VecDeque<usize> = blocked
        .iter()
        .filter_map(|n| index.get(n.as_str()).copied())
        .collect();
    let mut seen: Vec<bool> = vec![false; enabled.len()];
    for &i in &queue {
        seen[i] = true;
    }
    while let Some(i) = queue.pop_front() {
        for &d in &dependents[i] {
            if !seen[d] {
                seen[d] = true;
                blocked.insert(enabled_names[d].to_string());
                queue.push_back(d);
            }
        }
    }
    (errors, blocked)
}

/// The cycles of a graph, one per strongly connected component that has one (Tarjan's
/// algorithm, iterative): each as a path `a, b, ..., z` with an edge from `z` back to `a`,
/// starting at the component's lowest index.
fn cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const NONE: usize = usize::MAX;
    let n = edges.len();
    let mut index = vec![NONE; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut next = 0;
    let mut components = Vec::new();
    for root in 0..n {
        if index[root] != NONE {
            continue;
        }
        // (node, next edge to look at)
        let mut work = vec![(root, 0usize)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(top) = work.last_mut() {
            let v = top.0;
            if let Some(&w) = edges[v].get(top.1) {
                top.1 += 1;
                if index[w] == NONE {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut comp = Vec::new();
                while let Some(x) = stack.pop() {
                    on_stack[x] = false;
                    comp.push(x);
                    if x == v {
                        break;
                    }
                }
                if comp.len() > 1 || edges[v].contains(&v) {
                    components.push(comp);
                }
            }
        }
    }
    let mut out: Vec<Vec<usize>> = components
        .into_iter()
        .map(|comp| cycle_in(edges, &comp))
        .collect();
    out.sort();
    out
}

/// A cycle through the lowest node of a strongly connected component: breadth-first from it,
/// inside the component, until an edge leads back.
fn cycle_in(edges: &[Vec<usize>], comp: &[usize]) -> Vec<usize> {
    let members: BTreeSet<usize> = comp.iter().copied().collect();
    let start = *members.first().unwrap_or(&0);
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    let mut seen = BTreeSet::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &edges[v] {
            if w == start {
                let mut path = vec![v];
                let mut x = v;
                while x != start {
                    x = parent[&x];
                    path.push(x);
                }
                path.reverse();
                return path;
            }
            if members.contains(&w) && seen.insert(w) {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    vec![start]
}

/// Two interfaces (from any sources, after layering) that select one MAC address.
pub fn network(net: &Network) -> Vec<ConfigError> {
    let mut seen: BTreeMap<MacAddr, &str> = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, i) in &net.interfaces {
        if let Some(mac) = &i.mac {
            match seen.get(&mac.value) {
                Some(first) => errors.push(ConfigError::new(
                    &mac.source,
                    mac.pos,
                    &join(&join("network.interfaces", name.as_str()), "mac"),
                    format!("interface `{first}` selects {} already", mac.value),
                )),
                None => {
                    seen.insert(mac.value, name.as_str());
                }
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::from_toml;

    fn services_of(text: &str) -> BTreeMap<String, Service> {
        let r = from_toml("t", text);
        assert!(r.errors.is_empty(), "{:#?}", r.errors);
        r.data.services
    }

    #[test]
    fn unknown_dependencies_images_and_cycles_block_only_those_concerned() {
        let s = services_of(
            r#"
[services.a]
image = "busybox"
depends_on = ["b"]
[services.b]
image = "busybox"
depends_on = ["a"]
[services.c]
image = "busybox"
depends_on = ["syslogg"]
[services.d]
image = "No pe"
[services.pulled]
image = "10.0.2.2:5000/hello:1"
[services.e]
image = "busybox"
depends_on = ["c"]
[services.ok]
image = "busybox"
[services.off]
image = "busybox"
enabled = false
[services.f]
image = "busybox"
depends_on = ["off"]
"#,
        );
        let images: BTreeSet<String> = ["busybox".to_string()].into();
        let (errors, blocked) = services(&s, &images);
        let msgs: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            msgs.iter().any(|m| m.contains("services.c.depends_on")
                && m.contains("`syslogg`, which is not a service")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("there is no image `No pe`, and")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("cycle: a -> b -> a")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("`off`, which is disabled")),
            "{msgs:#?}"
        );
        let blocked: Vec<&str> = blocked.iter().map(String::as_str).collect();
        assert_eq!(blocked, ["a", "b", "c", "d", "e", "f"]);
        assert!(
            msgs.iter()
                .find(|m| m.contains("syslogg"))
                .is_some_and(|m| m.starts_with("t:10:")),
            "{msgs:#?}"
        );
    }

    /// `n` services, each depending on the one before; with `close`, the first on the last.
    fn chain(n: usize, close: bool) -> BTreeMap<String, Service> {
        let mut text = String::new();
        for i in 0..n {
            let dep = if i > 0 {
                format!("depends_on = [\"s{}\"]\n", i - 1)
            } else if close {
                format!("depends_on = [\"s{}\"]\n", n - 1)
            } else {
                String::new()
            };
            text.push_str(&format!("[services.s{i}]\nimage = \"busybox\"\n{dep}"));
        }
        services_of(&text)
    }

    #[test]
    fn long_chains_and_cycles_are_checked_without_recursion() {
        let images: BTreeSet<String> = ["busybox".to_string()].into();
        let (errors, blocked) = services(&chain(10_000, false), &images);
        assert!(errors.is_empty() && blocked.is_empty(), "{errors:?}");
        let (errors, blocked) = services(&chain(10_000, true), &images);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].message.contains("(10000 services in the cycle)"),
            "{}",
            errors[0]
        );
        assert_eq!(blocked.len(), 10_000);
        // One image missing at the root of the chain blocks all of it, and nothing else.
        let mut s = chain(5_000, false);
        s.get_mut("s0").expect("s0").image =
            Some(crate::service::Located::builtin("Gone!".into(), "t"));
        s.insert("other".into(), chain(1, false)["s0"].clone());
        let (_, blocked) = services(&s, &images);
        assert_eq!(blocked.len(), 5_000);
        assert!(!blocked.contains("other"));
    }

    #[test]
    fn cycles_are_found_per_component() {
        // 0 -> 1 -> 2 -> 0, 3 -> 3, 4 -> 0
        let edges = vec![vec![1], vec![2], vec![0], vec![3], vec![0]];
        assert_eq!(cycles(&edges), vec![vec![0, 1, 2], vec![3]]);
        assert!(cycles(&[vec![1], vec![]]).is_empty());
    }

    #[test]
    fn contradicting_keys_are_reported() {
        let s = services_of(
            "[services.a]\nimage = \"busybox\"\nhost_namespaces = [\"uts\"]\nhostname = \"x\"\nbackoff = { initial = \"5s\", max = \"1s\" }\n",
        );
        let (errors, blocked) = services(&s, &["busybox".to_string()].into());
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["services.a.hostname", "services.a.backoff"],
            "{errors:?}"
        );
        assert_eq!(errors[0].line, 4, "{errors:?}");
        assert!(blocked.is_empty());
    }

    #[test]
    fn one_mac_for_two_interfaces_is_an_error_across_sources() {
        let low = from_toml(
            "low",
            "[network.interfaces.lan]\nmac = \"52:54:00:00:00:01\"\n",
        );
        let high = from_toml(
            "high",
            "[network.interfaces.wan]\nmac = \"52:54:00:00:00:01\"\n",
        );
        let both = crate::layer([low, high]);
        let e = network(&both.data.network);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            e[0].to_string(),
            "high:2:7: network.interfaces.wan.mac: interface `lan` selects 52:54:00:00:00:01 already"
        );
        let one = from_toml(
            "t",
            "[network.interfaces.a]\nmac = \"52:54:00:00:00:01\"\n[network.interfaces.b]\nmac = \"52:54:00:00:00:01\"\n",
        );
        assert_eq!(one.errors.len(), 1, "{:?}", one.errors);
        assert_eq!(one.errors[0].key, "network.interfaces.b.mac");
    }
}
