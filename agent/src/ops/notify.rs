//! systemd notification (`Type=notify`): READY=1 once the node is in the
//! state its view asks for, STATUS= with the state id, and the watchdog.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op.

use std::time::Duration;

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

    /// After the first successful apply (or the first plan in dry-run).
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

/// Pings the watchdog forever at `period`, from the reconcile loop's
/// runtime: if the runtime wedges, the pings stop and systemd restarts us.
pub async fn watchdog(period: Duration) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}
