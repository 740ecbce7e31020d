//! The model in a three-member etcd cluster, two server replicas, two
//! nodes whose agents list both: traffic keeps flowing and checked through
//! a replica's death, an etcd member's, and the loss of etcd's quorum, and
//! every change made then converges. Needs root, `ip`/`nft`/`ping`, Debian's
//! etcd-server (tests/setup.sh) and `cargo build --bins`.

use std::thread::sleep;
use std::time::Duration;

use edgenet_e2e::cloud::{allow, deny, Cloud, CloudOptions, Flow, REPLICA_PORT, SERVER_PORT};
use edgenet_e2e::{kernel, model, probe};

const CONVERGE: Duration = Duration::from_secs(45);

const STEADY: [Flow; 4] = [
    allow("i-lb1", "i-web1", 80),
    allow("i-web2", "i-db1", 5432),
    deny("i-lb1", "i-db1", 5432),
    deny("i-db1", "i-web2", 80),
];

fn both_nodes(cloud: &Cloud) -> [kernel::Snapshot; 2] {
    [
        cloud.snapshot("nc-1").unwrap(),
        cloud.snapshot("nc-2").unwrap(),
    ]
}

/// Opens `port` on db1 (sg-admin), waits for nc-1 to apply it and checks
/// the flow.
fn open_port(cloud: &mut Cloud, port: u16) {
    let mut changed = cloud.model.clone();
    model::add_rule(
        &mut changed,
        "sg-admin",
        model::tcp_rule(port, "10.0.0.0/8"),
    )
    .unwrap();
    cloud.write_model(changed).unwrap();
    cloud.wait_node_converged("nc-1", CONVERGE).unwrap();
    cloud.wait_flows(&[allow("i-lb1", "i-db1", port)], CONVERGE);
}

/// Both replicas give every node the same id (waiting, bounded, for the
/// slower one to serve the same commit).
fn same_ids(cloud: &Cloud) {
    let mut last = (Vec::new(), Vec::new());
    for _ in 0..100 {
        last = (
            cloud.current_ids_on(SERVER_PORT).unwrap(),
            cloud.current_ids_on(REPLICA_PORT).unwrap(),
        );
        if last.0 == last.1 {
            return;
        }
        sleep(Duration::from_millis(100));
    }
    panic!("the replicas disagree: {:?} vs {:?}", last.0, last.1);
}

#[test]
fn replicas_on_etcd_ride_out_a_replica_a_member_and_the_quorum() {
    let mut cloud = Cloud::start_with(CloudOptions {
        replica: true,
        etcd_members: 3,
        ..Default::default()
    })
    .unwrap();
    cloud.assert_flows(&STEADY);
    same_ids(&cloud);

    // One replica dies: the agents fail over, nothing is re-applied.
    let before = both_nodes(&cloud);
    cloud.kill_server();
    sleep(Duration::from_secs(3));
    cloud.assert_flows(&STEADY);
    assert!(both_nodes(&cloud) == before, "a failover re-applied state");
    open_port(&mut cloud, 7777);
    cloud.start_server().unwrap();
    same_ids(&cloud);

    // One etcd member dies: changes still converge.
    cloud.kill_etcd(0);
    open_port(&mut cloud, 2222);
    same_ids(&cloud);

    // Quorum lost: the replicas keep serving, the agents keep their state.
    cloud.kill_etcd(1);
    let before = both_nodes(&cloud);
    for port in [SERVER_PORT, REPLICA_PORT] {
        let unhealthy = probe::wait_until(CONVERGE, || cloud.healthz_on(port).ok() == Some(503));
        assert!(
            unhealthy,
            "the replica on :{port} never reported the lost quorum"
        );
    }
    sleep(Duration::from_secs(3));
    cloud.assert_flows(&STEADY);
    cloud.assert_flows(&[allow("i-lb1", "i-db1", 7777), allow("i-lb1", "i-db1", 2222)]);
    assert!(
        both_nodes(&cloud) == before,
        "a node changed while etcd had no quorum"
    );
    same_ids(&cloud);

    // Quorum back: a change converges on both replicas.
    cloud.restart_etcd(0).unwrap();
    cloud.restart_etcd(1).unwrap();
    open_port(&mut cloud, 9000);
    same_ids(&cloud);
    cloud.assert_flows(&STEADY);
    for port in [SERVER_PORT, REPLICA_PORT] {
        let healthy = probe::wait_until(CONVERGE, || cloud.healthz_on(port).ok() == Some(200));
        assert!(healthy, "the replica on :{port} stayed unhealthy");
    }
}
