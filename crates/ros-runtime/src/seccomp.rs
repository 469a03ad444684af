//! Seccomp filters: a profile (from an OCI spec, or ros's default) compiled to BPF with
//! seccompiler (firecracker's) and loaded just before the container's program runs.
//!
//! One BPF filter has one action for matches and one for the rest, while a profile mixes
//! actions, so a profile becomes stacked filters: the kernel runs all of them and keeps the most
//! restrictive result (on a tie, the newest filter's). The first filter allows every syscall the
//! profile names and gives the default action to the rest; each other action gets a filter of its
//! own that returns it for its syscalls and allows the rest.
//!
//! The default profile denies (EPERM) what no container should do and what the container's
//! capabilities would not allow anyway, as Docker's default profile does (e.g. `mount` and
//! `unshare` need CAP_SYS_ADMIN, `settimeofday` CAP_SYS_TIME); `clone3`, whose flags a filter
//! cannot see, returns ENOSYS without CAP_SYS_ADMIN so that libcs fall back to `clone`, whose
//! namespace flags are checked.

use std::collections::BTreeMap;
use std::str::FromStr;

use caps::Capability as Cap;
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use syscalls::Sysno;

use crate::error::{Error, Result};

/// Which filter a container gets.
#[derive(Debug, Clone, PartialEq)]
pub enum SeccompConfig {
    None,
    /// ros's default, fitted to the container's capabilities.
    Default,
    Profile(Profile),
}

impl SeccompConfig {
    /// The filters to load, for a process whose bounding capabilities are `caps`.
    pub fn programs(&self, caps: Option<&[Cap]>) -> Result<Vec<BpfProgram>> {
        match self {
            SeccompConfig::None => Ok(Vec::new()),
            SeccompConfig::Default => Profile::default_for(caps).compile(),
            SeccompConfig::Profile(p) => p.compile(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Log,
    Errno(u32),
    Trap,
    KillThread,
    KillProcess,
}

/// `arg[index] <op> value`; for `MaskedEq`, `(arg & value) == value_two`. `dword` compares
/// the low 32 bits only: what the kernel reads of an `int` argument, whatever the caller put in
/// the upper half of the register (a 64-bit compare of `socket`'s domain could be passed by
/// `40 | 1 << 32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgCond {
    pub index: u8,
    pub op: Op,
    pub value: u64,
    pub value_two: u64,
    pub dword: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq,
}

/// Syscalls (by name) that get `action` when all of `args` hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub names: Vec<String>,
    pub action: Action,
    pub args: Vec<ArgCond>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub default_action: Action,
    pub rules: Vec<Rule>,
}

fn action_of(a: LinuxSeccompAction, errno: Option<u32>) -> Result<Action> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => Action::Allow,
        LinuxSeccompAction::ScmpActErrno => Action::Errno(errno.unwrap_or(libc::EPERM as u32)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            Action::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => Action::KillProcess,
        LinuxSeccompAction::ScmpActTrap => Action::Trap,
        LinuxSeccompAction::ScmpActLog => Action::Log,
        // No tracer watches a ros container: a traced syscall fails as unimplemented.
        LinuxSeccompAction::ScmpActTrace => Action::Errno(libc::ENOSYS as u32),
        LinuxSeccompAction::ScmpActNotify => {
            return Err(Error::Seccomp("SCMP_ACT_NOTIFY is not supported".into()));
        }
    })
}

impl Profile {
    pub fn from_oci(s: &LinuxSeccomp) -> Result<Profile> {
        let default_errno = s.default_errno_ret();
        let mut rules = Vec::new();
        for sc in s.syscalls().iter().flatten() {
            let args = sc
                .args()
                .iter()
                .flatten()
                .map(|a| {
                    let op = match a.op() {
                        LinuxSeccompOperator::ScmpCmpNe => Op::Ne,
                        LinuxSeccompOperator::ScmpCmpLt => Op::Lt,
                        LinuxSeccompOperator::ScmpCmpLe => Op::Le,
                        LinuxSeccompOperator::ScmpCmpEq => Op::Eq,
                        LinuxSeccompOperator::ScmpCmpGe => Op::Ge,
                        LinuxSeccompOperator::ScmpCmpGt => Op::Gt,
                        LinuxSeccompOperator::ScmpCmpMaskedEq => Op::MaskedEq,
                    };
                    Ok(ArgCond {
                        index: u8::try_from(a.index()).ok().filter(|i| *i < 6).ok_or_else(
                            || Error::Seccomp(format!("argument index {} out of range", a.index())),
                        )?,
                        op,
                        value: a.value(),
                        value_two: a.value_two().unwrap_or(0),
                        dword: false,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            rules.push(Rule {
                names: sc.names().clone(),
                action: action_of(sc.action(), sc.errno_ret().or(default_errno))?,
                args,
            });
        }
        Ok(Profile {
            default_action: action_of(s.default_action(), default_errno)?,
            rules,
        })
    }

    /// ros's default profile for a container holding `caps` (`None`: every capability): what
    /// Docker's default profile (moby `profiles/seccomp/default.json`) refuses, syscall by
    /// syscall and capability by capability, written as the list of what is refused. A
    /// syscall newer than the list (and than the 6.1 kernel ros ships) is allowed, where
    /// Docker's allowlist would refuse it.
    pub fn default_for(caps: Option<&[Cap]>) -> Profile {
        let has = |c: Cap| caps.is_none_or(|list| list.contains(&c));
        let eperm = Action::Errno(libc::EPERM as u32);
        // Never from a container: Docker allows these to no one.
        let mut deny: Vec<&str> = vec![
            "add_key",
            "keyctl",
            "request_key",
            "kexec_load",
            "kexec_file_load",
            "userfaultfd",
            "uselib",
            "ustat",
            "sysfs",
            "_sysctl",
            "nfsservctl",
            "vm86",
            "vm86old",
            "create_module",
            "get_kernel_syms",
            "query_module",
            "migrate_pages",
            "move_pages",
            "pivot_root",
            "swapon",
            "swapoff",
            "getpmsg",
            "putpmsg",
            "afs_syscall",
            "tuxcall",
            "security",
            "vserver",
        ];
        // Allowed with one of the capabilities named.
        let gated: &[(&[Cap], &[&str])] = &[
            (
                &[Cap::CAP_SYS_ADMIN],
                &[
                    "fanotify_init",
                    "fsconfig",
                    "fsmount",
                    "fsopen",
                    "fspick",
                    "lookup_dcookie",
                    "mount",
                    "mount_setattr",
                    "move_mount",
                    "open_tree",
                    "quotactl",
                    "quotactl_fd",
                    "setdomainname",
                    "sethostname",
                    "setns",
                    "umount",
                    "umount2",
                    "unshare",
                ],
            ),
            (&[Cap::CAP_SYS_ADMIN, Cap::CAP_BPF], &["bpf"]),
            (
                &[Cap::CAP_SYS_ADMIN, Cap::CAP_PERFMON],
                &["perf_event_open"],
            ),
            (&[Cap::CAP_SYS_ADMIN, Cap::CAP_SYSLOG], &["syslog"]),
            (&[Cap::CAP_SYS_BOOT], &["reboot"]),
            (&[Cap::CAP_SYS_CHROOT], &["chroot"]),
            (
                &[Cap::CAP_SYS_MODULE],
                &["init_module", "finit_module", "delete_module"],
            ),
            (&[Cap::CAP_SYS_PACCT], &["acct"]),
            (
                &[Cap::CAP_SYS_PTRACE],
                &["kcmp", "pidfd_getfd", "process_madvise"],
            ),
            (&[Cap::CAP_SYS_RAWIO], &["iopl", "ioperm"]),
            (
                &[Cap::CAP_SYS_TIME],
                &["settimeofday", "stime", "clock_settime", "clock_settime64"],
            ),
            (&[Cap::CAP_SYS_TTY_CONFIG], &["vhangup"]),
            (
                &[Cap::CAP_SYS_NICE],
                &[
                    "get_mempolicy",
                    "mbind",
                    "set_mempolicy",
                    "set_mempolicy_home_node",
                ],
            ),
            (&[Cap::CAP_DAC_READ_SEARCH], &["open_by_handle_at"]),
        ];
        for (caps, calls) in gated {
            if !caps.iter().any(|c| has(*c)) {
                deny.extend_from_slice(calls);
            }
        }
        deny.sort_unstable();
        deny.dedup();
        let int_arg = |op, value| ArgCond {
            index: 0,
            op,
            value,
            value_two: 0,
            dword: true,
        };
        let mut rules = vec![
            Rule {
                names: deny.iter().map(|s| s.to_string()).collect(),
                action: eperm,
                args: Vec::new(),
            },
            // No vsock sockets (a channel to the hypervisor).
            Rule {
                names: vec!["socket".into()],
                action: eperm,
                args: vec![int_arg(Op::Eq, libc::AF_VSOCK as u64)],
            },
            // personality(2): only the default domain, with or without address-space
            // randomisation off, and the query.
            Rule {
                names: vec!["personality".into()],
                action: eperm,
                args: [0u64, 0x8, 0x20000, 0x20008, 0xffff_ffff]
                    .iter()
                    .map(|v| int_arg(Op::Ne, *v))
                    .collect(),
            },
        ];
        if !has(Cap::CAP_SYS_ADMIN) {
            // `clone` with a namespace flag, flag by flag (a filter can only test masked
            // equality); `clone3` hides its flags in memory, so it answers ENOSYS.
            let flags = [
                libc::CLONE_NEWNS,
                libc::CLONE_NEWUTS,
                libc::CLONE_NEWIPC,
                libc::CLONE_NEWUSER,
                libc::CLONE_NEWPID,
                libc::CLONE_NEWNET,
                libc::CLONE_NEWCGROUP,
            ];
            for f in flags {
                let f = u64::try_from(f).unwrap_or(0);
                rules.push(Rule {
                    names: vec!["clone".into()],
                    action: eperm,
                    args: vec![ArgCond {
                        index: 0,
                        op: Op::MaskedEq,
                        value: f,
                        value_two: f,
                        dword: false,
                    }],
                });
            }
            rules.push(Rule {
                names: vec!["clone3".into()],
                action: Action::Errno(libc::ENOSYS as u32),
                args: Vec::new(),
            });
        }
        Profile {
            default_action: Action::Allow,
            rules,
        }
    }

    /// The BPF programs for this machine's architecture, to load in this order.
    pub fn compile(&self) -> Result<Vec<BpfProgram>> {
        let arch = std::env::consts::ARCH.try_into().map_err(|_| {
            Error::Seccomp(format!("no seccomp support for {}", std::env::consts::ARCH))
        })?;
        let mut programs = Vec::new();
        let mut build = |rules: BTreeMap<i64, Vec<SeccompRule>>,
                         mismatch: Action,
                         matched: Action|
         -> Result<()> {
            if mismatch == matched {
                return Ok(());
            }
            let filter = SeccompFilter::new(rules, to_sc(mismatch), to_sc(matched), arch)
                .map_err(|e| Error::Seccomp(e.to_string()))?;
            programs.push(BpfProgram::try_from(filter).map_err(|e| Error::Seccomp(e.to_string()))?);
            Ok(())
        };
        if self.default_action != Action::Allow {
            // Everything named is allowed here; the per-action filters below decide for those
            // named with another action.
            let mut named = BTreeMap::new();
            for r in &self.rules {
                let args = if r.action == Action::Allow {
                    &r.args[..]
                } else {
                    &[][..]
                };
                add(&mut named, &r.names, args)?;
            }
            build(named, self.default_action, Action::Allow)?;
        }
        let mut by_action: BTreeMap<Action, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
        for r in self.rules.iter().filter(|r| r.action != Action::Allow) {
            add(by_action.entry(r.action).or_default(), &r.names, &r.args)?;
        }
        for (action, rules) in by_action {
            build(rules, Action::Allow, action)?;
        }
        Ok(programs)
    }
}

/// Adds the syscalls `names` (unknown to this architecture: skipped, as runc does) with the
/// condition set `args` (none: unconditional, which then wins over any condition).
fn add(
    map: &mut BTreeMap<i64, Vec<SeccompRule>>,
    names: &[String],
    args: &[ArgCond],
) -> Result<()> {
    for name in names {
        let Ok(nr) = Sysno::from_str(name) else {
            continue;
        };
        let nr = i64::from(nr.id());
        if args.is_empty() {
            map.insert(nr, Vec::new());
            continue;
        }
        let conds = args
            .iter()
            .map(|a| {
                let (op, value) = match a.op {
                    Op::Eq => (SeccompCmpOp::Eq, a.value),
                    Op::Ne => (SeccompCmpOp::Ne, a.value),
                    Op::Lt => (SeccompCmpOp::Lt, a.value),
                    Op::Le => (SeccompCmpOp::Le, a.value),
                    Op::Gt => (SeccompCmpOp::Gt, a.value),
                    Op::Ge => (SeccompCmpOp::Ge, a.value),
                    Op::MaskedEq => (SeccompCmpOp::MaskedEq(a.value), a.value_two),
                };
                let len = if a.dword {
                    SeccompCmpArgLen::Dword
                } else {
                    SeccompCmpArgLen::Qword
                };
                SeccompCondition::new(a.index, len, op, value)
                    .map_err(|e| Error::Seccomp(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let rule = SeccompRule::new(conds).map_err(|e| Error::Seccomp(e.to_string()))?;
        match map.get_mut(&nr) {
            // Already unconditional: stays so.
            Some(rules) if rules.is_empty() => {}
            Some(rules) => rules.push(rule),
            None => {
                map.insert(nr, vec![rule]);
            }
        }
    }
    Ok(())
}

fn to_sc(a: Action) -> SeccompAction {
    match a {
        Action::Allow => SeccompAction::Allow,
        Action::Log => SeccompAction::Log,
        Action::Errno(e) => SeccompAction::Errno(e),
        Action::Trap => SeccompAction::Trap,
        Action::KillThread => SeccompAction::KillThread,
        Action::KillProcess => SeccompAction::KillProcess,
    }
}

/// Loads the programs into the calling thread (needs no_new_privs or CAP_SYS_ADMIN).
/// Loads the filters into this thread. Not through `seccompiler::apply_filter`: that sets
/// no_new_privs first, always, and a process whose spec says `noNewPrivileges: false` must not
/// get it (the OCI suite checks; runc and crun load with the raw call too). Without
/// no_new_privs the kernel wants CAP_SYS_ADMIN, which the caller still holds then.
pub fn apply(programs: &[BpfProgram]) -> Result<()> {
    for p in programs {
        let prog = libc::sock_fprog {
            len: u16::try_from(p.len())
                .map_err(|_| Error::Seccomp(format!("a filter of {} instructions", p.len())))?,
            filter: p.as_ptr().cast_mut().cast::<libc::sock_filter>(),
        };
        // SAFETY: seccompiler's sock_filter has the kernel's layout (code u16, jt u8, jf u8,
        // k u32; repr(C)) as libc's; prog points into `p`, alive for the call, which copies it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0u32,
                &raw const prog,
            )
        };
        if r != 0 {
            return Err(Error::Seccomp(format!(
                "loading the filter: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_follows_capabilities() {
        let default = Profile::default_for(Some(crate::config::DEFAULT_CAPABILITIES));
        let denied = &default.rules[0].names;
        for s in [
            "mount",
            "unshare",
            "reboot",
            "settimeofday",
            "init_module",
            "keyctl",
            // Looser than Docker's until they were listed:
            "mount_setattr",
            "quotactl_fd",
            "sethostname",
            "setdomainname",
            "pidfd_getfd",
            "process_madvise",
            "vhangup",
            "migrate_pages",
            "set_mempolicy_home_node",
        ] {
            assert!(denied.iter().any(|d| d == s), "{s} should be denied");
        }
        // Docker allows these since Linux 4.8; chroot with CAP_SYS_CHROOT (a default one).
        for s in ["ptrace", "process_vm_readv", "chroot"] {
            assert!(!denied.iter().any(|d| d == s), "{s} is Docker's to allow");
        }
        assert!(
            default
                .rules
                .iter()
                .any(|r| r.names == ["clone3"] && r.action == Action::Errno(libc::ENOSYS as u32))
        );
        let mut with_time: Vec<Cap> = crate::config::DEFAULT_CAPABILITIES.to_vec();
        with_time.push(Cap::CAP_SYS_TIME);
        let ntp = Profile::default_for(Some(&with_time));
        assert!(!ntp.rules[0].names.iter().any(|d| d == "settimeofday"));
        let privileged = Profile::default_for(None);
        assert!(!privileged.rules[0].names.iter().any(|d| d == "mount"));
        assert!(
            privileged.rules[0].names.iter().any(|d| d == "keyctl"),
            "never from a container"
        );
        assert!(
            !privileged.rules.iter().any(|r| r.names == ["clone"]),
            "no clone rules when CAP_SYS_ADMIN is kept"
        );
    }

    #[test]
    fn profiles_compile_to_stacked_filters() {
        let p = Profile::default_for(Some(crate::config::DEFAULT_CAPABILITIES));
        // EPERM and ENOSYS: two filters over an allowing default.
        assert_eq!(p.compile().expect("compile").len(), 2);
        let oci: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read", "write", "exit_group", "no_such_syscall"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
            ]}"#,
        )
        .expect("json");
        let p = Profile::from_oci(&oci).expect("profile");
        assert_eq!(p.default_action, Action::Errno(1));
        assert_eq!(p.rules[2].action, Action::Errno(38));
        assert_eq!(p.compile().expect("compile").len(), 2);
    }

    #[test]
    fn notify_is_refused() {
        let oci: LinuxSeccomp =
            serde_json::from_str(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#).expect("json");
        assert!(Profile::from_oci(&oci).is_err());
    }
}
