//! Runs the snapshot source the configuration names, and restarts it with
//! the new configuration on SIGHUP.

use std::net::SocketAddr;
use std::sync::Arc;

use edgenet_auth::ClockSkew;
use tokio::sync::watch;

use crate::cli::SourceArgs;
use crate::config::Config;
use crate::ops::metrics::Metrics;
use crate::snapshot::{Feedback, SnapshotSender};
use crate::source::poller::{credentials_from_config, Poller, PollerConfig};
use crate::source::LocalSource;

/// Runs the snapshot source the configuration names, and restarts it with
/// the new configuration on SIGHUP (an invalid new file is refused and the
/// running source kept). `[dataplane]` changes need a restart.
pub struct SourceSupervisor {
    args: SourceArgs,
    config: Config,
    node: String,
    pub metrics: Arc<Metrics>,
    /// `--metrics-listen`, which outranks the file at every reload too.
    pub metrics_listen_flag: Option<SocketAddr>,
    /// Where each configuration it accepts is published (the metrics
    /// endpoint follows it).
    pub accepted: Option<watch::Sender<Config>>,
}

impl SourceSupervisor {
    pub fn new(args: SourceArgs, config: Config, node: String, metrics: Arc<Metrics>) -> Self {
        SourceSupervisor {
            args,
            config,
            node,
            metrics,
            metrics_listen_flag: None,
            accepted: None,
        }
    }

    pub async fn run(
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
            let loaded = Config::load(self.args.config.as_deref(), &self.args.overrides());
            let loaded = loaded.and_then(|mut c| {
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
