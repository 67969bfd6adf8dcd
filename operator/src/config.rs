//! Command-line and environment configuration. Every flag can also be set by the environment
//! variable named beside it, which is how the Helm chart configures the operator.

use clap::{Parser, Subcommand, ValueEnum};

/// The Distillery operator.
#[derive(Parser, Debug)]
#[command(name = "distillery-operator", version, about)]
pub struct Cli {
    /// Log level filter (error, warn, info, debug, trace, or a tracing directive list).
    #[arg(long, env = "DISTILLERY_LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
    /// Log format.
    #[arg(long, env = "DISTILLERY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Connect to the cluster and serve health and metrics endpoints.
    Run(RunArgs),
}

/// Log output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for log pipelines.
    Json,
    /// Human-readable lines.
    Text,
}

/// Settings of `distillery-operator run`.
#[derive(Parser, Debug, Clone)]
pub struct RunArgs {
    /// Port of the HTTP endpoint serving /metrics, /healthz and /readyz.
    #[arg(long, env = "DISTILLERY_HTTP_PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// Address to bind the HTTP endpoint to.
    #[arg(long, env = "DISTILLERY_HTTP_ADDRESS", default_value = "0.0.0.0")]
    pub http_address: String,
    /// Elect a leader with a Lease so that only one replica reconciles.
    #[arg(long, env = "DISTILLERY_LEADER_ELECTION", default_value_t = false, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "DISTILLERY_LEASE_NAME", default_value = "distillery")]
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own namespace in a pod).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Identity of this replica in leader election (the pod name in a pod).
    #[arg(long, env = "POD_NAME", default_value = "distillery-operator")]
    pub identity: String,
    /// Image the DistillationJob and Benchmark workers run when they ask for no GPU, unless a
    /// resource names its own (built without CUDA).
    #[arg(long, env = "DISTILLERY_WORKER_IMAGE", default_value = "ghcr.io/distillery-dev/distillery-worker:0.1.0")]
    pub worker_image: String,
    /// Image of the CUDA build of the worker: what a DistillationJob that asks for GPUs runs,
    /// unless it names its own.
    #[arg(
        long,
        env = "DISTILLERY_WORKER_CUDA_IMAGE",
        default_value = "ghcr.io/distillery-dev/distillery-worker:0.1.0-cuda"
    )]
    pub worker_cuda_image: String,
    /// Image the ModelDeployment server pods run, unless a resource names its own.
    #[arg(long, env = "DISTILLERY_SERVER_IMAGE", default_value = crate::context::DEFAULT_SERVER_IMAGE)]
    pub server_image: String,
    /// Seconds a ModelDeployment's canary pods may take to become ready at a step before the
    /// canary is rolled back (reason CanaryNotReady).
    #[arg(long, env = "DISTILLERY_CANARY_READY_DEADLINE_SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub canary_ready_deadline_seconds: u64,
    /// Reconciles in flight at once per controller. Higher reconciles a large backlog faster at
    /// the cost of more connections and memory (8: 500 DistillationJobs in ~30 MiB).
    #[arg(long, env = "DISTILLERY_CONCURRENCY", default_value_t = crate::context::DEFAULT_CONCURRENCY,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// ClusterRole bound to the worker ServiceAccount in each namespace with jobs.
    #[arg(long, env = "DISTILLERY_WORKER_CLUSTER_ROLE", default_value = "distillery-worker")]
    pub worker_cluster_role: String,
}
