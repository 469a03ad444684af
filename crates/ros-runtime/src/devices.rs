//! The device controller of cgroup v2: an eBPF program of type `BPF_PROG_TYPE_CGROUP_DEVICE`
//! attached to the container's group, which the kernel runs on every device open and mknod in
//! it and which answers allow (1) or deny (0, the caller gets EPERM). crun, runc and youki do the
//! same. The program is made here from the rules ([`program`], pure, unit-tested) and loaded and
//! attached with two `bpf(2)` calls ([`attach`]).
//!
//! Written here: the program is a few dozen instructions and the two calls a few lines, where a
//! BPF crate (aya, libbpf) would bring an ELF loader or a C library into the init for them.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::config::{Access, DeviceKind, DeviceRule};

/// A BPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const MOV64_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const AND64_K: u8 = 0x57; // BPF_ALU64 | BPF_AND | BPF_K
const RSH64_K: u8 = 0x77; // BPF_ALU64 | BPF_RSH | BPF_K
const JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

// The context (`struct bpf_cgroup_dev_ctx`): access_type (access << 16 | type), major, minor.
const R_TYPE: u8 = 2;
const R_ACCESS: u8 = 3;
const R_MAJOR: u8 = 4;
const R_MINOR: u8 = 5;
const R_TMP: u8 = 6;

fn kind_bit(k: DeviceKind) -> i32 {
    match k {
        DeviceKind::Block => 1,
        DeviceKind::Char => 2,
        // Never in a rule (FIFOs are not the filter's concern); 0 matches no device.
        DeviceKind::Fifo => 0,
    }
}

fn access_bits(a: Access) -> i32 {
    i32::from(a.mknod) | (i32::from(a.read) << 1) | (i32::from(a.write) << 2)
}

/// The program for `rules`: the last rule that matches a request decides; a request no rule
/// matches is denied. An allow rule matches when it grants every access asked for; a deny rule,
/// when it denies any of them.
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, R_TYPE, 1, 0, 0),
        insn(MOV64_X, R_ACCESS, R_TYPE, 0, 0),
        insn(AND64_K, R_TYPE, 0, 0, 0xffff),
        insn(RSH64_K, R_ACCESS, 0, 0, 16),
        insn(LDX_W, R_MAJOR, 1, 4, 0),
        insn(LDX_W, R_MINOR, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        // Each test jumps past the rule's block when it fails: to the block's end.
        let mut block: Vec<Insn> = Vec::new();
        let mut skips: Vec<usize> = Vec::new();
        let mut skip_unless_eq = |block: &mut Vec<Insn>, reg: u8, value: i32| {
            skips.push(block.len());
            block.push(insn(JNE_K, reg, 0, 0, value));
        };
        if let Some(k) = r.kind {
            skip_unless_eq(&mut block, R_TYPE, kind_bit(k));
        }
        if let Some(m) = r.major {
            skip_unless_eq(&mut block, R_MAJOR, i32::try_from(m).unwrap_or(-1));
        }
        if let Some(m) = r.minor {
            skip_unless_eq(&mut block, R_MINOR, i32::try_from(m).unwrap_or(-1));
        }
        let bits = access_bits(r.access);
        block.push(insn(MOV64_X, R_TMP, R_ACCESS, 0, 0));
        if r.allow {
            // Every access asked for is granted: (asked & !granted) == 0.
            block.push(insn(AND64_K, R_TMP, 0, 0, !bits & 7));
            skips.push(block.len());
            block.push(insn(JNE_K, R_TMP, 0, 0, 0));
        } else {
            // Any access asked for is denied: (asked & denied) != 0.
            block.push(insn(AND64_K, R_TMP, 0, 0, bits));
            skips.push(block.len());
            block.push(insn(JEQ_K, R_TMP, 0, 0, 0));
        }
        block.push(insn(MOV64_K, 0, 0, 0, i32::from(r.allow)));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let end = block.len();
        for i in skips {
            block[i].off = i16::try_from(end - i - 1).unwrap_or(i16::MAX);
        }
        p.extend(block);
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// Runs `program` on a request, as the kernel would: the model the tests check it against.
pub fn run(program: &[Insn], kind: DeviceKind, access: Access, major: u32, minor: u32) -> u64 {
    let mut r = [0u64; 11];
    let ctx = [
        (u32::from(access_bits(access) as u16) << 16) | kind_bit(kind) as u32,
        major,
        minor,
    ];
    let mut pc = 0;
    while let Some(i) = program.get(pc) {
        let (dst, src) = (usize::from(i.regs & 0x0f), usize::from(i.regs >> 4));
        let imm = i64::from(i.imm) as u64;
        pc += 1;
        match i.code {
            LDX_W => r[dst] = u64::from(ctx[usize::try_from(i.off / 4).unwrap_or(0)]),
            MOV64_X => r[dst] = r[src],
            MOV64_K => r[dst] = imm,
            AND64_K => r[dst] &= imm,
            RSH64_K => r[dst] >>= imm,
            JNE_K if r[dst] != imm => pc += usize::try_from(i.off).unwrap_or(0),
            JEQ_K if r[dst] == imm => pc += usize::try_from(i.off).unwrap_or(0),
            JNE_K | JEQ_K => {}
            EXIT => return r[0],
            _ => return 0,
        }
    }
    0
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

/// `union bpf_attr` for BPF_PROG_LOAD (the fields used; the rest must be zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 8],
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    _rest: [u32; 11],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: attr is a valid, initialised bpf_attr of the size passed, for the call only.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads the program for `rules` and attaches it to the cgroup open as `cgroup`. The kernel
/// keeps the program while it is attached.
pub fn attach(cgroup: &OwnedFd, rules: &[DeviceRule]) -> std::io::Result<()> {
    let insns = program(rules);
    let license = c"Apache-2.0";
    let load = |log: &mut [u8]| {
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: u32::try_from(insns.len()).unwrap_or(u32::MAX),
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: u32::try_from(log.len()).unwrap_or(0),
            // The kernel refuses a buffer without a log level.
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            prog_name: *b"ros_devices\0\0\0\0\0",
            expected_attach_type: BPF_CGROUP_DEVICE,
            ..ProgLoad::default()
        };
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    // Without the verifier's log first (it is long); with it, to explain a refusal.
    let fd = load(&mut []).map_err(|e| {
        let mut log = vec![0u8; 1 << 16];
        let _ = load(&mut log);
        let text = String::from_utf8_lossy(&log);
        let last: Vec<&str> = text
            .trim_end_matches('\0')
            .trim()
            .lines()
            .rev()
            .take(3)
            .collect();
        std::io::Error::new(
            e.kind(),
            format!("loading the program: {e} ({})", last.join(" / ")),
        )
    })?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).unwrap_or(-1)) };
    let mut at = ProgAttach {
        target_fd: u32::try_from(cgroup.as_raw_fd()).unwrap_or(0),
        attach_bpf_fd: u32::try_from(prog.as_raw_fd()).unwrap_or(0),
        attach_type: BPF_CGROUP_DEVICE,
        ..ProgAttach::default()
    };
    bpf(BPF_PROG_ATTACH, &mut at)
        .map_err(|e| std::io::Error::new(e.kind(), format!("attaching the program: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_device_rules;

    const RW: Access = Access {
        read: true,
        write: true,
        mknod: false,
    };
    const R: Access = Access {
        read: true,
        write: false,
        mknod: false,
    };
    const M: Access = Access {
        read: false,
        write: false,
        mknod: true,
    };

    #[test]
    fn the_default_rules_allow_the_standard_devices_and_nothing_else() {
        let p = program(&default_device_rules(&crate::config::default_devices()));
        let ok = |k, a, ma, mi| run(&p, k, a, ma, mi) == 1;
        use DeviceKind::{Block, Char};
        for (ma, mi) in [
            (1, 3),
            (1, 5),
            (1, 7),
            (1, 8),
            (1, 9),
            (5, 0),
            (5, 1),
            (5, 2),
            (136, 4),
        ] {
            assert!(ok(Char, RW, ma, mi), "c {ma}:{mi}");
        }
        assert!(ok(Char, M, 1, 3), "the setup makes /dev/null");
        assert!(!ok(Block, R, 254, 0), "the state disk");
        assert!(!ok(Block, M, 254, 0));
        assert!(!ok(Char, R, 1, 1), "/dev/mem");
        assert!(!ok(Char, RW, 10, 200), "tun");
        assert!(!ok(Char, M, 136, 4), "no pty made by hand");
    }

    #[test]
    fn later_rules_win_and_deny_rules_deny_any_access_they_name() {
        let rule = |allow, kind, major, minor, access| DeviceRule {
            allow,
            kind,
            major,
            minor,
            access,
        };
        let all = Access {
            read: true,
            write: true,
            mknod: true,
        };
        let rules = vec![
            rule(true, None, None, None, all),
            rule(
                false,
                Some(DeviceKind::Block),
                Some(8),
                None,
                Access { write: true, ..M },
            ),
            rule(true, Some(DeviceKind::Block), Some(8), Some(1), RW),
        ];
        let p = program(&rules);
        assert_eq!(run(&p, DeviceKind::Char, RW, 4, 4), 1, "allow all first");
        assert_eq!(
            run(&p, DeviceKind::Block, R, 8, 0),
            1,
            "reading sda is not denied"
        );
        assert_eq!(run(&p, DeviceKind::Block, RW, 8, 0), 0, "writing sda is");
        assert_eq!(
            run(&p, DeviceKind::Block, RW, 8, 1),
            1,
            "sda1 allowed again"
        );
        assert_eq!(run(&program(&[]), DeviceKind::Char, R, 1, 3), 0);
    }
}
