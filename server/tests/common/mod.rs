//! A real edgenet-server on loopback with a temporary model and credentials
//! file, and a SigV4-signing HTTP client for it.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use clap::Parser;
use edgenet_auth::{form_post_request, query_get_request, sign_request, Credentials};
use edgenet_server::{Cli, Server};
use serde_json::Value;

pub const REGION: &str = "eucalyptus";
pub const NODE_ROLE: &str = "arn:aws:iam::000000000000:role/edgenet-node";
pub const ADMIN_ROLE: &str = "arn:aws:iam::000000000000:role/edgenet-admin";
pub const CREDENTIALS: &str = CREDENTIALS_TOML;

pub fn nc1_key() -> Credentials {
    Credentials::long_term("AKIDNC1EXAMPLE0001", "nc1-secret-key")
}
pub fn nc2_key() -> Credentials {
    Credentials::long_term("AKIDNC2EXAMPLE0002", "nc2-secret-key")
}
pub fn admin_key() -> Credentials {
    Credentials::long_term("AKIDADMINEXAMPLE01", "admin-secret-key")
}

const CREDENTIALS_TOML: &str = r#"
[[keys]]
access_key_id = "AKIDNC1EXAMPLE0001"
secret_access_key = "nc1-secret-key"
node = "nc-1"
roles = ["arn:aws:iam::000000000000:role/edgenet-node"]

[[keys]]
access_key_id = "AKIDNC2EXAMPLE0002"
secret_access_key = "nc2-secret-key"
node = "nc-2"
roles = ["arn:aws:iam::000000000000:role/edgenet-node"]

[[keys]]
access_key_id = "AKIDADMINEXAMPLE01"
secret_access_key = "admin-secret-key"
admin = true
roles = ["arn:aws:iam::000000000000:role/edgenet-admin"]
"#;

/// The sample model of the repository.
pub fn sample_model() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cloud.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The sample model with node `node`'s bridge renamed: changes that node's view only.
pub fn with_bridge(mut model: Value, node: &str, bridge: &str) -> Value {
    for n in model["nodes"].as_array_mut().unwrap() {
        if n["id"] == node {
            n["bridge"] = bridge.into();
        }
    }
    model
}

pub struct TestServer {
    pub server: Option<Server>,
    pub dir: tempfile::TempDir,
    pub model_path: PathBuf,
    pub url: String,
    pub client: reqwest::Client,
}

impl TestServer {
    /// The client side of this server alone, for use in spawned tasks.
    pub fn client_side(&self) -> TestServer {
        TestServer {
            server: None,
            dir: tempfile::tempdir().unwrap(),
            model_path: self.model_path.clone(),
            url: self.url.clone(),
            client: self.client.clone(),
        }
    }

    /// A server with the sample model, the three test keys and `extra` flags.
    pub async fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model_path = dir.path().join("cloud.json");
        std::fs::write(
            &model_path,
            serde_json::to_vec_pretty(&sample_model()).unwrap(),
        )
        .unwrap();
        let source = ["--model".to_string(), model_path.display().to_string()];
        Self::start_in(dir, model_path, &source, extra).await
    }

    /// A server on the model in etcd at `urls` (no model file).
    pub async fn start_etcd(urls: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model_path = dir.path().join("unused.json");
        let source = ["--etcd".to_string(), urls.to_string()];
        Self::start_in(dir, model_path, &source, extra).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        model_path: PathBuf,
        source: &[String],
        extra: &[&str],
    ) -> Self {
        let creds = dir.path().join("credentials.toml");
        std::fs::write(&creds, CREDENTIALS_TOML).unwrap();
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut args: Vec<String> = vec![
            "edgenet-server".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--credentials".into(),
            creds.display().to_string(),
            "--token-key".into(),
            dir.path().join("token.key").display().to_string(),
            "--allow-short-sts-durations".into(),
        ];
        args.extend(source.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        let cli = Cli::try_parse_from(&args).unwrap();
        let server = edgenet_server::start(&cli).await.unwrap();
        let url = server.url();
        TestServer {
            server: Some(server),
            dir,
            model_path,
            url,
            client: reqwest::Client::builder().no_gzip().build().unwrap(),
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    /// Replaces the model file the safe way (write, then rename into place).
    pub fn write_model(&self, model: &Value) {
        let tmp = self.dir.path().join(".cloud.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(model).unwrap()).unwrap();
        std::fs::rename(&tmp, &self.model_path).unwrap();
    }

    /// Overwrites the model file in place.
    pub fn write_model_in_place(&self, bytes: &[u8]) {
        std::fs::write(&self.model_path, bytes).unwrap();
    }

    /// A signed GET of `params` with `creds`.
    pub async fn get(&self, creds: &Credentials, params: &[(&str, &str)]) -> Reply {
        self.get_at(creds, params, SystemTime::now(), "ec2").await
    }

    pub async fn get_at(
        &self,
        creds: &Credentials,
        params: &[(&str, &str)],
        time: SystemTime,
        service: &str,
    ) -> Reply {
        let mut req = query_get_request(&self.url, params).unwrap();
        sign_request(&mut req, creds, REGION, service, time).unwrap();
        self.send(req).await
    }

    /// A signed POST form of `params` with `creds`, signed for `service`.
    pub async fn post(&self, creds: &Credentials, params: &[(&str, &str)], service: &str) -> Reply {
        let mut req = form_post_request(&self.url, params).unwrap();
        sign_request(&mut req, creds, REGION, service, SystemTime::now()).unwrap();
        self.send(req).await
    }

    pub async fn send(&self, req: http::Request<Vec<u8>>) -> Reply {
        let req = reqwest::Request::try_from(req).unwrap();
        let resp = self.client.execute(req).await.unwrap();
        Reply::read(resp).await
    }

    /// The current view id of `node`, read with an immediate poll.
    pub async fn current_id(&self, node: &str) -> String {
        let r = self
            .get(
                &admin_key(),
                &[
                    ("Action", "DescribeNetworkModel"),
                    ("NodeId", node),
                    ("WaitSeconds", "0"),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["StateId"].as_str().unwrap().to_owned()
    }

    /// Waits until `n` polls are parked.
    pub async fn wait_parked(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.server().parked_polls() < n {
            assert!(tokio::time::Instant::now() < deadline, "polls did not park");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn status(&self) -> Value {
        let r = self
            .get(&admin_key(), &[("Action", "DescribeNodeStatus")])
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// The server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(format!("{}metrics", self.url)).send().await;
        response.unwrap().text().await.unwrap()
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// A poll's parameters.
pub fn poll_params<'a>(node: &'a str, state_id: &'a str, wait: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("Action", "DescribeNetworkModel"),
        ("Version", "2026-11-01"),
        ("NodeId", node),
        ("StateId", state_id),
        ("WaitSeconds", wait),
    ]
}

/// An answer, read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub async fn read(resp: reqwest::Response) -> Self {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap().to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Error.Code` of an error answer, after checking its shape.
    pub fn error_code(&self) -> String {
        let j = self.json();
        assert!(
            j["RequestId"].as_str().is_some_and(|r| !r.is_empty()),
            "{j}"
        );
        assert!(j["Error"]["Message"].is_string(), "{j}");
        j["Error"]["Code"].as_str().unwrap().to_owned()
    }
}
