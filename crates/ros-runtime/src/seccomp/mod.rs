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

use std::str::FromStr;

use caps::Capability as Cap;
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{BpfProgram, sock_filter};
use syscalls::Sysno;

use crate::error::{Error, Result};

mod profile;
pub use profile::{Action, ArgCond, GATED, Op, Profile, Rule, gated_mask};

/// One BPF instruction: code, jump if true, jump if false, immediate.
type Insn = (u16, u8, u8, u32);

// `PREBUILT`: the default profile's programs for this target, made by build.rs.
include!(concat!(env!("OUT_DIR"), "/seccomp_prebuilt.rs"));

/// The default profile's programs for the capability groups `mask`, as build.rs compiled them,
/// when that mask was among those it built.
pub fn prebuilt(mask: u32) -> Option<Vec<BpfProgram>> {
    let (_, programs) = PREBUILT.iter().find(|(m, _)| *m == mask)?;
    Some(
        programs
            .iter()
            .map(|p| {
                p.iter()
                    .map(|&(code, jt, jf, k)| sock_filter { code, jt, jf, k })
                    .collect()
            })
            .collect(),
    )
}

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
            SeccompConfig::Default => {
                let mask = gated_mask(caps);
                match prebuilt(mask) {
                    Some(p) => Ok(p),
                    None => Profile::default_for_mask(mask).compile(),
                }
            }
            SeccompConfig::Profile(p) => p.compile(),
        }
    }
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

    /// The BPF programs for this machine's architecture, to load in this order.
    pub fn compile(&self) -> Result<Vec<BpfProgram>> {
        let arch = std::env::consts::ARCH.try_into().map_err(|_| {
            Error::Seccomp(format!("no seccomp support for {}", std::env::consts::ARCH))
        })?;
        self.compile_for(arch, &|name| {
            Sysno::from_str(name).ok().map(|n| i64::from(n.id()))
        })
        .map_err(Error::Seccomp)
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
    fn the_prebuilt_programs_are_what_compiling_gives() {
        assert!(!PREBUILT.is_empty());
        for (mask, _) in PREBUILT {
            let built = prebuilt(*mask).expect("listed");
            let compiled = Profile::default_for_mask(*mask).compile().expect("compile");
            assert_eq!(built, compiled, "mask {mask:#x}");
        }
        // The shipped services' sets (Docker's defaults, with CAP_SYSLOG for syslog and
        // CAP_SYS_TIME for ntp) never compile at boot.
        for extra in [None, Some(Cap::CAP_SYSLOG), Some(Cap::CAP_SYS_TIME)] {
            let mut set = crate::config::DEFAULT_CAPABILITIES.to_vec();
            set.extend(extra);
            assert!(prebuilt(gated_mask(Some(&set))).is_some(), "{extra:?}");
        }
        // A set outside the table still gets its programs, compiled.
        let odd = gated_mask(Some(&[Cap::CAP_SYS_ADMIN, Cap::CAP_SYS_BOOT]));
        assert!(prebuilt(odd).is_none());
        let p = SeccompConfig::Default
            .programs(Some(&[Cap::CAP_SYS_ADMIN, Cap::CAP_SYS_BOOT]))
            .expect("compiled");
        assert_eq!(
            p,
            Profile::default_for_mask(odd).compile().expect("compile")
        );
        assert_eq!(GATED[0].0, &[Cap::CAP_SYS_ADMIN][..]);
    }

    #[test]
    fn notify_is_refused() {
        let oci: LinuxSeccomp =
            serde_json::from_str(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#).expect("json");
        assert!(Profile::from_oci(&oci).is_err());
    }
}
