//! `edgenetd run`: the daemon (or, with `--dry-run`, a rolling plan).

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use edgenet_auth::ClockSkew;
use tokio::sync::watch;

use super::{kernel_or_empty, load_config, open_dataplane, render_settings};
use crate::cli::{DataplaneKind, RunArgs, SourceArgs};
use crate::commands::dry_run;
use crate::config::Config;
use crate::ops::metrics::{self, Metrics};
use crate::ops::notify;
use crate::reconcile::{ReconcileError, ReconcileSettings, Reconciler};
use crate::snapshot::Feedback;
use crate::source::poller::credentials_from_config;
use crate::source::snapshot_from_model_file;
use crate::source::supervisor::SourceSupervisor;

pub async fn run(args: RunArgs) -> Result<u8> {
    let mut config = load_config(&args.source)?;
    if let Some(listen) = args.metrics_listen {
        config.metrics.listen = Some(listen);
    }
    let node = config.require_node()?.to_string();
    check_source(&args.source, &config)?;
    let metrics = Metrics::new();
    let metrics_server = match config.metrics.listen {
        Some(addr) => Some(
            metrics::serve(addr, metrics.clone())
                .await
                .map_err(|e| anyhow!("cannot serve metrics on {addr}: {e}"))?,
        ),
        None => None,
    };
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (reload_tx, reload) = watch::channel(0u64);
    tokio::spawn(handle_signals(shutdown_tx, reload_tx));
    let (accepted_tx, accepted) = watch::channel(config.clone());
    tokio::spawn(follow_metrics_config(
        accepted,
        metrics_server,
        metrics.clone(),
    ));
    let mut sources =
        SourceSupervisor::new(args.source.clone(), config.clone(), node.clone(), metrics);
    sources.metrics_listen_flag = args.metrics_listen;
    sources.accepted = Some(accepted_tx);
    let wiring = Wiring {
        sources,
        shutdown,
        reload,
    };
    if args.dry_run {
        run_dry(&args, &config, wiring).await
    } else {
        run_daemon(&args, &config, &node, wiring).await
    }
}

/// What `run` sets up for both of its modes.
struct Wiring {
    sources: SourceSupervisor,
    shutdown: watch::Receiver<bool>,
    reload: watch::Receiver<u64>,
}

async fn run_dry(args: &RunArgs, config: &Config, wiring: Wiring) -> Result<u8> {
    let baseline = kernel_or_empty(args.source.dataplane, config).await;
    // Dry runs apply nothing, so they report nothing applied.
    let (_feedback_tx, feedback_rx) = watch::channel(Feedback::default());
    let (snapshot_tx, snapshot_rx) = watch::channel(None);
    let source_task = tokio::spawn(wiring.sources.run(
        None,
        snapshot_tx,
        feedback_rx,
        wiring.reload,
    ));
    let options = dry_run::DryRunOptions {
        settings: render_settings(config),
        format: args.output,
        once: args.once,
        check_devices: args.source.dataplane == DataplaneKind::Kernel,
    };
    let result = dry_run::run_dry(
        baseline,
        snapshot_rx,
        wiring.shutdown,
        options,
        &mut std::io::stdout(),
    )
    .await;
    source_task.abort();
    result?;
    Ok(0)
}

async fn run_daemon(args: &RunArgs, config: &Config, node: &str, wiring: Wiring) -> Result<u8> {
    let dataplane = open_dataplane(args.source.dataplane, config, true)?
        .ok_or_else(|| anyhow!("--dataplane none can only plan: use --dry-run"))?;
    let mut settings = ReconcileSettings::new(node);
    settings.render = render_settings(config);
    settings.resync = config.resync_period();
    settings.once = args.once;
    let metrics = wiring.sources.metrics.clone();
    let (mut reconciler, feedback_rx) = Reconciler::new(settings, dataplane, metrics);
    // The first poll still asks for the view (StateId empty): the view is
    // needed to check the kernel against it (drift while we were down) and
    // for later resyncs. The diff of an unchanged kernel is empty, so a
    // restart changes nothing; the server learns the applied id at once.
    if let Some(held) = reconciler.read_applied_state_id().await.map_err(fatal)? {
        tracing::info!(state_id = %held, "kernel holds a state applied earlier");
    }
    let (snapshot_tx, snapshot_rx) = watch::channel(None);
    let source_task = tokio::spawn(wiring.sources.run(
        None,
        snapshot_tx,
        feedback_rx,
        wiring.reload,
    ));
    if let Some(period) = notify::watchdog_period() {
        tokio::spawn(notify::watchdog(period));
    }
    let result = reconciler.run(snapshot_rx, wiring.shutdown).await;
    source_task.abort();
    notify::SystemdNotifier::new().stopping();
    result.map_err(fatal)?;
    tracing::info!("stopped; kernel state left as it is");
    Ok(0)
}

fn fatal(error: ReconcileError) -> anyhow::Error {
    anyhow!(error)
}

/// A model file or at least one endpoint: say so at start, not in a loop.
fn check_source(source: &SourceArgs, config: &Config) -> Result<()> {
    if let Some(model) = &source.model {
        // Fails loudly now on a missing or invalid file.
        snapshot_from_model_file(model, config.require_node()?)?;
    } else if config.endpoints.is_empty() {
        bail!(
            "nothing to follow: give --model FILE, --endpoint URL, or endpoints in the config file"
        );
    } else {
        // A missing or too-open credentials file is a start-up error, not
        // something to retry forever.
        credentials_from_config(config, config.require_node()?, Arc::new(ClockSkew::new()))?;
    }
    Ok(())
}

/// SIGTERM/SIGINT stop; SIGHUP asks for a configuration reload.
async fn handle_signals(shutdown: watch::Sender<bool>, reload: watch::Sender<u64>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                reload.send_modify(|n| *n += 1);
            }
        }
    }
    tracing::info!("stopping");
    shutdown.send_replace(true);
}

/// Moves the metrics endpoint when a reloaded configuration moves
/// `[metrics] listen`. A new address that cannot be bound is logged and
/// the old endpoint kept.
async fn follow_metrics_config(
    mut accepted: watch::Receiver<Config>,
    mut server: Option<metrics::MetricsServer>,
    metrics: Arc<Metrics>,
) {
    let mut serving = accepted.borrow().metrics.listen;
    while accepted.changed().await.is_ok() {
        let wanted = accepted.borrow_and_update().metrics.listen;
        if wanted == serving {
            continue;
        }
        match wanted {
            None => {
                server = None;
                tracing::info!("metrics endpoint closed");
            }
            Some(addr) => match metrics::serve(addr, metrics.clone()).await {
                Ok(new) => server = Some(new),
                Err(error) => {
                    tracing::error!(%addr, %error, "cannot serve metrics there; keeping the old endpoint");
                    continue;
                }
            },
        }
        serving = wanted;
    }
    drop(server);
}
