//! The server on the model in a real etcd member: import, one-entity
//! changes reaching parked polls, commit markers, refusal of an invalid
//! commit, and recovery from compaction and from losing etcd.

mod common;
mod etcd_support;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use edgenet_model::{parse_model, CloudModel, ModelIndex};
use edgenet_server::store::layout::{to_json, Key, Layout};
use edgenet_server::store::push::{pull, push_model};
use etcd_client::{PutOptions, Txn, TxnOp};
use etcd_support::{Etcd, Proxy, PREFIX};
use serde_json::Value;

fn sample() -> CloudModel {
    parse_model(&serde_json::to_vec(&sample_model()).unwrap()).unwrap()
}

fn layout() -> Layout {
    Layout::new(PREFIX)
}

/// Pushes `model` and returns the commit revision.
async fn push(etcd: &Etcd, model: &CloudModel) -> i64 {
    let mut client = etcd.client().await;
    let report = push_model(&mut client, &layout(), model).await.unwrap();
    report.commit_revision.unwrap()
}

/// Writes `(key, value)` pairs in one transaction, with the commit when
/// `commit`: what a controller does for one change.
async fn write(etcd: &Etcd, puts: &[(Key, Vec<u8>)], commit: bool) {
    let layout = layout();
    let mut ops: Vec<TxnOp> = puts
        .iter()
        .map(|(k, v)| TxnOp::put(layout.key(k), v.clone(), None::<PutOptions>))
        .collect();
    if commit {
        ops.push(TxnOp::put(
            layout.key(&Key::Commit),
            br#"{"schema":1}"#.to_vec(),
            None::<PutOptions>,
        ));
    }
    let mut client = etcd.client().await;
    client.txn(Txn::new().and_then(ops)).await.unwrap();
}

/// Waits (bounded) until the server serves the commit at `revision`.
/// `model` pushed, and a server started on it and serving its commit.
async fn serving(etcd: &Etcd, model: &CloudModel) -> TestServer {
    let revision = push(etcd, model).await;
    let server = TestServer::start_etcd(&etcd.url(), &[]).await;
    wait_revision(&server, revision).await;
    server
}

/// One instance written, with the commit marker or without it.
async fn write_instance(etcd: &Etcd, instance: &edgenet_model::Instance, commit: bool) {
    write(
        etcd,
        &[(Key::Instance(instance.id.clone()), to_json(instance))],
        commit,
    )
    .await;
}

async fn wait_revision(server: &TestServer, revision: i64) -> Value {
    for _ in 0..200 {
        let status = server.status().await;
        if status["Model"]["Revision"].as_i64() >= Some(revision) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("revision {revision} was not served");
}

/// `nc-1`'s first instance with a new MAC: a change of nc-1's view only.
fn relaunched(model: &CloudModel) -> edgenet_model::Instance {
    let mut instance = model
        .instances
        .iter()
        .find(|i| i.node == "nc-1")
        .unwrap()
        .clone();
    instance.mac = "02:00:00:aa:bb:cc".into();
    instance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_model_is_served_with_the_files_ids_and_pulls_back() {
    let etcd = Etcd::start().await;
    let model = sample();
    let revision = push(&etcd, &model).await;
    let server = TestServer::start_etcd(&etcd.url(), &[]).await;
    let status = wait_revision(&server, revision).await;
    assert_eq!(status["Model"]["Source"], "etcd");
    let index = ModelIndex::build(Arc::new(model.clone()));
    for node in &model.nodes {
        let id = server.current_id(&node.id).await;
        assert_eq!(
            Some(id.as_str()),
            index.state_id(&node.id).map(|s| s.as_str())
        );
    }
    let pulled = pull(&etcd.config()).await.unwrap();
    assert!(edgenet_model::ModelChange::between(&model, &pulled).is_empty());
    // Nothing differs: a second push writes nothing.
    let mut client = etcd.client().await;
    let again = push_model(&mut client, &layout(), &model).await.unwrap();
    assert_eq!(
        (again.puts, again.deletes, again.commit_revision),
        (0, 0, None)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_instance_commit_wakes_only_the_affected_nodes_parked_poll() {
    let etcd = Etcd::start().await;
    let model = sample();
    let server = serving(&etcd, &model).await;
    let mut polls = Vec::new();
    for node in ["nc-1", "nc-2", "nc-3"] {
        let id = server.current_id(node).await;
        let side = server.client_side();
        polls.push(tokio::spawn(async move {
            side.get(&admin_key(), &poll_params(node, &id, "30")).await
        }));
    }
    server.wait_parked(3).await;
    let instance = relaunched(&model);
    write_instance(&etcd, &instance, true).await;
    let answer = polls.remove(0).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert!(answer.text().contains("02:00:00:aa:bb:cc"));
    // The other two are still parked: their views did not change.
    assert_eq!(server.server().parked_polls(), 2);
    assert!(polls.iter().all(|p| !p.is_finished()));
    server.shutdown().await;
    for poll in polls {
        assert_eq!(poll.await.unwrap().status, 304);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncommitted_entities_are_not_served_until_the_commit() {
    let etcd = Etcd::start().await;
    let model = sample();
    let server = serving(&etcd, &model).await;
    let before = server.current_id("nc-1").await;
    let instance = relaunched(&model);
    write_instance(&etcd, &instance, false).await;
    // A poll that waits out its time sees no change: the write is held.
    let r = server
        .get(&admin_key(), &poll_params("nc-1", &before, "2"))
        .await;
    assert_eq!(r.status, 304);
    write(&etcd, &[], true).await;
    let r = server
        .get(&admin_key(), &poll_params("nc-1", &before, "10"))
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("02:00:00:aa:bb:cc"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_commit_is_refused_and_the_last_valid_model_served() {
    let etcd = Etcd::start().await;
    let model = sample();
    let server = serving(&etcd, &model).await;
    let before = server.current_id("nc-1").await;
    let mut bad = relaunched(&model);
    bad.private_ip = "10.1.0.999".into();
    write_instance(&etcd, &bad, true).await;
    let mut status = server.status().await;
    for _ in 0..200 {
        if status["Model"]["InvalidCount"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        status = server.status().await;
    }
    assert_eq!(status["Model"]["InvalidCount"], 1, "{status}");
    let error = status["Model"]["LastError"].as_str().unwrap();
    assert!(error.contains("private_ip"), "{error}");
    assert_eq!(server.current_id("nc-1").await, before);
    // A valid commit after it is served, and clears the error.
    let good = relaunched(&model);
    write_instance(&etcd, &good, true).await;
    let r = server
        .get(&admin_key(), &poll_params("nc-1", &before, "10"))
        .await;
    assert_eq!(r.status, 200);
    assert!(server.status().await["Model"]["LastError"].is_null());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_across_a_commit_and_a_compaction_catches_up() {
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(etcd.client_port).await;
    let model = sample();
    let revision = push(&etcd, &model).await;
    let server = TestServer::start_etcd(&proxy.url(), &[]).await;
    wait_revision(&server, revision).await;
    let before = server.current_id("nc-1").await;
    let unrelated = server.current_id("nc-2").await;
    let side = server.client_side();
    let held = unrelated.clone();
    let parked = tokio::spawn(async move {
        side.get(&admin_key(), &poll_params("nc-2", &held, "30"))
            .await
    });
    server.wait_parked(1).await;
    proxy.set_open(false);
    // While the replica is cut off: a commit, then a compaction past it,
    // so the watch cannot resume where it was.
    let instance = relaunched(&model);
    write_instance(&etcd, &instance, true).await;
    let mut client = etcd.client().await;
    let newest = client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(newest, None).await.unwrap();
    proxy.set_open(true);
    let r = server
        .get(&admin_key(), &poll_params("nc-1", &before, "20"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("02:00:00:aa:bb:cc"));
    // The full read changed nothing for nc-2: its poll is still parked.
    assert!(!parked.is_finished());
    server.shutdown().await;
    assert_eq!(parked.await.unwrap().status, 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_past_a_compaction_serves_the_last_commit() {
    let etcd = Etcd::start().await;
    let model = sample();
    let revision = push(&etcd, &model).await;
    let mut client = etcd.client().await;
    let newest = client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(newest, None).await.unwrap();
    let server = TestServer::start_etcd(&etcd.url(), &[]).await;
    wait_revision(&server, revision).await;
    let index = ModelIndex::build(Arc::new(model.clone()));
    let committed = index.state_id("nc-1").unwrap().as_str().to_owned();
    assert_eq!(server.current_id("nc-1").await, committed);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_etcd_keeps_serving_reports_503_and_recovers_without_a_change() {
    let mut etcd = Etcd::start().await;
    let model = sample();
    let server = serving(&etcd, &model).await;
    let id = server.current_id("nc-2").await;
    let side = server.client_side();
    let held = id.clone();
    let parked = tokio::spawn(async move {
        side.get(&admin_key(), &poll_params("nc-2", &held, "30"))
            .await
    });
    server.wait_parked(1).await;
    etcd.kill();
    let health = |server: &TestServer| {
        let (client, url) = (server.client.clone(), format!("{}healthz", server.url));
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let mut answer = health(&server).await;
    for _ in 0..400 {
        if answer.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        answer = health(&server).await;
    }
    assert_eq!(answer.0, 503, "{}", answer.1);
    assert!(answer.1.contains("etcd"), "{}", answer.1);
    assert_eq!(server.current_id("nc-2").await, id, "still serving");
    etcd.restart().await;
    for _ in 0..400 {
        if health(&server).await.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(health(&server).await.0, 200);
    // The full read found what was served: the parked poll was not woken.
    assert!(!parked.is_finished());
    assert_eq!(server.server().parked_polls(), 1);
    assert!(server
        .metrics()
        .await
        .contains("edgenet_server_etcd_errors_total"));
    server.shutdown().await;
    assert_eq!(parked.await.unwrap().status, 304);
}
