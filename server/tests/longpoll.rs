//! The long-poll behaviour over real HTTP on loopback.

mod common;

use std::time::{Duration, Instant};

use common::*;
use edgenet_model::{parse_model, ModelIndex};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_poll_is_woken_by_a_change_of_its_view() {
    let t = TestServer::start(&[]).await;
    let first = t.get(&nc1_key(), &poll_params("nc-1", "", "10")).await;
    assert_eq!(first.status, 200);
    let body = first.json();
    let id = body["StateId"].as_str().unwrap().to_owned();
    assert!(id.starts_with("v1-") && id.len() == 35, "{id}");
    assert_eq!(body["NodeId"], "nc-1");
    assert_eq!(body["View"]["node"]["id"], "nc-1");
    assert_eq!(first.header("etag"), Some(format!("\"{id}\"").as_str()));
    assert_eq!(first.header("content-type"), Some("application/json"));

    let poll = {
        let (t2, id) = (t.client_side(), id.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            (
                t2.get(&nc1_key(), &poll_params("nc-1", &id, "10")).await,
                started.elapsed(),
            )
        })
    };
    t.wait_parked(1).await;
    t.write_model(&with_bridge(sample_model(), "nc-1", "br7"));
    let (answer, took) = poll.await.unwrap();
    assert_eq!(answer.status, 200);
    let new_id = answer.json()["StateId"].as_str().unwrap().to_owned();
    assert_ne!(new_id, id);
    assert_eq!(answer.json()["View"]["node"]["bridge"], "br7");
    assert!(took < Duration::from_secs(3), "{took:?}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targeted_change_wakes_exactly_the_nodes_whose_view_changed() {
    let t = TestServer::start(&[]).await;
    let mut polls = Vec::new();
    for node in ["nc-1", "nc-2", "nc-3"] {
        let id = t.current_id(node).await;
        for _ in 0..3 {
            let (c, id) = (t.client_side(), id.clone());
            polls.push(tokio::spawn(async move {
                let r = c.get(&admin_key(), &poll_params(node, &id, "4")).await;
                (node, r.status, Instant::now())
            }));
        }
    }
    t.wait_parked(9).await;
    let changed_at = Instant::now();
    t.write_model(&with_bridge(sample_model(), "nc-2", "br9"));
    let mut early = Vec::new();
    let mut late = 0;
    for p in polls {
        let (node, status, at) = p.await.unwrap();
        if at.duration_since(changed_at) < Duration::from_secs(2) {
            early.push((node, status));
        } else {
            assert_eq!(status, 304, "{node}");
            late += 1;
        }
    }
    assert_eq!(
        early,
        vec![("nc-2", 200); 3],
        "only nc-2's polls answer the change"
    );
    assert_eq!(late, 6);
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("edgenet_server_wakeups_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("edgenet_server_model_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_expires_with_304_after_wait_seconds_plus_at_most_a_sixteenth() {
    let t = TestServer::start(&["--max-wait-seconds", "2"]).await;
    let id = t.current_id("nc-1").await;
    let now = t.get(&nc1_key(), &poll_params("nc-1", &id, "0")).await;
    assert_eq!(now.status, 304);
    assert!(now.body.is_empty());
    assert_eq!(now.header("etag"), Some(format!("\"{id}\"").as_str()));

    let mut polls = Vec::new();
    for wait in ["1", "1", "1", "1", "2", "2", "2", "2", "3600"] {
        let (c, id) = (t.client_side(), id.clone());
        polls.push(tokio::spawn(async move {
            let started = Instant::now();
            let r = c.get(&nc1_key(), &poll_params("nc-1", &id, wait)).await;
            (wait, r, started.elapsed())
        }));
    }
    let mut one_second = Vec::new();
    for p in polls {
        let (wait, r, took) = p.await.unwrap();
        assert_eq!(r.status, 304, "{}", r.text());
        let w: f64 = wait.parse::<f64>().unwrap().min(2.0); // clamped to --max-wait-seconds
        let secs = took.as_secs_f64();
        assert!(
            secs >= w && secs <= w * 17.0 / 16.0 + 0.4, // slack for a loaded CI machine
            "WaitSeconds={wait}: {secs}"
        );
        if wait == "1" {
            one_second.push(secs);
        }
    }
    let spread = one_second.iter().cloned().fold(f64::MIN, f64::max)
        - one_second.iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        spread > 0.001,
        "jitter spreads the timeouts: {one_second:?}"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_give_equal_answers() {
    let t = TestServer::start(&[]).await;
    let params = [
        ("Action", "DescribeNetworkModel"),
        ("NodeId", "nc-2"),
        ("WaitSeconds", "0"),
    ];
    let g = t.get(&nc2_key(), &params).await;
    let p = t.post(&nc2_key(), &params, "ec2").await;
    assert_eq!((g.status, p.status), (200, 200));
    assert_eq!(g.body, p.body);
    assert_eq!(g.header("etag"), p.header("etag"));
    // On another path too, and with a body that only spaces differ in (+ vs %20).
    let mut req =
        edgenet_auth::query_get_request(&format!("{}services/compute/", t.url), &params).unwrap();
    edgenet_auth::sign_request(
        &mut req,
        &nc2_key(),
        REGION,
        "ec2",
        std::time::SystemTime::now(),
    )
    .unwrap();
    assert_eq!(t.send(req).await.body, g.body);
    let id = g.json()["StateId"].as_str().unwrap().to_owned();
    let g = t.get(&nc2_key(), &poll_params("nc-2", &id, "0")).await;
    let p = t
        .post(&nc2_key(), &poll_params("nc-2", &id, "0"), "ec2")
        .await;
    assert_eq!((g.status, p.status), (304, 304));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_is_used_when_asked_for() {
    let t = TestServer::start(&[]).await;
    let mut req = edgenet_auth::query_get_request(
        &t.url,
        &[("Action", "DescribeNetworkModel"), ("NodeId", "nc-1")],
    )
    .unwrap();
    edgenet_auth::sign_request(
        &mut req,
        &nc1_key(),
        REGION,
        "ec2",
        std::time::SystemTime::now(),
    )
    .unwrap();
    req.headers_mut()
        .insert("accept-encoding", "gzip".parse().unwrap());
    let r = t.send(req).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&r.body[..]), &mut plain).unwrap();
    let j: serde_json::Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(j["NodeId"], "nc-1");
    let plain_reply = t
        .get(
            &nc1_key(),
            &[("Action", "DescribeNetworkModel"), ("NodeId", "nc-1")],
        )
        .await;
    assert_eq!(plain_reply.header("content-encoding"), None);
    assert_eq!(plain_reply.body, plain);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_model_is_refused_and_the_last_valid_one_stays() {
    let t = TestServer::start(&[]).await;
    let id = t.current_id("nc-1").await;
    let mut bad = sample_model();
    bad["instances"][0]["private_ip"] = "10.9.9.9".into();
    t.write_model(&bad);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let s = t.status().await;
        if s["Model"]["InvalidCount"] == 1 {
            break s;
        }
        assert!(Instant::now() < deadline, "refusal not reported: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let err = status["Model"]["LastError"].as_str().unwrap();
    assert!(err.contains("private_ip"), "{err}");
    assert_eq!(
        t.current_id("nc-1").await,
        id,
        "the old model is still served"
    );
    // A partial in-place write is refused too; the next complete one is taken.
    t.write_model_in_place(b"{\"schema\": 1, \"nodes\": [");
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.write_model_in_place(
        &serde_json::to_vec(&with_bridge(sample_model(), "nc-1", "br3")).unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.current_id("nc-1").await == id {
        assert!(Instant::now() < deadline, "in-place write not picked up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = t.status().await;
    assert_eq!(s["Model"]["LastError"], serde_json::Value::Null, "{s}");
    assert!(s["Model"]["InvalidCount"].as_u64().unwrap() >= 1);
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("edgenet_server_model_reloads_total{result=\"refused\"}"),
        "{metrics}"
    );
    t.shutdown().await;
}

/// Many polls arrive while models are swapped rapidly: each either gets the
/// new view at once or is woken; none is left parked on a stale id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_poll_parks_on_a_stale_id_while_models_swap() {
    let t = TestServer::start(&["--reload-debounce-ms", "1"]).await;
    const SWAPS: usize = 25;
    let models: Vec<serde_json::Value> = (0..SWAPS)
        .map(|i| with_bridge(sample_model(), "nc-1", &format!("br{i}")))
        .collect();
    let last = models.last().unwrap();
    let final_id = ModelIndex::build(std::sync::Arc::new(
        parse_model(&serde_json::to_vec(last).unwrap()).unwrap(),
    ))
    .state_id("nc-1")
    .unwrap()
    .as_str()
    .to_owned();
    let mut pollers = Vec::new();
    for _ in 0..30 {
        let (c, final_id) = (t.client_side(), final_id.clone());
        pollers.push(tokio::spawn(async move {
            let mut held = String::new();
            let mut answers = 0;
            while held != final_id {
                let r = c.get(&nc1_key(), &poll_params("nc-1", &held, "30")).await;
                assert_eq!(r.status, 200, "{}", r.text());
                held = r.json()["StateId"].as_str().unwrap().to_owned();
                answers += 1;
            }
            answers
        }));
    }
    for m in &models {
        t.write_model(m);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let written = Instant::now();
    for p in pollers {
        let answers = tokio::time::timeout(Duration::from_secs(5), p)
            .await
            .expect("a poll stayed parked on a stale id")
            .unwrap();
        assert!(answers >= 1);
    }
    assert!(written.elapsed() < Duration::from_secs(5));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_parked_polls_304_at_once() {
    let t = TestServer::start(&[]).await;
    let id = t.current_id("nc-3").await;
    let mut polls = Vec::new();
    for _ in 0..5 {
        let (c, id) = (t.client_side(), id.clone());
        polls.push(tokio::spawn(async move {
            c.get(&admin_key(), &poll_params("nc-3", &id, "60")).await
        }));
    }
    t.wait_parked(5).await;
    let started = Instant::now();
    t.shutdown().await;
    for p in polls {
        let r = p.await.unwrap();
        assert_eq!(r.status, 304);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_is_recorded_and_shown_in_the_status() {
    let t = TestServer::start(&[]).await;
    let id = t.current_id("nc-1").await;
    let long_error = "é".repeat(700);
    let mut p = poll_params("nc-1", &id, "0");
    p.push(("AppliedStateId", &id));
    p.push(("ApplyError", &long_error));
    assert_eq!(t.get(&nc1_key(), &p).await.status, 304);
    let s = t.status().await;
    let nodes = s["Nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let nc1 = &nodes[0];
    assert_eq!(nc1["NodeId"], "nc-1");
    assert_eq!(nc1["CurrentStateId"], id.as_str());
    assert_eq!(nc1["AppliedStateId"], id.as_str());
    assert_eq!(nc1["Error"].as_str().unwrap().len(), 1024);
    assert_eq!(nc1["Converged"], false);
    assert!(nc1["LastSeen"].as_str().unwrap().ends_with('Z'));
    assert_eq!(nodes[1]["LastSeen"], serde_json::Value::Null);
    let mut p = poll_params("nc-1", &id, "0");
    p.push(("AppliedStateId", &id));
    t.get(&nc1_key(), &p).await;
    let s = t.status().await;
    assert_eq!(s["Nodes"][0]["Converged"], true, "{s}");
    assert_eq!(s["Nodes"][0]["Error"], serde_json::Value::Null);
    assert_eq!(s["Model"]["InvalidCount"], 0);
    assert!(s["Model"]["Path"].as_str().unwrap().ends_with("cloud.json"));
    assert!(s["Model"]["LoadedAt"].as_str().unwrap().ends_with('Z'));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics() {
    let t = TestServer::start(&[]).await;
    let h = t
        .client
        .get(format!("{}healthz", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
    t.current_id("nc-1").await;
    let m = t.metrics().await;
    for name in [
        "edgenet_server_parked_polls 0",
        "edgenet_server_answers_total{kind=\"200\"}",
        "edgenet_server_answers_total{kind=\"304\"}",
        "edgenet_server_answers_total{kind=\"error\"}",
        "edgenet_server_wakeups_total",
        "edgenet_server_model_reloads_total{result=\"refused\"} 0",
        "edgenet_server_request_duration_seconds_bucket{le=\"+Inf\"}",
        "edgenet_server_request_duration_seconds_count",
    ] {
        assert!(m.contains(name), "{name} missing in\n{m}");
    }
    t.shutdown().await;
}
