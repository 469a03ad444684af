//! The `init` binary: PID 1 of a ros machine. All of it is in the library; see `boot::main`.

fn main() {
    ros_init::boot::main()
}
