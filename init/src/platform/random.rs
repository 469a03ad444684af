//! Random numbers that never wait: the kernel's `getrandom` with `GRND_INSECURE` (it answers
//! before the entropy pool is initialised, which a DHCP client at boot needs; blocking there
//! cost ~1 s), or, should that fail, the 16 random bytes the kernel gives every program at exec
//! (`AT_RANDOM`), mixed with the clock. Enough to make DHCP transaction ids unguessable from the
//! link; not for keys.

/// 64 random bits.
pub fn u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: the buffer is valid for its length; the flags ask for no blocking.
    let n = unsafe {
        libc::getrandom(
            b.as_mut_ptr().cast(),
            b.len(),
            libc::GRND_INSECURE | libc::GRND_NONBLOCK,
        )
    };
    if n == 8 {
        return u64::from_ne_bytes(b);
    }
    at_random() ^ super::clock::uptime_ns().rotate_left(29)
}

/// The first 8 of the bytes the kernel put in this process's auxiliary vector at exec.
fn at_random() -> u64 {
    // SAFETY: getauxval only reads the auxiliary vector.
    let p = unsafe { libc::getauxval(libc::AT_RANDOM) } as *const u8;
    if p.is_null() {
        return 0;
    }
    let mut b = [0u8; 8];
    // SAFETY: AT_RANDOM points at 16 bytes that live as long as the process.
    unsafe { std::ptr::copy_nonoverlapping(p, b.as_mut_ptr(), 8) };
    u64::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_differ() {
        let a: Vec<u64> = (0..8).map(|_| super::u64()).collect();
        let mut b = a.clone();
        b.sort_unstable();
        b.dedup();
        assert_eq!(b.len(), a.len(), "{a:?}");
        assert_ne!(super::at_random(), 0);
    }
}
