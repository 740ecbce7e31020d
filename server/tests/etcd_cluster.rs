//! Two replicas on a three-member etcd cluster: one member down, commits
//! still reach both; quorum lost, both keep serving (503 on /healthz);
//! quorum back, both converge on the same ids.

mod common;
mod etcd_support;

use std::time::Duration;

use common::*;
use edgenet_model::{parse_model, CloudModel, Instance};
use edgenet_server::store::layout::{to_json, Key, Layout};
use edgenet_server::store::push::push_model;
use etcd_client::{PutOptions, Txn, TxnOp};
use etcd_support::{Cluster, PREFIX};

/// Commits `instance` in one transaction, retrying while the client still
/// tries a dead member; returns the commit revision.
async fn commit(cluster: &Cluster, instance: &Instance) -> i64 {
    let layout = Layout::new(PREFIX);
    for _ in 0..100 {
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
        let mut client = cluster.client().await;
        if let Ok(answer) = client.txn(Txn::new().and_then(ops)).await {
            return answer.header().unwrap().revision();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no member took the commit");
}

async fn wait_revision(server: &TestServer, revision: i64) {
    for _ in 0..800 {
        if server.status().await["Model"]["Revision"].as_i64() >= Some(revision) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("revision {revision} was not served");
}

async fn healthz(server: &TestServer) -> u16 {
    let r = server
        .client
        .get(format!("{}healthz", server.url))
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

async fn wait_health(server: &TestServer, status: u16) {
    for _ in 0..800 {
        if healthz(server).await == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("/healthz never answered {status}");
}

async fn ids(server: &TestServer, model: &CloudModel) -> Vec<String> {
    let mut ids = Vec::new();
    for node in &model.nodes {
        ids.push(server.current_id(&node.id).await);
    }
    ids
}

async fn same_ids_at(replicas: &[&TestServer], revision: i64, model: &CloudModel) -> Vec<String> {
    for replica in replicas {
        wait_revision(replica, revision).await;
    }
    let first = ids(replicas[0], model).await;
    for replica in &replicas[1..] {
        assert_eq!(ids(replica, model).await, first);
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_ride_out_a_member_loss_and_a_quorum_loss() {
    let mut cluster = Cluster::start(3).await;
    let model = parse_model(&serde_json::to_vec(&sample_model()).unwrap()).unwrap();
    let mut client = cluster.client().await;
    let pushed = push_model(&mut client, &Layout::new(PREFIX), &model)
        .await
        .unwrap();
    let a = TestServer::start_etcd(&cluster.urls(), &[]).await;
    let b = TestServer::start_etcd(&cluster.urls(), &[]).await;
    let start = same_ids_at(&[&a, &b], pushed.commit_revision.unwrap(), &model).await;

    cluster.kill(0);
    let mut instance = model.instances[0].clone();
    instance.mac = "02:00:00:00:0e:01".into();
    let one_down = commit(&cluster, &instance).await;
    let after_one = same_ids_at(&[&a, &b], one_down, &model).await;
    assert_ne!(after_one, start);

    cluster.kill(1);
    wait_health(&a, 503).await;
    wait_health(&b, 503).await;
    assert_eq!(ids(&a, &model).await, after_one, "still serving");
    assert_eq!(ids(&b, &model).await, after_one, "still serving");

    cluster.restart(0).await;
    cluster.restart(1).await;
    instance.mac = "02:00:00:00:0e:02".into();
    let restored = commit(&cluster, &instance).await;
    let after_restore = same_ids_at(&[&a, &b], restored, &model).await;
    assert_ne!(after_restore, after_one);
    wait_health(&a, 200).await;
    wait_health(&b, 200).await;
    a.shutdown().await;
    b.shutdown().await;
}
