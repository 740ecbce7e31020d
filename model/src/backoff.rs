//! The one retry backoff of edgenet: exponential with full jitter. The
//! agent's polls and applies and the server's store reconnects all use it.

use std::time::Duration;

use rand::Rng;

use crate::protocol::{RETRY_BACKOFF_MAX, RETRY_BACKOFF_MIN};

/// Exponential backoff with full jitter (each wait drawn from 0..=cap).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next_cap: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next_cap: min,
        }
    }

    /// The protocol's: 0.5 s doubling to 30 s.
    pub fn protocol() -> Self {
        Backoff::new(RETRY_BACKOFF_MIN, RETRY_BACKOFF_MAX)
    }

    pub fn next_delay(&mut self) -> Duration {
        let cap = self.next_cap;
        self.next_cap = (self.next_cap * 2).min(self.max);
        let millis = rand::thread_rng().gen_range(0..=cap.as_millis() as u64);
        Duration::from_millis(millis)
    }

    pub fn reset(&mut self) {
        self.next_cap = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_full_jitter_and_resets() {
        let mut backoff = Backoff::protocol();
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] <= RETRY_BACKOFF_MIN);
        assert!(delays.iter().all(|d| *d <= RETRY_BACKOFF_MAX));
        assert_eq!(backoff.next_cap, RETRY_BACKOFF_MAX);
        backoff.reset();
        assert_eq!(backoff.next_cap, RETRY_BACKOFF_MIN);
    }
}
