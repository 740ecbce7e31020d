//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use edgenet_auth::{
    DevSts, DevStsConfig, KeyResolver, KeyStore, Principal, ResolvedKey, Secret, SignedRequest,
    TokenKey, VerifyError,
};
use http::{HeaderMap, HeaderName, HeaderValue};

/// A request as the server sees it: owned pieces for a [`SignedRequest`].
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Received {
    pub fn signed(&self) -> SignedRequest<'_> {
        SignedRequest {
            method: &self.method,
            path: &self.path,
            query: &self.query,
            headers: &self.headers,
            body: &self.body,
        }
    }

    /// From a request built (and signed) as a client would send it.
    pub fn from_http(req: &http::Request<Vec<u8>>) -> Self {
        Received {
            method: req.method().as_str().to_owned(),
            path: req.uri().path().to_owned(),
            query: req.uri().query().unwrap_or("").to_owned(),
            headers: req.headers().clone(),
            body: req.body().clone(),
        }
    }

    /// Parses a raw HTTP/1.1 request as written in the SigV4 test suite
    /// (`Name:value` headers, folded continuation lines, then the body).
    pub fn parse_raw(raw: &str) -> Self {
        let (head, body) = raw.split_once("\n\n").unwrap_or((raw, ""));
        let mut lines = head.lines();
        let request_line = lines.next().expect("request line");
        let mut parts = request_line.splitn(2, ' ');
        let method = parts.next().unwrap().to_owned();
        let rest = parts.next().unwrap();
        let target = rest.rsplit_once(' ').map(|(t, _)| t).unwrap_or(rest);
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut pairs: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with(' ') || line.starts_with('\t') {
                let last = pairs.last_mut().expect("continuation without header");
                last.1.push(' ');
                last.1.push_str(line);
            } else {
                let (k, v) = line.split_once(':').expect("header line");
                pairs.push((k.to_owned(), v.to_owned()));
            }
        }
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            let name = HeaderName::from_bytes(k.trim().as_bytes()).unwrap();
            headers.append(name, HeaderValue::from_str(&v).unwrap());
        }
        Received {
            method,
            path: path.to_owned(),
            query: query.to_owned(),
            headers,
            body: body.as_bytes().to_vec(),
        }
    }
}

/// One fixed key (and optional token), as in the test suite.
pub struct FixedResolver {
    pub access_key_id: String,
    pub secret: String,
    pub token: Option<String>,
}

impl KeyResolver for FixedResolver {
    fn resolve(
        &self,
        access_key_id: &str,
        token: Option<&str>,
        _now: SystemTime,
    ) -> Result<ResolvedKey, VerifyError> {
        if access_key_id != self.access_key_id {
            return Err(VerifyError::UnknownAccessKey(access_key_id.into()));
        }
        if token != self.token.as_deref() {
            return Err(VerifyError::InvalidToken);
        }
        Ok(ResolvedKey {
            secret: Secret::new(self.secret.clone()),
            principal: Principal {
                access_key_id: access_key_id.into(),
                source_key_id: access_key_id.into(),
                node: None,
                admin: false,
                temporary: token.is_some(),
                expiration: None,
            },
        })
    }
}

pub const REGION: &str = "eucalyptus";
pub const NODE_ROLE: &str = "arn:aws:iam::000000000000:role/edgenet-node";
pub const ADMIN_ROLE: &str = "arn:aws:iam::000000000000:role/edgenet-admin";

/// The key file of docs/cli.md, plus an unbound non-admin key.
pub fn keys_toml() -> String {
    format!(
        r#"
[[keys]]
access_key_id = "AKIDNC1EXAMPLE0001"
secret_access_key = "nc1-secret-access-key-0000000000000000"
node = "nc-1"
roles = ["{NODE_ROLE}"]
[[keys]]
access_key_id = "AKIDADMINEXAMPLE01"
secret_access_key = "admin-secret-access-key-00000000000000"
admin = true
roles = ["{ADMIN_ROLE}"]
[[keys]]
access_key_id = "AKIDUNBOUNDEXAMPLE"
secret_access_key = "unbound-secret-access-key-000000000000"
roles = ["{NODE_ROLE}"]
"#
    )
}

pub fn dev_sts(key: &TokenKey) -> DevSts {
    let keys = KeyStore::from_toml(&keys_toml()).unwrap();
    DevSts::new(keys, key, DevStsConfig::new(REGION).allow_short_durations())
}

pub fn resolver(sts: &DevSts) -> Arc<dyn KeyResolver> {
    Arc::new(sts.clone())
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The Python interpreter the interop tests use (`EDGENET_PYTHON`, default python3).
pub fn python() -> String {
    std::env::var("EDGENET_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs a helper script from this directory; panics with a clear message
/// (never skips) when Python or its modules are missing.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let out = std::process::Command::new(python())
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): install Python 3 and run auth/tests/setup-python.sh",
                python()
            )
        });
    if !out.status.success() {
        panic!(
            "{script} failed ({}): {}\nDid auth/tests/setup-python.sh run (pip install 'moto[server]' botocore)?",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).unwrap()
}

/// A loopback HTTP server that mounts `DevSts::handle` like edgenet-server
/// does. Its clock runs `clock_offset_secs` ahead of ours (negative: behind).
pub struct StsServer {
    pub endpoint: String,
    pub requests: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn serve_sts(sts: DevSts, clock_offset_secs: i64) -> StsServer {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/", listener.local_addr().unwrap());
    let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = requests.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (sts, counter) = (sts.clone(), counter.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    answer(sts.clone(), req, clock_offset_secs)
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    StsServer {
        endpoint,
        requests,
        task,
    }
}

async fn answer(
    sts: DevSts,
    req: hyper::Request<hyper::body::Incoming>,
    clock_offset_secs: i64,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, hyper::Error> {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    let off = Duration::from_secs(clock_offset_secs.unsigned_abs());
    let now = if clock_offset_secs >= 0 {
        SystemTime::now() + off
    } else {
        SystemTime::now() - off
    };
    let signed = SignedRequest {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body: &body,
    };
    let (status, xml) = sts.handle(&signed, now);
    Ok(hyper::Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .header("date", httpdate::fmt_http_date(now))
        .body(http_body_util::Full::new(bytes::Bytes::from(xml)))
        .unwrap())
}

/// Writes an AWS shared-credentials file with mode 0600.
pub fn write_node_credentials(
    dir: &std::path::Path,
    akid: &str,
    secret: &str,
) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("node-credentials");
    std::fs::write(
        &path,
        format!("[default]\naws_access_key_id = {akid}\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

pub const NC1_ID: &str = "AKIDNC1EXAMPLE0001";
pub const NC1_SECRET: &str = "nc1-secret-access-key-0000000000000000";
