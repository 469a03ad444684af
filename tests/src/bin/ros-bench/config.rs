//! `config`: how long validating a user-data takes, for the worst cases of
//! [`ros_tests::worst`] (each at most 1 MiB), through the path the boot and the API use
//! (`ros_config::load`: read, layer, check the whole), against parsing the same text with
//! toml_edit alone (the baseline: what any TOML reader pays).

use std::io::Write;
use std::time::Instant;

use anyhow::Result;

use crate::median;

pub fn bench(runs: usize) -> Result<()> {
    let ctx = ros_config::Context::shipped(ros_config::system::Facts::default());
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "config benchmark: validation through ros_config::load against toml_edit's parse alone, median of {runs} runs (ms)"
    )?;
    writeln!(
        out,
        "  {:<13} {:>7} {:>7} {:>9} {:>9} {:>6}  what",
        "case", "KiB", "errors", "validate", "baseline", "ratio"
    )?;
    let mut worst: f64 = 0.0;
    for case in ros_tests::worst::cases() {
        let sources = [ros_config::Source::text("bench", &case.text)];
        let mut validate = Vec::new();
        let mut parse = Vec::new();
        let mut errors = 0;
        for _ in 0..runs {
            let t = Instant::now();
            let l = ros_config::load(&sources, "", &ctx);
            validate.push(t.elapsed().as_secs_f64() * 1000.0);
            errors = l.errors.len();
            drop(l);
            let t = Instant::now();
            let doc = case.text.parse::<toml_edit::Document<String>>();
            parse.push(t.elapsed().as_secs_f64() * 1000.0);
            drop(doc);
        }
        let (v, p) = (median(&validate), median(&parse));
        worst = worst.max(v);
        writeln!(
            out,
            "  {:<13} {:>7} {:>7} {:>9.1} {:>9.1} {:>6.1}  {}",
            case.name,
            case.text.len() / 1024,
            errors,
            v,
            p,
            v / p,
            case.what
        )?;
    }
    writeln!(
        out,
        "  slowest case: {worst:.0} ms (goal: under 1000 ms for any user-data up to 1 MiB)"
    )?;
    Ok(())
}
