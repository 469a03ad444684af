//! The runtime's errors: what failed, on what, and why, in one line.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bundle: {0}")]
    Bundle(String),
    #[error("config: {0}")]
    Config(String),
    #[error("cgroup {path}: {what}: {source}")]
    Cgroup {
        path: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("starting the container: {0}")]
    Spawn(String),
    /// A setup step inside the new container failed (reported by the child before it exited).
    #[error("container setup: {0}")]
    Setup(String),
    /// No container of that id under the runtime's root.
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("container with id {0} exists already")]
    Exists(String),
    /// The container's status does not allow the operation.
    #[error("{0}")]
    State(String),
}

pub type Result<T> = std::result::Result<T, Error>;
