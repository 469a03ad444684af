//! The `init` binary: PID 1 of a ros machine. All of it is in the library; see `boot::main`.

/// The config worker is a second thread, and containers are cloned from the main one: the
/// allocator keeps the two apart (see `ros_runtime::forksafe`).
#[global_allocator]
static ALLOC: ros_runtime::forksafe::ForkSafe = ros_runtime::forksafe::ForkSafe;

fn main() {
    // Started as a container's shim (ros_runtime::shim), this binary is that and nothing else.
    ros_runtime::shim::run_if_shim();
    ros_init::boot::main()
}
