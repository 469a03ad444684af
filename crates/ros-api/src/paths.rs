//! The places the init, the CLI and the services agree on.

/// The folder of the API socket (bind-mounted into the console container).
pub const SOCKET_DIR: &str = "/run/ros/api";
/// The API socket.
pub const SOCKET: &str = "/run/ros/api/ros.sock";
/// Where the state disk is mounted (config, volumes, writable layers).
pub const STATE: &str = "/var/lib/ros";
/// The config persisted on the state disk (what `ros config set` writes).
pub const STATE_USER_DATA: &str = "/var/lib/ros/config/user-data.toml";
/// The config baked into the image by `ros-image`.
pub const IMAGE_USER_DATA: &str = "/usr/lib/ros/user-data.toml";
/// The log store (on the state disk when there is one).
pub const LOGS: &str = "/var/log/ros";
/// The services' own logs: `<name>.log`.
pub const SERVICE_LOGS: &str = "/var/log/ros/services";
/// What sources that are not files of their own gave (the NoCloud drive, the metadata service).
pub const RUN_SOURCES: &str = "/run/ros/sources";
/// What the console makes its logins from (keys, users, root's console password).
pub const LOGINS: &str = "/run/ros/ssh";

/// A service's log file.
pub fn service_log(name: &str) -> std::path::PathBuf {
    std::path::Path::new(SERVICE_LOGS).join(format!("{name}.log"))
}
