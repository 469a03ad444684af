//! The QEMU command line for a boot, built purely from a [`BootConfig`] so it is unit-tested.

use std::path::{Path, PathBuf};

use ros_image::Arch;

/// The MAC of the first NIC (QEMU's usual default), so tests can match it.
pub const FIRST_MAC: &str = "52:54:00:12:34:56";

/// An extra NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub mac: String,
    pub net: NicNet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicNet {
    /// Its own QEMU user network (with its DHCP server), on this IPv4 range when given, e.g.
    /// `192.168.77.0/24`.
    User(Option<String>),
    /// A link with nothing behind it: no DHCP server, no peer.
    Isolated,
    /// An existing tap device on the host (made by the caller, e.g. `ip tuntap add NAME mode
    /// tap`), so host programs such as dnsmasq serve the guest. Needs root or the tap's owner.
    Tap(String),
    /// One L2 segment shared by every guest given the same `ADDR:PORT` (a UDP multicast
    /// group on the host's loopback): guests reach each other, nothing else reaches them.
    Mcast(String),
}

#[derive(Debug, Clone)]
pub struct BootConfig {
    pub arch: Arch,
    /// Folder with `vmlinuz` and `initramfs.img`.
    pub image: PathBuf,
    /// Another initramfs (e.g. `initramfs-null.img`) instead of the image's.
    pub initramfs: Option<PathBuf>,
    pub user_data: Option<PathBuf>,
    pub memory_mib: u32,
    pub cpus: u32,
    /// TCP forwards from host 127.0.0.1:HOST to guest :GUEST on the first NIC.
    pub forwards: Vec<(u16, u16)>,
    /// Whether the first NIC is there at all.
    pub nic: bool,
    pub extra_nics: Vec<Nic>,
    /// More kernel command line words.
    pub append: Vec<String>,
    /// Print kernel messages (no `quiet`).
    pub kernel_verbose: bool,
    /// Raw disk images, as virtio block devices in this order (`vda`, `vdb`, ...).
    pub disks: Vec<PathBuf>,
    /// The guest's real-time clock at boot, as QEMU's `-rtc base=` takes it
    /// (`2026-01-02T03:04:05`, UTC); the host's time when `None`.
    pub rtc_base: Option<String>,
}

impl BootConfig {
    pub fn new(arch: Arch) -> Self {
        BootConfig {
            arch,
            image: ros_image::default_out(arch),
            initramfs: None,
            user_data: None,
            memory_mib: 512,
            cpus: 1,
            forwards: Vec::new(),
            nic: true,
            extra_nics: Vec::new(),
            append: Vec::new(),
            kernel_verbose: false,
            disks: Vec::new(),
            rtc_base: None,
        }
    }
}

/// Sockets the boot's QEMU listens on.
#[derive(Debug, Clone)]
pub struct Sockets {
    pub control: PathBuf,
    pub qmp: PathBuf,
}

pub fn binary(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "qemu-system-x86_64",
        Arch::Aarch64 => "qemu-system-aarch64",
    }
}

pub fn console_device(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "ttyS0",
        Arch::Aarch64 => "ttyAMA0",
    }
}

/// The kernel command line.
pub fn kernel_append(cfg: &BootConfig) -> String {
    let mut words = vec![format!("console={}", console_device(cfg.arch))];
    if !cfg.kernel_verbose {
        words.push("quiet".into());
    }
    words.extend(cfg.append.iter().cloned());
    words.join(" ")
}

/// The arguments after the QEMU binary. `serial` is `stdio` or `mon:stdio` (interactive).
pub fn args(cfg: &BootConfig, sockets: &Sockets, serial: &str) -> Vec<String> {
    let s = |v: &str| v.to_string();
    let p = |v: &Path| v.display().to_string();
    let mut a: Vec<String> = Vec::new();
    match cfg.arch {
        // q35: with the older `pc` machine, virtio_pci's probe spends ~170 ms in ACPI
        // interrupt routing under TCG (measured); q35 takes ~20 ms.
        // `-cpu max,-erms,-fsrm`: QEMU's default x86 model (qemu64) lacks AES-NI, AVX2, BMI2
        // and ADX, which rustls's graviola provider needs (ros-pull, the cluster's TLS); `max`
        // has them. Without ERMS/FSRM the kernel copies with mov loops instead of `rep movsb`,
        // which TCG runs slowly: plain `max` made the boot to ready ~200 ms later, this is
        // where qemu64 was (`ros-bench boot`, BENCHMARKS.md). qemu64 plus the flags alone hangs
        // the kernel at its FPU setup.
        Arch::X86_64 => a.extend([s("-M"), s("q35"), s("-cpu"), s("max,-erms,-fsrm")]),
        Arch::Aarch64 => a.extend([s("-M"), s("virt"), s("-cpu"), s("max,pauth-impdef=on")]),
    }
    a.extend([
        s("-accel"),
        s("tcg"),
        s("-nodefaults"),
        s("-no-reboot"),
        s("-display"),
        s("none"),
    ]);
    a.extend([
        s("-m"),
        cfg.memory_mib.to_string(),
        s("-smp"),
        cfg.cpus.to_string(),
    ]);
    if let Some(base) = &cfg.rtc_base {
        a.extend([s("-rtc"), format!("base={base}")]);
    }
    a.extend([s("-serial"), s(serial)]);
    let initramfs = cfg
        .initramfs
        .clone()
        .unwrap_or_else(|| cfg.image.join("initramfs.img"));
    a.extend([
        s("-kernel"),
        p(&cfg.image.join("vmlinuz")),
        s("-initrd"),
        p(&initramfs),
    ]);
    a.extend([s("-append"), kernel_append(cfg)]);
    if cfg.nic {
        let mut netdev = s("user,id=n0");
        for (host, guest) in &cfg.forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        a.extend([s("-netdev"), netdev]);
        a.extend([
            s("-device"),
            format!("virtio-net-pci,netdev=n0,mac={FIRST_MAC},romfile="),
        ]);
    }
    for (i, nic) in cfg.extra_nics.iter().enumerate() {
        let id = format!("n{}", i + 1);
        let netdev = match &nic.net {
            NicNet::User(None) => format!("user,id={id}"),
            NicNet::User(Some(net)) => format!("user,id={id},net={net}"),
            NicNet::Isolated => format!("hubport,id={id},hubid={}", 100 + i),
            NicNet::Tap(name) => format!("tap,id={id},ifname={name},script=no,downscript=no"),
            NicNet::Mcast(group) => format!("socket,id={id},mcast={group},localaddr=127.0.0.1"),
        };
        a.extend([s("-netdev"), netdev]);
        a.extend([
            s("-device"),
            format!("virtio-net-pci,netdev={id},mac={},romfile=", nic.mac),
        ]);
    }
    for (i, disk) in cfg.disks.iter().enumerate() {
        a.extend([
            s("-drive"),
            format!("file={},if=none,id=d{i},format=raw", disk.display()),
            s("-device"),
            format!("virtio-blk-pci,drive=d{i}"),
        ]);
    }
    if let Some(ud) = &cfg.user_data {
        a.extend([
            s("-fw_cfg"),
            format!("name=opt/ros/user-data,file={}", ud.display()),
        ]);
    }
    a.extend([s("-device"), s("virtio-serial-pci")]);
    a.extend([
        s("-chardev"),
        format!(
            "socket,id=ctl,path={},server=on,wait=off",
            sockets.control.display()
        ),
    ]);
    a.extend([
        s("-device"),
        s("virtserialport,chardev=ctl,name=org.ros.control"),
    ]);
    a.extend([
        s("-qmp"),
        format!("unix:{},server=on,wait=off", sockets.qmp.display()),
    ]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sockets() -> Sockets {
        Sockets {
            control: "/t/ctl".into(),
            qmp: "/t/qmp".into(),
        }
    }

    #[test]
    fn x86_64_uses_q35_tcg_and_ttys0() {
        let mut cfg = BootConfig::new(Arch::X86_64);
        cfg.image = "/img".into();
        cfg.forwards.push((2222, 22));
        cfg.user_data = Some("/ud.toml".into());
        let a = args(&cfg, &sockets(), "stdio").join(" ");
        assert!(
            a.starts_with("-M q35 -cpu max,-erms,-fsrm -accel tcg -nodefaults -no-reboot"),
            "{a}"
        );
        assert!(a.contains("-kernel /img/vmlinuz -initrd /img/initramfs.img"));
        assert!(a.contains("-append console=ttyS0 quiet"));
        assert!(a.contains("hostfwd=tcp:127.0.0.1:2222-:22"));
        assert!(a.contains("-fw_cfg name=opt/ros/user-data,file=/ud.toml"));
        assert!(a.contains("name=org.ros.control"));
    }

    #[test]
    fn aarch64_uses_virt_with_fast_pointer_auth_and_ttyama0() {
        let mut cfg = BootConfig::new(Arch::Aarch64);
        cfg.extra_nics.push(Nic {
            mac: "52:54:00:12:34:57".into(),
            net: NicNet::User(Some("192.168.77.0/24".into())),
        });
        cfg.extra_nics.push(Nic {
            mac: "52:54:00:12:34:58".into(),
            net: NicNet::Isolated,
        });
        cfg.extra_nics.push(Nic {
            mac: "52:54:00:12:34:59".into(),
            net: NicNet::Mcast("230.0.0.1:41234".into()),
        });
        cfg.kernel_verbose = true;
        let a = args(&cfg, &sockets(), "stdio").join(" ");
        assert!(a.contains(
            "-netdev socket,id=n3,mcast=230.0.0.1:41234,localaddr=127.0.0.1 -device virtio-net-pci,netdev=n3,mac=52:54:00:12:34:59"
        ), "{a}");
        assert!(
            a.starts_with("-M virt -cpu max,pauth-impdef=on -accel tcg"),
            "{a}"
        );
        assert!(a.contains("-append console=ttyAMA0 -"), "{a}");
        assert!(a.contains("-netdev user,id=n1,net=192.168.77.0/24 -device virtio-net-pci,netdev=n1,mac=52:54:00:12:34:57"));
        assert!(a.contains(
            "-netdev hubport,id=n2,hubid=101 -device virtio-net-pci,netdev=n2,mac=52:54:00:12:34:58"
        ));
    }

    #[test]
    fn no_nic_when_asked() {
        let mut cfg = BootConfig::new(Arch::X86_64);
        cfg.nic = false;
        assert!(
            !args(&cfg, &sockets(), "stdio")
                .iter()
                .any(|a| a.contains("virtio-net"))
        );
    }
}
