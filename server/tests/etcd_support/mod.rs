//! A throwaway etcd member per test: Debian's `etcd` binary (etcd-server
//! 3.4) with its data in a temporary directory, on free loopback ports.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edgenet_server::store::EtcdConfig;

pub const PREFIX: &str = "/edgenet/v1/";

pub struct Etcd {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub client_port: u16,
    peer_port: u16,
    tls: Option<Certs>,
}

/// A CA, etcd's server certificate (for 127.0.0.1) and a client
/// certificate, all made with `openssl`.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Certs {
    pub fn make(dir: &std::path::Path) -> Certs {
        let script = r#"
set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=test-ca -keyout ca-key.pem -out ca.pem \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
for who in server client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj /CN=$who -keyout $who-key.pem -out $who.csr
  if [ $who = server ]; then usage=serverAuth; else usage=clientAuth; fi
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=%s\n' $usage > $who.ext
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 1 \
    -extfile $who.ext -out $who.pem
done
"#;
        let made = Command::new("bash")
            .args(["-c", script])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            made.is_ok_and(|s| s.success()),
            "openssl could not make the test certificates"
        );
        Certs {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Starts a one-member cluster and waits until it answers.
    pub async fn start() -> Etcd {
        let mut etcd = Etcd {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            client_port: free_port(),
            peer_port: free_port(),
            tls: None,
        };
        etcd.spawn();
        etcd.wait_ready().await;
        etcd
    }

    /// A member that serves TLS and requires client certificates.
    pub async fn start_tls() -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::make(dir.path());
        let mut etcd = Etcd {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            tls: Some(certs),
        };
        etcd.spawn();
        etcd.wait_ready().await;
        etcd
    }

    pub fn certs(&self) -> &Certs {
        self.tls.as_ref().expect("a TLS member")
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn config(&self) -> EtcdConfig {
        let mut config = EtcdConfig::new(&self.url(), PREFIX);
        if let Some(certs) = &self.tls {
            config.ca = Some(certs.ca.clone());
            config.cert = Some(certs.client_cert.clone());
            config.key = Some(certs.client_key.clone());
        }
        config
    }

    pub async fn client(&self) -> etcd_client::Client {
        self.config().connect().await.unwrap()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new("etcd");
        if let Some(certs) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&certs.server_cert)
                .arg("--key-file")
                .arg(&certs.server_key)
                .arg("--trusted-ca-file")
                .arg(&certs.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the etcd binary (Debian's etcd-server) is installed");
        self.child = Some(child);
    }

    async fn wait_ready(&self) {
        let mut client = self.client().await;
        // A read, not a status call: it needs a leader, as the server's do.
        for _ in 0..400 {
            if client.get("ready", None).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("etcd did not come up on {}", self.url());
    }

    /// Kills the member (its data stays), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the member again on the same data and ports.
    pub async fn restart(&mut self) {
        self.spawn();
        self.wait_ready().await;
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy to etcd that a test can cut and reopen: the server behind it
/// loses etcd while the test still writes to etcd directly.
pub struct Proxy {
    pub port: u16,
    open: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(target_port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, open_rx) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut open = open_rx.clone();
                if !*open.borrow() {
                    continue; // refused: dropped at once
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = open.wait_for(|o| !*o) => {}
                    }
                });
            }
        });
        Proxy { port, open }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Drops every proxied connection and refuses new ones (`false`), or
    /// lets them through again (`true`).
    pub fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }
}

/// A cluster of members on loopback, each with its own data directory.
pub struct Cluster {
    members: Vec<Option<Child>>,
    dir: tempfile::TempDir,
    client_ports: Vec<u16>,
    peer_ports: Vec<u16>,
}

impl Cluster {
    pub async fn start(size: usize) -> Cluster {
        let mut cluster = Cluster {
            members: (0..size).map(|_| None).collect(),
            dir: tempfile::tempdir().unwrap(),
            client_ports: (0..size).map(|_| free_port()).collect(),
            peer_ports: (0..size).map(|_| free_port()).collect(),
        };
        for member in 0..size {
            cluster.spawn(member, "new");
        }
        cluster.wait_ready().await;
        cluster
    }

    /// Every member's client URL, comma-separated, as `--etcd` takes them.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self
            .client_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        urls.join(",")
    }

    pub fn config(&self) -> EtcdConfig {
        EtcdConfig::new(&self.urls(), PREFIX)
    }

    pub async fn client(&self) -> etcd_client::Client {
        self.config().connect().await.unwrap()
    }

    fn spawn(&mut self, member: usize, state: &str) {
        let peers: Vec<String> = self
            .peer_ports
            .iter()
            .enumerate()
            .map(|(m, p)| format!("m{m}=http://127.0.0.1:{p}"))
            .collect();
        let client = format!("http://127.0.0.1:{}", self.client_ports[member]);
        let peer = format!("http://127.0.0.1:{}", self.peer_ports[member]);
        let child = Command::new("etcd")
            .args(["--name", &format!("m{member}")])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("m{member}")))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &peers.join(",")])
            .args(["--initial-cluster-state", state, "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the etcd binary (Debian's etcd-server) is installed");
        self.members[member] = Some(child);
    }

    async fn wait_ready(&self) {
        let mut client = self.client().await;
        for _ in 0..400 {
            if client.get("ready", None).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the etcd cluster did not come up");
    }

    pub fn kill(&mut self, member: usize) {
        if let Some(mut child) = self.members[member].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed member again on its data.
    pub async fn restart(&mut self, member: usize) {
        self.spawn(member, "existing");
        self.wait_ready().await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in 0..self.members.len() {
            self.kill(member);
        }
    }
}
