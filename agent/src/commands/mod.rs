//! The commands of `edgenetd` (docs/cli.md), one file each, and what they
//! share. This is the binary's edge, so errors are `anyhow` here: each
//! becomes one line on stderr and an exit code in `main.rs`.

pub mod apply;
pub mod cleanup;
pub mod dry_run;
pub mod gen_model;
pub mod plan;
pub mod run;
pub mod status;

use std::io::Write;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use edgenet_auth::ClockSkew;

use crate::cli::{Cli, Command, DataplaneKind, SourceArgs};
use crate::config::Config;
use crate::dataplane::linux::{LinuxConfig, LinuxDataplane};
use crate::dataplane::{Dataplane, MemoryDataplane};
use crate::ops::metrics::Metrics;
use crate::render::RenderSettings;
use crate::snapshot::{Feedback, Snapshot};
use crate::source::poller::{credentials_from_config, PollAnswer, Poller, PollerConfig};
use crate::source::snapshot_from_model_file;
use crate::state::KernelState;

/// `plan`: changes pending; `status`: drift.
pub const EXIT_DIFFERENCES: u8 = 2;

pub async fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Plan(args) => plan::plan(args).await,
        Command::Apply(args) => apply::apply(args).await,
        Command::Status(args) => status::status(args).await,
        Command::Cleanup(args) => cleanup::cleanup(args).await,
        Command::GenModel(args) => gen_model::gen_model(args),
    }
}

pub fn load_config(source: &SourceArgs) -> Result<Config> {
    Ok(Config::load(source.config.as_deref(), &source.overrides())?)
}

pub fn render_settings(config: &Config) -> RenderSettings {
    RenderSettings {
        route_protocol: config.dataplane.route_protocol,
        ..RenderSettings::default()
    }
}

/// The dataplane `kind` names. `watch_drift`: start the netlink monitor
/// (the daemon needs it; one-shot commands do not).
pub fn open_dataplane(
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

/// One snapshot: from the model file, or an immediate answer (WaitSeconds=0)
/// from the first endpoint that gives one.
pub async fn one_snapshot(source: &SourceArgs, config: &Config, node: &str) -> Result<Snapshot> {
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

/// The kernel's state, or an empty one with a note when it cannot be read.
pub async fn kernel_or_empty(kind: DataplaneKind, config: &Config) -> KernelState {
    let mut dataplane = match open_dataplane(kind, config, false) {
        Ok(dataplane) => dataplane,
        Err(error) => {
            dry_run::note(&format!("{error:#}"));
            return Default::default();
        }
    };
    let (baseline, note) = dry_run::kernel_baseline(dataplane.as_mut()).await;
    if let Some(note) = note {
        dry_run::note(&note);
    }
    baseline
}

/// Writes to stdout; a closed pipe (`| head`) is not an error worth a line.
pub fn write_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
