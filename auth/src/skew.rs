//! Clock skew between this host and the endpoints, measured from `Date` headers.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

/// Tracks how far the servers' clocks are ahead of ours, so requests are signed
/// with a time the server accepts (it refuses more than 5 minutes off).
///
/// Feed it only from calls the server answered at once (STS, immediate
/// describe answers): a held long poll's `Date` is taken at the end of the hold
/// and says nothing about the time the request was sent.
#[derive(Debug, Default)]
pub struct ClockSkew {
    /// Server time minus local time, in milliseconds.
    offset_ms: AtomicI64,
}

/// Answers slower than this are too imprecise to measure skew from.
const MAX_ROUND_TRIP: Duration = Duration::from_secs(10);

impl ClockSkew {
    /// No skew known yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the skew seen in a response. `date_header` is the HTTP `Date`
    /// value; `request_started`/`response_received` are local times around the
    /// call. Returns the offset now in use, or `None` when the observation was
    /// unusable (bad header, too slow a round trip).
    pub fn observe(
        &self,
        date_header: &str,
        request_started: SystemTime,
        response_received: SystemTime,
    ) -> Option<Duration> {
        let server = httpdate::parse_http_date(date_header.trim()).ok()?;
        let rtt = response_received.duration_since(request_started).ok()?;
        if rtt > MAX_ROUND_TRIP {
            return None;
        }
        let local_mid = request_started + rtt / 2;
        let offset_ms = signed_ms(server, local_mid);
        // `Date` has one-second resolution: anything within that and half the
        // round trip is measurement noise, and correcting for it would only
        // make things worse.
        let noise_ms = 1000 + (rtt.as_millis() as i64) / 2;
        let offset_ms = if offset_ms.abs() <= noise_ms {
            0
        } else {
            offset_ms
        };
        let old = self.offset_ms.swap(offset_ms, Ordering::Relaxed);
        if (old - offset_ms).abs() > 1000 {
            tracing::info!(skew_ms = offset_ms, "clock skew to endpoint changed");
        }
        Some(Duration::from_millis(offset_ms.unsigned_abs()))
    }

    /// Server time minus local time, in milliseconds (positive: server ahead).
    pub fn offset_millis(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Sets the offset directly (tests, or a value measured elsewhere).
    pub fn set_offset_millis(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
    }

    /// The current time as the servers see it.
    pub fn now(&self) -> SystemTime {
        self.correct(SystemTime::now())
    }

    /// `local` shifted by the measured offset.
    pub fn correct(&self, local: SystemTime) -> SystemTime {
        let off = self.offset_millis();
        let d = Duration::from_millis(off.unsigned_abs());
        if off >= 0 {
            local + d
        } else {
            local - d
        }
    }
}

/// `a - b` in signed milliseconds.
fn signed_ms(a: SystemTime, b: SystemTime) -> i64 {
    match a.duration_since(b) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn measures_server_ahead_and_behind() {
        let skew = ClockSkew::new();
        let start = at(1_700_000_000);
        let end = start + Duration::from_millis(200);
        let ahead = httpdate::fmt_http_date(start + Duration::from_secs(600));
        skew.observe(&ahead, start, end).unwrap();
        assert!((skew.offset_millis() - 600_000).abs() <= 1000);
        assert!(skew.correct(start) > start + Duration::from_secs(598));

        let behind = httpdate::fmt_http_date(start - Duration::from_secs(400));
        skew.observe(&behind, start, end).unwrap();
        assert!((skew.offset_millis() + 400_000).abs() <= 1000);
        assert!(skew.correct(start) < start - Duration::from_secs(398));
    }

    #[test]
    fn ignores_noise_bad_dates_and_slow_calls() {
        let skew = ClockSkew::new();
        let start = at(1_700_000_000);
        let same = httpdate::fmt_http_date(start);
        skew.observe(&same, start, start + Duration::from_millis(900));
        assert_eq!(skew.offset_millis(), 0);
        assert!(skew.observe("garbage", start, start).is_none());
        let far = httpdate::fmt_http_date(start + Duration::from_secs(3600));
        assert!(skew
            .observe(&far, start, start + Duration::from_secs(40))
            .is_none());
        assert_eq!(skew.offset_millis(), 0);
    }
}
