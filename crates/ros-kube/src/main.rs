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
    /// The node's address as the cluster reaches it [default: for a joining agent, its
    /// address on the route to the server; for a server, its first address].
    #[arg(long)]
    node_ip: Option<std::net::IpAddr>,
    /// A label for the Node, `KEY=VALUE` (repeatable).
    #[arg(long = "node-label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// A taint for the Node, `KEY[=VALUE]:EFFECT` (repeatable).
    #[arg(long = "node-taint", value_parser = parse_taint)]
    taints: Vec<serde_json::Value>,
    /// A container's log is rotated at this size (a quantity: `10Mi`).
    #[arg(long, default_value = "10Mi", value_parser = parse_size)]
    container_log_max_size: u64,
    /// Give pods a network: a bridge, an address each from the node's pod range, outbound
    /// NAT (loaded with `--nft`). Without it each pod has its loopback only.
    #[arg(long)]
    pod_network: bool,
    /// The nftables program for the pods' NAT.
    #[arg(long, default_value = "/usr/sbin/nft")]
    nft: PathBuf,
    /// Log files kept per container run, the current one included.
    #[arg(long, default_value_t = ros_kube::agent::logs::DEFAULT_MAX_FILES, value_parser = clap::value_parser!(u32).range(1..=100))]
    container_log_max_files: u32,
}

fn parse_size(s: &str) -> Result<u64, String> {
    ros_kube::quantity::parse_units(s)
        .ok()
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n >= 1024)
        .ok_or_else(|| format!("expected a size of at least 1Ki such as 10Mi, found `{s}`"))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    ros_config::cluster::parse_label(s)
}

fn parse_taint(s: &str) -> Result<serde_json::Value, String> {
    let t = ros_config::cluster::parse_taint(s)?;
    let mut v = serde_json::json!({"key": t.key, "effect": t.effect});
    if let Some(val) = t.value {
        v["value"] = val.into();
    }
    Ok(v)
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
        ros_config::cluster::node_name(&node_name).map_err(|e| format!("--node-name: {e}"))?;
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
            labels: self.labels.iter().cloned().collect(),
            taints: self.taints.clone(),
            log_max_size: self.container_log_max_size,
            log_max_files: self.container_log_max_files,
            pod_network: self.pod_network.then(|| self.nft.clone()),
            kubelet: Some(ros_kube::agent::Kubelet {
                listen: "0.0.0.0:10250".parse().map_err(|e| format!("{e}"))?,
                ca_pem: String::new(),
                cert_pem: String::new(),
                key_pem: String::new(),
            }),
            address: self.node_ip.map(|a| a.to_string()).or_else(|| {
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
        /// The pods' addresses: each node is given a /24 of it.
        #[arg(long, default_value = "10.42.0.0/16")]
        cluster_cidr: ipnet::Ipv4Net,
        #[command(flatten)]
        agent_args: AgentArgs,
    },
    /// Join a server's cluster and run the pods scheduled to this node.
    Agent {
        /// The server, `https://HOST:PORT`.
        #[arg(long)]
        server: String,
        /// The join token (`ros cluster token` on the server) [default: $ROS_KUBE_TOKEN, which
        /// keeps it off the process's command line].
        #[arg(long)]
        token: Option<String>,
        #[arg(long, default_value = "/var/lib/ros/cluster")]
        data_dir: PathBuf,
        /// Write status.json here (what `ros cluster status` shows): joining, joined or
        /// refused, and why.
        #[arg(long)]
        publish: Option<PathBuf>,
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
            cluster_cidr,
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
                // The node's address is one clients reach the server at, even before the
                // interface has it.
                let mut sans = sans;
                if let Some(ip) = agent_args.node_ip {
                    sans.push(ip.to_string());
                }
                let cfg = ros_kube::server::Config {
                    data_dir,
                    listen,
                    sans,
                    controllers: ros_kube::controllers::Settings {
                        cluster_cidr,
                        ..Default::default()
                    },
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
        Cmd::Agent {
            server,
            token,
            data_dir,
            publish,
            agent_args,
        } => agent(&server, token, data_dir, publish, &agent_args),
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

/// `ros-kube agent`: join (trying again while the server cannot be reached; a refusal ends
/// the process, whose supervisor starts it again later), then run the node.
fn agent(
    server: &str,
    token: Option<String>,
    data_dir: PathBuf,
    publish: Option<PathBuf>,
    args: &AgentArgs,
) -> ExitCode {
    let node_name = args.node_name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let status = move |state: &str, message: &str| {
        if let Some(dir) = &publish {
            let st = serde_json::json!({"role": "agent", "server": server, "node": node_name,
                "state": state, "message": message, "updated": ros_kube::objects::now_rfc3339()});
            let _ = std::fs::create_dir_all(dir);
            let _ = ros_kube::pki::write_atomic(
                &dir.join("status.json"),
                st.to_string().as_bytes(),
                0o644,
            );
        }
    };
    let fail = |m: &str| {
        status("refused", m);
        eprintln!("ros-kube agent: {m}");
        ExitCode::FAILURE
    };
    let token = match token.or_else(|| std::env::var("ROS_KUBE_TOKEN").ok()) {
        Some(t) => t,
        None => return fail("no join token: give --token or set ROS_KUBE_TOKEN"),
    };
    let token: ros_kube::join::Token = match token.parse() {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let mut cfg = match args.config(data_dir.join("agent")) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let password = match ros_kube::join::node_password(&data_dir.join("node-password")) {
        Ok(p) => p,
        Err(e) => return fail(&format!("the node password: {e}")),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("the runtime: {e}")),
    };
    rt.block_on(async {
        // The endpoint's port is taken before joining: the service's health check connects
        // to it, and a port another program holds is an error now rather than after the join.
        let listener = match &cfg.kubelet {
            Some(k) => match tokio::net::TcpListener::bind(k.listen).await {
                Ok(l) => Some(l),
                Err(e) => return fail(&format!("the agent's endpoint on {}: {e}", k.listen)),
            },
            None => None,
        };
        let mut delay = std::time::Duration::from_secs(1);
        let joined = loop {
            match ros_kube::join::join(server, &token, &cfg.node_name, &password, args.node_ip)
                .await
            {
                Ok(j) => break j,
                Err(ros_kube::join::JoinError::Refused(m)) => return fail(&m),
                Err(ros_kube::join::JoinError::Unreachable(m)) => {
                    status("joining", &m);
                    eprintln!("ros-kube agent: joining: {m}; trying again in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(10));
                }
            }
        };
        eprintln!(
            "ros-kube agent: joined {server} as node {} ({})",
            cfg.node_name, joined.address
        );
        status(
            "joined",
            &format!("node {} at {}", cfg.node_name, joined.address),
        );
        cfg.address = Some(joined.address.to_string());
        if let Some(k) = cfg.kubelet.as_mut() {
            k.ca_pem = joined.ca_pem.clone();
            k.cert_pem = joined.serving.cert_pem.clone();
            k.key_pem = joined.serving.key_pem.clone();
        }
        let client = match ros_kube::client::Client::new(
            server,
            &joined.ca_pem,
            &joined.client.cert_pem,
            &joined.client.key_pem,
        ) {
            Ok(c) => c,
            Err(e) => return fail(&e.to_string()),
        };
        match ros_kube::agent::run_on(client, cfg, listener).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        }
    })
}
