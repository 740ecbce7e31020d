//! The two peers' protocols and the measurement procedure they share.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::{mpsc, Semaphore};

use crate::http::Conn;
use crate::stats::{ms, quantile, rss_kib_tree};

#[derive(clap::Args, Clone)]
pub struct Common {
    /// host:port of the server.
    #[arg(long)]
    pub addr: String,
    /// Process id of the server (nginx: its master), for RSS.
    #[arg(long)]
    pub server_pid: u32,
    /// Parked polls, one per node id.
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// Changes that touch every view.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
}

/// One answer a client received.
struct Event {
    node: usize,
    status: u16,
    at: Instant,
    bytes: usize,
}

/// Spawns one client per node; each loops poll → record → poll again.
fn spawn_clients<F, Fut>(common: &Common, client: F) -> mpsc::UnboundedReceiver<Event>
where
    F: Fn(usize, Conn, mpsc::UnboundedSender<Event>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let client = Arc::new(client);
    let gate = Arc::new(Semaphore::new(common.connect_concurrency));
    for node in 0..common.nodes {
        let (tx, client, gate, addr) = (
            tx.clone(),
            client.clone(),
            gate.clone(),
            common.addr.clone(),
        );
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let conn = match Conn::connect(&addr).await {
                Ok(c) => c,
                Err(e) => return eprintln!("node {node}: {e:#}"),
            };
            drop(permit);
            if let Err(e) = client(node, conn, tx).await {
                eprintln!("node {node}: {e:#}");
            }
        });
    }
    rx
}

/// Collects `want` answers with status 200 that arrive after `t0`.
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Event>,
    want: usize,
    t0: Instant,
    limit: Duration,
) -> Vec<(usize, Duration, usize)> {
    let mut got = Vec::with_capacity(want);
    let deadline = tokio::time::Instant::now() + limit;
    while got.len() < want {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) if e.status == 200 && e.at >= t0 => got.push((e.node, e.at - t0, e.bytes)),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    got
}

/// Waits until `count()` reports `n` (parked polls or subscribers).
async fn wait_for_count<F, Fut>(n: usize, what: &str, mut count: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = count().await?;
        if c >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {c} of {n} {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Report {
    peer: String,
    nodes: usize,
    rss_before_kib: u64,
    rss_held_kib: u64,
    /// Per run: answer latencies from trigger, sorted.
    runs: Vec<Vec<Duration>>,
    one_node_answers: Option<usize>,
}

impl Report {
    fn print(&self) {
        let per_poll = (self.rss_held_kib.saturating_sub(self.rss_before_kib)) as f64 * 1024.0
            / self.nodes as f64;
        println!("== {} ==", self.peer);
        println!(
            "RSS before: {} KiB, holding {} parked polls: {} KiB, per parked poll: {:.0} B",
            self.rss_before_kib, self.nodes, self.rss_held_kib, per_poll
        );
        let mut lasts = Vec::new();
        for (i, run) in self.runs.iter().enumerate() {
            let last = run.last().copied().unwrap_or_default();
            lasts.push(last);
            println!(
                "run {}: {} answers, first {:.1} ms, p50 {:.1} ms, p99 {:.1} ms, last {:.1} ms",
                i + 1,
                run.len(),
                ms(run.first().copied().unwrap_or_default()),
                ms(quantile(run, 0.5)),
                ms(quantile(run, 0.99)),
                ms(last)
            );
        }
        lasts.sort();
        let all: Vec<Duration> = {
            let mut v: Vec<Duration> = self.runs.iter().flatten().copied().collect();
            v.sort();
            v
        };
        println!(
            "time to last answer over {} runs: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; every answer (all runs): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            lasts.len(),
            ms(quantile(&lasts, 0.5)),
            ms(quantile(&lasts, 0.99)),
            ms(lasts.last().copied().unwrap_or_default()),
            ms(quantile(&all, 0.5)),
            ms(quantile(&all, 0.99)),
            ms(all.last().copied().unwrap_or_default()),
        );
        if let Some(n) = self.one_node_answers {
            println!("change touching one node: {n} poll(s) answered");
        }
        println!(
            "{{\"peer\":\"{}\",\"nodes\":{},\"rss_before_kib\":{},\"rss_held_kib\":{},\"bytes_per_parked_poll\":{:.0},\"last_answer_ms_p50\":{:.1},\"last_answer_ms_max\":{:.1},\"one_node_answers\":{}}}",
            self.peer,
            self.nodes,
            self.rss_before_kib,
            self.rss_held_kib,
            per_poll,
            ms(quantile(&lasts, 0.5)),
            ms(lasts.last().copied().unwrap_or_default()),
            self.one_node_answers.map(|n| n.to_string()).unwrap_or("null".into())
        );
    }
}

// ---------------------------------------------------------------- edgenet

fn state_id_of(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"StateId\":\"")? + 11;
    let end = start + text[start..].find('"')?;
    Some(text[start..end].to_owned())
}

async fn edgenet_parked(addr: &str) -> anyhow::Result<usize> {
    status_number(addr, "/metrics", "edgenet_server_parked_polls ").await
}

/// The number after `prefix` on the first line of `path` that starts with
/// it: a server's count of held connections, read over plain HTTP.
async fn status_number(addr: &str, path: &str, prefix: &str) -> anyhow::Result<usize> {
    let mut c = Conn::connect(addr).await?;
    let a = c
        .request(
            &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
            &[],
        )
        .await?;
    let text = String::from_utf8_lossy(&a.body);
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .with_context(|| format!("no {prefix:?} line in {path}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("no number after {prefix:?} in {path}"))?
        .parse()?)
}

fn write_model(path: &PathBuf, model: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp-bench");
    std::fs::write(&tmp, serde_json::to_vec(model)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Every node's current id, read one by one over a single connection, so
/// the parked polls can start with the id they hold (as agents that already
/// applied their view do) and no burst of 10,000 first answers is in flight.
async fn current_ids(addr: &str, nodes: usize) -> anyhow::Result<Vec<String>> {
    let mut conn = Conn::connect(addr).await?;
    let mut ids = Vec::with_capacity(nodes);
    for node in 0..nodes {
        let head = format!(
            "GET /?Action=DescribeNetworkModel&NodeId=nc-{}&WaitSeconds=0 HTTP/1.1\r\nHost: {addr}\r\n\r\n",
            node + 1
        );
        let a = conn.request(&head, &[]).await?;
        ids.push(state_id_of(&a.body).context("answer without StateId")?);
    }
    Ok(ids)
}

pub async fn run_edgenet(
    common: Common,
    model_path: PathBuf,
    held_ids: bool,
) -> anyhow::Result<()> {
    let mut model: serde_json::Value = serde_json::from_slice(&std::fs::read(&model_path)?)?;
    let rss_before = rss_kib_tree(common.server_pid);
    let addr = common.addr.clone();
    let ids = if held_ids {
        let ids = current_ids(&addr, common.nodes).await?;
        println!(
            "read {} current ids one by one first: the polls start parked",
            ids.len()
        );
        Arc::new(ids)
    } else {
        Arc::new(vec![String::new(); common.nodes])
    };
    let setup = Instant::now();
    let mut rx = spawn_clients(&common, move |node, mut conn, tx| {
        let (addr, ids) = (addr.clone(), ids.clone());
        async move {
            let id = format!("nc-{}", node + 1);
            let mut held = ids[node].clone();
            loop {
                let head = format!(
                    "GET /?Action=DescribeNetworkModel&NodeId={id}&StateId={held}&WaitSeconds=60 HTTP/1.1\r\nHost: {addr}\r\n\r\n"
                );
                let a = conn.request(&head, &[]).await?;
                if a.status == 200 {
                    held = state_id_of(&a.body).context("answer without StateId")?;
                } else if a.status != 304 {
                    bail!("status {}", a.status);
                }
                if tx
                    .send(Event {
                        node,
                        status: a.status,
                        at: a.at,
                        bytes: a.body.len(),
                    })
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
    });
    let first = if held_ids {
        Vec::new()
    } else {
        collect(&mut rx, common.nodes, setup, Duration::from_secs(120)).await
    };
    let mean_bytes = first.iter().map(|(_, _, b)| b).sum::<usize>() / first.len().max(1);
    println!(
        "{} initial views in {:.1} s, mean answer body {mean_bytes} B",
        first.len(),
        setup.elapsed().as_secs_f64()
    );
    let addr = common.addr.clone();
    wait_for_count(common.nodes, "parked", || edgenet_parked(&addr)).await?;
    let rss_held = rss_kib_tree(common.server_pid);
    let mut runs = Vec::new();
    for run in 0..common.runs {
        // The metadata redirect is in every view: a change to it touches all.
        model["metadata"]["port"] = (8000 + run as i64 % 2 + 1).into();
        let t0 = Instant::now();
        write_model(&model_path, &model)?;
        let mut got: Vec<Duration> = collect(&mut rx, common.nodes, t0, Duration::from_secs(20))
            .await
            .into_iter()
            .map(|(_, d, _)| d)
            .collect();
        got.sort();
        runs.push(got);
        wait_for_count(common.nodes, "parked", || edgenet_parked(&addr)).await?;
    }
    model["nodes"][0]["bridge"] = "br-bench".into();
    let t0 = Instant::now();
    write_model(&model_path, &model)?;
    let one = collect(&mut rx, common.nodes, t0, Duration::from_secs(2)).await;
    Report {
        peer: "edgenet-server".into(),
        nodes: common.nodes,
        rss_before_kib: rss_before,
        rss_held_kib: rss_held,
        runs,
        one_node_answers: Some(one.len()),
    }
    .print();
    Ok(())
}

// ---------------------------------------------------------------- nchan

async fn nchan_subscribers(addr: &str) -> anyhow::Result<usize> {
    status_number(addr, "/nchan_status", "subscribers:").await
}

fn channel_of(node: usize, broadcast: bool) -> String {
    if broadcast {
        "all".into()
    } else {
        format!("nc-{}", node + 1)
    }
}

async fn publish(
    addr: &str,
    channels: Vec<String>,
    payload: Arc<Vec<u8>>,
    connections: usize,
) -> anyhow::Result<()> {
    let per = channels.len().div_ceil(connections.max(1));
    let mut tasks = Vec::new();
    for chunk in channels.chunks(per.max(1)) {
        let (chunk, payload, addr) = (chunk.to_vec(), payload.clone(), addr.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::connect(&addr).await?;
            for ch in chunk {
                let head = format!(
                    "POST /pub/{ch} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    payload.len()
                );
                let a = c.request(&head, &payload).await?;
                if a.status >= 300 {
                    bail!("publish to {ch}: status {}", a.status);
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

pub async fn run_nchan(
    common: Common,
    payload_bytes: usize,
    broadcast: bool,
    publishers: usize,
) -> anyhow::Result<()> {
    let rss_before = rss_kib_tree(common.server_pid);
    let addr = common.addr.clone();
    let mut rx = spawn_clients(&common, move |node, mut conn, tx| {
        let addr = addr.clone();
        async move {
            let ch = channel_of(node, broadcast);
            let mut since = String::new();
            loop {
                let head = format!("GET /sub/{ch} HTTP/1.1\r\nHost: {addr}\r\n{since}\r\n");
                let a = conn.request(&head, &[]).await?;
                if a.status == 200 {
                    since.clear();
                    if let Some(lm) = &a.last_modified {
                        since.push_str(&format!("If-Modified-Since: {lm}\r\n"));
                    }
                    if let Some(et) = &a.etag {
                        since.push_str(&format!("If-None-Match: {et}\r\n"));
                    }
                }
                if tx
                    .send(Event {
                        node,
                        status: a.status,
                        at: a.at,
                        bytes: a.body.len(),
                    })
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
    });
    let addr = common.addr.clone();
    wait_for_count(common.nodes, "subscribers", || nchan_subscribers(&addr)).await?;
    let rss_held = rss_kib_tree(common.server_pid);
    // JSON-ish filler of the same size as edgenet's answers.
    let payload = Arc::new({
        let mut p = b"{\"View\":\"".to_vec();
        p.resize(payload_bytes.saturating_sub(2), b'x');
        p.extend_from_slice(b"\"}");
        p
    });
    let channels: Vec<String> = if broadcast {
        vec!["all".into()]
    } else {
        (0..common.nodes).map(|n| channel_of(n, false)).collect()
    };
    let mut runs = Vec::new();
    for _ in 0..common.runs {
        let t0 = Instant::now();
        publish(&common.addr, channels.clone(), payload.clone(), publishers).await?;
        let mut got: Vec<Duration> = collect(&mut rx, common.nodes, t0, Duration::from_secs(20))
            .await
            .into_iter()
            .map(|(_, d, _)| d)
            .collect();
        got.sort();
        runs.push(got);
        wait_for_count(common.nodes, "subscribers", || nchan_subscribers(&addr)).await?;
    }
    let one_node_answers = if broadcast {
        None
    } else {
        let t0 = Instant::now();
        publish(&common.addr, vec![channel_of(0, false)], payload.clone(), 1).await?;
        Some(
            collect(&mut rx, common.nodes, t0, Duration::from_secs(2))
                .await
                .len(),
        )
    };
    let mode = if broadcast {
        "one shared channel"
    } else {
        "one channel per node"
    };
    Report {
        peer: format!("nginx+nchan ({mode})"),
        nodes: common.nodes,
        rss_before_kib: rss_before,
        rss_held_kib: rss_held,
        runs,
        one_node_answers,
    }
    .print();
    Ok(())
}
