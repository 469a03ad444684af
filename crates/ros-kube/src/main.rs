//! `ros-kube`: the cluster's program. `server` runs the API server (certificates, the store and
//! tokens under `--data-dir`); `kubeconfig` prints an admin kubeconfig for a server's data.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ros-kube", about = "ros's k3s-like cluster")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// The node's name [default: the hostname].
    #[arg(long)]
    node_name: Option<String>,
    /// The OCI runtime that runs the pods' containers.
    #[arg(long, default_value = "ros-runtime")]
    runtime: PathBuf,
    /// Registry mirrors and credentials, as JSON (the user-data's `registries` table).
    #[arg(long)]
    registries: Option<PathBuf>,
    /// Seconds before a crashed container's first restart (doubling to 300).
    #[arg(long, default_value_t = 10)]
    backoff_initial: u64,
    /// The node's address as the cluster reaches it.
    #[arg(long)]
    node_ip: Option<String>,
}

impl AgentArgs {
    fn config(&self, data_dir: PathBuf) -> Result<ros_kube::agent::Config, String> {
        let node_name = match &self.node_name {
            Some(n) => n.clone(),
            None => nix::unistd::gethostname()
                .map_err(|e| format!("the hostname: {e}"))?
                .to_string_lossy()
                .into_owned(),
        };
        let registries = match &self.registries {
            Some(p) => serde_json::from_slice(
                &std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?,
            )
            .map_err(|e| format!("{}: {e}", p.display()))?,
            None => ros_registry::Registries::default(),
        };
        Ok(ros_kube::agent::Config {
            node_name,
            data_dir,
            runtime: self.runtime.clone(),
            registries,
            backoff_initial: std::time::Duration::from_secs(self.backoff_initial),
            backoff_max: std::time::Duration::from_secs(300),
            labels: Default::default(),
            kubelet: Some(ros_kube::agent::Kubelet {
                listen: "0.0.0.0:10250".parse().map_err(|e| format!("{e}"))?,
                ca_pem: String::new(),
                cert_pem: String::new(),
                key_pem: String::new(),
            }),
            address: self.node_ip.clone().or_else(|| {
                ros_kube::server::own_names()
                    .into_iter()
                    .find(|n| n.parse::<std::net::IpAddr>().is_ok())
            }),
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the API server.
    Server {
        #[arg(long, default_value = "/var/lib/ros/cluster")]
        data_dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0:6443")]
        listen: SocketAddr,
        /// A name or address for the serving certificate (repeatable); the machine's hostname
        /// and addresses are always in it.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Write the admin kubeconfig, the join token and status.json here.
        #[arg(long)]
        publish: Option<PathBuf>,
        /// `embedded` (the default: a revision log in the data folder) or `etcd://HOST:PORT`.
        #[arg(long)]
        datastore: Option<String>,
        /// Run an agent for this node in the same process (pods scheduled here run here).
        #[arg(long)]
        agent: bool,
        #[command(flatten)]
        agent_args: AgentArgs,
    },
    /// Print an admin kubeconfig (context `default`).
    Kubeconfig {
        #[arg(long, default_value = "/var/lib/ros/cluster")]
        data_dir: PathBuf,
        #[arg(long, default_value = "https://127.0.0.1:6443")]
        server: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Server {
            data_dir,
            listen,
            sans,
            publish,
            datastore,
            agent,
            agent_args,
        } => {
            let agent = if agent {
                match agent_args.config(data_dir.join("agent")) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        eprintln!("ros-kube: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                None
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("ros-kube: the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async {
                let cfg = ros_kube::server::Config {
                    data_dir,
                    listen,
                    sans,
                    controllers: ros_kube::controllers::Settings::default(),
                    publish,
                    datastore,
                    agent,
                };
                match ros_kube::server::start(&cfg).await {
                    Ok(r) => {
                        eprintln!("ros-kube: serving on https://{}", r.addr);
                        std::future::pending::<()>().await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("ros-kube: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Cmd::Kubeconfig { data_dir, server } => {
            match ros_kube::pki::Pki::open(&data_dir.join("pki"))
                .and_then(|p| p.kubeconfig(&server))
            {
                Ok(k) => {
                    use std::io::Write;
                    let _ = std::io::stdout().write_all(k.as_bytes());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ros-kube: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
