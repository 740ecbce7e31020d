//! The `edgenetd` binary as operators and external tests drive it (docs/cli.md):
//! diff output checked line by line against fixtures, exit codes, one-line
//! errors, signals.
//!
//! Regenerate the diff fixtures after an intended format change with
//! `EDGENET_BLESS=1 cargo test -p edgenet-agent --test agent_cli`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn edgenetd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgenetd"))
        .args(args)
        .env_remove("EDGENET_CONFIG")
        .env_remove("EDGENET_NODE_ID")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Compares line by line, naming the first line that differs.
fn assert_matches_fixture(actual: &str, name: &str) {
    let path = fixture(name);
    if std::env::var_os("EDGENET_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    let (a, e): (Vec<&str>, Vec<&str>) = (actual.lines().collect(), expected.lines().collect());
    for (n, (got, want)) in a.iter().zip(e.iter()).enumerate() {
        assert_eq!(got, want, "{name}: line {} differs", n + 1);
    }
    assert_eq!(a.len(), e.len(), "{name}: line count differs\n{actual}");
}

fn plan_fixture(output: &str) -> Output {
    let new = fixture("cloud-changed.json");
    let old = fixture("cloud.json");
    edgenetd(&[
        "plan",
        "--node",
        "nc-1",
        "--model",
        new.to_str().unwrap(),
        "--from-model",
        old.to_str().unwrap(),
        "--output",
        output,
    ])
}

#[test]
fn plan_text_diff_matches_the_fixture() {
    let out = plan_fixture("text");
    assert_eq!(out.status.code(), Some(2), "changes: exit 2");
    assert_matches_fixture(&text(&out.stdout), "plan-nc-1.txt");
}

#[test]
fn plan_json_diff_matches_the_fixture_and_parses() {
    let out = plan_fixture("json");
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    assert_matches_fixture(&stdout, "plan-nc-1.json");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["node"], "nc-1");
    let changes = doc["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 10);
    for change in changes {
        let op = change["op"].as_str().unwrap();
        assert!(["add", "remove", "change"].contains(&op), "{change}");
        assert!(change["kind"].is_string() && change["object"].is_string());
    }
}

#[test]
fn plan_exits_0_without_changes() {
    let model = fixture("cloud.json");
    let model = model.to_str().unwrap();
    let out = edgenetd(&[
        "plan",
        "--node",
        "nc-1",
        "--model",
        model,
        "--from-model",
        model,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(
        summary.ends_with(": 0 to add, 0 to change, 0 to remove\n"),
        "{summary}"
    );
}

#[test]
fn the_readme_dry_run_works_without_root_or_server() {
    let model = fixture("cloud.json");
    let out = edgenetd(&[
        "run",
        "--dry-run",
        "--once",
        "--node",
        "nc-1",
        "--model",
        model.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let first = stdout.lines().next().unwrap();
    assert!(first.starts_with("nc-1: "), "{first}");
    assert!(first.contains(" to add, "), "{first}");
    // Blocks by entity: a `# entity: …` line, then its changes, with the
    // rules of a new or changed chain indented under it; a host without
    // `br0` gets a warning at the end.
    assert!(stdout.lines().skip(1).all(|l| l.is_empty()
        || l.starts_with("# ")
        || l.starts_with(['+', '-', '~'])
        || l.starts_with("    ")
        || l.starts_with("warning: ")));
    assert!(stdout.contains("\n# security group sg-web: now used on this node"));
}

#[test]
fn errors_are_one_line_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad_config = dir.path().join("bad.toml");
    std::fs::write(&bad_config, "node_idd = \"nc-1\"\n").unwrap();
    let bad_model = dir.path().join("bad.json");
    std::fs::write(&bad_model, "{\"schema\": 1,").unwrap();
    let no_credentials = dir.path().join("no-credentials.toml");
    std::fs::write(
        &no_credentials,
        "node_id = \"nc-1\"\nendpoints = [\"http://127.0.0.1:1/\"]\n[credentials]\nsource = \"static\"\nlong_term_file = \"/nonexistent/node-credentials\"\n",
    )
    .unwrap();
    let model = fixture("cloud.json");
    let model = model.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "run",
            "--dry-run",
            "--config",
            no_credentials.to_str().unwrap(),
        ],
        vec!["plan", "--bogus-flag"],
        vec![
            "plan", "--output", "yaml", "--model", model, "--node", "nc-1",
        ],
        vec!["plan", "--model", "/nonexistent.json", "--node", "nc-1"],
        vec![
            "plan",
            "--model",
            bad_model.to_str().unwrap(),
            "--node",
            "nc-1",
        ],
        vec!["plan", "--model", model, "--node", "nc-99"],
        vec!["plan", "--model", model],
        vec![
            "plan",
            "--config",
            bad_config.to_str().unwrap(),
            "--model",
            model,
        ],
        vec!["plan", "--config", "/nonexistent.toml", "--model", model],
        vec!["run", "--node", "nc-1"],
        vec!["apply", "--node", "nc-1"],
        vec![
            "run",
            "--dataplane",
            "none",
            "--node",
            "nc-1",
            "--model",
            model,
        ],
    ];
    for args in cases {
        let out = edgenetd(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let stderr = text(&out.stderr);
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("note: "))
            .collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(lines[0].starts_with("edgenetd: "), "{args:?}: {stderr}");
    }
}

#[test]
fn help_explains_itself() {
    let out = edgenetd(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for word in ["run", "plan", "apply", "status", "gen-model", "--dry-run"] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
    let out = edgenetd(&["plan", "--help"]);
    assert!(text(&out.stdout).contains("0 no changes, 2 changes, 1 error"));
}

#[test]
fn apply_and_status_on_the_memory_dataplane() {
    let model = fixture("cloud.json");
    let model = model.to_str().unwrap();
    let out = edgenetd(&[
        "apply",
        "--dataplane",
        "memory",
        "--node",
        "nc-1",
        "--model",
        model,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("nc-1: none -> v1-"));

    // A fresh memory dataplane holds nothing: nothing applied, exit 1.
    let out = edgenetd(&[
        "status",
        "--dataplane",
        "memory",
        "--node",
        "nc-1",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["node"], "nc-1");
    assert!(doc["applied_state_id"].is_null());
    assert!(doc["objects"].is_object());
    assert_eq!(doc["drift"], serde_json::json!([]));
}

#[test]
fn gen_model_prints_a_valid_model_of_the_asked_size() {
    let out = edgenetd(&[
        "gen-model",
        "--nodes",
        "4",
        "--instances",
        "100",
        "--groups",
        "5",
        "--seed",
        "7",
    ]);
    assert!(out.status.success());
    let model = edgenet_model::parse_model(&out.stdout).unwrap();
    assert_eq!(model.nodes.len(), 4);
    assert_eq!(model.instances.len(), 100);
    assert_eq!(model.security_groups.len(), 5);
    let again = edgenetd(&[
        "gen-model",
        "--nodes",
        "4",
        "--instances",
        "100",
        "--groups",
        "5",
        "--seed",
        "7",
    ]);
    assert_eq!(out.stdout, again.stdout, "deterministic for a seed");
}

/// SIGHUP reloads the configuration (a bad new file is refused and the
/// daemon keeps running); SIGTERM stops cleanly with exit 0.
#[test]
fn signals_reload_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edgenetd.toml");
    std::fs::write(&config, "node_id = \"nc-1\"\n").unwrap();
    let model = fixture("cloud.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgenetd"))
        .args(["run", "--dataplane", "memory", "--config"])
        .arg(&config)
        .arg("--model")
        .arg(&model)
        .env("EDGENET_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let signal = |name: &str| {
        assert!(Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap()
            .success());
    };
    std::thread::sleep(Duration::from_millis(800));
    std::fs::write(&config, "node_id = \"nc-1\"\nwait_seconds = 5\n").unwrap();
    signal("-HUP");
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&config, "node_id = [\n").unwrap();
    signal("-HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "a bad config on SIGHUP must not stop the daemon"
    );
    signal("-TERM");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "SIGTERM did not stop edgenetd"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(stderr.contains("applied"), "{stderr}");
    assert!(stderr.contains("configuration reloaded"), "{stderr}");
    assert!(stderr.contains("new configuration refused"), "{stderr}");
    assert!(stderr.contains("kernel state left as it is"), "{stderr}");
}

/// `apply`, `status` and `plan` on the real kernel, inside a network
/// namespace of its own (root only; fails otherwise): drift is reported
/// with exit 2 and planned back.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn status_reports_drift_on_the_kernel_in_a_namespace() {
    assert_root_and_nft();
    let script = r#"
set -e
ip link set lo up
ip link add br0 type bridge && ip link set br0 up
ip link add eth0 type veth peer name eth0-peer && ip link set eth0 up && ip link set eth0-peer up
"$EDGENETD" apply --node nc-1 --model "$MODEL" > /dev/null
"$EDGENETD" status --node nc-1 --model "$MODEL" --output json
echo "rc=$?"
ip route del 10.200.0.0/16
nft flush chain inet edgenet sg_sg-db
set +e
"$EDGENETD" status --node nc-1 --model "$MODEL" --output json
echo "rc=$?"
"$EDGENETD" plan --node nc-1 --model "$MODEL"
echo "rc=$?"
"#;
    let out = Command::new("unshare")
        .args(["-n", "bash", "-c", script])
        .env("EDGENETD", env!("CARGO_BIN_EXE_edgenetd"))
        .env("MODEL", fixture("cloud.json"))
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    let in_sync: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert!(in_sync["applied_state_id"]
        .as_str()
        .unwrap()
        .starts_with("v1-"));
    assert_eq!(in_sync["drift"], serde_json::json!([]));
    assert_eq!(lines[1], "rc=0");
    let drifted: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(
        drifted["drift"],
        serde_json::json!([
            "nft chain inet edgenet sg_sg-db",
            "route 10.200.0.0/16 via 10.1.0.254 metric 100 proto 159"
        ])
    );
    assert_eq!(lines[3], "rc=2");
    assert!(
        lines[4].ends_with(": 1 to add, 1 to change, 0 to remove"),
        "{stdout}"
    );
    assert!(stdout.contains("~ nft chain inet edgenet sg_sg-db: 0 rules -> "));
    assert_eq!(lines.last(), Some(&"rc=2"));
}

fn assert_root_and_nft() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| text(&o.stdout).trim() == "0");
    // Without root or nft these tests cannot prove anything: fail, never pass.
    assert!(
        root.unwrap_or(false),
        "needs root to make a network namespace"
    );
    assert!(
        Command::new("nft").arg("--version").output().is_ok(),
        "needs nft (the nftables package; scripts/test-all.sh installs it)"
    );
}

/// Runs `script` (bash) in a network and mount namespace of its own, on a
/// node like the fixture's (`br0`, `eth0`), with `$EDGENETD` and `$MODEL`.
fn in_namespace(script: &str) -> Output {
    assert_root_and_nft();
    let setup = "set -e\nip link set lo up\n\
        ip link add br0 type bridge && ip link set br0 up\n\
        ip link add eth0 type veth peer name eth0-peer && ip link set eth0 up && ip link set eth0-peer up\n\
        set +e\n";
    Command::new("unshare")
        .args(["-n", "-m", "bash", "-c", &format!("{setup}{script}")])
        .env("EDGENETD", env!("CARGO_BIN_EXE_edgenetd"))
        .env("MODEL", fixture("cloud.json"))
        .env_remove("EDGENET_CONFIG")
        .output()
        .unwrap()
}

/// Forwarding off and a read-only /proc/sys (systemd's
/// ProtectKernelTunables) with manage_sysctls on: the daemon warns, naming
/// the key, and applies the rest; `status` shows it and exits 2.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn sysctl_problems_are_reported_and_the_rest_applied() {
    let out = in_namespace(
        r#"
echo 0 > /proc/sys/net/ipv4/ip_forward
mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys
timeout 20 "$EDGENETD" run --once --node nc-1 --model "$MODEL" > /dev/null
echo "run rc=$?"
"$EDGENETD" status --node nc-1 --model "$MODEL"
echo "status rc=$?"
"#,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("run rc=0\n"), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("WARN")
            && stderr.contains("sysctl net.ipv4.ip_forward is 0, needs 1; cannot set it"),
        "{stderr}"
    );
    assert!(stdout.contains("applied state: v1-"), "{stdout}");
    assert!(
        stdout.contains("sysctl net.ipv4.ip_forward is 0, needs 1\n"),
        "{stdout}"
    );
    assert!(stdout.contains("status rc=2\n"), "{stdout}\n{stderr}");
}

/// A node where nothing was ever applied is not "in sync".
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn status_says_nothing_applied_with_exit_1() {
    let out = in_namespace(
        r#"
echo 1 > /proc/sys/net/ipv4/ip_forward
"$EDGENETD" status --node nc-1 --model "$MODEL"
echo "rc=$?"
"$EDGENETD" status --output json
echo "rc=$?"
"#,
    );
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.contains(&"nothing applied"), "{stdout}");
    assert!(!stdout.contains("in sync"), "{stdout}");
    assert_eq!(
        lines.iter().filter(|l| **l == "rc=1").count(),
        2,
        "{stdout}"
    );
    let json = lines.iter().find(|l| l.starts_with('{')).unwrap();
    let doc: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(doc["applied_state_id"], serde_json::Value::Null);
}

/// A service manager's notify socket, as the tests' systemd.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: std::os::unix::net::UnixDatagram,
    messages: Vec<String>,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket {
            _dir: dir,
            path,
            socket,
            messages: Vec::new(),
        }
    }

    /// Reads datagrams until one satisfies `wanted` (returned) or
    /// `within` has passed (`None`); every datagram is kept in `messages`.
    fn wait_for(&mut self, within: Duration, wanted: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            let Ok(n) = self.socket.recv(&mut buf) else {
                continue;
            };
            let message = String::from_utf8_lossy(&buf[..n]).to_string();
            self.messages.push(message.clone());
            if wanted(&message) {
                return Some(message);
            }
        }
        None
    }
}

fn terminate(child: &mut std::process::Child) {
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());
}

/// First boot, nothing applied, the controller down: READY at once with a
/// STATUS that says so, so the start does not time out and the unit does
/// not flap; the agent keeps polling.
#[test]
fn first_boot_without_a_controller_is_ready_and_waits_for_the_first_view() {
    let mut notify = NotifySocket::new();
    let endpoint = format!("http://127.0.0.1:{}/", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgenetd"))
        .args([
            "run",
            "--dataplane",
            "memory",
            "--node",
            "nc-1",
            "--endpoint",
            &endpoint,
        ])
        .env("NOTIFY_SOCKET", &notify.path)
        .env_remove("EDGENET_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = notify.wait_for(Duration::from_secs(10), |m| m.contains("READY=1"));
    terminate(&mut child);
    let ready = ready.unwrap_or_else(|| panic!("no READY: {:?}", notify.messages));
    assert!(
        ready.contains("STATUS=waiting for the first view"),
        "{ready}"
    );
}

/// A restart while the controller is down, on a kernel holding an applied
/// state: the agent adopts it (fail static) and is ready at once, saying so.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn a_restart_with_the_controller_down_runs_on_the_last_applied_state() {
    assert_root_and_nft();
    let mut notify = NotifySocket::new();
    let script = r#"
set -e
ip link set lo up
ip link add br0 type bridge && ip link set br0 up
ip link add eth0 type veth peer name eth0-peer && ip link set eth0 up && ip link set eth0-peer up
"$EDGENETD" apply --node nc-1 --model "$MODEL" > /dev/null
exec "$EDGENETD" run --node nc-1 --endpoint http://127.0.0.1:1/
"#;
    let mut child = Command::new("unshare")
        .args(["-n", "bash", "-c", script])
        .env("EDGENETD", env!("CARGO_BIN_EXE_edgenetd"))
        .env("MODEL", fixture("cloud.json"))
        .env("NOTIFY_SOCKET", &notify.path)
        .env_remove("EDGENET_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = notify.wait_for(Duration::from_secs(10), |m| m.contains("READY=1"));
    terminate(&mut child);
    let ready = ready.unwrap_or_else(|| panic!("no READY: {:?}", notify.messages));
    assert!(
        ready.contains("STATUS=running on the last applied state v1-"),
        "{ready}"
    );
}

/// systemd's notify protocol: READY=1 at start, a STATUS= naming the state
/// id after the first apply, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1.
#[test]
fn notifies_systemd() {
    let mut notify = NotifySocket::new();
    let model = fixture("cloud.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgenetd"))
        .args(["run", "--dataplane", "memory", "--node", "nc-1", "--model"])
        .arg(&model)
        .env("NOTIFY_SOCKET", &notify.path)
        // Pings every millisecond: some always arrive around the stop.
        .env("WATCHDOG_USEC", "2000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let watchdogs =
        |messages: &[String]| messages.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    let applied = notify.wait_for(Duration::from_secs(5), |m| m.contains("STATUS=applied v1-"));
    assert!(applied.is_some(), "{:?}", notify.messages);
    while watchdogs(&notify.messages) < 3 {
        let ping = notify.wait_for(Duration::from_secs(5), |m| m.contains("WATCHDOG=1"));
        assert!(ping.is_some(), "{:?}", notify.messages);
    }
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    // Pings sent before the stop may still be queued ahead of STOPPING=1;
    // reading them also keeps the agent's sends from blocking on a full
    // socket.
    let stopping = notify.wait_for(Duration::from_secs(5), |m| m.contains("STOPPING=1"));
    assert!(child.wait().unwrap().success());
    let messages = &notify.messages;
    assert!(stopping.is_some(), "{messages:?}");
    let ready = messages
        .iter()
        .find(|m| m.contains("READY=1"))
        .expect("READY=1 sent");
    assert!(
        ready.contains("STATUS=waiting for the first view"),
        "{messages:?}"
    );
    assert!(watchdogs(messages) >= 3, "{messages:?}");
}

/// Runs edgenetd with stderr into a file; `journal`: with JOURNAL_STREAM
/// naming that file, as systemd names the journal's stream.
fn stderr_lines(args: &[&str], journal: bool) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stderr");
    let file = std::fs::File::create(&path).unwrap();
    let metadata = file.metadata().unwrap();
    let stream = if journal {
        format!("{}:{}", metadata.dev(), metadata.ino())
    } else {
        format!("{}:{}", metadata.dev(), metadata.ino() + 1)
    };
    Command::new(env!("CARGO_BIN_EXE_edgenetd"))
        .args(args)
        .env("JOURNAL_STREAM", stream)
        .env("EDGENET_LOG", "debug")
        .env_remove("EDGENET_CONFIG")
        .stdout(Stdio::null())
        .stderr(file)
        .status()
        .unwrap();
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Under systemd stderr is the journal: each line carries its priority as
/// the sd-daemon prefix, and no timestamp of ours (journald stamps it).
#[test]
fn log_lines_carry_journal_priorities_when_stderr_is_the_journal() {
    let model = fixture("cloud.json");
    let model = model.to_str().unwrap();
    let run = [
        "run",
        "--dataplane",
        "memory",
        "--node",
        "nc-1",
        "--model",
        model,
        "--once",
    ];
    let lines = stderr_lines(&run, true);
    assert!(lines.iter().any(|l| l.starts_with("<6>")), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("<7>")), "{lines:?}");
    for line in &lines {
        let level = match &line[..3] {
            "<3>" => "ERROR",
            "<4>" => "WARN",
            "<6>" => "INFO",
            "<7>" => "DEBUG",
            _ => panic!("no priority prefix: {line}"),
        };
        assert!(line[3..].trim_start().starts_with(level), "{line}");
    }
    // --log-level overrides EDGENET_LOG (debug here).
    let quiet: Vec<&str> = run.iter().copied().chain(["--log-level", "warn"]).collect();
    let quiet = stderr_lines(&quiet, true);
    assert!(
        quiet
            .iter()
            .all(|l| !l.starts_with("<6>") && !l.starts_with("<7>")),
        "{quiet:?}"
    );
    let failed = stderr_lines(
        &["apply", "--node", "nc-1", "--model", "/nonexistent.json"],
        true,
    );
    assert!(
        failed.iter().any(|l| l.starts_with("<3>edgenetd: ")),
        "{failed:?}"
    );

    // Elsewhere (another stream, a file, a terminal): plain lines, stamped.
    let plain = stderr_lines(&run, false);
    assert!(plain.iter().all(|l| !l.starts_with('<')), "{plain:?}");
    assert!(
        plain
            .iter()
            .any(|l| l.contains("INFO") && l.contains('T') && l.contains('Z')),
        "{plain:?}"
    );
}

/// `cleanup` removes our two tables, our routes and our addresses, and
/// nothing else; `--dry-run` only says what it would remove.
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root: cargo test --features root-tests"
)]
fn cleanup_removes_only_what_is_ours() {
    let out = in_namespace(
        r#"
"$EDGENETD" apply --node nc-1 --model "$MODEL" > /dev/null || echo "apply failed"
ip addr add 192.0.2.10/24 dev eth0
ip route add 198.51.100.0/24 via 192.0.2.1 proto static
nft add table inet other && nft add chain inet other keep
echo "--- dry run"
"$EDGENETD" cleanup --dry-run --node nc-1 --model "$MODEL"
echo "rc=$?"
nft list tables
echo "--- cleanup"
"$EDGENETD" cleanup --node nc-1 --model "$MODEL"
echo "rc=$?"
echo "--- after"
nft list tables
ip route show proto 159 | sed 's/^/ours: /'
ip route show
ip -4 addr show | grep inet
"#,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let section = |name: &str| -> String {
        let start = stdout
            .find(&format!("--- {name}\n"))
            .unwrap_or_else(|| panic!("{stdout}\n{stderr}"));
        let rest = &stdout[start + name.len() + 5..];
        rest[..rest.find("--- ").unwrap_or(rest.len())].to_string()
    };
    assert!(!stdout.contains("apply failed"), "{stderr}");
    let dry = section("dry run");
    assert!(dry.contains("- nft table inet edgenet\n"), "{dry}");
    assert!(dry.contains("- nft table bridge edgenet\n"), "{dry}");
    assert!(dry.contains("- route 10.200.0.0/16"), "{dry}");
    assert!(dry.contains("- address 10.1.0.1/16 dev br0"), "{dry}");
    assert!(
        !dry.contains("192.0.2.10") && !dry.contains("198.51.100"),
        "{dry}"
    );
    assert!(
        dry.contains("rc=0\n") && dry.contains("table inet edgenet\n"),
        "nothing removed: {dry}"
    );
    let done = section("cleanup");
    assert!(done.contains("rc=0\n"), "{done}\n{stderr}");
    let after = section("after");
    assert!(!after.contains("edgenet"), "{after}");
    assert!(after.contains("table inet other"), "{after}");
    assert!(!after.contains("ours: "), "{after}");
    assert!(after.contains("198.51.100.0/24 via 192.0.2.1"), "{after}");
    assert!(after.contains("192.0.2.10/24"), "{after}");
    assert!(!after.contains("10.1.0.1/16"), "{after}");
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The metrics text served on `port`, or `None` when nothing answers.
fn scrape(port: u16) -> Option<String> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGHUP with a new `[metrics] listen` moves the endpoint there.
#[test]
fn sighup_moves_the_metrics_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("edgenetd.toml");
    let (first, second) = (free_port(), free_port());
    let with_listen =
        |port: u16| format!("node_id = \"nc-1\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    std::fs::write(&config, with_listen(first)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgenetd"))
        .args(["run", "--dataplane", "memory", "--config"])
        .arg(&config)
        .arg("--model")
        .arg(fixture("cloud.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("metrics on the first port", || {
        scrape(first).is_some_and(|t| t.contains("edgenetd_"))
    });
    std::fs::write(&config, with_listen(second)).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_until("metrics moved to the second port", || {
        scrape(second).is_some_and(|t| t.contains("edgenetd_")) && scrape(first).is_none()
    });
    child.kill().unwrap();
    child.wait().unwrap();
}
