//! The one way a config reaches the machine: a [`Diff`] (what changed, typed by the part of the
//! machine that applies it) carried out on a [`Target`]. The boot applies `diff(None, config)`
//! in its phases ([`system`], then [`network`], then [`services`]); every live change applies
//! `diff(config in force, new config)` with [`apply`], the same functions in the same order.
//! The target is the machine itself (the main loop), or a model in tests.

use ros_config::diff::{Diff, Logins, ServicesDiff, Sysctls};
use ros_config::host::WriteFile;
use ros_config::{Hostname, ModuleName, Network};

/// What applying did: a line per change made, and the errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notes {
    pub done: Vec<String>,
    pub errors: Vec<String>,
}

impl Notes {
    fn add(&mut self, (done, errors): (Vec<String>, Vec<String>)) {
        self.done.extend(done);
        self.errors.extend(errors);
    }

    pub fn extend(&mut self, other: Notes) {
        self.add((other.done, other.errors));
    }
}

/// What a config changes on the machine. Each method returns what it did and its errors.
pub trait Target {
    /// Loads these kernel modules.
    fn modules(&mut self, names: &[ModuleName]) -> (Vec<String>, Vec<String>);
    /// Sets the hostname (`None`: the default one).
    fn hostname(&mut self, name: Option<&Hostname>) -> (Vec<String>, Vec<String>);
    fn sysctls(&mut self, s: &Sysctls) -> (Vec<String>, Vec<String>);
    fn write_files(&mut self, files: &[WriteFile]) -> (Vec<String>, Vec<String>);
    /// Makes the network `n` (interfaces set up as before keep their leases).
    fn network(&mut self, n: &Network) -> impl Future<Output = (Vec<String>, Vec<String>)>;
    /// Writes what the console makes its logins from.
    fn logins(&mut self, l: &Logins) -> (Vec<String>, Vec<String>);
    /// Defines, redefines (restarting) or removes services.
    fn services(&mut self, s: &ServicesDiff) -> (Vec<String>, Vec<String>);
}

/// The host's own settings: modules, hostname, sysctls, files.
pub fn system(d: &Diff, t: &mut impl Target) -> Notes {
    let mut n = Notes::default();
    if !d.modules.is_empty() {
        n.add(t.modules(&d.modules));
    }
    if let Some(h) = &d.hostname {
        n.add(t.hostname(h.as_ref()));
    }
    if !d.sysctl.set.is_empty() || !d.sysctl.reset.is_empty() {
        n.add(t.sysctls(&d.sysctl));
    }
    if !d.write_files.is_empty() {
        n.add(t.write_files(&d.write_files));
    }
    n
}

/// The network.
pub async fn network(d: &Diff, t: &mut impl Target) -> Notes {
    let mut n = Notes::default();
    if let Some(net) = &d.network {
        n.add(t.network(net).await);
    }
    n
}

/// The logins, then the services (the console reads the logins when it starts).
pub fn services(d: &Diff, t: &mut impl Target) -> Notes {
    let mut n = Notes::default();
    if let Some(l) = &d.logins {
        n.add(t.logins(l));
    }
    if !d.services.changed.is_empty() {
        n.add(t.services(&d.services));
    }
    n
}

/// All of it, in the boot's order; then what waits for the next boot.
pub async fn apply(d: &Diff, t: &mut impl Target) -> Notes {
    let mut n = system(d, t);
    n.extend(network(d, t).await);
    n.extend(services(d, t));
    if !d.next_boot.is_empty() {
        n.done.push(format!(
            "saved; {} take effect at the next boot (`ros reboot`)",
            d.next_boot.join(", ")
        ));
    }
    n
}

#[cfg(test)]
mod tests {
    //! The property: applying `diff(a, b)` to a machine in the state a boot with `a` gives ends
    //! in the state a boot with `b` gives, but for what the diff says waits for the next boot.

    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use ros_config::system::{Facts, ONCE_PER_BOOT};
    use ros_config::{Context, Loaded, Service, Source, SysctlKey};

    use super::*;

    /// A machine as far as a config changes it.
    #[derive(Debug, Default, Clone, PartialEq)]
    struct Model {
        hostname: Option<String>,
        modules: BTreeSet<String>,
        sysctl: BTreeMap<SysctlKey, String>,
        files: Vec<String>,
        network: Option<Network>,
        logins: Option<Logins>,
        services: BTreeMap<String, Service>,
        env: Vec<String>,
        blocked: BTreeSet<String>,
    }

    /// The kernel's value of a sysctl nobody set.
    fn kernel_default(k: &SysctlKey) -> String {
        format!("default-of-{}", k.as_str())
    }

    impl Target for Model {
        fn modules(&mut self, names: &[ModuleName]) -> (Vec<String>, Vec<String>) {
            self.modules
                .extend(names.iter().map(|m| m.as_str().to_string()));
            Default::default()
        }
        fn hostname(&mut self, name: Option<&Hostname>) -> (Vec<String>, Vec<String>) {
            self.hostname = Some(name.map_or("ros-default".into(), ToString::to_string));
            Default::default()
        }
        fn sysctls(&mut self, s: &Sysctls) -> (Vec<String>, Vec<String>) {
            for k in &s.reset {
                self.sysctl.insert(k.clone(), kernel_default(k));
            }
            self.sysctl.extend(s.set.clone());
            Default::default()
        }
        fn write_files(&mut self, files: &[WriteFile]) -> (Vec<String>, Vec<String>) {
            self.files.extend(files.iter().map(|f| f.path.clone()));
            Default::default()
        }
        async fn network(&mut self, n: &Network) -> (Vec<String>, Vec<String>) {
            self.network = Some(n.clone());
            Default::default()
        }
        fn logins(&mut self, l: &Logins) -> (Vec<String>, Vec<String>) {
            self.logins = Some(l.clone());
            Default::default()
        }
        fn services(&mut self, s: &ServicesDiff) -> (Vec<String>, Vec<String>) {
            for (name, def) in &s.changed {
                match def {
                    Some(d) => self.services.insert(name.clone(), d.clone()),
                    None => self.services.remove(name),
                };
            }
            self.env.clone_from(&s.env);
            self.blocked.clone_from(&s.blocked);
            Default::default()
        }
    }

    impl Model {
        /// The sysctls as a booted machine would read them (unset ones at the kernel's value).
        fn sysctls_seen(&self, keys: &BTreeSet<SysctlKey>) -> BTreeMap<SysctlKey, String> {
            keys.iter()
                .map(|k| {
                    (
                        k.clone(),
                        self.sysctl
                            .get(k)
                            .cloned()
                            .unwrap_or_else(|| kernel_default(k)),
                    )
                })
                .collect()
        }
    }

    fn ctx() -> Context {
        Context::shipped(Facts::default())
    }

    fn load(text: &str) -> Loaded {
        ros_config::load(&[Source::text("t", text)], "", &ctx())
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// A user-data made of some of these parts, each in one of its variants.
    fn user_data() -> impl Strategy<Value = String> {
        let parts: Vec<Vec<&'static str>> = vec![
            vec!["", "hostname = \"one\"\n", "hostname = \"two\"\n"],
            vec![
                "",
                "modules = [\"bonding\"]\n",
                "modules = [\"8021q\", \"bonding\"]\n",
            ],
            vec![
                "",
                "sysctl = { \"vm.swappiness\" = 5 }\n",
                "sysctl = { \"vm.swappiness\" = 7, \"net.ipv4.ip_forward\" = 1 }\n",
            ],
            vec![
                "",
                "ssh_authorized_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx a\"]\n",
            ],
            vec!["", "environment = { TZ = \"UTC\" }\n"],
            vec!["", "bootcmd = [\"echo a\"]\n", "runcmd = [\"echo b\"]\n"],
            vec![
                "",
                "[[write_files]]\npath = \"/etc/motd\"\ncontent = \"hi\"\n",
            ],
            vec!["", "[[users]]\nname = \"al\"\n"],
            vec![
                "",
                "[console]\nssh_port = 2222\n",
                "[console]\nautologin = true\n",
            ],
            vec!["", "[ntp]\nservers = [\"10.0.2.2\"]\n"],
            vec![
                "",
                "[network.interfaces.eth0]\naddresses = [\"10.0.0.2/24\"]\n",
                "[network.interfaces.eth1]\ndhcp4 = true\n",
            ],
            vec![
                "",
                "[services.web]\nimage = \"busybox\"\n",
                "[services.web]\nimage = \"busybox\"\ncommand = [\"true\"]\n",
                "[services.web]\nimage = \"nope\"\n",
                "[services.web]\nimage = \"busybox\"\nenabled = false\n",
            ],
            vec![
                "",
                "[services.app]\nimage = \"busybox\"\ndepends_on = [\"web\"]\n",
                "[services.app]\nimage = \"busybox\"\n",
            ],
            vec![
                "",
                "[services.ntp]\nenabled = false\n",
                "[services.syslog]\nrestart = \"no\"\n",
            ],
        ];
        parts
            .into_iter()
            .map(proptest::sample::select)
            .collect::<Vec<_>>()
            .prop_map(|chosen| chosen.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn a_live_change_ends_where_a_boot_would(a in user_data(), b in user_data()) {
            let (la, lb) = (load(&a), load(&b));
            let ctx = ctx();
            let mut booted = Model::default();
            block_on(apply(&ros_config::diff::diff(None, &lb, &ctx), &mut booted));
            let mut live = Model::default();
            block_on(apply(&ros_config::diff::diff(None, &la, &ctx), &mut live));
            let d = ros_config::diff::diff(Some(&la), &lb, &ctx);
            block_on(apply(&d, &mut live));

            prop_assert_eq!(&live.hostname, &booted.hostname);
            let keys: BTreeSet<SysctlKey> =
                live.sysctl.keys().chain(booted.sysctl.keys()).cloned().collect();
            prop_assert_eq!(live.sysctls_seen(&keys), booted.sysctls_seen(&keys));
            prop_assert_eq!(&live.network, &booted.network);
            prop_assert_eq!(&live.logins, &booted.logins);
            prop_assert_eq!(&live.env, &booted.env);
            let names = |m: &Model| -> Vec<String> {
                m.services
                    .keys()
                    .filter(|n| !ONCE_PER_BOOT.contains(&n.as_str()))
                    .cloned()
                    .collect()
            };
            let pending = |k: &str| d.next_boot.contains(&k);
            if la.data.bootcmd == lb.data.bootcmd && la.data.runcmd == lb.data.runcmd {
                prop_assert_eq!(&live.services, &booted.services);
                prop_assert_eq!(&live.blocked, &booted.blocked);
            } else {
                prop_assert!(pending("bootcmd") || pending("runcmd"));
                // Everything else is as booted with `b` but for the commands `a`'s boot ran.
                prop_assert_eq!(names(&live), names(&booted));
            }
            prop_assert!(live.modules.is_superset(&booted.modules));
            prop_assert_eq!(live.modules != booted.modules, pending("modules"));
            prop_assert_eq!(la.data.write_files != lb.data.write_files, pending("write_files"));
        }
    }
}
