//! The null init: the least an init can do. It prints the uptime at which the kernel started it,
//! then powers the machine off. The boot benchmark compares ros's init against it.

use std::io::Write;

fn uptime_ms() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u128) * 1000 + (ts.tv_nsec as u128) / 1_000_000
}

fn main() {
    let t = uptime_ms();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "null-init: started uptime_ms={t}");
    let _ = out.flush();
    // SAFETY: sync and reboot take no pointers; power-off is this program's whole purpose.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Only reached if reboot failed (not PID 1): say so rather than return into a kernel panic.
    let _ = writeln!(out, "null-init: reboot failed");
    loop {
        // SAFETY: pause has no arguments.
        unsafe { libc::pause() };
    }
}
