//! A kernel command line, any text: split into words, its `ros.*` keys read as the highest
//! config source, checked and layered. Nothing may panic.
#![no_main]
#![allow(clippy::expect_used, clippy::panic)] // a failed assertion is a finding

use libfuzzer_sys::fuzz_target;
use ros_config::{Context, system::Facts};

fuzz_target!(|data: &[u8]| {
    let cmdline = String::from_utf8_lossy(data);
    let params = ros_config::cmdline::split(&cmdline);
    let _ = ros_config::cmdline::option(&params, "ros.datasource");
    let ctx = Context::shipped(Facts::default());
    let loaded = ros_config::load(&[], &cmdline, &ctx);
    let _ = ros_config::diff::diff(None, &loaded, &ctx);
});
