//! `edgenet-server model push` and `model pull` against a real etcd
//! member: only differences are written, an invalid file writes nothing, a
//! concurrent writer makes a push fail, and a 100,000-instance import fits
//! etcd's transaction limits.

mod common;
mod etcd_support;

use std::process::Command;
use std::time::Instant;

use common::sample_model;
use edgenet_model::synthetic::{generate, Shape};
use edgenet_model::{parse_model, CloudModel, ModelChange};
use edgenet_server::store::layout::{to_json, Key, Layout};
use edgenet_server::store::push::{pull, push_model, PushError, PushPlan};
use etcd_client::GetOptions;
use etcd_support::{Etcd, PREFIX};

const BIN: &str = env!("CARGO_BIN_EXE_edgenet-server");

fn model_cmd(etcd: &Etcd, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("model")
        .args(args)
        .args(["--etcd", &etcd.url()])
        .output()
        .unwrap()
}

async fn keys_under_prefix(etcd: &Etcd) -> i64 {
    let mut client = etcd.client().await;
    let options = GetOptions::new().with_prefix().with_count_only();
    client.get(PREFIX, Some(options)).await.unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_writes_only_what_differs_and_pull_gives_the_model_back() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cloud.json");
    let mut model = sample_model();
    std::fs::write(&file, serde_json::to_vec(&model).unwrap()).unwrap();
    let file_arg = file.to_str().unwrap();

    let out = model_cmd(&etcd, &["push", file_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = model_cmd(&etcd, &["push", file_arg]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing differed"));

    model["instances"][0]["mac"] = "02:00:00:00:77:77".into();
    std::fs::write(&file, serde_json::to_vec(&model).unwrap()).unwrap();
    let out = model_cmd(&etcd, &["push", file_arg]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("1 put, 0 deleted in 1 transactions"),
        "{said}"
    );

    let out = model_cmd(&etcd, &["pull"]);
    assert!(out.status.success());
    let pulled = parse_model(&out.stdout).unwrap();
    let wanted = parse_model(&serde_json::to_vec(&model).unwrap()).unwrap();
    assert!(ModelChange::between(&wanted, &pulled).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_refused_with_every_error_and_nothing_written() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cloud.json");
    let mut model = sample_model();
    model["instances"][0]["private_ip"] = "10.1.0.999".into();
    model["nodes"][0]["bridge"] = "".into();
    std::fs::write(&file, serde_json::to_vec(&model).unwrap()).unwrap();
    let out = model_cmd(&etcd, &["push", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("private_ip") && said.contains("bridge"),
        "{said}"
    );
    assert_eq!(keys_under_prefix(&etcd).await, 0);
    let out = model_cmd(&etcd, &["pull"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing is committed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_writer_makes_the_push_fail_and_keeps_its_change() {
    let etcd = Etcd::start().await;
    let layout = Layout::new(PREFIX);
    let model = parse_model(&serde_json::to_vec(&sample_model()).unwrap()).unwrap();
    let mut client = etcd.client().await;
    push_model(&mut client, &layout, &model).await.unwrap();

    let mut ours = model.clone();
    ours.instances[0].mac = "02:00:00:00:00:01".into();
    let plan = PushPlan::read(&mut client, &layout, &ours).await.unwrap();
    // Another writer changes the same instance after our read.
    let mut theirs = model.instances[0].clone();
    theirs.mac = "02:00:00:00:00:02".into();
    let key = layout.key(&Key::Instance(theirs.id.clone()));
    client
        .put(key.clone(), to_json(&theirs), None)
        .await
        .unwrap();

    let error = plan.write(&mut client).await.unwrap_err();
    assert!(matches!(error, PushError::Concurrent { .. }), "{error}");
    assert!(error.to_string().contains("another writer"));
    let stored = client.get(key, None).await.unwrap();
    assert_eq!(stored.kvs()[0].value(), to_json(&theirs).as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100000_instance_import_fits_etcds_limits() {
    let etcd = Etcd::start().await;
    let layout = Layout::new(PREFIX);
    let model: CloudModel = generate(Shape {
        nodes: 1_000,
        instances: 100_000,
        groups: 100,
        seed: 3,
    });
    let mut client = etcd.client().await;
    let started = Instant::now();
    let report = push_model(&mut client, &layout, &model).await.unwrap();
    let took = started.elapsed();
    println!(
        "model push of 100,000 instances into an empty store: {:.1} s, {} transactions, {} keys",
        took.as_secs_f64(),
        report.transactions,
        report.puts
    );
    let entities = model.instances.len()
        + model.nodes.len()
        + model.security_groups.len()
        + model.subnets.len()
        + model.routes.len()
        + 2; // metadata and the pool
    assert_eq!(report.puts, entities);
    assert!(report.transactions <= entities.div_ceil(127));
    let pulled = pull(&etcd.config()).await.unwrap();
    assert_eq!(pulled.instances.len(), 100_000);
    assert!(ModelChange::between(&model, &pulled).is_empty());
}

#[test]
fn model_and_etcd_exclude_each_other() {
    let out = Command::new(BIN)
        .args(["--model", "cloud.json", "--etcd", "http://127.0.0.1:1"])
        .args(["--insecure-no-auth", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--etcd") && said.contains("--model"),
        "{said}"
    );
    let neither = Command::new(BIN)
        .args(["--insecure-no-auth"])
        .output()
        .unwrap();
    assert_eq!(neither.status.code(), Some(1));
}
