//! The `init` binary: PID 1 of a ros machine. All of it is in the library; see `boot::main`.

fn main() {
    // Started as a container's shim (ros_runtime::shim), this binary is that and nothing else.
    ros_runtime::shim::run_if_shim();
    ros_init::boot::main()
}
