//! `ros-qemu boot ...`: boots a ros image in QEMU, attached to its serial console, or (with
//! `--until-ready`) waits for the ready line, prints its JSON, powers the guest off cleanly and
//! exits 0. Exit codes: 0 done, 1 the boot failed or timed out (the console's tail is printed),
//! 2 bad arguments.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::{Parser, Subcommand};
use ros_image::Arch;
use ros_qemu::{BootConfig, Guest, cmdline};

#[derive(Parser)]
#[command(name = "ros-qemu", version, about = "Boots ros images in QEMU")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot an image.
    Boot(BootArgs),
}

#[derive(clap::Args)]
struct BootArgs {
    #[arg(long, value_enum)]
    arch: Arch,
    /// Folder with vmlinuz and initramfs.img [default: target/ros-image/<arch>].
    #[arg(long)]
    image: Option<PathBuf>,
    /// TOML user-data, passed through fw_cfg as opt/ros/user-data.
    #[arg(long)]
    user_data: Option<PathBuf>,
    #[arg(long, default_value_t = 512)]
    memory: u32,
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Forward host 127.0.0.1:HOST to guest port GUEST (TCP), e.g. 2222:22.
    #[arg(long = "forward", value_parser = ros_qemu::parse_forward)]
    forwards: Vec<(u16, u16)>,
    /// Another kernel command line word (e.g. ros.hostname=n1); repeatable.
    #[arg(long = "append")]
    append: Vec<String>,
    /// Show the kernel's boot messages.
    #[arg(long)]
    kernel_verbose: bool,
    /// A raw disk image, as the next virtio disk (vda, vdb, ...); repeatable. A missing file is
    /// made blank (sparse, --disk-size MiB), which ros formats as its state disk.
    #[arg(long = "disk")]
    disks: Vec<PathBuf>,
    /// Size in MiB of the disks --disk creates.
    #[arg(long, default_value_t = 1024)]
    disk_size: u64,
    /// Wait for the ready line, print its JSON, power off cleanly, exit.
    #[arg(long)]
    until_ready: bool,
    /// Seconds to wait for the ready line (with --until-ready).
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

fn main() -> ExitCode {
    let Cmd::Boot(args) = Cli::parse().command;
    let cfg = BootConfig {
        image: args
            .image
            .clone()
            .unwrap_or_else(|| ros_image::default_out(args.arch)),
        user_data: args.user_data.clone(),
        memory_mib: args.memory,
        cpus: args.cpus,
        forwards: args.forwards.clone(),
        append: args.append.clone(),
        kernel_verbose: args.kernel_verbose,
        disks: args.disks.clone(),
        ..BootConfig::new(args.arch)
    };
    for d in &cfg.disks {
        if let Err(e) = ros_qemu::blank_disk(d, args.disk_size << 20) {
            eprintln!("ros-qemu: disk {}: {e}", d.display());
            return ExitCode::FAILURE;
        }
    }
    if let Some(ud) = &cfg.user_data
        && !ud.exists()
    {
        eprintln!(
            "ros-qemu: the user-data file {} does not exist",
            ud.display()
        );
        return ExitCode::from(2);
    }
    let result = if args.until_ready {
        until_ready(&cfg, Duration::from_secs(args.timeout))
    } else {
        interactive(&cfg)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ros-qemu: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn until_ready(cfg: &BootConfig, timeout: Duration) -> anyhow::Result<()> {
    let mut g = Guest::spawn(cfg)?;
    let ready = g.wait_ready(timeout)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string_pretty(&ready)?)?;
    out.flush()?;
    g.poweroff()?;
    g.wait_for("shutdown: poweroff now", Duration::from_secs(30))?;
    let status = g.wait_exit(Duration::from_secs(30))?;
    if !status.success() {
        anyhow::bail!(
            "QEMU exited with {status} after poweroff; console tail:\n{}",
            g.tail(20)
        );
    }
    Ok(())
}

fn interactive(cfg: &BootConfig) -> anyhow::Result<()> {
    ros_qemu::guest::check_image(cfg)?;
    let dir = tempfile::Builder::new().prefix("ros-qemu").tempdir()?;
    let sockets = cmdline::Sockets {
        control: dir.path().join("control.sock"),
        qmp: dir.path().join("qmp.sock"),
    };
    eprintln!(
        "ros-qemu: booting {} ({}); console attached. Ctrl-a x quits QEMU; a clean poweroff:\n  echo poweroff | nc -UN {}",
        cfg.image.display(),
        cfg.arch,
        sockets.control.display()
    );
    let status = Command::new(cmdline::binary(cfg.arch))
        .args(cmdline::args(cfg, &sockets, "mon:stdio"))
        .status()?;
    if !status.success() {
        anyhow::bail!("QEMU exited with {status}");
    }
    Ok(())
}
