//! The persisted config survives a power cut in the middle of a write, booted in QEMU on both
//! arches: `ros config set` runs in a loop on a config made large on purpose (900 KB, so each
//! write takes a while), QEMU is killed at a different moment three times, and every boot after
//! reads a whole config, the old one or the new one, never a torn one.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, ensure};
use ros_qemu::Guest;
use ros_tests::{Arch, READY_TIMEOUT, config};

const WAIT: Duration = Duration::from_secs(90);

/// The first boot pads the persisted config with 900 KB of comments (kept by every edit).
const USER_DATA: &str = r##"bootcmd = ["f=/host/var/lib/ros/config/user-data.toml; [ -s $f ] || { mkdir -p ${f%/*}; awk 'BEGIN { for (i = 0; i < 15000; i++) printf \"# padding %05d ................................................\\n\", i }' > $f; }"]

[console]
autologin = true
"##;

fn power_cut(arch: Arch) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state.img");
    std::fs::File::create(&state)?.set_len(64 << 20)?;
    let mut ud = tempfile::Builder::new().suffix(".toml").tempfile()?;
    ud.write_all(USER_DATA.as_bytes())?;
    let mut cfg = config(arch)?;
    cfg.user_data = Some(ud.path().to_path_buf());
    cfg.disks = vec![state];
    cfg.memory_mib = 768;
    for (round, cut_after_ms) in [1500u64, 2700, 4100].into_iter().enumerate() {
        let mut g = Guest::spawn(&cfg)?;
        let r = g.wait_ready(READY_TIMEOUT)?;
        let state_errors: Vec<&serde_json::Value> = r["config_errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| {
                e["source"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("state:"))
            })
            .collect();
        ensure!(
            state_errors.is_empty(),
            "round {round}: the persisted config is torn: {state_errors:?}"
        );
        if round > 0 {
            let h = r["hostname"].as_str().unwrap_or_default();
            ensure!(
                h.starts_with('n') && h[1..].parse::<u32>().is_ok(),
                "round {round}: hostname {h}"
            );
        }
        g.wait_for("service bootcmd completed", WAIT)?;
        g.wait_for_text("root@", 0, WAIT)?;
        let from = g.console().len();
        g.type_text("i=0; while :; do i=$((i+1)); ros config set hostname n$i >/dev/null 2>&1 && echo set-$i; done\n")?;
        g.wait_for_from("set-1", from, WAIT)?;
        std::thread::sleep(Duration::from_millis(cut_after_ms));
        g.kill();
    }
    Ok(())
}

mod x86_64 {
    #[test]
    fn power_cut() -> anyhow::Result<()> {
        super::power_cut(super::Arch::X86_64)
    }
}

mod aarch64 {
    #[test]
    fn power_cut() -> anyhow::Result<()> {
        super::power_cut(super::Arch::Aarch64)
    }
}
