//! Counters and the Prometheus text exposition of `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::hub::Hub;

/// Upper bounds (seconds) of the request-latency histogram: immediate
/// answers land in the first buckets, parked polls near their WaitSeconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 90.0, 120.0,
];

/// What an answer was, for the `answers_total` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    Ok,
    NotModified,
    Error,
}

#[derive(Default)]
pub struct Metrics {
    answers_ok: AtomicU64,
    answers_not_modified: AtomicU64,
    answers_error: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_refused: AtomicU64,
    model_reads: AtomicU64,
    /// With etcd: the commit revision served, watch restarts, errors.
    commit_revision: AtomicU64,
    watch_restarts: AtomicU64,
    etcd_errors: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

impl Metrics {
    pub fn answered(&self, kind: AnswerKind, latency: Duration) {
        let counter = match kind {
            AnswerKind::Ok => &self.answers_ok,
            AnswerKind::NotModified => &self.answers_not_modified,
            AnswerKind::Error => &self.answers_error,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let secs = latency.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn reload_ok(&self) {
        self.reloads_ok.fetch_add(1, Ordering::Relaxed);
    }

    /// One read of the model file.
    pub fn model_read(&self) {
        self.model_reads.fetch_add(1, Ordering::Relaxed);
    }

    pub fn model_reads(&self) -> u64 {
        self.model_reads.load(Ordering::Relaxed)
    }

    pub fn commit_revision_served(&self, revision: i64) {
        self.commit_revision
            .store(revision.max(0) as u64, Ordering::Relaxed);
    }

    pub fn watch_restarted(&self) {
        self.watch_restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn etcd_error(&self) {
        self.etcd_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn reload_refused(&self) {
        self.reloads_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text format (version 0.0.4).
    pub fn render(&self, hub: &Hub) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let _ = writeln!(out, "# HELP edgenet_server_parked_polls Polls parked now, waiting for a change or their timeout.");
        let _ = writeln!(out, "# TYPE edgenet_server_parked_polls gauge");
        let _ = writeln!(out, "edgenet_server_parked_polls {}", hub.parked());
        let _ = writeln!(
            out,
            "# HELP edgenet_server_nodes Nodes in the model being served."
        );
        let _ = writeln!(out, "# TYPE edgenet_server_nodes gauge");
        let _ = writeln!(out, "edgenet_server_nodes {}", hub.current().len());
        let _ = writeln!(out, "# HELP edgenet_server_answers_total Answers by kind: 200 (view), 304 (not modified), error.");
        let _ = writeln!(out, "# TYPE edgenet_server_answers_total counter");
        for (kind, c) in [
            ("200", &self.answers_ok),
            ("304", &self.answers_not_modified),
            ("error", &self.answers_error),
        ] {
            let _ = writeln!(
                out,
                "edgenet_server_answers_total{{kind=\"{kind}\"}} {}",
                get(c)
            );
        }
        let _ = writeln!(
            out,
            "# HELP edgenet_server_wakeups_total Parked polls woken by a model change or shutdown."
        );
        let _ = writeln!(out, "# TYPE edgenet_server_wakeups_total counter");
        let _ = writeln!(out, "edgenet_server_wakeups_total {}", hub.wakeups());
        let _ = writeln!(out, "# HELP edgenet_server_model_reloads_total Model file reloads: ok (swapped in) or refused (invalid).");
        let _ = writeln!(out, "# TYPE edgenet_server_model_reloads_total counter");
        let _ = writeln!(
            out,
            "edgenet_server_model_reloads_total{{result=\"ok\"}} {}",
            get(&self.reloads_ok)
        );
        let _ = writeln!(
            out,
            "edgenet_server_model_reloads_total{{result=\"refused\"}} {}",
            get(&self.reloads_refused)
        );
        for (name, help, kind, value) in [
            (
                "edgenet_server_model_reads_total",
                "Reads of the model file.",
                "counter",
                &self.model_reads,
            ),
            (
                "edgenet_server_commit_revision",
                "With etcd: the etcd revision of the commit served.",
                "gauge",
                &self.commit_revision,
            ),
            (
                "edgenet_server_etcd_watch_restarts_total",
                "With etcd: watches started again (lost, compacted) with a full read.",
                "counter",
                &self.watch_restarts,
            ),
            (
                "edgenet_server_etcd_errors_total",
                "With etcd: failed etcd requests and watches.",
                "counter",
                &self.etcd_errors,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {}", get(value));
        }
        let _ = writeln!(out, "# HELP edgenet_server_request_duration_seconds Time from request to answer, parked time included.");
        let _ = writeln!(
            out,
            "# TYPE edgenet_server_request_duration_seconds histogram"
        );
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            let _ = writeln!(
                out,
                "edgenet_server_request_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                get(bucket)
            );
        }
        let count = get(&self.latency_count);
        let _ = writeln!(
            out,
            "edgenet_server_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "edgenet_server_request_duration_seconds_sum {}",
            get(&self.latency_sum_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "edgenet_server_request_duration_seconds_count {count}");
        out
    }
}
