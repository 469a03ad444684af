//! The config worker: one thread that reads, checks, edits and writes configs, so that a large
//! user-data (up to the 1 MiB cap, validated in a few hundred milliseconds on a fast host and
//! several times that under emulation) never holds the main loop, which reaps, renews leases,
//! runs the supervisor's timers and answers the API. Started on first use; it lives as long as
//! the init. Its jobs are plain computations and file reads and writes: no forks, no locks the
//! containers' children need (see `ros_runtime::forksafe`, which the init's allocator is).

use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

fn sender() -> Result<&'static mpsc::Sender<Job>, String> {
    static TX: OnceLock<Result<mpsc::Sender<Job>, String>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        ros_runtime::forksafe::threads_started();
        std::thread::Builder::new()
            .name("ros-config".into())
            .stack_size(8 << 20)
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    // A job that panics answers nobody (its caller sees an error); the worker
                    // goes on.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                }
            })
            .map(|_| tx)
            .map_err(|e| format!("cannot start the config worker: {e}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Runs `f` on the worker; its result, without blocking the caller's thread meanwhile.
pub async fn run<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    sender()?
        .send(Box::new(move || {
            let _ = tx.send(f());
        }))
        .map_err(|_| "the config worker is gone".to_string())?;
    rx.await
        .map_err(|_| "the config worker failed on this request (see the init's log)".to_string())
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "current_thread")]
    async fn jobs_run_off_the_caller_and_a_panic_is_an_error() {
        let caller = std::thread::current().id();
        let other = super::run(move || std::thread::current().id() != caller)
            .await
            .expect("ran");
        assert!(other);
        let e = super::run(|| -> u8 { panic!("boom") }).await;
        assert!(e.is_err());
        assert_eq!(super::run(|| 7).await, Ok(7), "the worker lives on");
    }
}
