//! End-to-end convergence benchmark (not part of the test run).
//!
//! Builds the suite's cloud, then N times: adds a `tcp 7777` rule to
//! sg-admin (nc-1 only) in the model file and measures, from the write,
//! (a) until the rule is visible in nc-1's `table inet edgenet` and
//! (b) until a TCP connect i-lb1 -> i-db1:7777, blocked before, succeeds;
//! then removes the rule again and waits until it is gone.
//!
//! Run as root: `cargo build --release --bins && EDGENET_BIN_DIR=target/release \
//!   cargo run --release -p edgenet-e2e --bin e2e-bench -- [CHANGES]`

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use edgenet_e2e::cloud::{deny, Cloud};
use edgenet_e2e::model;

const PORT: u16 = 7777;
const LIMIT: Duration = Duration::from_secs(10);

fn main() -> Result<()> {
    let changes: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("CHANGES must be a number")?,
        None => 50,
    };
    let mut cloud = Cloud::start()?;
    cloud.assert_flows(&[deny("i-lb1", "i-db1", PORT)]);
    let base = cloud.model.clone();
    let mut open = model::fixture()?;
    model::add_rule(&mut open, "sg-admin", model::tcp_rule(PORT, "10.0.0.0/8"))?;

    let (mut rule_ms, mut connect_ms) = (Vec::new(), Vec::new());
    for i in 0..changes {
        let (rule, connect) = measure_open(&mut cloud, &open)?;
        rule_ms.push(rule);
        connect_ms.push(connect);
        close(&mut cloud, &base)?;
        eprintln!(
            "change {:>3}: rule visible {rule:7.1} ms, connect {connect:7.1} ms",
            i + 1
        );
    }
    println!("changes: {changes}");
    println!(
        "write -> rule visible in nc-1 netns: {}",
        summary(&mut rule_ms)
    );
    println!(
        "write -> blocked TCP connect succeeds: {}",
        summary(&mut connect_ms)
    );
    Ok(())
}

/// Writes `open` and returns (ms until the rule is in nft, ms until connect).
fn measure_open(cloud: &mut Cloud, open: &serde_json::Value) -> Result<(f64, f64)> {
    let node = cloud.node("nc-1").name().to_owned();
    let lb1 = cloud.instance("i-lb1").ns.name().to_owned();
    let target = cloud.addr_of("i-db1", PORT);
    let start = Instant::now();
    cloud.write_model(open.clone())?;
    let (rule, connect) = std::thread::scope(|s| {
        let rule = s.spawn(|| poll_in(&node, start, || rule_visible(true)));
        let connect = s.spawn(|| {
            poll_in(&lb1, start, || {
                TcpStream::connect_timeout(&target, Duration::from_millis(5)).is_ok()
            })
        });
        (rule.join(), connect.join())
    });
    let (rule, connect) = (flatten(rule)?, flatten(connect)?);
    Ok((ms(rule), ms(connect)))
}

fn flatten<T>(r: std::thread::Result<Result<T>>) -> Result<T> {
    r.map_err(|_| anyhow::anyhow!("probe thread panicked"))?
}

/// Writes the base model back and waits until nc-1 applied it.
fn close(cloud: &mut Cloud, base: &serde_json::Value) -> Result<()> {
    cloud.write_model(base.clone())?;
    cloud.wait_node_converged("nc-1", LIMIT)?;
    let node = cloud.node("nc-1").name().to_owned();
    // On a thread of its own: poll_in moves its thread into the namespace.
    let gone = std::thread::scope(|s| {
        s.spawn(|| poll_in(&node, Instant::now(), || rule_visible(false)))
            .join()
    });
    flatten(gone).map(drop)
}

/// Runs `check` in namespace `ns` until true; the time since `start`.
fn poll_in(ns: &str, start: Instant, mut check: impl FnMut() -> bool + Send) -> Result<Duration> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| path.clone())?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
    while start.elapsed() < LIMIT {
        if check() {
            return Ok(start.elapsed());
        }
    }
    bail!("not seen within {LIMIT:?} in {ns}")
}

/// Whether `tcp dport 7777` is (or, with `want` false, is not) in nc-1's
/// table; runs `nft` from this thread, which is in nc-1's namespace.
fn rule_visible(want: bool) -> bool {
    let out = Command::new("nft")
        .args(["list", "table", "inet", "edgenet"])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.contains(&format!("dport {PORT}")) == want
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `p50 X ms, p99 Y ms, max Z ms`.
fn summary(samples: &mut [f64]) -> String {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = ((samples.len() as f64) * q).ceil() as usize;
        samples[rank.clamp(1, samples.len()) - 1]
    };
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        at(0.50),
        at(0.99),
        at(1.0)
    )
}
