//! `store-launch`: one instance launch, from the write to the affected
//! node's parked poll answered, through the model file and through etcd
//! (a controller's one-transaction write, and `model push` of the whole
//! file), against the same model in the same run.
//!
//! Starts its own throwaway etcd member (Debian's `etcd`, data in a
//! temporary directory, loopback ports) and two in-process servers
//! (`--insecure-no-auth`), one per source.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use edgenet_model::synthetic::{generate, Shape};
use edgenet_model::{CloudModel, Instance};
use edgenet_server::store::layout::{to_json, Key, Layout, DEFAULT_PREFIX};
use edgenet_server::store::push::push_model;
use edgenet_server::store::EtcdConfig;
use edgenet_server::{Cli as ServerCli, Server};

#[derive(Parser)]
#[command(
    name = "store-launch",
    about = "One instance launch: model file vs etcd"
)]
struct Cli {
    #[arg(long, default_value_t = 2_000)]
    nodes: usize,
    #[arg(long, default_value_t = 40_000)]
    instances: usize,
    #[arg(long, default_value_t = 100)]
    groups: usize,
    /// Launches per path.
    #[arg(long, default_value_t = 5)]
    launches: usize,
}

/// The member, its data directory (removed on drop) and its client port.
struct Etcd(Child, #[allow(dead_code)] tempfile::TempDir, u16);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_etcd() -> anyhow::Result<Etcd> {
    let dir = tempfile::tempdir()?;
    let (client, peer) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args(["--name", "bench", "--log-level", "error"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("bench={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting etcd (Debian's etcd-server)")?;
    let etcd = Etcd(child, dir, client);
    let mut c = config(&etcd).connect().await?;
    for _ in 0..400 {
        if c.get("ready", None).await.is_ok() {
            return Ok(etcd);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("etcd did not come up")
}

fn config(etcd: &Etcd) -> EtcdConfig {
    EtcdConfig::new(&format!("http://127.0.0.1:{}", etcd.2), DEFAULT_PREFIX)
}

async fn server(source: &[&str]) -> anyhow::Result<Server> {
    let mut args = vec![
        "edgenet-server",
        "--insecure-no-auth",
        "--listen",
        "127.0.0.1:0",
    ];
    args.extend(source);
    Ok(edgenet_server::start(&ServerCli::try_parse_from(args)?).await?)
}

/// The state id of `node` now, and then an answer to a poll parked on it.
async fn poll(
    http: &reqwest::Client,
    url: &str,
    node: &str,
    held: &str,
    wait: u32,
) -> anyhow::Result<String> {
    let url = format!(
        "{url}?Action=DescribeNetworkModel&Version=2026-11-01&NodeId={node}&StateId={held}&WaitSeconds={wait}"
    );
    let answer = http.get(url).send().await?;
    if answer.status() != 200 {
        bail!("poll answered {}", answer.status());
    }
    let body: serde_json::Value = serde_json::from_slice(&answer.bytes().await?)?;
    Ok(body["StateId"].as_str().unwrap_or_default().to_owned())
}

/// Times one launch: parks a poll on the instance's node, runs `write`,
/// and waits for the poll's answer.
async fn timed_launch<F>(
    server: &Server,
    http: &reqwest::Client,
    node: &str,
    write: F,
) -> anyhow::Result<Duration>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let url = server.url();
    let held = poll(http, &url, node, "none", 0).await?;
    let parked = {
        let (http, url, node, held) = (http.clone(), url.clone(), node.to_owned(), held.clone());
        tokio::spawn(async move { poll(&http, &url, &node, &held, 60).await })
    };
    while server.parked_polls() < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    write.await?;
    let new = parked.await??;
    let took = started.elapsed();
    if new == held {
        bail!("the poll was not answered with a new view");
    }
    Ok(took)
}

fn write_file(path: &Path, model: &CloudModel) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(model)?)?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

async fn controller_txn(etcd: &Etcd, instance: &Instance) -> anyhow::Result<()> {
    use etcd_client::{PutOptions, Txn, TxnOp};
    let layout = Layout::new(DEFAULT_PREFIX);
    let ops = vec![
        TxnOp::put(
            layout.key(&Key::Instance(instance.id.clone())),
            to_json(instance),
            None::<PutOptions>,
        ),
        TxnOp::put(
            layout.key(&Key::Commit),
            br#"{"schema":1}"#.to_vec(),
            None::<PutOptions>,
        ),
    ];
    config(etcd)
        .connect()
        .await?
        .txn(Txn::new().and_then(ops))
        .await?;
    Ok(())
}

fn summary(name: &str, times: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    println!(
        "{name:<34} median {median:8.1} ms   min {:8.1}   max {:8.1}   (n={})",
        ms[0],
        ms[ms.len() - 1],
        ms.len()
    );
    median
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The launched instances are the last of a larger synthetic model (so
    // ids and addresses stay unique), without groups: each touches its node only.
    let launches = 3 * cli.launches;
    let mut model = generate(Shape {
        nodes: cli.nodes,
        instances: cli.instances + launches,
        groups: cli.groups,
        seed: 1,
    });
    let mut new: Vec<Instance> = model.instances.split_off(cli.instances);
    for instance in &mut new {
        instance.security_groups = None;
    }
    println!(
        "model: {} nodes, {} instances, {} groups; {} launches per path",
        cli.nodes, cli.instances, cli.groups, cli.launches
    );

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("cloud.json");
    write_file(&file, &model)?;
    let etcd = start_etcd().await?;
    let layout = Layout::new(DEFAULT_PREFIX);
    let mut client = config(&etcd).connect().await?;
    let import = Instant::now();
    let report = push_model(&mut client, &layout, &model).await?;
    println!(
        "model push into an empty store: {:.2} s, {} transactions",
        import.elapsed().as_secs_f64(),
        report.transactions
    );
    let file_server = server(&["--model", file.to_str().unwrap_or_default()]).await?;
    let etcd_url = format!("http://127.0.0.1:{}", etcd.2);
    let etcd_server = server(&["--etcd", &etcd_url]).await?;
    let http = reqwest::Client::new();
    // Let the etcd replica finish its first read (until then it knows no node).
    let first = new[0].node.clone();
    let mut ready = false;
    for _ in 0..600 {
        if poll(&http, &etcd_server.url(), &first, "none", 0)
            .await
            .is_ok()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !ready {
        bail!("the etcd replica never served the pushed model");
    }

    let (mut by_file, mut by_txn, mut by_push) = (Vec::new(), Vec::new(), Vec::new());
    let mut launched = new.into_iter();
    let mut file_model = model.clone();
    for _ in 0..cli.launches {
        let a = launched.next().context("launch")?;
        file_model.instances.push(a.clone());
        let write = async { write_file(&file, &file_model) };
        by_file.push(timed_launch(&file_server, &http, &a.node, write).await?);

        let b = launched.next().context("launch")?;
        by_txn.push(timed_launch(&etcd_server, &http, &b.node, controller_txn(&etcd, &b)).await?);
        model.instances.push(b);

        let c = launched.next().context("launch")?;
        model.instances.push(c.clone());
        // Same shape as the file path: one instance more than served.
        let push = async {
            push_model(&mut client, &layout, &model).await?;
            Ok(())
        };
        by_push.push(timed_launch(&etcd_server, &http, &c.node, push).await?);
    }
    let file_ms = summary("model file (rename into place)", &by_file);
    let txn_ms = summary("etcd, one controller transaction", &by_txn);
    let push_ms = summary("etcd, model push of the file", &by_push);
    println!(
        "file / etcd transaction: {:.1}x   file / model push: {:.1}x",
        file_ms / txn_ms,
        file_ms / push_ms
    );
    file_server.shutdown().await;
    etcd_server.shutdown().await;
    Ok(())
}
