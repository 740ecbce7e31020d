//! The command line (docs/cli.md). Flags override the configuration file; the
//! non-secret ones can also come from `EDGENET_*` variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Overrides;

/// How diffs and reports are printed (docs/cli.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

/// edgenetd: the node agent of edgenet.
///
/// It long-polls the cloud's DescribeNetworkModel endpoint for this node's
/// view of the network (or, with --model FILE, watches a local cloud-model
/// file instead), renders the routes, addresses and nftables rules that view
/// asks for, diffs them against the kernel and applies the difference.
///
/// Try it without root or a server:
///   edgenetd run --dry-run --model examples/cloud.json --node nc-1 --once
#[derive(Debug, Parser)]
#[command(name = "edgenetd", version, about, long_about, verbatim_doc_comment)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log filter: a level (error, warn, info, debug, trace) or a tracing
    /// filter such as info,edgenet_agent=debug [default: EDGENET_LOG, then
    /// RUST_LOG, then info].
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: follow the view and keep the kernel in line with it.
    ///
    /// With --dry-run nothing is applied: the first snapshot is diffed
    /// against the kernel state (or an empty state, with a note, when the
    /// kernel cannot be read), then each snapshot against the previous one.
    /// SIGTERM stops it and leaves the kernel as it is; SIGHUP reloads the
    /// configuration file.
    Run(RunArgs),
    /// One snapshot, diffed against the kernel; nothing applied.
    ///
    /// Exit status: 0 no changes, 2 changes, 1 error.
    Plan(PlanArgs),
    /// Apply one snapshot from a model file, then exit (0 ok, 1 error).
    Apply(ApplyArgs),
    /// What is applied: state id, object counts, drift and the sysctls
    /// forwarding needs.
    ///
    /// Exit status: 0 in sync, 2 drift (or IPv4 forwarding or
    /// bridge-nf-call-iptables off), 1 error or nothing applied. Drift is
    /// computed when the view of the applied state can be had (--model FILE
    /// or an endpoint).
    Status(StatusArgs),
    /// Remove everything of ours from the kernel: both nftables tables,
    /// the routes of our protocol and the addresses we own (which needs the
    /// view: --model FILE or an endpoint), nothing else.
    ///
    /// Stop the daemon first, or it puts them back. Exit 0 done, 1 error.
    Cleanup(CleanupArgs),
    /// Print a synthetic cloud model (for benchmarks and load tests).
    GenModel(GenModelArgs),
}

/// Where the configuration and the view come from.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Configuration file [default: /etc/edgenet/edgenetd.toml when present].
    #[arg(long, value_name = "FILE", env = "EDGENET_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (overrides node_id).
    #[arg(long = "node", value_name = "ID", env = "EDGENET_NODE_ID")]
    pub node: Option<String>,
    /// Describe endpoint URL, tried in turn; repeat for several (overrides endpoints).
    #[arg(long = "endpoint", value_name = "URL")]
    pub endpoints: Vec<String>,
    /// Watch this local cloud-model file instead of polling a server.
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Signature region (overrides region).
    #[arg(long, value_name = "REGION", env = "EDGENET_REGION")]
    pub region: Option<String>,
    /// Longest time the server may hold a poll, in seconds (overrides wait_seconds).
    #[arg(long, value_name = "SECONDS", env = "EDGENET_WAIT_SECONDS")]
    pub wait_seconds: Option<u32>,
    /// Which dataplane to drive: the kernel, an in-memory one (for tests and
    /// benchmarks: touches nothing on the host) or none (dry runs only,
    /// diffing against an empty state). A test knob, so not in `--help`;
    /// docs/cli.md describes it.
    #[arg(long, value_enum, default_value_t = DataplaneKind::Kernel, env = "EDGENET_DATAPLANE", hide = true)]
    pub dataplane: DataplaneKind,
}

impl SourceArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            node_id: self.node.clone(),
            endpoints: self.endpoints.clone(),
            region: self.region.clone(),
            wait_seconds: self.wait_seconds,
            metrics_listen: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DataplaneKind {
    Kernel,
    Memory,
    None,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Apply nothing; print each diff instead.
    #[arg(long)]
    pub dry_run: bool,
    /// Exit after the first snapshot is handled.
    #[arg(long)]
    pub once: bool,
    /// Diff format for --dry-run.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Serve Prometheus metrics here (overrides [metrics] listen).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Diff against the state this other model file renders to, instead of
    /// the kernel: what a model edit would change on this node.
    #[arg(long, value_name = "FILE")]
    pub from_model: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub source: SourceArgs,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Remove nothing; print what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
pub struct GenModelArgs {
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    #[arg(long, default_value_t = 10)]
    pub instances: usize,
    #[arg(long, default_value_t = 4)]
    pub groups: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_cli_md_forms() {
        let cli = Cli::try_parse_from([
            "edgenetd",
            "run",
            "--dry-run",
            "--model",
            "m.json",
            "--node",
            "nc-1",
            "--once",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!()
        };
        assert!(run.dry_run && run.once);
        let cli = Cli::try_parse_from([
            "edgenetd",
            "plan",
            "--endpoint",
            "http://a/",
            "--endpoint",
            "http://b/",
            "--output",
            "json",
        ])
        .unwrap();
        let Command::Plan(plan) = cli.command else {
            panic!()
        };
        assert_eq!(plan.source.endpoints.len(), 2);
        assert_eq!(plan.output, OutputFormat::Json);
        assert!(Cli::try_parse_from(["edgenetd", "status", "--output", "json"]).is_ok());
        assert!(Cli::try_parse_from(["edgenetd", "plan", "--bogus"]).is_err());
    }
}
