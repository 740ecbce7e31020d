//! An idle server on a model file reads nothing and spends no CPU: reading
//! the file raises inotify access events, which must not trigger a read.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_edgenet-server");
const EXAMPLE: &str = include_str!("../../examples/cloud.json");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// utime + stime of `pid`, in clock ticks (/proc/PID/stat fields 14, 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 (state) is the first after the name: utime is field 14.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn model_reads(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("edgenet_server_model_reads_total "))
        .expect("the model reads metric")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_idle_server_does_not_read_its_model_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("cloud.json");
    std::fs::write(&model, EXAMPLE).unwrap();
    let mut child = Command::new(BIN)
        .arg("--model")
        .arg(&model)
        .args(["--insecure-no-auth", "--listen", "127.0.0.1:0"])
        .env("EDGENET_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let pid = child.id();
    let _running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("local_addr=").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let url = format!("http://{addr}/metrics");
    let client = reqwest::Client::new();
    let scrape = || async { client.get(&url).send().await.unwrap().text().await.unwrap() };
    // Let the start-up read (the one after the watch starts) happen.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (reads_before, ticks_before) = (model_reads(&scrape().await), cpu_ticks(pid));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (reads_after, ticks_after) = (model_reads(&scrape().await), cpu_ticks(pid));
    println!(
        "idle 3 s: {} model reads, {} CPU ticks",
        reads_after - reads_before,
        ticks_after - ticks_before
    );
    assert_eq!(
        reads_after, reads_before,
        "the idle server read its model file"
    );
    // A server re-reading the example every ~30 ms spent 9 ticks here (a
    // debug build); an idle one spends at most a tick or two (the scrapes).
    assert!(
        ticks_after - ticks_before <= 3,
        "{} ticks",
        ticks_after - ticks_before
    );
}
