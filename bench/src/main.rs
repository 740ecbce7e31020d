//! `longpoll-load`: holds N parked long polls from N distinct node ids over
//! loopback, triggers a change, and records when each answer arrives.
//!
//! The same generator drives edgenet-server (a model file rewrite is the
//! trigger) and nginx+nchan (HTTP publishes are the trigger), so the figures
//! compare like with like. Minimal HTTP/1.1 on raw sockets keeps the client's
//! own cost per connection small and identical for both peers.

mod http;
mod peer;
mod stats;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "longpoll-load",
    about = "Long-poll fan-out load generator (edgenet-server vs nginx+nchan)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a synthetic cloud model (edgenet_model::synthetic) as JSON.
    GenModel {
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        #[arg(long, default_value_t = 20_000)]
        instances: usize,
        #[arg(long, default_value_t = 2_000)]
        groups: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// Drive edgenet-server (started with --insecure-no-auth --model FILE).
    Edgenet {
        #[command(flatten)]
        common: peer::Common,
        /// The model file the server watches; rewritten to trigger changes.
        #[arg(long)]
        model: PathBuf,
        /// Read every node's id first (one connection, one by one) and start
        /// the polls with it, so they park at once and no burst of first
        /// answers inflates the server's RSS high-water mark.
        #[arg(long)]
        held_ids: bool,
    },
    /// Drive nginx with nchan (see bench/README.md for its config).
    Nchan {
        #[command(flatten)]
        common: peer::Common,
        /// Bytes per published message (use edgenet's mean answer size).
        #[arg(long, default_value_t = 4096)]
        payload_bytes: usize,
        /// Every subscriber on one shared channel and one publish per change,
        /// instead of one channel per node and one publish per channel.
        #[arg(long)]
        broadcast: bool,
        /// Concurrent publisher connections (per-channel mode).
        #[arg(long, default_value_t = 8)]
        publishers: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::GenModel {
            nodes,
            instances,
            groups,
            out,
        } => {
            let model = edgenet_model::synthetic::generate(edgenet_model::synthetic::Shape {
                nodes,
                instances,
                groups,
                seed: 1,
            });
            std::fs::write(&out, serde_json::to_vec(&model)?)
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "wrote {} ({nodes} nodes, {instances} instances, {groups} groups)",
                out.display()
            );
            Ok(())
        }
        Cmd::Edgenet {
            common,
            model,
            held_ids,
        } => rt.block_on(peer::run_edgenet(common, model, held_ids)),
        Cmd::Nchan {
            common,
            payload_bytes,
            broadcast,
            publishers,
        } => rt.block_on(peer::run_nchan(
            common,
            payload_bytes,
            broadcast,
            publishers,
        )),
    }
}
