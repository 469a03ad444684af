//! The persistent state disk, booted in QEMU on both arches: a blank disk is formatted and
//! mounted, a disk in use is left alone, a service volume's data survives QEMU killed without a
//! shutdown, and without a state disk ros says it runs from memory.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, ensure};
use ros_qemu::Guest;
use ros_tests::{Arch, READY_TIMEOUT, config, free_port};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

/// A service that counts its starts in a named volume (synced, as a careful program does) and
/// serves the count over HTTP.
const KEEPER: &str = r#"
[services.keeper]
image = "busybox"
command = ["sh", "-c", "echo start >> /data/starts && sync && echo keeper starts $(grep -c . /data/starts) && exec httpd -f -p 8080 -h /data"]
volumes = ["keep:/data"]
host_namespaces = ["net"]
"#;

/// A disk that is in use: a partition table signature, and bytes ros must never change.
fn used_disk(path: &Path) -> Result<Vec<u8>> {
    let mut head: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    head[510] = 0x55;
    head[511] = 0xaa;
    let mut f = std::fs::File::create(path)?;
    f.write_all(&head)?;
    f.set_len(64 << 20)?;
    Ok(head)
}

fn starts(port: u16) -> Result<usize> {
    let body = ros_tests::http_get_path(port, "/starts", WAIT)?;
    Ok(body.lines().filter(|l| *l == "start").count())
}

fn state_disk(arch: Arch) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let used = dir.path().join("used.img");
    let used_head = used_disk(&used)?;
    let state = dir.path().join("state.img");
    ros_qemu::blank_disk(&state, 256 << 20)?;
    let mut ud = tempfile::Builder::new().suffix(".toml").tempfile()?;
    ud.write_all(KEEPER.as_bytes())?;
    let port = free_port()?;
    let mut cfg = config(arch)?;
    cfg.user_data = Some(ud.path().to_path_buf());
    cfg.forwards = vec![(port, 8080)];
    cfg.disks = vec![used.clone(), state.clone()];
    cfg.append = vec!["ros.state.autoformat=vda,vdb".into()];

    // First boot: vda is in use and left alone; vdb is blank and becomes the state disk.
    let mut g = Guest::spawn(&cfg)?;
    let r = g.wait_ready(READY_TIMEOUT)?;
    let st = &r["state"];
    ensure!(
        st["persistent"] == true && st["formatted"] == true && st["device"] == "/dev/vdb",
        "{st:#}\n{}",
        g.tail(40)
    );
    ensure!(starts(port)? == 1, "one start so far");
    // Hard power-off: QEMU killed, no shutdown, no unmount.
    g.kill();
    drop(g);
    let now = std::fs::read(&used)?;
    ensure!(
        now[..used_head.len()] == used_head[..],
        "the disk in use was changed"
    );

    // Second boot: the same state disk is found by its label, not formatted again, and the
    // volume's data of the first boot is there.
    let mut g = Guest::spawn(&cfg)?;
    let r = g.wait_ready(READY_TIMEOUT)?;
    let st = &r["state"];
    ensure!(
        st["persistent"] == true && st["formatted"] == false && st["device"] == "/dev/vdb",
        "{st:#}"
    );
    ensure!(starts(port)? == 2, "the volume kept the first boot's start");
    g.poweroff()?;
    g.wait_exit(WAIT)?;
    Ok(())
}

fn no_state_disk(arch: Arch) -> Result<()> {
    let (mut g, r) = ros_tests::boot_ready(&config(arch)?)?;
    let st: &Value = &r["state"];
    ensure!(st["persistent"] == false, "{st:#}");
    let detail = st["detail"].as_str().unwrap_or_default();
    ensure!(
        detail.contains("ROS_STATE") && detail.contains("in memory"),
        "{detail}"
    );
    g.wait_for("state: no disk labelled ROS_STATE", WAIT)?;
    g.poweroff()?;
    Ok(())
}

mod x86_64 {
    #[test]
    fn state_disk() -> anyhow::Result<()> {
        super::state_disk(super::Arch::X86_64)
    }
    #[test]
    fn no_state_disk() -> anyhow::Result<()> {
        super::no_state_disk(super::Arch::X86_64)
    }
}

mod aarch64 {
    #[test]
    fn state_disk() -> anyhow::Result<()> {
        super::state_disk(super::Arch::Aarch64)
    }
    #[test]
    fn no_state_disk() -> anyhow::Result<()> {
        super::no_state_disk(super::Arch::Aarch64)
    }
}
