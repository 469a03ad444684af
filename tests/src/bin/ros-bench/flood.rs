//! `flood`: root's `ros status` in a QEMU guest alone (the baseline) and through a flood of
//! non-root connections and a slow root sender; PID 1's reaping (a service that exits 1 s after
//! it starts), memory and longest main-loop turn. See `ros_tests::flood`.

use std::io::Write;

use anyhow::Result;
use ros_image::Arch;

use crate::median;

pub fn bench(arch: Arch, runs: usize, seconds: u64) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "flood benchmark ({arch:?}): root's ros status alone and through {seconds} s of 1,000 non-root connections at a time plus a slow sender"
    )?;
    for run in 1..=runs {
        let f = ros_tests::flood::run(arch, seconds, 1000)?;
        let ms = |v: &[u64]| {
            let f: Vec<f64> = v.iter().map(|x| *x as f64).collect();
            (median(&f), v.iter().copied().max().unwrap_or(0))
        };
        let (b_med, b_max) = ms(&f.baseline_ms);
        let (d_med, d_max) = ms(&f.during_ms);
        let (t_med, t_max) = ms(&f.ticker_ms);
        writeln!(
            out,
            "  run {run}/{runs}: ros status median/max {b_med:.0}/{b_max} ms alone, {d_med:.0}/{d_max} ms in the flood ({} requests); \
             {} connections turned away ({} by the kernel, {} by the init); slow sender dropped after {} ms; \
             start-to-exit of a 1 s service median/max {t_med:.0}/{t_max} ms ({} runs); init RSS {} KiB; longest main-loop turn {} ms",
            f.during_ms.len(),
            f.attempts,
            f.denied,
            f.refused,
            f.slow_dropped_after_ms
                .map_or_else(|| "?".into(), |v| v.to_string()),
            f.ticker_ms.len(),
            f.init_rss_kib,
            f.max_stall_ms,
        )?;
    }
    Ok(())
}
