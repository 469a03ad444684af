//! Seccomp profiles: the rules (ros's default, fitted to capabilities, or an OCI spec's) and
//! their compilation to BPF with seccompiler for a given architecture. Kept apart from the rest
//! of `seccomp` so that `build.rs` compiles it too (`#[path]`), with the target's system-call
//! table: the default profile's programs for the common capability sets are built then, and
//! a container start only copies them (compiling at boot is code run once under QEMU TCG,
//! ~8 ms of the first container's start). It uses only caps, libc, seccompiler and std.

use std::collections::BTreeMap;

use caps::Capability as Cap;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

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

/// System calls allowed with one of the capabilities named, and refused (EPERM) without any of
/// them. The first group must stay `CAP_SYS_ADMIN` alone: the `clone` rules depend on it.
pub const GATED: &[(&[Cap], &[&str])] = &[
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

/// Bit `i` set when the process holds one of `GATED[i]`'s capabilities (`None`: all).
pub fn gated_mask(caps: Option<&[Cap]>) -> u32 {
    GATED
        .iter()
        .enumerate()
        .filter(|(_, (need, _))| {
            need.iter()
                .any(|c| caps.is_none_or(|list| list.contains(c)))
        })
        .fold(0, |m, (i, _)| m | (1 << i))
}

impl Profile {
    /// ros's default profile for a container holding `caps` (`None`: every capability): what
    /// Docker's default profile (moby `profiles/seccomp/default.json`) refuses, syscall by
    /// syscall and capability by capability, written as the list of what is refused. A
    /// syscall newer than the list (and than the 6.1 kernel ros ships) is allowed, where
    /// Docker's allowlist would refuse it.
    pub fn default_for(caps: Option<&[Cap]>) -> Profile {
        Profile::default_for_mask(gated_mask(caps))
    }

    /// [`Profile::default_for`] by the mask of [`GATED`] groups allowed (see [`gated_mask`]):
    /// the profile depends on the capabilities only through it.
    pub fn default_for_mask(mask: u32) -> Profile {
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
        for (i, (_, calls)) in GATED.iter().enumerate() {
            if mask & (1 << i) == 0 {
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
        // GATED[0] is CAP_SYS_ADMIN alone.
        if mask & 1 == 0 {
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

    /// The BPF programs for `arch`, to load in this order; `nr` gives a system call's number
    /// on it (unknown names are skipped, as runc does).
    pub fn compile_for(
        &self,
        arch: TargetArch,
        nr: &dyn Fn(&str) -> Option<i64>,
    ) -> Result<Vec<BpfProgram>, String> {
        let mut programs = Vec::new();
        let mut build = |rules: BTreeMap<i64, Vec<SeccompRule>>,
                         mismatch: Action,
                         matched: Action|
         -> Result<(), String> {
            if mismatch == matched {
                return Ok(());
            }
            let filter = SeccompFilter::new(rules, to_sc(mismatch), to_sc(matched), arch)
                .map_err(|e| e.to_string())?;
            programs.push(BpfProgram::try_from(filter).map_err(|e| e.to_string())?);
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
                add(&mut named, &r.names, args, nr)?;
            }
            build(named, self.default_action, Action::Allow)?;
        }
        let mut by_action: BTreeMap<Action, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
        for r in self.rules.iter().filter(|r| r.action != Action::Allow) {
            add(
                by_action.entry(r.action).or_default(),
                &r.names,
                &r.args,
                nr,
            )?;
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
    nr: &dyn Fn(&str) -> Option<i64>,
) -> Result<(), String> {
    for name in names {
        let Some(nr) = nr(name) else {
            continue;
        };
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
                SeccompCondition::new(a.index, len, op, value).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        let rule = SeccompRule::new(conds).map_err(|e| e.to_string())?;
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
