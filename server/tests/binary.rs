//! The real `edgenet-server` binary: start-up refusals, --help, TLS and SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_edgenet-server");

fn model_file(dir: &tempfile::TempDir) -> String {
    let p = dir.path().join("cloud.json");
    std::fs::write(&p, serde_json::to_vec(&sample_model()).unwrap()).unwrap();
    p.display().to_string()
}

/// Runs the binary on `model` without auth, to see how it refuses to start.
fn start_with_model(model: &str) -> std::process::Output {
    Command::new(BIN)
        .args([
            "--model",
            model,
            "--insecure-no-auth",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap()
}

#[test]
fn refuses_to_start_without_authentication_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["--model", &model_file(&dir), "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--credentials"), "{err}");
}

#[test]
fn refuses_a_missing_or_invalid_model_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.json").display().to_string();
    let out = start_with_model(&missing);
    assert_eq!(out.status.code(), Some(1));
    let bad = dir.path().join("bad.json");
    let mut m = sample_model();
    m["instances"][0]["private_ip"] = "10.9.9.9".into();
    m["instances"][1]["mac"] = "nope".into();
    std::fs::write(&bad, serde_json::to_vec(&m).unwrap()).unwrap();
    let out = start_with_model(bad.to_str().unwrap());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("private_ip") && err.contains("mac"), "{err}");
}

#[test]
fn help_explains_every_flag() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--model",
        "--listen",
        "--credentials",
        "--token-key",
        "--region",
        "--max-wait-seconds",
        "--max-parked",
        "--tls-cert",
        "--tls-key",
        "--insecure-no-auth",
    ] {
        assert!(help.contains(flag), "{flag} missing in\n{help}");
    }
    let out = Command::new(BIN).arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// Kills the server if the test fails before it stops it.
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts the binary on a free port and returns it with its base URL.
fn spawn_server(args: &[&str]) -> (Running, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env("EDGENET_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Running(Some(child));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("local_addr=").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("server did not report its address");
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_parked_polls_304_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_file(&dir);
    let (mut child, addr) = spawn_server(&["--model", &model, "--insecure-no-auth"]);
    let url = format!("http://{addr}/");
    let client = reqwest::Client::new();
    let first = client
        .get(format!(
            "{url}?Action=DescribeNetworkModel&NodeId=nc-1&WaitSeconds=0"
        ))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let first: serde_json::Value = serde_json::from_slice(&first).unwrap();
    let id = first["StateId"].as_str().unwrap().to_owned();
    let mut polls = Vec::new();
    for _ in 0..4 {
        let (client, u) = (
            client.clone(),
            format!("{url}?Action=DescribeNetworkModel&NodeId=nc-1&WaitSeconds=60&StateId={id}"),
        );
        polls.push(tokio::spawn(async move {
            client.get(u).send().await.unwrap().status().as_u16()
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = client
            .get(format!("{url}metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if m.contains("edgenet_server_parked_polls 4") {
            break;
        }
        assert!(Instant::now() < deadline, "polls did not park");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    let pid = child.0.as_ref().unwrap().id();
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    for p in polls {
        assert_eq!(p.await.unwrap(), 304);
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    let mut c = child.0.take().unwrap();
    let status = tokio::task::spawn_blocking(move || c.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    // A self-signed leaf (not a CA), which rustls accepts as its own trust anchor.
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args([
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .args([
            "-addext",
            "keyUsage=digitalSignature",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    // A missing openssl is a broken test machine, not a pass: scripts/test-all.sh installs it.
    assert!(
        made.is_ok_and(|s| s.success()),
        "openssl could not make a test certificate (is the openssl package installed?)"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let t = TestServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    assert!(t.url.starts_with("https://"));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .no_gzip()
        .build()
        .unwrap();
    let tls = TestServer {
        client,
        ..t.client_side()
    };
    let r = tls
        .get(
            &nc1_key(),
            &[("Action", "DescribeNetworkModel"), ("NodeId", "nc-1")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["NodeId"], "nc-1");
    t.shutdown().await;
}
