//! What changed between two configs, typed by the part of the machine that applies it. The
//! boot applies the difference from nothing (`diff(None, b)`: every part), a live change the
//! difference from the config in force (`diff(Some(a), b)`): one path, as Bottlerocket's
//! settings become services. Parts that only a boot can apply (files written and commands run
//! once per boot, modules already loaded) are listed in [`Diff::next_boot`] instead.

use std::collections::{BTreeMap, BTreeSet};

use crate::host::{User, WriteFile};
use crate::load::{Context, Loaded};
use crate::service::Service;
use crate::system::{self, ONCE_PER_BOOT};
use crate::types::{Hostname, ModuleName, SysctlKey};
use crate::{Network, UserData};

/// The logins the console makes: root's SSH keys, the users, root's serial console password.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Logins {
    pub root_keys: Vec<String>,
    pub users: Vec<User>,
    pub root_password_hash: Option<String>,
}

impl Logins {
    fn of(d: &UserData) -> Logins {
        Logins {
            root_keys: d.ssh_authorized_keys.clone().unwrap_or_default(),
            users: d.users.clone().unwrap_or_default(),
            root_password_hash: d.console.root_password_hash.clone(),
        }
    }
}

/// Sysctls to write, and those no longer configured (back to the kernel's value from before
/// ros first wrote them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sysctls {
    pub set: BTreeMap<SysctlKey, String>,
    pub reset: Vec<SysctlKey>,
}

/// The services that change: each with its new definition, or `None` when it is gone or
/// disabled. A service changes when its definition does, when it becomes blocked or unblocked,
/// or, for all of them, when the shared environment does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServicesDiff {
    pub changed: BTreeMap<String, Option<Service>>,
    /// The shared environment (every service's).
    pub env: Vec<String>,
    /// Every enabled service that must not start, after the change.
    pub blocked: BTreeSet<String>,
    /// The registry settings, when they changed (and at boot).
    pub registries: Option<crate::registries::Registries>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    /// The hostname to set: the configured one, or `None` for the default one.
    pub hostname: Option<Option<Hostname>>,
    /// Modules to load.
    pub modules: Vec<ModuleName>,
    pub sysctl: Sysctls,
    /// Files to write (at boot).
    pub write_files: Vec<WriteFile>,
    /// The network to have, when it changed.
    pub network: Option<Network>,
    /// The logins, when they changed.
    pub logins: Option<Logins>,
    pub services: ServicesDiff,
    /// Keys that changed and take effect at the next boot.
    pub next_boot: Vec<&'static str>,
}

impl Diff {
    /// Whether nothing is to be done now.
    pub fn is_empty(&self) -> bool {
        self.hostname.is_none()
            && self.modules.is_empty()
            && self.sysctl == Sysctls::default()
            && self.write_files.is_empty()
            && self.network.is_none()
            && self.logins.is_none()
            && self.services.changed.is_empty()
    }
}

/// What applying `after` to a machine that has `before` (`None`: a machine booting) takes.
pub fn diff(before: Option<&Loaded>, after: &Loaded, ctx: &Context) -> Diff {
    let Some(before) = before else {
        return boot(after);
    };
    let (a, b) = (&before.data, &after.data);
    let mut d = Diff::default();
    if a.hostname != b.hostname {
        d.hostname = Some(b.hostname.clone());
    }
    let (was, will) = (a.wanted_modules(), b.wanted_modules());
    let loaded: BTreeSet<&ModuleName> = was.iter().collect();
    d.modules = will
        .iter()
        .filter(|m| !loaded.contains(m))
        .cloned()
        .collect();
    let wanted: BTreeSet<&ModuleName> = will.iter().collect();
    if loaded.iter().any(|m| !wanted.contains(m)) {
        d.next_boot.push("modules");
    }
    for (k, v) in &b.sysctl {
        if a.sysctl.get(k) != Some(v) {
            d.sysctl.set.insert(k.clone(), v.clone());
        }
    }
    d.sysctl.reset = a
        .sysctl
        .keys()
        .filter(|k| !b.sysctl.contains_key(*k))
        .cloned()
        .collect();
    if a.write_files != b.write_files {
        d.next_boot.push("write_files");
    }
    if a.network != b.network {
        d.network = Some(b.network.clone());
    }
    let logins = Logins::of(b);
    let logins_changed = Logins::of(a) != logins;
    if logins_changed {
        d.logins = Some(logins.clone());
    }
    // The once-per-boot services keep what this boot gave them.
    let mut kept = false;
    let mut b_now = b.clone();
    if a.bootcmd != b.bootcmd {
        d.next_boot.push("bootcmd");
        b_now.bootcmd.clone_from(&a.bootcmd);
        kept = true;
    }
    if a.runcmd != b.runcmd {
        d.next_boot.push("runcmd");
        b_now.runcmd.clone_from(&a.runcmd);
        kept = true;
    }
    let (services, blocked) = if kept {
        let mut errors = Vec::new();
        let s = system::services(&b_now, &ctx.shipped, &ctx.facts, &mut errors);
        let (_, blocked) = crate::check::services(&s.defs, &ctx.images);
        (s, blocked)
    } else {
        (after.services.clone(), after.blocked.clone())
    };
    let env_changed = before.services.env != services.env;
    let mut changed = BTreeMap::new();
    for (name, new) in &services.defs {
        let old = before.services.defs.get(name);
        let was_on = old.is_some_and(Service::is_enabled);
        let differs = old != Some(new)
            || before.blocked.contains(name) != blocked.contains(name)
            || (env_changed && new.is_enabled())
            // The console makes its logins when it starts.
            || (logins_changed && name == "console" && !logins_only_keys(a, b));
        // A once-per-boot service whose commands changed keeps what this boot gave it; one
        // whose commands did not follows its dependencies (the supervisor never runs it twice).
        let kept_for_boot = match name.as_str() {
            "bootcmd" => a.bootcmd != b.bootcmd,
            "runcmd" => a.runcmd != b.runcmd,
            _ => false,
        };
        if differs && (was_on || new.is_enabled()) && !kept_for_boot {
            changed.insert(name.clone(), new.is_enabled().then(|| new.clone()));
        }
    }
    for name in before.services.defs.keys() {
        if !services.defs.contains_key(name) && !ONCE_PER_BOOT.contains(&name.as_str()) {
            changed.insert(name.clone(), None);
        }
    }
    d.services = ServicesDiff {
        changed,
        env: services.env,
        blocked,
        registries: (a.registries != b.registries).then(|| b.registries.clone()),
    };
    d
}

/// Whether of the logins only root's SSH keys changed (the console reads those live).
fn logins_only_keys(a: &UserData, b: &UserData) -> bool {
    a.users == b.users && a.console.root_password_hash == b.console.root_password_hash
}

/// Everything, for a machine booting.
fn boot(after: &Loaded) -> Diff {
    let b = &after.data;
    Diff {
        hostname: Some(b.hostname.clone()),
        modules: b.wanted_modules(),
        sysctl: Sysctls {
            set: b.sysctl.clone(),
            reset: Vec::new(),
        },
        write_files: b.write_files.clone().unwrap_or_default(),
        network: Some(b.network.clone()),
        logins: Some(Logins::of(b)),
        services: ServicesDiff {
            changed: after
                .services
                .defs
                .iter()
                .filter(|(_, s)| s.is_enabled())
                .map(|(n, s)| (n.clone(), Some(s.clone())))
                .collect(),
            env: after.services.env.clone(),
            blocked: after.blocked.clone(),
            registries: Some(b.registries.clone()),
        },
        next_boot: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Source, load};
    use crate::system::Facts;

    fn ctx() -> Context {
        Context::shipped(Facts::default())
    }

    fn loaded(text: &str) -> Loaded {
        let l = load(&[Source::text("t", text)], "", &ctx());
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        l
    }

    #[test]
    fn nothing_changed_is_an_empty_diff() {
        let a = loaded("hostname = \"a\"\n[services.web]\nimage = \"busybox\"\n");
        let d = diff(Some(&a), &a, &ctx());
        assert!(d.is_empty(), "{d:?}");
        assert!(d.next_boot.is_empty());
        // Moving a definition to another line changes nothing.
        let moved = loaded("\n\nhostname = \"a\"\n\n[services.web]\n\nimage = \"busybox\"\n");
        assert!(diff(Some(&a), &moved, &ctx()).is_empty());
    }

    #[test]
    fn only_what_changed_is_in_the_diff() {
        let a = loaded(
            "hostname = \"a\"\nmodules = [\"bonding\"]\n[sysctl]\n\"vm.swappiness\" = 5\n\"net.ipv4.ip_forward\" = 1\n[services.web]\nimage = \"busybox\"\n[services.db]\nimage = \"busybox\"\n",
        );
        let b = loaded(
            "hostname = \"b\"\nmodules = [\"8021q\"]\n[sysctl]\n\"vm.swappiness\" = 10\n[services.web]\nimage = \"busybox\"\ncommand = [\"true\"]\n[services.new]\nimage = \"busybox\"\n",
        );
        let d = diff(Some(&a), &b, &ctx());
        assert_eq!(d.hostname, Some(Some("b".parse().expect("name"))));
        assert_eq!(d.modules, ["8021q".parse().expect("m")]);
        assert_eq!(d.next_boot, ["modules"]);
        assert_eq!(d.sysctl.set.len(), 1);
        assert_eq!(d.sysctl.reset, ["net.ipv4.ip_forward".parse().expect("k")]);
        assert_eq!(d.network, None);
        assert_eq!(d.logins, None);
        let changed: Vec<(&str, bool)> = d
            .services
            .changed
            .iter()
            .map(|(n, s)| (n.as_str(), s.is_some()))
            .collect();
        assert_eq!(changed, [("db", false), ("new", true), ("web", true)]);
    }

    #[test]
    fn a_cluster_role_loads_what_its_pods_need() {
        let a = loaded("modules = [\"bonding\"]\n");
        let b = loaded("modules = [\"bonding\"]\n[cluster]\nrole = \"server\"\n");
        let d = diff(Some(&a), &b, &ctx());
        let names: Vec<String> = d.modules.iter().map(|m| format!("{m:?}")).collect();
        assert_eq!(
            d.modules.len(),
            crate::schema::CLUSTER_MODULES.len(),
            "{names:?}"
        );
        assert!(names.iter().any(|n| n.contains("nft_masq")), "{names:?}");
        assert!(d.next_boot.is_empty());
        assert_eq!(
            diff(None, &b, &ctx()).modules.len(),
            6,
            "the boot loads all"
        );
    }

    #[test]
    fn the_environment_restarts_every_service_and_users_the_console() {
        let a = loaded("[services.web]\nimage = \"busybox\"\n");
        let b = loaded("[environment]\nA = \"1\"\n[services.web]\nimage = \"busybox\"\n");
        let d = diff(Some(&a), &b, &ctx());
        assert_eq!(
            d.services.changed.len(),
            4,
            "{:?}",
            d.services.changed.keys()
        );
        let c = loaded("[[users]]\nname = \"al\"\n[services.web]\nimage = \"busybox\"\n");
        let d = diff(Some(&a), &c, &ctx());
        assert!(d.logins.is_some());
        assert_eq!(d.services.changed.keys().collect::<Vec<_>>(), ["console"]);
        let k = loaded(
            "ssh_authorized_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx a\"]\n[services.web]\nimage = \"busybox\"\n",
        );
        let d = diff(Some(&a), &k, &ctx());
        assert!(d.logins.is_some());
        assert!(d.services.changed.is_empty(), "root's keys are read live");
    }

    #[test]
    fn once_per_boot_parts_wait_for_the_next_boot() {
        let a = loaded("[services.web]\nimage = \"busybox\"\n");
        let b = loaded(
            "bootcmd = [\"echo hi\"]\nruncmd = [\"echo there\"]\n[[write_files]]\npath = \"/etc/x\"\n[services.web]\nimage = \"busybox\"\n",
        );
        let d = diff(Some(&a), &b, &ctx());
        assert_eq!(d.next_boot, ["write_files", "bootcmd", "runcmd"]);
        assert!(
            d.services.changed.is_empty(),
            "no service waits for a bootcmd that will not run: {:?}",
            d.services.changed.keys()
        );
        let boot = diff(None, &b, &ctx());
        assert!(boot.services.changed.contains_key("bootcmd"));
        assert_eq!(boot.write_files.len(), 1);
    }

    #[test]
    fn fixing_a_dependency_unblocks_its_dependents() {
        let a = loaded(
            "[services.a]\nimage = \"busybox\"\n[services.b]\nimage = \"busybox\"\ndepends_on = [\"a\"]\n",
        );
        let broken = load(
            &[Source::text(
                "t",
                "[services.a]\nimage = \"nope\"\n[services.b]\nimage = \"busybox\"\ndepends_on = [\"a\"]\n",
            )],
            "",
            &ctx(),
        );
        let d = diff(Some(&broken), &a, &ctx());
        assert_eq!(d.services.changed.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(d.services.blocked.is_empty());
    }
}
