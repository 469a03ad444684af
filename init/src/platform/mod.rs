//! What faces the kernel: the uptime clock, the console logger, the mount table, kernel modules
//! and device events, the root's move off the initramfs, the syscall seam, power requests and
//! reaping, the state disk, and the orderly shutdown.

pub mod async_fd;
pub mod clock;
pub mod kmod;
pub mod logger;
pub mod mounts;
pub mod power;
pub mod random;
pub mod shutdown;
pub mod state;
pub mod switch_root;
pub mod sys;
pub mod uevent;
