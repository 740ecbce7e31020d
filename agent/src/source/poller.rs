//! The long-poll client of `DescribeNetworkModel` (docs/protocol.md, "The
//! client").
//!
//! One request in flight at a time. Views are published into the snapshot
//! channel; nothing a server sends (errors, garbage, silence) ever reaches
//! the reconcile loop except a view that parsed, whose ETag and ids match.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use edgenet_auth::{query_get_request, CachingProvider, ClockSkew, Credentials, Signer};

use super::answer::{check_view, server_error};
use crate::ops::metrics::Metrics;
use crate::snapshot::{Feedback, FeedbackReceiver, Snapshot, SnapshotSender};

use edgenet_auth::body::{error_chain, printable, read_capped, BodyError};
use edgenet_model::backoff::Backoff;
use edgenet_model::protocol::{
    error_code, is_valid_state_id, state_id_problem, MIN_QUIET_POLL, RETRY_BACKOFF_MAX,
    RETRY_BACKOFF_MIN,
};
pub use edgenet_model::protocol::{truncate_utf8, API_VERSION, MAX_APPLY_ERROR_BYTES};
/// The largest answer read: far above any real view (10,000 instances is a
/// few MiB), small enough that a hostile endpoint cannot exhaust memory.
pub const DEFAULT_MAX_BODY: usize = 64 << 20;

#[derive(Debug, Clone)]
pub struct PollerConfig {
    pub node: String,
    pub endpoints: Vec<String>,
    pub region: String,
    pub wait_seconds: u32,
    /// Added to the poll timeout for clock and network slack.
    pub skew_allowance: Duration,
    pub max_body: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Wait after `InvalidNodeId.NotFound` (the node may be added later).
    pub not_found_retry: Duration,
    pub ca_file: Option<PathBuf>,
}

impl PollerConfig {
    pub fn new(node: impl Into<String>, endpoints: Vec<String>) -> Self {
        PollerConfig {
            node: node.into(),
            endpoints,
            region: crate::config::DEFAULT_REGION.into(),
            wait_seconds: crate::config::DEFAULT_WAIT_SECONDS,
            skew_allowance: Duration::from_secs(10),
            max_body: DEFAULT_MAX_BODY,
            backoff_min: RETRY_BACKOFF_MIN,
            backoff_max: RETRY_BACKOFF_MAX,
            not_found_retry: Duration::from_secs(60),
            ca_file: None,
        }
    }

    /// WaitSeconds × 17/16 (the server's jitter) + the skew allowance.
    pub fn poll_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.wait_seconds) * 1000 * 17 / 16) + self.skew_allowance
    }
}

/// Why a poll did not yield a view.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("{endpoint}: request failed: {message}")]
    Transport { endpoint: String, message: String },
    #[error("{endpoint}: HTTP {status} {code}: {message}")]
    Server {
        endpoint: String,
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{endpoint}: answer larger than {limit} bytes, abandoned")]
    TooLarge { endpoint: String, limit: usize },
    #[error("{endpoint}: unusable answer: {message}")]
    BadAnswer { endpoint: String, message: String },
    #[error("{endpoint}: HTTP {status} redirect to {location} refused: a describe endpoint does not redirect")]
    Redirected {
        endpoint: String,
        status: u16,
        location: String,
    },
    #[error("cannot sign the poll: {0}")]
    Signing(String),
    #[error("no credentials: {0}")]
    Credentials(String),
    #[error("{0}")]
    Config(String),
}

impl PollError {
    pub(super) fn code(&self) -> Option<&str> {
        match self {
            PollError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The outcome label in `edgenetd_polls_total`.
    pub(super) fn outcome(&self) -> &'static str {
        match self {
            PollError::Transport { .. } => "transport_error",
            PollError::Server { code, .. } if is_auth_rejection(code) => "auth_error",
            PollError::Server { code, .. } if code == NOT_FOUND => "node_not_found",
            PollError::Server { .. } => "server_error",
            PollError::TooLarge { .. }
            | PollError::BadAnswer { .. }
            | PollError::Redirected { .. } => "bad_answer",
            PollError::Signing(_) | PollError::Credentials(_) => "credentials_error",
            PollError::Config(_) => "config_error",
        }
    }
}

const NOT_FOUND: &str = error_code::NODE_NOT_FOUND;

fn is_auth_rejection(code: &str) -> bool {
    code == error_code::EXPIRED_TOKEN || code == error_code::AUTH_FAILURE
}

/// What one successful poll brought.
#[derive(Debug)]
pub enum PollAnswer {
    NotModified,
    View(Snapshot),
}

/// The long-poll client.
pub struct Poller {
    config: PollerConfig,
    client: reqwest::Client,
    credentials: Option<Arc<CachingProvider>>,
    signer: Signer,
    skew: Arc<ClockSkew>,
    metrics: Arc<Metrics>,
}

impl Poller {
    /// `credentials: None` polls unsigned (servers run with
    /// `--insecure-no-auth`); that is warned about, once, here.
    pub fn new(
        config: PollerConfig,
        credentials: Option<Arc<CachingProvider>>,
        skew: Arc<ClockSkew>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PollError> {
        if config.endpoints.is_empty() {
            return Err(PollError::Config("no endpoints configured".into()));
        }
        if credentials.is_none() {
            tracing::warn!("no [credentials] configured: polling unsigned (only servers started with --insecure-no-auth accept that)");
        }
        let client = build_client(&config)?;
        let signer = Signer::new(config.region.clone(), "ec2").with_clock_skew(skew.clone());
        Ok(Poller {
            config,
            client,
            credentials,
            signer,
            skew,
            metrics,
        })
    }

    /// Polls until the snapshot receiver is gone. `held` is the state id
    /// the node already holds (read from the kernel at start), so a restart
    /// with an unchanged view is not sent that view again.
    pub async fn run(
        self,
        held: Option<String>,
        snapshots: SnapshotSender,
        mut feedback: FeedbackReceiver,
    ) {
        let mut state_id = held.filter(|id| {
            let problem = state_id_problem(id);
            if let Some(problem) = &problem {
                tracing::warn!(
                    "the kernel's state id record is unusable, polling for a full view: {problem}"
                );
            }
            problem.is_none()
        });
        let mut endpoint = 0usize;
        let mut backoff = Backoff::new(self.config.backoff_min, self.config.backoff_max);
        let mut auth_retried = false;
        while !snapshots.is_closed() {
            let sent_feedback = feedback.borrow_and_update().clone();
            let url = &self.config.endpoints[endpoint % self.config.endpoints.len()];
            let started = Instant::now();
            let result = tokio::select! {
                result = self.poll_once(url, state_id.as_deref(), &sent_feedback) => result,
                // New feedback while parked: re-poll now so the server learns
                // it without waiting for the hold to end.
                changed = feedback.changed() => {
                    if changed.is_err() { return; }
                    continue;
                }
            };
            let quick = started.elapsed() < self.quiet_floor();
            match result {
                Ok(PollAnswer::View(snapshot)) if state_id.as_ref() != Some(&snapshot.state_id) => {
                    self.metrics.poll("view");
                    self.metrics.set_current_state_id(&snapshot.state_id);
                    backoff.reset();
                    auth_retried = false;
                    tracing::info!(endpoint = %url, state_id = %snapshot.state_id, "new view");
                    state_id = Some(snapshot.state_id.clone());
                    snapshots.send_replace(Some(Arc::new(snapshot)));
                }
                // A 304, or a 200 with the id already held: nothing changed.
                Ok(answer) => {
                    self.metrics.poll(match answer {
                        PollAnswer::NotModified => "not_modified",
                        PollAnswer::View(_) => "unchanged",
                    });
                    if quick {
                        let delay = backoff.next_delay();
                        tracing::warn!(endpoint = %url, retry_in = ?delay, "answered at once without a change, where a poll is held: backing off as after a failure");
                        endpoint += 1;
                        tokio::time::sleep(delay).await;
                    } else {
                        backoff.reset();
                        auth_retried = false;
                    }
                }
                Err(error) => {
                    self.metrics.poll(error.outcome());
                    let delay = self
                        .after_error(&error, &mut backoff, &mut auth_retried)
                        .await;
                    if !matches!(error.code(), Some(code) if is_auth_rejection(code)) {
                        // Another endpoint may be alive; the failed one is
                        // tried again after the others.
                        endpoint += 1;
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// A poll answered sooner than this without a change is a failure for
    /// the backoff (docs/protocol.md): a server holds such a poll for
    /// `WaitSeconds`, so only a misbehaving one answers it at once. A
    /// `WaitSeconds` of 0 asks for an answer at once, and gets no floor.
    fn quiet_floor(&self) -> Duration {
        MIN_QUIET_POLL.min(Duration::from_secs(self.config.wait_seconds.into()))
    }

    /// Logs, refreshes credentials when asked to, and says how long to wait.
    async fn after_error(
        &self,
        error: &PollError,
        backoff: &mut Backoff,
        auth_retried: &mut bool,
    ) -> Duration {
        match error {
            PollError::Server { code, .. } if is_auth_rejection(code) => {
                tracing::warn!(%error, "credentials rejected; refreshing");
                if let Some(provider) = &self.credentials {
                    if let Ok(current) = provider.credentials().await {
                        let _ = provider.force_refresh(&current).await;
                    }
                }
                // Retry at once the first time; a second rejection in a row
                // means the fresh credentials do not help either.
                if std::mem::replace(auth_retried, true) {
                    backoff.next_delay()
                } else {
                    Duration::ZERO
                }
            }
            PollError::Server { code, .. } if code == NOT_FOUND => {
                tracing::error!(%error, node = %self.config.node, "the model has no such node; keeping the applied state");
                self.config.not_found_retry
            }
            PollError::Server {
                retry_after: Some(after),
                ..
            } => {
                // Honoured up to the backoff ceiling: one answer must not
                // stop the polls for longer than any failure would.
                let delay = (*after)
                    .min(self.config.backoff_max)
                    .max(backoff.next_delay());
                tracing::warn!(%error, retry_in = ?delay, "endpoint busy; keeping the applied state");
                delay
            }
            _ => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in = ?delay, "poll failed; keeping the applied state");
                delay
            }
        }
    }

    /// One `DescribeNetworkModel` call.
    pub async fn poll_once(
        &self,
        endpoint: &str,
        state_id: Option<&str>,
        feedback: &Feedback,
    ) -> Result<PollAnswer, PollError> {
        let credentials = self.current_credentials().await?;
        let request = self.build_request(endpoint, state_id, feedback, credentials.as_ref())?;
        let started = SystemTime::now();
        let clock = Instant::now();
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| transport(endpoint, &e))?;
        self.observe_skew(&response, started, clock.elapsed());
        let status = response.status().as_u16();
        let etag = header(&response, reqwest::header::ETAG);
        let retry_after = header(&response, reqwest::header::RETRY_AFTER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if status == 304 {
            return Ok(PollAnswer::NotModified);
        }
        if (300..400).contains(&status) {
            let location = header(&response, reqwest::header::LOCATION);
            return Err(PollError::Redirected {
                endpoint: endpoint.to_string(),
                status,
                location: printable(location.as_deref().unwrap_or("(no Location)")),
            });
        }
        let body = read_capped(response, self.config.max_body)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge { limit } => PollError::TooLarge {
                    endpoint: endpoint.to_string(),
                    limit,
                },
                BodyError::Transport(message) => PollError::Transport {
                    endpoint: endpoint.to_string(),
                    message,
                },
            })?;
        if status != 200 {
            return Err(server_error(endpoint, status, &body, retry_after));
        }
        check_view(&self.config.node, endpoint, etag.as_deref(), &body).map(PollAnswer::View)
    }

    async fn current_credentials(&self) -> Result<Option<Credentials>, PollError> {
        match &self.credentials {
            None => Ok(None),
            Some(provider) => provider
                .credentials()
                .await
                .map(Some)
                .map_err(|e| PollError::Credentials(e.to_string())),
        }
    }

    fn build_request(
        &self,
        endpoint: &str,
        state_id: Option<&str>,
        feedback: &Feedback,
        credentials: Option<&Credentials>,
    ) -> Result<reqwest::Request, PollError> {
        // Only ids in the grammar are sent: anything else would make every
        // later request fail (a URI too long) and never be repaired.
        let state_id = state_id.filter(|id| is_valid_state_id(id));
        let wait = self.config.wait_seconds.to_string();
        let mut params = vec![
            ("Action", "DescribeNetworkModel"),
            ("Version", API_VERSION),
            ("NodeId", self.config.node.as_str()),
            ("StateId", state_id.unwrap_or("")),
            ("WaitSeconds", wait.as_str()),
        ];
        let applied = feedback.applied_state_id.as_deref();
        if let Some(applied) = applied.filter(|id| is_valid_state_id(id)) {
            params.push(("AppliedStateId", applied));
        }
        let error = feedback
            .apply_error
            .as_deref()
            .map(|e| truncate_utf8(e, MAX_APPLY_ERROR_BYTES));
        if let Some(error) = error {
            params.push(("ApplyError", error));
        }
        let mut request =
            query_get_request(endpoint, &params).map_err(|e| PollError::Signing(e.to_string()))?;
        if let Some(credentials) = credentials {
            self.signer
                .sign(&mut request, credentials)
                .map_err(|e| PollError::Signing(e.to_string()))?;
        }
        let mut request =
            reqwest::Request::try_from(request).map_err(|e| PollError::Signing(e.to_string()))?;
        *request.timeout_mut() = Some(self.config.poll_timeout());
        Ok(request)
    }

    /// Only answers that came back quickly say what the server's clock
    /// reads now; a held poll's `Date` is from the end of the hold.
    fn observe_skew(&self, response: &reqwest::Response, started: SystemTime, took: Duration) {
        if took > Duration::from_secs(2) {
            return;
        }
        if let Some(date) = header(response, reqwest::header::DATE) {
            self.skew.observe(&date, started, started + took);
        }
    }
}

/// The credential chain `[credentials]` describes, cached; `None` when the
/// section is absent (unsigned polls). The static file is checked now, so a
/// missing or too-open file fails at start, in one line.
pub fn credentials_from_config(
    config: &crate::config::Config,
    node: &str,
    skew: Arc<ClockSkew>,
) -> Result<Option<Arc<CachingProvider>>, PollError> {
    use crate::config::CredentialSource;
    use edgenet_auth::{
        AssumeRoleConfig, AssumeRoleProvider, CacheConfig, CredentialProvider, StaticFileProvider,
    };
    let Some(section) = &config.credentials else {
        return Ok(None);
    };
    let long_term = StaticFileProvider::new(&section.long_term_file, &section.profile);
    long_term
        .load()
        .map_err(|e| PollError::Credentials(e.to_string()))?;
    let inner: Arc<dyn CredentialProvider> = match section.source {
        CredentialSource::Static => Arc::new(long_term),
        CredentialSource::AssumeRole => {
            let sts = config
                .sts_endpoint()
                .ok_or_else(|| PollError::Credentials("no sts_endpoint and no endpoints".into()))?;
            let role = section.role_arn.clone().unwrap_or_default();
            let mut assume = AssumeRoleConfig::new(sts, &config.region, role, node);
            assume.duration_seconds = section.duration_seconds;
            assume.ca_file = config.tls.ca_file.clone();
            let provider = AssumeRoleProvider::new(assume, Arc::new(long_term))
                .map_err(|e| PollError::Credentials(e.to_string()))?
                .with_clock_skew(skew.clone());
            Arc::new(provider)
        }
    };
    let cache = CacheConfig::for_poll_wait(config.wait());
    Ok(Some(Arc::new(
        CachingProvider::new(inner, cache).with_clock_skew(skew),
    )))
}

fn build_client(config: &PollerConfig) -> Result<reqwest::Client, PollError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        // A describe endpoint has no reason to redirect, and following one
        // would take views (and send signed requests) to another host.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("edgenetd/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| PollError::Config(format!("tls ca_file {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| PollError::Config(format!("tls ca_file {}: {e}", path.display())))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| PollError::Config(format!("HTTP client: {e}")))
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn transport(endpoint: &str, error: &reqwest::Error) -> PollError {
    let mut message = error_chain(error);
    if error.is_timeout() {
        message = format!("timed out: {message}");
    }
    PollError::Transport {
        endpoint: endpoint.to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_follows_the_protocol() {
        let mut config = PollerConfig::new("nc-1", vec!["http://127.0.0.1:1/".into()]);
        assert_eq!(
            config.poll_timeout(),
            Duration::from_millis(31_875 + 10_000)
        );
        config.wait_seconds = 0;
        assert_eq!(config.poll_timeout(), Duration::from_secs(10));
    }
}
