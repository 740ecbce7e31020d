//! edgenetd against a real edgenet-server on loopback (in-process), with the
//! in-memory dataplane where the kernel is not the point.

use std::io::BufRead;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use edgenet_agent::dataplane::MemoryDataplane;
use edgenet_agent::ops::metrics::Metrics;
use edgenet_agent::reconcile::{ReconcileError, ReconcileSettings, Reconciler};
use edgenet_agent::source::poller::{Poller, PollerConfig};
use edgenet_auth::ClockSkew;
use edgenet_server::Server;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const NODE: &str = "nc-1";

fn sample_model() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cloud.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The sample model with a route for `node` only: changes that view only.
fn with_route(mut model: Value, node: &str, destination: &str) -> Value {
    model["routes"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "node": node, "destination": destination, "gateway": "10.1.0.254"
        }));
    model
}

fn view_id(model: &Value, node: &str) -> String {
    let model = edgenet_model::parse_model(&serde_json::to_vec(model).unwrap()).unwrap();
    let view = edgenet_model::view_for(&model, node).unwrap();
    view.state_id().as_str().to_string()
}

const SERVER_KEYS: &str = r#"
[[keys]]
access_key_id = "AKIDNC1EXAMPLE0001"
secret_access_key = "nc1-secret-key"
node = "nc-1"
roles = ["arn:aws:iam::000000000000:role/edgenet-node"]
"#;

const NODE_CREDENTIALS: &str = "[default]
aws_access_key_id = AKIDNC1EXAMPLE0001
aws_secret_access_key = nc1-secret-key
";

struct Fixture {
    dir: tempfile::TempDir,
    model_path: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model_path = dir.path().join("cloud.json");
        let fixture = Fixture { dir, model_path };
        fixture.write_model(&sample_model());
        write_private(&fixture.path("server-keys.toml"), SERVER_KEYS);
        write_private(&fixture.path("node-credentials"), NODE_CREDENTIALS);
        fixture
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces the model the safe way (write, then rename into place).
    fn write_model(&self, model: &Value) {
        let tmp = self.path(".cloud.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(model).unwrap()).unwrap();
        std::fs::rename(&tmp, &self.model_path).unwrap();
    }

    /// A server on `listen` (`127.0.0.1:0` for any port), authenticated
    /// with the node key, or open with `insecure`.
    async fn server(&self, listen: &str, insecure: bool) -> Server {
        self.server_with(listen, insecure, &[]).await
    }

    async fn server_with(&self, listen: &str, insecure: bool, extra: &[String]) -> Server {
        let model = self.model_path.display().to_string();
        let mut args = vec![
            "edgenet-server".to_string(),
            "--listen".into(),
            listen.into(),
            "--model".into(),
            model,
            "--max-wait-seconds".into(),
            "5".into(),
        ];
        if insecure {
            args.push("--insecure-no-auth".into());
        } else {
            args.extend([
                "--credentials".into(),
                self.path("server-keys.toml").display().to_string(),
                "--token-key".into(),
                self.path("token.key").display().to_string(),
            ]);
        }
        args.extend(extra.iter().cloned());
        let cli = edgenet_server::Cli::try_parse_from(&args).unwrap();
        edgenet_server::start(&cli).await.unwrap()
    }
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The agent's loop in-process, on a memory dataplane the test can inspect.
struct Agent {
    dataplane: MemoryDataplane,
    metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    reconcile: JoinHandle<Result<Option<edgenet_agent::reconcile::Applied>, ReconcileError>>,
    poller: JoinHandle<()>,
}

async fn start_agent(endpoints: Vec<String>, dataplane: MemoryDataplane) -> Agent {
    let metrics = Metrics::new();
    let mut settings = ReconcileSettings::new(NODE);
    settings.resync = Duration::from_secs(3600);
    let (mut reconciler, feedback) =
        Reconciler::new(settings, Box::new(dataplane.clone()), metrics.clone());
    // As edgenetd does: read the kernel (the applied id is fed back at the
    // first poll), but ask for the view anyway.
    reconciler.read_applied_state_id().await.unwrap();
    let (snapshot_tx, snapshot_rx) = watch::channel(None);
    let mut config = PollerConfig::new(NODE, endpoints);
    config.wait_seconds = 2;
    config.skew_allowance = Duration::from_secs(1);
    config.backoff_max = Duration::from_millis(500);
    let poller = Poller::new(config, None, Arc::new(ClockSkew::new()), metrics.clone()).unwrap();
    let poller = tokio::spawn(poller.run(None, snapshot_tx, feedback));
    let (stop, stop_rx) = watch::channel(false);
    let reconcile = tokio::spawn(reconciler.run(snapshot_rx, stop_rx));
    Agent {
        dataplane,
        metrics,
        stop,
        reconcile,
        poller,
    }
}

impl Agent {
    fn applied(&self) -> Option<String> {
        self.dataplane.kernel().state_id
    }

    async fn wait_applied(&self, id: &str) {
        eventually(Duration::from_secs(10), || {
            self.applied().as_deref() == Some(id)
        })
        .await;
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        let result = tokio::time::timeout(Duration::from_secs(5), self.reconcile)
            .await
            .expect("the loop stops on shutdown");
        result.unwrap().unwrap();
        self.poller.abort();
    }
}

async fn eventually(limit: Duration, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn applies_views_and_their_changes() {
    let fixture = Fixture::new();
    let server = fixture.server("127.0.0.1:0", true).await;
    let agent = start_agent(vec![server.url()], MemoryDataplane::new()).await;
    let first = view_id(&sample_model(), NODE);
    agent.wait_applied(&first).await;

    let changed = with_route(sample_model(), NODE, "10.9.0.0/16");
    fixture.write_model(&changed);
    let second = view_id(&changed, NODE);
    agent.wait_applied(&second).await;
    let kernel = agent.dataplane.kernel();
    assert!(
        kernel
            .routes
            .keys()
            .any(|k| k.destination.to_string() == "10.9.0.0/16"),
        "{kernel:?}"
    );
    assert_eq!(agent.metrics.polls("view"), 2);
    agent.stop().await;
    server.shutdown().await;
}

#[tokio::test]
async fn keeps_state_while_the_server_is_down_and_resumes_without_reapplying() {
    let fixture = Fixture::new();
    let server = fixture.server("127.0.0.1:0", true).await;
    let addr = server.local_addr();
    let agent = start_agent(vec![server.url()], MemoryDataplane::new()).await;
    let id = view_id(&sample_model(), NODE);
    agent.wait_applied(&id).await;
    let applied = agent.dataplane.kernel();
    let applies = agent.dataplane.stats().applies;

    server.shutdown().await;
    // Polls fail for a while (connection refused, backoff): nothing changes.
    eventually(Duration::from_secs(10), || {
        agent.metrics.polls("transport_error") >= 3
    })
    .await;
    assert_eq!(agent.dataplane.kernel(), applied);
    assert_eq!(agent.dataplane.stats().applies, applies);

    // Same model, same content-addressed id: the restarted server parks the
    // agent's poll instead of sending the view again.
    let server = fixture.server(&addr.to_string(), true).await;
    let not_modified = agent.metrics.polls("not_modified");
    eventually(Duration::from_secs(10), || server.parked_polls() == 1).await;
    eventually(Duration::from_secs(10), || {
        agent.metrics.polls("not_modified") > not_modified
    })
    .await;
    assert_eq!(
        agent.metrics.polls("view"),
        1,
        "the view was not sent again"
    );
    assert_eq!(agent.dataplane.stats().applies, applies, "no re-apply");
    assert_eq!(agent.dataplane.kernel(), applied);
    agent.stop().await;
    server.shutdown().await;
}

/// A restarted agent fetches the view once (it needs it to check the kernel
/// and for later resyncs), finds the kernel already matches, and changes
/// nothing; then it parks.
#[tokio::test]
async fn a_restarted_agent_adopts_the_kernel_state() {
    let fixture = Fixture::new();
    let server = fixture.server("127.0.0.1:0", true).await;
    let id = view_id(&sample_model(), NODE);
    let first = start_agent(vec![server.url()], MemoryDataplane::new()).await;
    first.wait_applied(&id).await;
    let kernel = first.dataplane.kernel();
    first.stop().await;

    let second = start_agent(
        vec![server.url()],
        MemoryDataplane::with_state(kernel.clone()),
    )
    .await;
    eventually(Duration::from_secs(10), || {
        second.metrics.polls("view") == 1
    })
    .await;
    let applied_line = format!("edgenetd_applied_state_info{{state_id=\"{id}\"}} 1");
    eventually(Duration::from_secs(10), || {
        second.metrics.render().contains(&applied_line)
    })
    .await;
    assert_eq!(second.dataplane.stats().applies, 0, "nothing re-applied");
    assert_eq!(second.dataplane.kernel(), kernel);
    // The adopted state counts as applied (READY, metrics, feedback).
    assert!(second.metrics.render().contains(&format!(
        "edgenetd_applied_state_info{{state_id=\"{id}\"}} 1"
    )));
    second.stop().await;
    server.shutdown().await;
}

#[tokio::test]
async fn fails_over_to_the_endpoint_that_answers() {
    let fixture = Fixture::new();
    let server = fixture.server("127.0.0.1:0", true).await;
    // A port that was just free: connections to it are refused.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", listener.local_addr().unwrap())
    };
    let agent = start_agent(vec![dead, server.url()], MemoryDataplane::new()).await;
    agent.wait_applied(&view_id(&sample_model(), NODE)).await;
    assert!(agent.metrics.polls("transport_error") >= 1);
    agent.stop().await;
    server.shutdown().await;
}

/// The binary, through its config file, with AssumeRole credentials against
/// the server's development STS: a model change reaches the dry-run output.
/// Multi-threaded: the test blocks a thread reading the child's stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_change_reaches_the_dry_run_output() {
    let fixture = Fixture::new();
    let server = fixture.server("127.0.0.1:0", false).await;
    let config = fixture.path("edgenetd.toml");
    std::fs::write(
        &config,
        format!(
            r#"node_id = "nc-1"
endpoints = ["{}"]
wait_seconds = 2
[credentials]
source = "assume-role"
long_term_file = "{}"
role_arn = "arn:aws:iam::000000000000:role/edgenet-node"
duration_seconds = 900
"#,
            server.url(),
            fixture.path("node-credentials").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgenetd"))
        .args(["run", "--dry-run", "--dataplane", "none", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let wait_line = |prefix: &str| -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(15))
                .unwrap_or_else(|_| panic!("no line starting {prefix:?}; saw {seen:#?}"));
            let found = line.starts_with(prefix);
            seen.push(line);
            if found {
                return seen;
            }
        }
    };
    let first = view_id(&sample_model(), NODE);
    wait_line(&format!("nc-1: none -> {first}: "));

    let changed = with_route(sample_model(), NODE, "10.9.0.0/16");
    fixture.write_model(&changed);
    let second = view_id(&changed, NODE);
    let mut diff = vec![wait_line(&format!("nc-1: {first} -> {second}: "))
        .pop()
        .unwrap()];
    // The change lines, without the plan's `# entity` headers and blanks.
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
        if line.starts_with(['+', '-', '~']) {
            diff.push(line);
        }
    }
    assert_eq!(diff.len(), 2, "{diff:#?}");
    assert!(
        diff[0].ends_with(": 1 to add, 0 to change, 0 to remove"),
        "{diff:#?}"
    );
    assert!(
        diff[1].starts_with("+ route 10.9.0.0/16 via 10.1.0.254"),
        "{diff:#?}"
    );

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM ends a dry run cleanly: {status:?}"
    );
    server.shutdown().await;
}

/// `AuthFailure` makes the agent refresh its credentials and retry: here
/// the node's key file is fixed while the agent runs, and the next forced
/// refresh picks the good key up.
#[tokio::test]
async fn an_auth_failure_forces_a_credential_refresh() {
    let fixture = Fixture::new();
    let server = fixture.server("127.0.0.1:0", false).await;
    let key_file = fixture.path("node-credentials");
    write_private(
        &key_file,
        "[default]\naws_access_key_id = AKIDUNKNOWN0000001\naws_secret_access_key = nope\n",
    );
    let config = edgenet_agent::config::Config::from_toml(&format!(
        "node_id = \"nc-1\"\nendpoints = [\"{}\"]\n[credentials]\nsource = \"static\"\nlong_term_file = \"{}\"\n",
        server.url(),
        key_file.display()
    ))
    .unwrap();
    let skew = Arc::new(ClockSkew::new());
    let credentials =
        edgenet_agent::source::poller::credentials_from_config(&config, NODE, skew.clone())
            .unwrap();
    let dataplane = MemoryDataplane::new();
    let metrics = Metrics::new();
    let (reconciler, feedback) = Reconciler::new(
        ReconcileSettings::new(NODE),
        Box::new(dataplane.clone()),
        metrics.clone(),
    );
    let (snapshot_tx, snapshot_rx) = watch::channel(None);
    let mut poller_config = PollerConfig::new(NODE, config.endpoints.clone());
    poller_config.wait_seconds = 2;
    poller_config.backoff_max = Duration::from_millis(300);
    let poller = Poller::new(poller_config, credentials, skew, metrics.clone()).unwrap();
    let poller = tokio::spawn(poller.run(None, snapshot_tx, feedback));
    let (stop, stop_rx) = watch::channel(false);
    let reconcile = tokio::spawn(reconciler.run(snapshot_rx, stop_rx));

    eventually(Duration::from_secs(10), || metrics.polls("auth_error") >= 2).await;
    assert_eq!(dataplane.kernel().state_id, None);
    write_private(&key_file, NODE_CREDENTIALS);
    let id = view_id(&sample_model(), NODE);
    eventually(Duration::from_secs(10), || {
        dataplane.kernel().state_id.as_deref() == Some(id.as_str())
    })
    .await;
    stop.send_replace(true);
    reconcile.await.unwrap().unwrap();
    poller.abort();
    server.shutdown().await;
}

/// HTTPS with `[tls] ca_file` as the extra trust root: the poll goes
/// through; without it the self-signed server is refused (and nothing is
/// applied).
#[tokio::test]
async fn polls_over_https_trusting_the_configured_ca_file() {
    let fixture = Fixture::new();
    let (cert, key) = (fixture.path("cert.pem"), fixture.path("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
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
    let tls_args = [
        "--tls-cert".to_string(),
        cert.display().to_string(),
        "--tls-key".to_string(),
        key.display().to_string(),
    ];
    let server = fixture.server_with("127.0.0.1:0", true, &tls_args).await;
    assert!(server.url().starts_with("https://"));

    let url = server.url();
    let run = |ca_file: Option<PathBuf>| {
        let metrics = Metrics::new();
        let mut config = PollerConfig::new(NODE, vec![url.clone()]);
        config.wait_seconds = 0;
        config.ca_file = ca_file;
        let poller = Poller::new(config, None, Arc::new(ClockSkew::new()), metrics).unwrap();
        let url = url.clone();
        async move { poller.poll_once(&url, None, &Default::default()).await }
    };
    let trusted = run(Some(cert.clone())).await;
    assert!(
        matches!(
            trusted,
            Ok(edgenet_agent::source::poller::PollAnswer::View(_))
        ),
        "{trusted:?}"
    );
    let untrusted = run(None).await;
    assert!(
        matches!(
            untrusted,
            Err(edgenet_agent::source::poller::PollError::Transport { .. })
        ),
        "{untrusted:?}"
    );
    server.shutdown().await;
}
