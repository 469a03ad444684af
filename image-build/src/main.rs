//! `ros-image build --arch x86_64|aarch64 [--out DIR]`: builds a bootable ros image.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ros_image::{Arch, BuildOptions, InitKind};

#[derive(Parser)]
#[command(
    name = "ros-image",
    version,
    about = "Builds bootable ros images from a stock Debian cloud kernel"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build vmlinuz + initramfs.img (+ manifest.json) for one architecture.
    Build {
        #[arg(long, value_enum)]
        arch: Arch,
        /// Output folder [default: target/ros-image/<arch>].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Fetch the newest kernel package even when one is cached.
        #[arg(long)]
        refresh_kernel: bool,
        /// Build initramfs-null.img instead, with an init that powers off at once (the boot
        /// benchmark's baseline).
        #[arg(long)]
        null_init: bool,
        /// How the system-service images' layers are kept in the initramfs.
        #[arg(long, value_enum, default_value = "tree")]
        layer_store: ros_image::images::LayerStore,
        /// A user-data to bake into the image (the lowest-precedence source); validated.
        #[arg(long)]
        user_data: Option<PathBuf>,
    },
    /// Fetch (or find cached) the kernel package for an architecture and print its release.
    Kernel {
        #[arg(long, value_enum)]
        arch: Arch,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Build {
            arch,
            out,
            refresh_kernel,
            null_init,
            layer_store,
            user_data,
        } => ros_image::build(&BuildOptions {
            arch,
            out: out.unwrap_or_else(|| ros_image::default_out(arch)),
            refresh_kernel,
            init: if null_init {
                InitKind::Null
            } else {
                InitKind::Ros
            },
            quiet: false,
            layer_store,
            user_data,
        })
        .map(|m| {
            ros_image::progress(&format!(
                "{} and {}",
                m.vmlinuz.display(),
                m.initramfs.display()
            ));
        }),
        Cmd::Kernel { arch } => {
            ros_image::kernel::fetch(arch, &ros_image::cache_dir(), false).map(|k| {
                ros_image::progress(&format!(
                    "{} {} at {}",
                    k.release,
                    k.package_version,
                    k.vmlinuz.display()
                ));
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ros-image: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
