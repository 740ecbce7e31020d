//! Caching credentials: refresh ahead of expiry, one refresh at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::Mutex;

use crate::credentials::Credentials;
use crate::providers::{AuthError, CredentialProvider};
use crate::skew::ClockSkew;

/// Timing of a [`CachingProvider`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Refresh when less than this is left (default max(15 min, 2 × poll wait)).
    pub refresh_margin: Duration,
    /// Up to this much is taken off the refresh time at random, so that many
    /// nodes started together do not refresh together.
    pub jitter: Duration,
    /// Credentials with less than this left are treated as expired: a request
    /// signed with them could arrive after they ended.
    pub expiry_margin: Duration,
    /// First retry delay after a failed refresh; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl CacheConfig {
    /// The production settings for a poll wait of `poll_wait`.
    pub fn for_poll_wait(poll_wait: Duration) -> Self {
        CacheConfig {
            refresh_margin: Duration::from_secs(15 * 60).max(2 * poll_wait),
            jitter: Duration::from_secs(60),
            expiry_margin: Duration::from_secs(10),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self::for_poll_wait(Duration::from_secs(30))
    }
}

struct State {
    current: Option<Credentials>,
    /// When to start refreshing the current credentials.
    refresh_at: Option<SystemTime>,
    /// No refresh attempt before this (backoff after failures).
    retry_at: Option<SystemTime>,
    backoff: Duration,
    last_error: Option<AuthError>,
}

/// Caches the credentials of an inner provider.
///
/// The lock is held across the refresh, so concurrent callers wait for the
/// one refresh in flight instead of starting their own.
pub struct CachingProvider {
    inner: Arc<dyn CredentialProvider>,
    config: CacheConfig,
    skew: Option<Arc<ClockSkew>>,
    state: Mutex<State>,
    refreshes: AtomicU64,
    failures: AtomicU64,
}

impl std::fmt::Debug for CachingProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingProvider")
            .field("config", &self.config)
            .field("refreshes", &self.refresh_count())
            .finish_non_exhaustive()
    }
}

impl CachingProvider {
    pub fn new(inner: Arc<dyn CredentialProvider>, config: CacheConfig) -> Self {
        let backoff = config.min_backoff;
        CachingProvider {
            inner,
            config,
            skew: None,
            state: Mutex::new(State {
                current: None,
                refresh_at: None,
                retry_at: None,
                backoff,
                last_error: None,
            }),
            refreshes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Judge expiry by the servers' clock rather than ours.
    pub fn with_clock_skew(mut self, skew: Arc<ClockSkew>) -> Self {
        self.skew = Some(skew);
        self
    }

    /// Successful refreshes so far.
    pub fn refresh_count(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// Failed refresh attempts so far.
    pub fn failure_count(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn now(&self) -> SystemTime {
        self.skew.as_ref().map_or_else(SystemTime::now, |s| s.now())
    }

    /// Valid credentials: cached ones, or fresh ones when they are due.
    pub async fn credentials(&self) -> Result<Credentials, AuthError> {
        let mut state = self.state.lock().await;
        self.get_locked(&mut state).await
    }

    /// For an endpoint that answered `ExpiredToken`/`AuthFailure` to a request
    /// signed with `rejected`: drops those credentials (when they are still the
    /// cached ones; callers that raced on the same rejection cause one refresh)
    /// and returns fresh ones.
    pub async fn force_refresh(&self, rejected: &Credentials) -> Result<Credentials, AuthError> {
        let mut state = self.state.lock().await;
        if state
            .current
            .as_ref()
            .is_some_and(|c| c.same_identity(rejected))
        {
            tracing::info!(access_key_id = %rejected.access_key_id, "credentials rejected, refreshing");
            state.current = None;
            state.refresh_at = None;
            state.retry_at = None;
        }
        self.get_locked(&mut state).await
    }

    async fn get_locked(&self, state: &mut State) -> Result<Credentials, AuthError> {
        let now = self.now();
        let usable = state.current.clone().filter(|c| self.usable(c, now));
        // Credentials without expiry (long-term) are never due.
        let due = state.refresh_at.is_some_and(|t| now >= t);
        if let Some(c) = &usable {
            if !due || state.retry_at.is_some_and(|t| now < t) {
                return Ok(c.clone());
            }
        } else if let (Some(t), Some(err)) = (state.retry_at, &state.last_error) {
            if now < t {
                return Err(err.clone());
            }
        }
        match self.inner.fetch().await {
            Ok(fresh) => Ok(self.store(state, fresh)),
            Err(err) => self.failed(state, usable, err),
        }
    }

    /// Not expired, allowing for the expiry margin.
    fn usable(&self, c: &Credentials, now: SystemTime) -> bool {
        !c.is_expired_at(now + self.config.expiry_margin)
    }

    fn store(&self, state: &mut State, fresh: Credentials) -> Credentials {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        state.refresh_at = fresh.expiration.map(|exp| {
            let jitter_ms = self.config.jitter.as_millis() as u64;
            let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..=jitter_ms));
            exp.checked_sub(self.config.refresh_margin + jitter)
                .unwrap_or(SystemTime::UNIX_EPOCH)
        });
        tracing::debug!(access_key_id = %fresh.access_key_id, refresh_at = ?state.refresh_at, "credentials refreshed");
        state.current = Some(fresh.clone());
        state.retry_at = None;
        state.backoff = self.config.min_backoff;
        state.last_error = None;
        fresh
    }

    /// Keeps serving still-valid credentials after a failed refresh, and
    /// schedules the next attempt with exponential backoff.
    fn failed(
        &self,
        state: &mut State,
        usable: Option<Credentials>,
        err: AuthError,
    ) -> Result<Credentials, AuthError> {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let wait = state.backoff;
        state.backoff = (state.backoff * 2).min(self.config.max_backoff);
        state.retry_at = Some(self.now() + wait);
        state.last_error = Some(err.clone());
        match usable {
            Some(c) => {
                tracing::warn!(error = %err, retry_in = ?wait, "credential refresh failed; keeping current credentials");
                Ok(c)
            }
            None => {
                tracing::warn!(error = %err, retry_in = ?wait, "credential refresh failed");
                state.current = None;
                Err(err)
            }
        }
    }
}

#[async_trait::async_trait]
impl CredentialProvider for CachingProvider {
    async fn fetch(&self) -> Result<Credentials, AuthError> {
        self.credentials().await
    }
}
