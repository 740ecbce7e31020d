//! Prometheus metrics, in the text exposition format, on `[metrics] listen`.
//!
//! A handful of values updated a few times per poll period: plain mutexes
//! and a hand-written exposition are simpler than a metrics framework and
//! cost nothing while idle.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bounds (seconds) of the apply-duration histogram buckets.
const APPLY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; APPLY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Values {
    polls: BTreeMap<&'static str, u64>,
    current_state_id: Option<String>,
    applied_state_id: Option<String>,
    apply_seconds: Histogram,
    apply_failures: u64,
    objects: BTreeMap<String, usize>,
    last_success: Option<SystemTime>,
}

/// The agent's metrics, shared by the poller, the reconcile loop and the
/// HTTP endpoint.
#[derive(Debug, Default)]
pub struct Metrics {
    values: Mutex<Values>,
    drift_repairs: AtomicU64,
    /// Passes that rendered the whole view, and passes that rendered only
    /// the changed instances (`crate::incremental`).
    full_passes: AtomicU64,
    incremental_passes: AtomicU64,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Metrics::default())
    }

    fn values(&self) -> std::sync::MutexGuard<'_, Values> {
        self.values.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One poll ended with `outcome` (`view`, `not_modified`, `error`, ...).
    pub fn poll(&self, outcome: &'static str) {
        *self.values().polls.entry(outcome).or_default() += 1;
    }

    pub fn polls(&self, outcome: &str) -> u64 {
        self.values().polls.get(outcome).copied().unwrap_or(0)
    }

    /// The latest state id received from the source.
    pub fn set_current_state_id(&self, id: &str) {
        self.values().current_state_id = Some(id.to_string());
    }

    pub fn apply_succeeded(
        &self,
        state_id: &str,
        took: Duration,
        objects: impl IntoIterator<Item = (String, usize)>,
    ) {
        let mut values = self.values();
        values.apply_seconds.observe(took.as_secs_f64());
        values.applied_state_id = Some(state_id.to_string());
        values.objects = objects.into_iter().collect();
        values.last_success = Some(SystemTime::now());
    }

    pub fn apply_failed(&self, took: Duration) {
        let mut values = self.values();
        values.apply_seconds.observe(took.as_secs_f64());
        values.apply_failures += 1;
    }

    pub fn drift_repaired(&self) {
        self.drift_repairs.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render_pass(&self, incremental: bool) {
        let counter = match incremental {
            true => &self.incremental_passes,
            false => &self.full_passes,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Render passes so far: (full, incremental).
    pub fn render_passes(&self) -> (u64, u64) {
        (
            self.full_passes.load(Ordering::Relaxed),
            self.incremental_passes.load(Ordering::Relaxed),
        )
    }

    pub fn drift_repairs(&self) -> u64 {
        self.drift_repairs.load(Ordering::Relaxed)
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let values = self.values();
        let mut out = String::new();
        family(
            &mut out,
            "edgenetd_polls_total",
            "counter",
            "Polls of the describe endpoint, by outcome.",
        );
        for (outcome, n) in &values.polls {
            let _ = writeln!(out, "edgenetd_polls_total{{outcome=\"{outcome}\"}} {n}");
        }
        family(
            &mut out,
            "edgenetd_current_state_info",
            "gauge",
            "The latest state id received.",
        );
        if let Some(id) = &values.current_state_id {
            let _ = writeln!(
                out,
                "edgenetd_current_state_info{{state_id=\"{}\"}} 1",
                escape(id)
            );
        }
        family(
            &mut out,
            "edgenetd_applied_state_info",
            "gauge",
            "The state id applied to the kernel.",
        );
        if let Some(id) = &values.applied_state_id {
            let _ = writeln!(
                out,
                "edgenetd_applied_state_info{{state_id=\"{}\"}} 1",
                escape(id)
            );
        }
        values
            .apply_seconds
            .write(&mut out, "edgenetd_apply_duration_seconds");
        family(
            &mut out,
            "edgenetd_apply_failures_total",
            "counter",
            "Applies that failed (retried with backoff).",
        );
        let _ = writeln!(
            out,
            "edgenetd_apply_failures_total {}",
            values.apply_failures
        );
        family(
            &mut out,
            "edgenetd_objects",
            "gauge",
            "Kernel objects of ours after the last apply, by kind.",
        );
        for (kind, n) in &values.objects {
            let _ = writeln!(out, "edgenetd_objects{{kind=\"{}\"}} {n}", escape(kind));
        }
        family(
            &mut out,
            "edgenetd_drift_repairs_total",
            "counter",
            "Resyncs that found and repaired drift.",
        );
        let _ = writeln!(out, "edgenetd_drift_repairs_total {}", self.drift_repairs());
        family(
            &mut out,
            "edgenetd_render_passes_total",
            "counter",
            "Reconcile passes, by how the view was rendered: in full, or only its changed instances.",
        );
        let (full, incremental) = self.render_passes();
        let _ = writeln!(
            out,
            "edgenetd_render_passes_total{{render=\"full\"}} {full}"
        );
        let _ = writeln!(
            out,
            "edgenetd_render_passes_total{{render=\"incremental\"}} {incremental}"
        );
        family(
            &mut out,
            "edgenetd_last_successful_apply_timestamp_seconds",
            "gauge",
            "Unix time of the last successful apply.",
        );
        if let Some(t) = values.last_success {
            let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            let _ = writeln!(
                out,
                "edgenetd_last_successful_apply_timestamp_seconds {:.3}",
                secs.as_secs_f64()
            );
        }
        out
    }
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in APPLY_BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn write(&self, out: &mut String, name: &str) {
        family(
            out,
            name,
            "histogram",
            "Time to render, diff and apply one snapshot.",
        );
        for (bound, count) in APPLY_BUCKETS.iter().zip(self.counts.iter()) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Binds `addr` now (so a bad address fails at start) and serves the
/// metrics from a background task.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "serving metrics");
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!(%error, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), answer(stream, &metrics)).await;
            });
        }
    });
    Ok(MetricsServer { local, task })
}

/// A metrics endpoint being served; dropping it closes the listener (a
/// reload that moves `[metrics] listen` replaces it).
#[derive(Debug)]
pub struct MetricsServer {
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A minimal HTTP/1 answer: read the request head, send the metrics.
async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let request_line = String::from_utf8_lossy(&head);
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/metrics" | "/" => ("200 OK", metrics.render()),
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let metrics = Metrics::new();
        metrics.poll("view");
        metrics.poll("not_modified");
        metrics.poll("not_modified");
        metrics.set_current_state_id("v1-abc");
        metrics.apply_succeeded(
            "v1-abc",
            Duration::from_millis(20),
            [("route".to_string(), 3)],
        );
        metrics.drift_repaired();
        let text = metrics.render();
        for line in [
            "edgenetd_polls_total{outcome=\"not_modified\"} 2",
            "edgenetd_current_state_info{state_id=\"v1-abc\"} 1",
            "edgenetd_applied_state_info{state_id=\"v1-abc\"} 1",
            "edgenetd_apply_duration_seconds_bucket{le=\"0.025\"} 1",
            "edgenetd_apply_duration_seconds_bucket{le=\"0.01\"} 0",
            "edgenetd_apply_duration_seconds_count 1",
            "edgenetd_objects{kind=\"route\"} 3",
            "edgenetd_drift_repairs_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert!(text.contains("edgenetd_last_successful_apply_timestamp_seconds 1"));
    }

    #[tokio::test]
    async fn serves_over_http() {
        let metrics = Metrics::new();
        metrics.poll("view");
        let server = serve("127.0.0.1:0".parse().unwrap(), metrics)
            .await
            .unwrap();
        let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("edgenetd_polls_total{outcome=\"view\"} 1"));
    }
}
