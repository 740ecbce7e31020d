//! The server reaches an etcd member that requires client certificates
//! with --etcd-ca/--etcd-cert/--etcd-key, and without them cannot.

mod common;
mod etcd_support;

use std::time::Duration;

use common::*;
use edgenet_model::parse_model;
use edgenet_server::store::layout::Layout;
use edgenet_server::store::push::push_model;
use etcd_support::{Etcd, PREFIX};

async fn healthz(server: &TestServer) -> (u16, String) {
    let r = server
        .client
        .get(format!("{}healthz", server.url))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_reach_a_member_that_requires_them() {
    let etcd = Etcd::start_tls().await;
    let model = parse_model(&serde_json::to_vec(&sample_model()).unwrap()).unwrap();
    let mut client = etcd.client().await;
    let pushed = push_model(&mut client, &Layout::new(PREFIX), &model)
        .await
        .unwrap();
    let certs = etcd.certs();
    let server = TestServer::start_etcd(
        &etcd.url(),
        &[
            "--etcd-ca",
            certs.ca.to_str().unwrap(),
            "--etcd-cert",
            certs.client_cert.to_str().unwrap(),
            "--etcd-key",
            certs.client_key.to_str().unwrap(),
        ],
    )
    .await;
    let mut revision = None;
    for _ in 0..400 {
        revision = server.status().await["Model"]["Revision"].as_i64();
        if revision.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(revision, pushed.commit_revision);
    assert_eq!(healthz(&server).await.0, 200);
    server.shutdown().await;

    // Trusting the CA but showing no certificate: etcd refuses us.
    let server =
        TestServer::start_etcd(&etcd.url(), &["--etcd-ca", certs.ca.to_str().unwrap()]).await;
    let mut health = healthz(&server).await;
    for _ in 0..400 {
        if health.0 == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        health = healthz(&server).await;
    }
    assert_eq!(health.0, 503, "{}", health.1);
    assert!(server.status().await["Model"]["Revision"].is_null());
    server.shutdown().await;
}
