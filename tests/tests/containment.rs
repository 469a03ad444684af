//! A root service that is not privileged stays in its container, booted in QEMU on both arches:
//! it can neither make nor open the state disk's device node (in /tmp, in /dev or in a volume),
//! even when given CAP_MKNOD back, nor open one the host made in its volume; a disk it is given
//! (`devices`) reads; and its seccomp filter refuses what Docker's does (`sethostname`,
//! `swapon`). Read from the serial console.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, ensure};
use ros_qemu::Guest;
use ros_tests::{Arch, READY_TIMEOUT, config};

const WAIT: Duration = Duration::from_secs(90);

/// Tries to make and read the state disk's node in /tmp (the overlay root), /dev and /data (a
/// volume); then two calls the seccomp filter refuses.
const PROBE: &str = r#"d=$(cat /sys/class/block/vda/dev); M=${d%:*}; m=${d#*:}
for dir in /tmp /dev /data; do
  mknod $dir/disk b $M $m 2>/dev/null && echo made-$dir || echo no-mknod-$dir
  head -c 512 $dir/disk >/dev/null 2>&1 && echo READ-$dir || echo no-read-$dir
done
head -c 512 /data/hostnode >/dev/null 2>&1 && echo READ-hostnode || echo no-read-hostnode
hostname evil 2>&1; echo hostname=$?
swapon /dev/null 2>&1; echo swapon=$?
echo probe-done; exec sleep 3600"#;

fn user_data() -> String {
    let cmd = serde_json::to_string(PROBE).unwrap_or_default();
    // The host makes a node of the state disk in each volume before the services start
    // (bootcmd is privileged): opening it must fail all the same.
    let boot = "d=$(cat /sys/class/block/vda/dev); for v in probe-data mknod-data; do mkdir -p /host/var/lib/ros/volumes/$v; mknod /host/var/lib/ros/volumes/$v/hostnode b ${d%:*} ${d#*:}; done";
    let boot = serde_json::to_string(boot).unwrap_or_default();
    format!(
        r#"bootcmd = [{boot}]

[console]
autologin = true

[services.probe]
image = "busybox"
command = ["sh", "-c", {cmd}]
volumes = ["probe-data:/data"]

[services.mknodder]
image = "busybox"
command = ["sh", "-c", {cmd}]
volumes = ["mknod-data:/data"]
cap_add = ["MKNOD"]

[services.granted]
image = "busybox"
command = ["sh", "-c", "head -c 16 /dev/vdb; echo; echo granted-done; exec sleep 3600"]
devices = ["/dev/vdb:r"]

# A fifth of a CPU: a busy loop is throttled.
[services.spinner]
image = "busybox"
command = ["sh", "-c", "while :; do :; done & sleep 3; cat /sys/fs/cgroup/cpu.max; grep nr_throttled /sys/fs/cgroup/cpu.stat; echo spin-done; exec sleep 3600"]
resources = {{ cpu = 0.2 }}

# Ignores its stop signal: killed after its stop timeout at shutdown.
[services.stubborn]
image = "busybox"
command = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
init = false
stop_timeout = "1s"
"#
    )
}

/// Runs `cmd` on the serial console's root shell; the console between the command and its end.
fn shell(g: &mut Guest, cmd: &str, marker: &str) -> Result<String> {
    let from = g.console().len();
    g.type_text(&format!("{cmd}; echo {marker}-$((6*7))\n"))?;
    let (_, end) = g.wait_for_from(&format!("{marker}-42"), from, WAIT)?;
    Ok(g.console()[from..end].to_string())
}

fn containment(arch: Arch) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state.img");
    std::fs::File::create(&state)?.set_len(64 << 20)?;
    let granted = dir.path().join("granted.img");
    let mut f = std::fs::File::create(&granted)?;
    f.write_all(b"ros-granted-disk")?;
    f.set_len(1 << 20)?;
    let mut ud = tempfile::Builder::new().suffix(".toml").tempfile()?;
    ud.write_all(user_data().as_bytes())?;
    let mut cfg = config(arch)?;
    cfg.user_data = Some(ud.path().to_path_buf());
    cfg.disks = vec![state, granted];
    cfg.memory_mib = 768;
    let mut g = Guest::spawn(&cfg)?;
    let r = g.wait_ready(READY_TIMEOUT)?;
    ensure!(r["state"]["device"] == "/dev/vda", "{:#}", r["state"]);
    g.wait_for_text("root@", 0, WAIT)?;
    let mut logs = String::new();
    for _ in 0..60 {
        logs = shell(
            &mut g,
            "cd /var/log/ros/services && cat probe.log mknodder.log granted.log spinner.log",
            "logs",
        )?;
        if logs.matches("probe-done").count() >= 2
            && logs.contains("granted-done")
            && logs.contains("spin-done")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let all = logs;
    ensure!(
        !all.contains("READ-"),
        "a service read the state disk:\n{all}"
    );
    ensure!(
        all.matches("no-read-hostnode").count() == 2,
        "a node the host made in a volume must not open:\n{all}"
    );
    for dir in ["/tmp", "/dev", "/data"] {
        ensure!(
            all.matches(&format!("no-read-{dir}")).count() == 2,
            "both services must fail to read through {dir}:\n{all}"
        );
    }
    // Without CAP_MKNOD the node cannot even be made; with it, the device filter still refuses
    // the state disk's.
    ensure!(
        all.matches("no-mknod-").count() == 6,
        "no node of the state disk may be made:\n{all}"
    );
    ensure!(
        all.matches("hostname=1").count() == 2 && all.matches("swapon=1").count() == 2,
        "the seccomp filter:\n{all}"
    );
    ensure!(all.contains("Operation not permitted"), "{all}");
    ensure!(
        all.contains("out: ros-granted-disk"),
        "the granted disk reads:\n{all}"
    );
    ensure!(all.contains("out: 20000 100000"), "cpu.max:\n{all}");
    let throttled: u64 = all
        .lines()
        .find_map(|l| l.split("nr_throttled ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    ensure!(throttled > 0, "the busy loop was never throttled:\n{all}");

    // The shutdown: services in reverse dependency order, SIGKILL for the one that ignores its
    // stop signal, then the state disk unmounted (its ext4 marked clean).
    g.poweroff()?;
    let status = g.wait_exit(Duration::from_secs(90))?;
    ensure!(status.success(), "{status}");
    let c = g.console();
    ensure!(
        c.contains("service stubborn did not stop within 1000 ms; killing it"),
        "{}",
        g.tail(40)
    );
    ensure!(
        c.contains("shutdown: unmounted /var/lib/ros"),
        "{}",
        g.tail(40)
    );
    let sb = std::fs::read(&cfg.disks[0])?;
    // s_state at 1024 + 58: 1 when the filesystem was cleanly unmounted.
    ensure!(
        u16::from_le_bytes([sb[1024 + 58], sb[1024 + 59]]) == 1,
        "the state disk was not unmounted cleanly"
    );
    Ok(())
}

mod x86_64 {
    #[test]
    fn containment() -> anyhow::Result<()> {
        super::containment(super::Arch::X86_64)
    }
}

mod aarch64 {
    #[test]
    fn containment() -> anyhow::Result<()> {
        super::containment(super::Arch::Aarch64)
    }
}
