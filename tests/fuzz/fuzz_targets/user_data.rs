//! A user-data file, any bytes: read, checked, layered over the image's shipped services, and
//! turned into the boot's diff, as the boot does. Nothing may panic; every error must name a
//! position inside the text.
#![no_main]
#![allow(clippy::expect_used, clippy::panic)] // a failed assertion is a finding

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ros_config::{Context, Source, load::Input, system::Facts};

static CTX: OnceLock<Context> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let ctx = CTX.get_or_init(|| Context::shipped(Facts::default()));
    let loaded = ros_config::load(
        &[Source::new(
            "fw_cfg:opt/ros/user-data",
            Input::Bytes(data.to_vec()),
        )],
        "",
        ctx,
    );
    let lines = data.iter().filter(|b| **b == b'\n').count() + 1;
    for e in &loaded.errors {
        if e.source == "fw_cfg:opt/ros/user-data" {
            assert!(
                e.line as usize <= lines,
                "{e} is past the end ({lines} lines)"
            );
        }
        let _ = e.to_string();
    }
    let _ = ros_config::diff::diff(None, &loaded, ctx);
});
