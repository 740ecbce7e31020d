//! The topology builder itself, without edgenet: namespaces, links,
//! responders, probes and cleanup. Needs root, `ip`, `nft` and `ping`.

use std::time::Duration;

use edgenet_e2e::cloud::sock;
use edgenet_e2e::names::{list_netns, owner_pid, test_prefix};
use edgenet_e2e::probe::{self, Reply, Responder};
use edgenet_e2e::{links, prereq, Netns};

fn pair() -> (Netns, Netns) {
    prereq::require_machine().unwrap();
    let prefix = test_prefix();
    let a = Netns::create(&prefix, "a").unwrap();
    let b = Netns::create(&prefix, "b").unwrap();
    links::veth(&a, "eth0", &b, "eth0").unwrap();
    links::address(&a, "eth0", "10.9.0.1/24").unwrap();
    links::address(&b, "eth0", "10.9.0.2/24").unwrap();
    (a, b)
}

#[test]
fn veth_pair_carries_tcp_and_icmp_between_namespaces() {
    let (a, b) = pair();
    let _r = Responder::start(
        &b,
        sock("10.9.0.2", 4000).unwrap(),
        "hello",
        Reply::Greeting,
    )
    .unwrap();
    let greeting = probe::tcp_connect(&a, sock("10.9.0.2", 4000).unwrap(), Duration::from_secs(2));
    assert_eq!(greeting.unwrap(), "hello");
    assert!(probe::ping(&a, "10.9.0.2", 2).unwrap());
    // Nothing listens on 4001: refused, not reached.
    assert!(!probe::can_connect(&a, sock("10.9.0.2", 4001).unwrap()));
}

#[test]
fn responder_records_the_source_address_it_sees() {
    let (a, b) = pair();
    let r = Responder::start(&b, sock("10.9.0.2", 4000).unwrap(), "x", Reply::Greeting).unwrap();
    probe::tcp_connect(&a, r.addr(), Duration::from_secs(2)).unwrap();
    links::address(&a, "eth0", "10.9.0.9/24").unwrap();
    let src = "10.9.0.9".parse().unwrap();
    probe::tcp_connect_from(&a, src, r.addr(), Duration::from_secs(2)).unwrap();
    let peers: Vec<String> = r.peers().iter().map(|p| p.ip().to_string()).collect();
    assert_eq!(peers, ["10.9.0.1", "10.9.0.9"]);
}

#[test]
fn bridge_joins_namespaces_and_http_responder_answers() {
    prereq::require_machine().unwrap();
    let prefix = test_prefix();
    let hub = Netns::create(&prefix, "hub").unwrap();
    links::bridge(&hub, "sw").unwrap();
    let c = Netns::create(&prefix, "c").unwrap();
    let d = Netns::create(&prefix, "d").unwrap();
    for (ns, port, ip) in [(&c, "p-c", "10.9.1.1/24"), (&d, "p-d", "10.9.1.2/24")] {
        links::veth(ns, "eth0", &hub, port).unwrap();
        links::attach(&hub, port, "sw").unwrap();
        links::address(ns, "eth0", ip).unwrap();
    }
    let _r = Responder::start(&d, sock("10.9.1.2", 80).unwrap(), "meta", Reply::Http).unwrap();
    let resp = edgenet_e2e::http::get(
        &c,
        sock("10.9.1.2", 80).unwrap(),
        "/latest",
        &[],
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!((resp.status, resp.body.as_str()), (200, "meta\n"));
}

#[test]
fn namespaces_are_removed_on_drop() {
    let (a, b) = pair();
    let names = [a.name().to_owned(), b.name().to_owned()];
    assert!(names
        .iter()
        .all(|n| owner_pid(n) == Some(std::process::id())));
    drop((a, b));
    let left = list_netns();
    assert!(
        names.iter().all(|n| !left.contains(n)),
        "left behind: {left:?}"
    );
}

#[test]
fn sweep_removes_leftovers_of_dead_processes_only() {
    prereq::require_machine().unwrap();
    // PID 0x7fffffff cannot be a live process (pid_max is at most 2^22).
    let dead = format!("ee{}-1x", i32::MAX);
    std::process::Command::new("ip")
        .args(["netns", "add", &dead])
        .status()
        .unwrap();
    // A process a killed run left behind in it (an agent, say).
    let mut orphan = std::process::Command::new("ip")
        .args(["netns", "exec", &dead, "sleep", "60"])
        .spawn()
        .unwrap();
    let (ours, _b) = pair();
    std::thread::sleep(Duration::from_millis(100));
    edgenet_e2e::names::sweep_leftovers();
    let reaped = probe::wait_until(Duration::from_secs(3), || {
        orphan.try_wait().unwrap().is_some()
    });
    if !reaped {
        let _ = orphan.kill();
    }
    assert!(reaped, "the leftover's process was not killed");
    let left = list_netns();
    assert!(
        !left.contains(&dead),
        "leftover of a dead run survived the sweep"
    );
    assert!(
        left.contains(&ours.name().to_owned()),
        "the sweep removed a live run's namespace"
    );
}
