//! Synthetic cloud models of any size, for benchmarks and load tests.
//!
//! Deterministic for a given seed, and always valid: every address is
//! derived from the entity's position, so sizes scale without collisions.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::types::*;

/// The shape of a synthetic model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub nodes: usize,
    pub instances: usize,
    pub groups: usize,
    pub seed: u64,
}

impl Shape {
    /// The agent benchmarks' shape: every instance on `nc-1`, 100 security
    /// groups, seed 1.
    pub fn one_node(instances: usize) -> Shape {
        Shape {
            nodes: 1,
            instances,
            groups: 100,
            seed: 1,
        }
    }
}

/// Instances per /16 subnet, leaving room for the gateway and network.
const INSTANCES_PER_SUBNET: usize = 60_000;
/// Public addresses come from 198.18.0.0/15 (RFC 2544 benchmarking space).
const PUBLIC_POOL: &str = "198.18.0.0/15";
const PUBLIC_POOL_SIZE: usize = 1 << 17;

pub fn generate(shape: Shape) -> CloudModel {
    let mut rng = StdRng::seed_from_u64(shape.seed);
    let groups = shape.groups.max(1);
    let subnet_count = shape.instances.div_ceil(INSTANCES_PER_SUBNET).max(1);
    CloudModel {
        instances: (0..shape.instances)
            .map(|i| instance(i, shape.nodes.max(1), groups, &mut rng))
            .collect(),
        metadata: Some(Metadata {
            ip: "169.254.169.254".into(),
            port: 80,
            target_ip: "10.255.255.11".into(),
            target_port: 8773,
        }),
        nodes: (0..shape.nodes.max(1)).map(node).collect(),
        public_ips: vec![PUBLIC_POOL.into()],
        routes: vec![
            Route {
                destination: "172.16.0.0/12".into(),
                device: None,
                gateway: Some("10.0.0.254".into()),
                metric: Some(100),
                node: None,
            },
            Route {
                destination: "192.168.0.0/16".into(),
                device: Some("br0".into()),
                gateway: None,
                metric: None,
                node: Some(node_id(0)),
            },
        ],
        schema: SCHEMA_VERSION,
        security_groups: (0..groups).map(|g| group(g, groups, &mut rng)).collect(),
        subnets: (0..subnet_count).map(subnet).collect(),
    }
}

pub fn node_id(position: usize) -> String {
    format!("nc-{}", position + 1)
}

fn node(position: usize) -> Node {
    Node {
        bridge: "br0".into(),
        gateway_on_bridge: Some(true),
        id: node_id(position),
        public_interface: "eth0".into(),
    }
}

fn subnet(position: usize) -> Subnet {
    Subnet {
        cidr: format!("10.{position}.0.0/16"),
        gateway: Some(format!("10.{position}.0.1")),
        id: format!("subnet-{position}"),
    }
}

fn group_id(position: usize) -> String {
    format!("sg-{position:04}")
}

pub fn instance_id(position: usize) -> String {
    format!("i-{position:08x}")
}

fn instance(position: usize, nodes: usize, groups: usize, rng: &mut StdRng) -> Instance {
    let subnet = position / INSTANCES_PER_SUBNET;
    let host = position % INSTANCES_PER_SUBNET + 2;
    let bytes = (position as u32).to_be_bytes();
    let mut security_groups = vec![group_id(rng.gen_range(0..groups))];
    if groups > 1 && rng.gen_bool(0.5) {
        let second = group_id(rng.gen_range(0..groups));
        if second != security_groups[0] {
            security_groups.push(second);
        }
    }
    let public_ip = (position % 2 == 0 && position / 2 < PUBLIC_POOL_SIZE).then(|| {
        let n = position / 2;
        format!("198.{}.{}.{}", 18 + (n >> 16), (n >> 8) & 255, n & 255)
    });
    Instance {
        id: instance_id(position),
        interface: format!("vn_{}", instance_id(position)),
        mac: format!(
            "d0:0d:{:02x}:{:02x}:{:02x}:{:02x}",
            bytes[0], bytes[1], bytes[2], bytes[3]
        ),
        node: node_id(position % nodes),
        private_ip: format!("10.{subnet}.{}.{}", host >> 8, host & 255),
        public_ip,
        security_groups: Some(security_groups),
        subnet: format!("subnet-{subnet}"),
    }
}

fn group(position: usize, groups: usize, rng: &mut StdRng) -> SecurityGroup {
    let others: Vec<usize> = (0..groups).filter(|g| *g != position).collect();
    let peer = others.choose(rng).copied().unwrap_or(position);
    let web_port = 8000 + rng.gen_range(0..100);
    SecurityGroup {
        id: group_id(position),
        ingress: Some(vec![
            Rule {
                cidr: Some("0.0.0.0/0".into()),
                from_port: Some(22),
                group: None,
                icmp_code: None,
                icmp_type: None,
                protocol: Protocol::Name("tcp".into()),
                to_port: None,
            },
            Rule {
                cidr: None,
                from_port: Some(web_port),
                group: Some(group_id(peer)),
                icmp_code: None,
                icmp_type: None,
                protocol: Protocol::Name("tcp".into()),
                to_port: Some(web_port + 10),
            },
            Rule {
                cidr: Some("10.0.0.0/8".into()),
                from_port: None,
                group: None,
                icmp_code: None,
                icmp_type: Some(8),
                protocol: Protocol::Name("icmp".into()),
                to_port: None,
            },
            Rule {
                cidr: None,
                from_port: None,
                group: Some(group_id(position)),
                icmp_code: None,
                icmp_type: None,
                protocol: Protocol::Name("all".into()),
                to_port: None,
            },
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_models_are_valid_at_every_size() {
        for (nodes, instances, groups) in [(1, 0, 1), (3, 12, 4), (100, 5_000, 50), (7, 130_000, 3)]
        {
            let model = generate(Shape {
                nodes,
                instances,
                groups,
                seed: 7,
            });
            if let Err(errors) = model.validate() {
                panic!("{nodes}/{instances}/{groups}: {errors}");
            }
        }
    }
}
