//! systemd notification (`Type=notify`): READY=1 at start, once the
//! kernel has been read (see `Reconciler::announce_start`: on the state
//! applied earlier, or waiting for the first view), STATUS= with what is
//! applied, and the watchdog.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Sends notifications to the service manager, READY only once.
#[derive(Debug, Default)]
pub struct SystemdNotifier {
    ready_sent: bool,
}

impl SystemdNotifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// At start (or the first plan in dry-run); later calls only update
    /// STATUS.
    pub fn ready(&mut self, status: &str) {
        if !self.ready_sent {
            self.ready_sent = true;
            send(&[NotifyState::Ready, NotifyState::Status(status)]);
        } else {
            self.status(status);
        }
    }

    pub fn status(&self, status: &str) {
        send(&[NotifyState::Status(status)]);
    }

    pub fn stopping(&self) {
        send(&[NotifyState::Stopping]);
    }

    pub fn reloading(&self) {
        send(&[NotifyState::Reloading]);
    }
}

fn send(states: &[NotifyState<'_>]) {
    // `false`: keep NOTIFY_SOCKET, later notifications need it too.
    if let Err(error) = sd_notify::notify(false, states) {
        tracing::debug!(%error, "sd_notify failed");
    }
}

/// How often to send WATCHDOG=1: half the interval systemd gives in
/// `WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises; `None` when the
/// watchdog is off.
pub fn watchdog_period() -> Option<Duration> {
    // As sd_watchdog_enabled(3): WATCHDOG_PID, when set, must be ours (the
    // variables may have been inherited from a parent).
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// When the reconcile loop last made progress: it beats while it waits
/// and after each pass, and not while a pass is stuck.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    epoch: Instant,
    /// Milliseconds from `epoch` to the last beat.
    last: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            epoch: Instant::now(),
            last: Arc::default(),
        }
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// Pings the watchdog at `period` while the reconcile loop's heartbeat is
/// younger than `stale_after`. A pass stuck longer (an `nft` that hangs,
/// until its timeout) withholds the pings, so systemd sees the loop, not
/// just the runtime. Whatever longest pass a node has (a first apply of
/// 50,000 instances takes about two minutes), `WatchdogSec` must exceed it.
pub async fn watchdog(period: Duration, heartbeat: Heartbeat, stale_after: Duration) {
    let mut tick = tokio::time::interval(period);
    let mut withheld = false;
    loop {
        tick.tick().await;
        let age = heartbeat.age();
        if age < stale_after {
            if std::mem::take(&mut withheld) {
                tracing::info!("reconcile loop progressing again; watchdog pings resumed");
            }
            send(&[NotifyState::Watchdog]);
        } else if !std::mem::replace(&mut withheld, true) {
            tracing::warn!(stalled_for = ?age, "reconcile loop stalled; withholding watchdog pings");
        }
    }
}
