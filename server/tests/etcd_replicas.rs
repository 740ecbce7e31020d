//! Two `edgenet-server --etcd` processes on one etcd member: the same
//! commit gives every node the same state id on both, and feedback a node
//! gives one replica shows in the other's DescribeNodeStatus.

mod common;
mod etcd_support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use edgenet_model::{parse_model, CloudModel};
use edgenet_server::store::layout::{to_json, Key, Layout};
use edgenet_server::store::push::push_model;
use etcd_client::{PutOptions, Txn, TxnOp};
use etcd_support::{Etcd, PREFIX};

const BIN: &str = env!("CARGO_BIN_EXE_edgenet-server");

struct Replica {
    child: Child,
    side: TestServer,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on etcd with the test keys and a shared token key.
fn replica(etcd: &Etcd, dir: &tempfile::TempDir) -> Replica {
    let creds = dir.path().join("credentials.toml");
    if !creds.exists() {
        std::fs::write(&creds, CREDENTIALS).unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut child = Command::new(BIN)
        .args(["--etcd", &etcd.url(), "--listen", "127.0.0.1:0"])
        .arg("--credentials")
        .arg(&creds)
        .arg("--token-key")
        .arg(dir.path().join("token.key"))
        .env("EDGENET_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("local_addr=").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let side = TestServer {
        server: None,
        dir: tempfile::tempdir().unwrap(),
        model_path: dir.path().join("unused.json"),
        url: format!("http://{addr}/"),
        client: reqwest::Client::builder().no_gzip().build().unwrap(),
    };
    Replica { child, side }
}

async fn wait_revision(server: &TestServer, revision: i64) {
    for _ in 0..400 {
        if server.status().await["Model"]["Revision"].as_i64() >= Some(revision) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("revision {revision} was not served");
}

async fn ids(server: &TestServer, model: &CloudModel) -> Vec<String> {
    let mut ids = Vec::new();
    for node in &model.nodes {
        ids.push(server.current_id(&node.id).await);
    }
    ids
}

async fn commit_instance(etcd: &Etcd, instance: &edgenet_model::Instance) -> i64 {
    let layout = Layout::new(PREFIX);
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
    let mut client = etcd.client().await;
    let answer = client.txn(Txn::new().and_then(ops)).await.unwrap();
    answer.header().unwrap().revision()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_give_every_node_the_same_id_at_every_commit() {
    let etcd = Etcd::start().await;
    let model = parse_model(&serde_json::to_vec(&sample_model()).unwrap()).unwrap();
    let mut client = etcd.client().await;
    let first = push_model(&mut client, &Layout::new(PREFIX), &model)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (replica(&etcd, &dir), replica(&etcd, &dir));
    let mut instance = model.instances[0].clone();
    let mut seen = Vec::new();
    // One commit at a time: both replicas at the same revision, compared.
    for step in 0..3 {
        let revision = match step {
            0 => first.commit_revision.unwrap(),
            n => {
                instance.mac = format!("02:00:00:00:01:0{n}");
                commit_instance(&etcd, &instance).await
            }
        };
        wait_revision(&a.side, revision).await;
        wait_revision(&b.side, revision).await;
        let (ids_a, ids_b) = (ids(&a.side, &model).await, ids(&b.side, &model).await);
        assert_eq!(ids_a, ids_b, "at revision {revision}");
        seen.push(ids_a);
    }
    assert_ne!(seen[0], seen[2], "the commits changed ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_given_to_one_replica_shows_in_the_others_status() {
    let etcd = Etcd::start().await;
    let model = parse_model(&serde_json::to_vec(&sample_model()).unwrap()).unwrap();
    let mut client = etcd.client().await;
    let pushed = push_model(&mut client, &Layout::new(PREFIX), &model)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (replica(&etcd, &dir), replica(&etcd, &dir));
    wait_revision(&a.side, pushed.commit_revision.unwrap()).await;
    wait_revision(&b.side, pushed.commit_revision.unwrap()).await;
    let id = a.side.current_id("nc-1").await;
    let mut params = poll_params("nc-1", &id, "0");
    params.push(("AppliedStateId", &id));
    let started = Instant::now();
    let r = a.side.get(&nc1_key(), &params).await;
    assert_eq!(r.status, 304, "{}", r.text());
    let mut shown = false;
    for _ in 0..200 {
        let status = b.side.status().await;
        let nodes = status["Nodes"].as_array().unwrap();
        let nc1 = nodes.iter().find(|n| n["NodeId"] == "nc-1").unwrap();
        if nc1["AppliedStateId"] == id.as_str() {
            assert_eq!(nc1["Converged"], true);
            shown = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(shown, "the other replica never showed nc-1's feedback");
    println!(
        "feedback reached the other replica in {:?}",
        started.elapsed()
    );
}
