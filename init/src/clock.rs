//! Time since boot in milliseconds (CLOCK_BOOTTIME): the boot timeline's clock and the DHCP
//! client's. Needs no /proc, so it works from the first instruction of the init.

pub fn uptime_ms() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(ts) => {
            let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
            secs * 1000 + nanos / 1_000_000
        }
        Err(_) => 0,
    }
}
