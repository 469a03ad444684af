//! Compiles ros's default seccomp profile for the target architecture, for the capability
//! sets containers usually hold, into `$OUT_DIR/seccomp_prebuilt.rs` (see `src/seccomp`):
//! the same code as at run time (`src/seccomp/profile.rs`, included here), with the target's
//! system-call table from the `syscalls` crate.

#[path = "src/seccomp/profile.rs"]
#[allow(dead_code)]
mod profile;

use std::fmt::Write as _;
use std::str::FromStr;

use caps::Capability as Cap;

/// A system call's number on the target, by name.
type Lookup = &'static dyn Fn(&str) -> Option<i64>;

fn main() {
    println!("cargo:rerun-if-changed=src/seccomp/profile.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let (target, nr): (Option<seccompiler::TargetArch>, Lookup) = match arch.as_str() {
        "x86_64" => (Some(seccompiler::TargetArch::x86_64), &|n| {
            syscalls::x86_64::Sysno::from_str(n)
                .ok()
                .map(|s| i64::from(s.id()))
        }),
        "aarch64" => (Some(seccompiler::TargetArch::aarch64), &|n| {
            syscalls::aarch64::Sysno::from_str(n)
                .ok()
                .map(|s| i64::from(s.id()))
        }),
        // Elsewhere nothing is prebuilt: the runtime compiles (or says it cannot).
        _ => (None, &|_| None),
    };
    // Docker's default capabilities hold CAP_SYS_CHROOT of the gated ones; the sets built are
    // that one, and it with each other gated group added (a service's usual `cap_add`).
    let base = profile::gated_mask(Some(&[Cap::CAP_SYS_CHROOT]));
    let mut masks = vec![base];
    for i in 0..profile::GATED.len() {
        let m = base | (1 << i);
        if !masks.contains(&m) {
            masks.push(m);
        }
    }
    let mut out = String::from("static PREBUILT: &[(u32, &[&[Insn]])] = &[\n");
    if let Some(target) = target {
        for mask in masks {
            let programs = profile::Profile::default_for_mask(mask)
                .compile_for(target, nr)
                .unwrap_or_else(|e| panic!("the default seccomp profile, mask {mask:#x}: {e}"));
            let _ = write!(out, "    ({mask:#x}, &[");
            for p in programs {
                out.push_str("&[");
                for i in p {
                    let _ = write!(out, "({}, {}, {}, {}),", i.code, i.jt, i.jf, i.k);
                }
                out.push_str("],");
            }
            out.push_str("]),\n");
        }
    }
    out.push_str("];\n");
    let dir = std::env::var("OUT_DIR").unwrap_or_else(|e| panic!("OUT_DIR: {e}"));
    if let Err(e) = std::fs::write(std::path::Path::new(&dir).join("seccomp_prebuilt.rs"), out) {
        panic!("writing seccomp_prebuilt.rs: {e}");
    }
}
