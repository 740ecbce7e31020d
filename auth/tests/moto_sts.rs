//! Interop with a real STS peer: moto's server with signature checking on.
//! Run alone with `cargo test -p edgenet-auth --test moto_sts`. Fails (never
//! skips) when Python or moto is missing: run auth/tests/setup-python.sh.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{python, run_python, write_node_credentials};
use edgenet_auth::{
    form_post_request, AssumeRoleConfig, AssumeRoleProvider, ClockSkew, CredentialProvider,
    Credentials, Signer, StaticFileProvider,
};

/// moto's server on a free loopback port, killed when dropped.
struct Moto {
    child: Child,
    endpoint: String,
    log: tempfile::NamedTempFile,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_moto() -> Moto {
    let port = free_port();
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new(python())
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} -m moto.server ({e}): run auth/tests/setup-python.sh",
                python()
            )
        });
    let mut moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}/"),
        log,
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        let exited = moto.child.try_wait().unwrap();
        if exited.is_some() || Instant::now() > deadline {
            let out = std::fs::read_to_string(moto.log.path()).unwrap_or_default();
            panic!("moto server did not start ({exited:?}); is moto[server] installed (auth/tests/setup-python.sh)?\n{out}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    moto
}

async fn get_caller_identity(endpoint: &str, creds: &Credentials) -> (u16, String) {
    let params = [("Action", "GetCallerIdentity"), ("Version", "2011-06-15")];
    let mut req = form_post_request(endpoint, &params).unwrap();
    Signer::new("us-east-1", "sts")
        .sign(&mut req, creds)
        .unwrap();
    let req = reqwest::Request::try_from(req.map(reqwest::Body::from)).unwrap();
    let resp = reqwest::Client::new().execute(req).await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn provider(endpoint: &str, node_creds: &std::path::Path, role_arn: &str) -> AssumeRoleProvider {
    let source = Arc::new(StaticFileProvider::new(node_creds, "default"));
    let mut config = AssumeRoleConfig::new(endpoint, "us-east-1", role_arn, "nc-1");
    config.duration_seconds = 900;
    AssumeRoleProvider::new(config, source).unwrap()
}

#[tokio::test]
async fn moto_interop_assume_role_and_get_caller_identity() {
    let moto = start_moto();
    let setup = run_python("moto_setup.py", &[&moto.endpoint]);
    let setup: serde_json::Value =
        serde_json::from_str(&setup).expect("moto_setup.py printed JSON");
    let (akid, secret, role) = (
        setup["access_key_id"].as_str().unwrap(),
        setup["secret_access_key"].as_str().unwrap(),
        setup["role_arn"].as_str().unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let node_creds = write_node_credentials(dir.path(), akid, secret);

    let skew = Arc::new(ClockSkew::new());
    let temp = provider(&moto.endpoint, &node_creds, role)
        .with_clock_skew(skew.clone())
        .fetch()
        .await
        .expect("AssumeRole against moto");
    assert!(
        temp.access_key_id.starts_with("ASIA"),
        "{}",
        temp.access_key_id
    );
    assert!(temp.session_token.is_some());
    let left = temp.remaining(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(800) && left <= Duration::from_secs(901),
        "{left:?}"
    );
    assert_eq!(skew.offset_millis(), 0, "moto runs on this host's clock");

    let (status, body) = get_caller_identity(&moto.endpoint, &temp).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("assumed-role/edgenet-node/nc-1"), "{body}");

    // moto checks signatures: a wrong secret is refused.
    let mut wrong = temp.clone();
    wrong.secret_access_key = "not-the-secret".into();
    let (status, body) = get_caller_identity(&moto.endpoint, &wrong).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");

    // And AssumeRole signed with a wrong long-term secret comes back as a typed STS error.
    let bad_creds = write_node_credentials(dir.path(), akid, "not-the-secret");
    let err = provider(&moto.endpoint, &bad_creds, role)
        .fetch()
        .await
        .unwrap_err();
    assert_eq!(err.sts_code(), Some("SignatureDoesNotMatch"), "{err:?}");
}
