//! `edgenetd`: the binary edge. Parses the command line, sets up logging,
//! wires the sources, the reconcile loop and the dataplane, and turns every
//! error into one line on stderr with CLI.md's exit codes.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use clap::Parser;
use edgenet_agent::cli::{
    ApplyArgs, Cli, Command, DataplaneKind, GenModelArgs, PlanArgs, RunArgs, SourceArgs, StatusArgs,
};
use edgenet_agent::config::{one_line, Config};
use edgenet_agent::dataplane::linux::{LinuxConfig, LinuxDataplane};
use edgenet_agent::dataplane::{Dataplane, MemoryDataplane};
use edgenet_agent::desired::AddressOwnership;
use edgenet_agent::diff::diff;
use edgenet_agent::dryrun::{self, OutputFormat};
use edgenet_agent::metrics::{self, Metrics};
use edgenet_agent::poller::{credentials_from_config, Feedback, PollAnswer, Poller, PollerConfig};
use edgenet_agent::reconcile::{apply_once, ReconcileError, ReconcileSettings, Reconciler};
use edgenet_agent::render::RenderSettings;
use edgenet_agent::source::{snapshot_from_model_file, LocalSource, Snapshot, SnapshotSender};
use edgenet_auth::ClockSkew;
use tokio::sync::watch;

/// `plan`: changes pending; `status`: drift.
const EXIT_DIFFERENCES: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    init_logging();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            // Our errors carry their cause in their message already.
            eprintln!("edgenetd: {}", one_line(&error.to_string()));
            ExitCode::from(1)
        }
    }
}

/// `--help`/`--version` print and succeed; anything else is a bad flag:
/// one line, exit 1 (CLI.md), not clap's usual 2.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        };
    }
    let text = error.render().to_string();
    let first = text
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("error: invalid command line");
    eprintln!(
        "edgenetd: {} (see edgenetd --help)",
        first.trim_start_matches("error: ")
    );
    ExitCode::from(1)
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("EDGENET_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

async fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Run(args) => run(args).await,
        Command::Plan(args) => plan(args).await,
        Command::Apply(args) => apply(args).await,
        Command::Status(args) => status(args).await,
        Command::GenModel(args) => gen_model(args),
    }
}

fn load_config(source: &SourceArgs) -> Result<Config> {
    Ok(Config::load(source.config.as_deref(), &source.overrides())?)
}

fn render_settings(config: &Config) -> RenderSettings {
    RenderSettings {
        route_protocol: config.dataplane.route_protocol,
        ..RenderSettings::default()
    }
}

/// The dataplane `kind` names. `watch_drift`: start the netlink monitor
/// (the daemon needs it; one-shot commands do not).
fn open_dataplane(
    kind: DataplaneKind,
    config: &Config,
    watch_drift: bool,
) -> Result<Option<Box<dyn Dataplane>>> {
    match kind {
        DataplaneKind::None => Ok(None),
        DataplaneKind::Memory => Ok(Some(Box::new(MemoryDataplane::new()))),
        DataplaneKind::Kernel => {
            let linux = LinuxConfig {
                route_protocol: config.dataplane.route_protocol,
                manage_sysctls: config.dataplane.manage_sysctls,
                nft_fast_path: config.dataplane.nft_fast_path,
                monitor: watch_drift,
                ..LinuxConfig::default()
            };
            Ok(Some(Box::new(LinuxDataplane::new(linux)?)))
        }
    }
}

async fn run(args: RunArgs) -> Result<u8> {
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
    let result = dryrun::run_dry(
        baseline,
        snapshot_rx,
        wiring.shutdown,
        render_settings(config),
        args.output,
        args.once,
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
    if let Some(period) = edgenet_agent::notify::watchdog_period() {
        tokio::spawn(edgenet_agent::notify::watchdog(period));
    }
    let result = reconciler.run(snapshot_rx, wiring.shutdown).await;
    source_task.abort();
    edgenet_agent::notify::SystemdNotifier::new().stopping();
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

/// Runs the snapshot source the configuration names, and restarts it with
/// the new configuration on SIGHUP (an invalid new file is refused and the
/// running source kept). `[dataplane]` changes need a restart.
struct SourceSupervisor {
    args: SourceArgs,
    config: Config,
    node: String,
    metrics: Arc<Metrics>,
    /// `--metrics-listen`, which outranks the file at every reload too.
    metrics_listen_flag: Option<SocketAddr>,
    /// Where each configuration it accepts is published (the metrics
    /// endpoint follows it).
    accepted: Option<watch::Sender<Config>>,
}

impl SourceSupervisor {
    fn new(args: SourceArgs, config: Config, node: String, metrics: Arc<Metrics>) -> Self {
        SourceSupervisor {
            args,
            config,
            node,
            metrics,
            metrics_listen_flag: None,
            accepted: None,
        }
    }

    async fn run(
        mut self,
        mut held: Option<String>,
        snapshots: SnapshotSender,
        feedback: watch::Receiver<Feedback>,
        mut reload: watch::Receiver<u64>,
    ) {
        loop {
            let task = self.spawn(held.clone(), snapshots.clone(), feedback.clone());
            if !self.wait_for_new_config(&mut reload).await {
                let _ = task.await;
                return;
            }
            task.abort();
            held = snapshots
                .borrow()
                .as_ref()
                .map(|s| s.state_id.clone())
                .or(held);
        }
    }

    /// Waits for a SIGHUP that brings a valid, different configuration;
    /// `false` when no more reloads can come.
    async fn wait_for_new_config(&mut self, reload: &mut watch::Receiver<u64>) -> bool {
        loop {
            if reload.changed().await.is_err() {
                return false;
            }
            let loaded = load_config(&self.args).and_then(|mut c| {
                c.require_node()?;
                if let Some(listen) = self.metrics_listen_flag {
                    c.metrics.listen = Some(listen);
                }
                Ok(c)
            });
            match loaded {
                Ok(config) if config == self.config => tracing::info!("configuration unchanged"),
                Ok(config) => {
                    if config.dataplane != self.config.dataplane {
                        tracing::warn!("[dataplane] changes take effect at the next restart");
                    }
                    if let Some(node) = &config.node_id {
                        self.node = node.clone();
                    }
                    if let Some(accepted) = &self.accepted {
                        accepted.send_replace(config.clone());
                    }
                    self.config = config;
                    tracing::info!("configuration reloaded; restarting the source");
                    return true;
                }
                Err(error) => {
                    tracing::error!(%error, "new configuration refused; keeping the old one")
                }
            }
        }
    }

    fn spawn(
        &self,
        held: Option<String>,
        snapshots: SnapshotSender,
        feedback: watch::Receiver<Feedback>,
    ) -> tokio::task::JoinHandle<()> {
        if let Some(model) = &self.args.model {
            let source = LocalSource::new(model.clone(), self.node.clone());
            return tokio::spawn(async move {
                if let Err(error) = source.run(snapshots).await {
                    tracing::error!(%error, "model file source stopped; keeping the last view");
                }
            });
        }
        let skew = Arc::new(ClockSkew::new());
        let poller = credentials_from_config(&self.config, &self.node, skew.clone())
            .and_then(|creds| Poller::new(self.poller_config(), creds, skew, self.metrics.clone()));
        tokio::spawn(async move {
            match poller {
                Ok(poller) => poller.run(held, snapshots, feedback).await,
                Err(error) => tracing::error!(%error, "cannot poll; keeping the applied state"),
            }
        })
    }

    fn poller_config(&self) -> PollerConfig {
        let mut config = PollerConfig::new(self.node.clone(), self.config.endpoints.clone());
        config.region = self.config.region.clone();
        config.wait_seconds = self.config.wait_seconds;
        config.ca_file = self.config.tls.ca_file.clone();
        config
    }
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

/// One snapshot: from the model file, or an immediate answer (WaitSeconds=0)
/// from the first endpoint that gives one.
async fn one_snapshot(source: &SourceArgs, config: &Config, node: &str) -> Result<Snapshot> {
    if let Some(model) = &source.model {
        return Ok(snapshot_from_model_file(model, node)?);
    }
    if config.endpoints.is_empty() {
        bail!("nothing to plan from: give --model FILE, --endpoint URL, or endpoints in the config file");
    }
    let skew = Arc::new(ClockSkew::new());
    let credentials = credentials_from_config(config, node, skew.clone())?;
    let mut poller_config = PollerConfig::new(node, config.endpoints.clone());
    poller_config.region = config.region.clone();
    poller_config.wait_seconds = 0;
    poller_config.ca_file = config.tls.ca_file.clone();
    let poller = Poller::new(poller_config, credentials, skew, Metrics::new())?;
    let mut last_error = None;
    for endpoint in &config.endpoints {
        match poller.poll_once(endpoint, None, &Feedback::default()).await {
            Ok(PollAnswer::View(snapshot)) => return Ok(snapshot),
            Ok(PollAnswer::NotModified) => {
                last_error = Some(anyhow!(
                    "{endpoint}: answered 304 to a poll without StateId"
                ))
            }
            Err(error) => last_error = Some(error.into()),
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow!("no endpoint answered")))
}

async fn plan(args: PlanArgs) -> Result<u8> {
    let config = load_config(&args.source)?;
    let node = config.require_node()?.to_string();
    let snapshot = one_snapshot(&args.source, &config, &node).await?;
    let baseline = match &args.from_model {
        Some(from) => {
            let from = snapshot_from_model_file(from, &node)?;
            dryrun::desired_state(&from, &render_settings(&config))?
        }
        None => kernel_or_empty(args.source.dataplane, &config).await,
    };
    let desired = dryrun::desired_state(&snapshot, &render_settings(&config))?;
    let changes = diff(&baseline, &desired);
    let text = dryrun::format_diff(
        &changes,
        &node,
        baseline.state_id.as_deref(),
        &snapshot.state_id,
        args.output,
    );
    write_stdout(&text)?;
    Ok(if changes.is_empty() {
        0
    } else {
        EXIT_DIFFERENCES
    })
}

/// The kernel's state, or an empty one with a note when it cannot be read.
async fn kernel_or_empty(
    kind: DataplaneKind,
    config: &Config,
) -> edgenet_agent::desired::KernelState {
    let mut dataplane = match open_dataplane(kind, config, false) {
        Ok(dataplane) => dataplane,
        Err(error) => {
            dryrun::note(&format!("{error:#}"));
            return Default::default();
        }
    };
    let (baseline, note) = dryrun::kernel_baseline(dataplane.as_mut()).await;
    if let Some(note) = note {
        dryrun::note(&note);
    }
    baseline
}

async fn apply(args: ApplyArgs) -> Result<u8> {
    let Some(model) = args.source.model.as_deref() else {
        bail!("apply needs --model FILE");
    };
    let config = load_config(&args.source)?;
    let node = config.require_node()?.to_string();
    let snapshot = snapshot_from_model_file(model, &node)?;
    if snapshot.view.is_none() {
        bail!(
            "the view of {node} in {} is unusable: {}",
            model.display(),
            snapshot.left_out.join("; ")
        );
    }
    let mut dataplane = open_dataplane(args.source.dataplane, &config, false)?
        .ok_or_else(|| anyhow!("--dataplane none cannot apply"))?;
    let text = apply_once(dataplane.as_mut(), &snapshot, &render_settings(&config)).await?;
    for left_out in &snapshot.left_out {
        tracing::warn!("left out: {left_out}");
    }
    write_stdout(&text)?;
    Ok(0)
}

#[derive(serde::Serialize)]
struct StatusReport {
    node: Option<String>,
    applied_state_id: Option<String>,
    objects: std::collections::BTreeMap<&'static str, usize>,
    drift: Vec<String>,
}

async fn status(args: StatusArgs) -> Result<u8> {
    let config = load_config(&args.source)?;
    let mut dataplane = open_dataplane(args.source.dataplane, &config, false)?
        .ok_or_else(|| anyhow!("status needs a dataplane to read"))?;
    let kernel = dataplane.read().await?;
    let check = match (&kernel.state_id, config.node_id.as_deref()) {
        (Some(applied), Some(node)) if has_source(&args.source, &config) => {
            Some(check_against_view(&args.source, &config, node, applied, &kernel).await?)
        }
        (Some(_), _) => {
            eprintln!("note: drift not computed: it needs the node id and the view (--model FILE or an endpoint)");
            None
        }
        (None, _) => None,
    };
    let mut objects = kernel.object_counts();
    if let Some(ownership) = check.as_ref().and_then(|c| c.ownership.as_ref()) {
        // The kernel read returns every address of the host; the view
        // says which of them are ours.
        let ours = kernel.addresses.iter().filter(|a| ownership.owns(a));
        objects.insert("address", ours.count());
    }
    let report = StatusReport {
        node: config.node_id.clone(),
        applied_state_id: kernel.state_id.clone(),
        objects,
        drift: check.map(|c| c.drift).unwrap_or_default(),
    };
    let text = match args.output {
        OutputFormat::Json => serde_json::to_string(&report)? + "\n",
        OutputFormat::Text => status_text(&report),
    };
    write_stdout(&text)?;
    Ok(if report.drift.is_empty() {
        0
    } else {
        EXIT_DIFFERENCES
    })
}

fn has_source(source: &SourceArgs, config: &Config) -> bool {
    source.model.is_some() || !config.endpoints.is_empty()
}

/// What the current view says of the kernel.
struct ViewCheck {
    /// Objects that differ from the view, when the view is the applied
    /// one (otherwise the node is behind, not drifted).
    drift: Vec<String>,
    /// Which addresses are ours (`None` when the view cannot be rendered).
    ownership: Option<AddressOwnership>,
}

async fn check_against_view(
    source: &SourceArgs,
    config: &Config,
    node: &str,
    applied: &str,
    kernel: &edgenet_agent::desired::KernelState,
) -> Result<ViewCheck> {
    let snapshot = one_snapshot(source, config, node).await?;
    let planned = dryrun::desired_state(&snapshot, &render_settings(config));
    if snapshot.state_id != applied {
        eprintln!(
            "note: applied {applied}, current view is {}: drift not computed",
            snapshot.state_id
        );
        return Ok(ViewCheck {
            drift: Vec::new(),
            ownership: planned.ok().map(|desired| desired.ownership),
        });
    }
    let desired = planned?;
    let drift = diff(kernel, &desired)
        .sorted()
        .iter()
        .map(|c| c.named_object())
        .collect();
    Ok(ViewCheck {
        drift,
        ownership: Some(desired.ownership),
    })
}

fn status_text(report: &StatusReport) -> String {
    let mut text = format!(
        "node: {}\napplied state: {}\n",
        report.node.as_deref().unwrap_or("(not configured)"),
        report.applied_state_id.as_deref().unwrap_or("none")
    );
    for (kind, n) in &report.objects {
        text.push_str(&format!("  {kind}: {n}\n"));
    }
    if report.drift.is_empty() {
        text.push_str("in sync\n");
    } else {
        text.push_str(&format!("drift: {} objects\n", report.drift.len()));
        for object in &report.drift {
            text.push_str(&format!("  {object}\n"));
        }
    }
    text
}

fn gen_model(args: GenModelArgs) -> Result<u8> {
    use edgenet_model::synthetic::{generate, Shape};
    let model = generate(Shape {
        nodes: args.nodes,
        instances: args.instances,
        groups: args.groups,
        seed: args.seed,
    });
    let mut text = serde_json::to_string_pretty(&model)?;
    text.push('\n');
    write_stdout(&text)?;
    Ok(0)
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a line.
fn write_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
