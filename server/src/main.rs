//! `edgenet-server`: see `edgenet-server --help` and docs/cli.md.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use edgenet_server::store::push;
use edgenet_server::{Cli, ModelAction, ModelCli};

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("model") {
        return model_command();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(1);
        }
    };
    init_logging();
    if cli.insecure_no_auth {
        eprintln!("edgenet-server: WARNING: --insecure-no-auth: requests are not authenticated, every caller may read every node's view");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgenet-server: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgenet-server: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let server = edgenet_server::start(&cli).await?;
    wait_for_stop_signal().await?;
    tracing::info!("stop signal received");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_stop_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Logs to stderr; `EDGENET_LOG` (or `RUST_LOG`) sets the filter.
fn init_logging() {
    let filter = std::env::var("EDGENET_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .init();
}

/// `edgenet-server model push|pull`.
fn model_command() -> ExitCode {
    let cli = match ModelCli::try_parse_from(std::env::args().skip(1)) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(1);
        }
    };
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgenet-server: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run_model_command(cli.action)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgenet-server model: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run_model_command(action: ModelAction) -> anyhow::Result<()> {
    match action {
        ModelAction::Push {
            etcd,
            options,
            file,
        } => {
            let report = push::push(&options.config(&etcd), &file).await?;
            match report.commit_revision {
                None => eprintln!("edgenet-server model push: nothing differed, nothing written"),
                Some(revision) => eprintln!(
                    "edgenet-server model push: {} put, {} deleted in {} transactions, committed at revision {revision}",
                    report.puts, report.deletes, report.transactions
                ),
            }
        }
        ModelAction::Pull { etcd, options } => {
            let model = push::pull(&options.config(&etcd)).await?;
            let mut text = serde_json::to_string_pretty(&model)?;
            text.push('\n');
            use std::io::Write;
            std::io::stdout().write_all(text.as_bytes())?;
        }
    }
    Ok(())
}
