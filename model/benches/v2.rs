//! Protocol version 2 against version 1, in one run: one launch into a group
//! that every node's rules name, on a 2,000-node, 40,000-instance cloud.
//!
//! `cargo bench -p edgenet-model --bench v2` (optionally
//! `-- NODES INSTANCES GROUPS`). Prints, for the server, the time from the
//! changed model to every woken node's answer bytes and the bytes per node;
//! for the agent, the time from the answer's bytes to the view it holds.
//! Times are CPU time of the benchmark's thread, best of several runs.
//! The server side assembles views from shared sections the way an index
//! holding them would; building that index is not part of this crate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edgenet_model::synthetic::{generate, Shape};
use edgenet_model::v2::*;
use edgenet_model::*;

const DEFAULT_GROUP: &str = "sg-default";

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let shape = Shape {
        nodes: args.first().copied().unwrap_or(2_000),
        instances: args.get(1).copied().unwrap_or(40_000),
        groups: args.get(2).copied().unwrap_or(100),
        seed: 1,
    };
    let model = with_default_group(generate(shape));
    let mut launched = model.clone();
    launch_into_default(&mut launched);
    println!(
        "shape: {} nodes, {} instances, {} groups + {DEFAULT_GROUP} (half of each node's instances)",
        shape.nodes, shape.instances, shape.groups
    );

    let before = Arc::new(model);
    let after = Arc::new(launched);
    let v1 = v1_server(&before, &after);
    let v2 = v2_server(&before, &after);
    println!(
        "server, change to every answer's bytes (best of 3): v1 {} ms for {} views, {} KiB per view; \
         v2 {} ms ({} ms of it the shared member list) for {} views, {} bytes per view \
         ({:.0}x less time, {:.0}x fewer bytes)",
        ms(v1.took),
        v1.views,
        v1.bytes_per_view / 1024,
        ms(v2.took),
        ms(v2.sections_took),
        v2.views,
        v2.bytes_per_view,
        v1.took.as_secs_f64() / v2.took.as_secs_f64(),
        v1.bytes_per_view as f64 / v2.bytes_per_view as f64
    );
    agent(&before, &after);
}

/// Half of every node's instances join a group whose rule names itself, so
/// every view carries its member list.
fn with_default_group(mut model: CloudModel) -> CloudModel {
    model.security_groups.push(SecurityGroup {
        id: DEFAULT_GROUP.into(),
        ingress: Some(vec![Rule {
            cidr: None,
            from_port: None,
            group: Some(DEFAULT_GROUP.into()),
            icmp_code: None,
            icmp_type: None,
            protocol: Protocol::Name("all".into()),
            to_port: None,
        }]),
    });
    let nodes = model.nodes.len();
    let every_other_round = |(position, _): &(usize, &mut Instance)| (position / nodes) % 2 == 0;
    for (_, instance) in model
        .instances
        .iter_mut()
        .enumerate()
        .filter(every_other_round)
    {
        instance
            .security_groups
            .get_or_insert_with(Vec::new)
            .push(DEFAULT_GROUP.into());
    }
    model
}

fn launch_into_default(model: &mut CloudModel) {
    model.instances.push(Instance {
        id: "i-launched".into(),
        interface: "vn_launched".into(),
        mac: "d0:0e:ff:ff:ff:01".into(),
        node: model.nodes[0].id.clone(),
        private_ip: "10.0.250.250".into(),
        public_ip: None,
        security_groups: Some(vec![DEFAULT_GROUP.into()]),
        subnet: "subnet-0".into(),
    });
    model.validate().expect("the launch keeps the model valid");
}

struct ServerFigures {
    took: Duration,
    /// v2: of which making the changed shared sections.
    sections_took: Duration,
    views: usize,
    bytes_per_view: usize,
}

/// Version 1: the index's update, then each changed view serialised whole.
fn v1_server(before: &Arc<CloudModel>, after: &Arc<CloudModel>) -> ServerFigures {
    let index = ModelIndex::build(before.clone());
    let (took, (views, bytes)) = best_of(3, || {
        let (next, changed) = index.update(after.clone());
        let bytes: usize = changed
            .iter()
            .map(|n| next.view_json(n).unwrap().len())
            .sum();
        (changed.len(), bytes)
    });
    ServerFigures {
        took,
        sections_took: Duration::ZERO,
        views,
        bytes_per_view: bytes / views.max(1),
    }
}

/// Version 2: the changed sections made once, then per woken view its
/// manifest, id and delta answer.
fn v2_server(before: &Arc<CloudModel>, after: &Arc<CloudModel>) -> ServerFigures {
    let held = sectioned_views(before);
    let (sections_took, _) = best_of(3, || changed_default_members(after));
    let (took, (views, bytes)) = best_of(3, || {
        let changed_members = changed_default_members(after);
        let mut diffs = MemberDiffs::default();
        let mut bytes = 0;
        let mut views = 0;
        for (node, base) in &held {
            if let Some(answer) = answer_for(node, base, after, &changed_members, &mut diffs) {
                bytes += serde_json::to_vec(&answer).unwrap().len();
                views += 1;
            }
        }
        (views, bytes)
    });
    ServerFigures {
        took,
        sections_took,
        views,
        bytes_per_view: bytes / views.max(1),
    }
}

fn changed_default_members(after: &CloudModel) -> Section {
    Section::new(SectionValue::GroupMembers(members_of(after, DEFAULT_GROUP)))
}

/// The delta answer for `node`, `None` when the launch does not touch it.
fn answer_for(
    node: &str,
    base: &SectionedView,
    after: &CloudModel,
    changed_members: &Section,
    diffs: &mut MemberDiffs,
) -> Option<DeltaAnswer> {
    let members_name = SectionName::group_members(DEFAULT_GROUP);
    let mut replaced = Vec::new();
    if base.get(&members_name).is_some() {
        replaced.push((members_name, Some(changed_members.clone())));
    }
    if after.instances.last().unwrap().node == node {
        let instances = instances_of(after, node);
        let section = Section::new(SectionValue::Instances(instances));
        replaced.push((SectionName::Instances, Some(section)));
    }
    if replaced.is_empty() {
        return None;
    }
    let target = base.replacing(replaced).unwrap();
    Some(DeltaAnswer {
        state_id: target.state_id().clone(),
        node_id: node.to_owned(),
        base_state_id: base.state_id().clone(),
        delta: Delta::between_with(base, &target, diffs),
    })
}

/// Every node's sectioned view, shared sections made once per model.
fn sectioned_views(model: &CloudModel) -> Vec<(String, SectionedView)> {
    let mut shared: HashMap<SectionName, Section> = HashMap::new();
    model
        .nodes
        .iter()
        .map(|node| {
            let view = view_for(model, &node.id).unwrap();
            let sections = cut_view(view).into_iter().map(|(name, section)| {
                let per_node = matches!(
                    name,
                    SectionName::Node | SectionName::Instances | SectionName::Routes
                );
                if per_node {
                    return (name, section);
                }
                let section = shared.entry(name.clone()).or_insert(section).clone();
                (name, section)
            });
            (
                node.id.clone(),
                SectionedView::from_sections(sections).unwrap(),
            )
        })
        .collect()
}

fn members_of(model: &CloudModel, group: &str) -> Vec<String> {
    model
        .instances
        .iter()
        .filter(|i| i.security_groups().iter().any(|g| g == group))
        .map(|i| i.private_ip.clone())
        .collect()
}

fn instances_of(model: &CloudModel, node: &str) -> Vec<Instance> {
    model
        .instances
        .iter()
        .filter(|i| i.node == node)
        .cloned()
        .collect()
}

/// From the answer's bytes to the view held: v1 parses the whole view;
/// v2 parses the delta, applies it and checks the id.
fn agent(before: &CloudModel, after: &CloudModel) {
    let node = &before.nodes[1].id;
    let base_view = view_for(before, node).unwrap();
    let target_view = view_for(after, node).unwrap();
    let base = SectionedView::from_view(&base_view).unwrap();
    let target = SectionedView::from_view(&target_view).unwrap();
    let v1_body = target_view.canonical_json();
    let answer = serde_json::to_vec(&DeltaAnswer {
        state_id: target.state_id().clone(),
        node_id: node.clone(),
        base_state_id: base.state_id().clone(),
        delta: Delta::between(&base, &target),
    })
    .unwrap();
    let (v1, _) = best_of(20, || parse_view(&v1_body).unwrap());
    let (v2, _) = best_of(20, || {
        let answer: DeltaAnswer = serde_json::from_slice(&answer).unwrap();
        base.apply_answer(&answer).unwrap()
    });
    let (v2_full, _) = best_of(20, || {
        SectionedView::from_owned_view(parse_view(&v1_body).unwrap()).unwrap()
    });
    let members = target_view
        .group_members
        .values()
        .map(Vec::len)
        .sum::<usize>();
    println!(
        "agent {node}, {members} member addresses, answer to view held (best of 20): \
         v1 parse {} ms ({} KiB); v2 delta parse + apply + id check {} ms ({} bytes); \
         v2 full view parse + sections + id {} ms",
        ms(v1),
        v1_body.len() / 1024,
        ms(v2),
        answer.len(),
        ms(v2_full)
    );
}

/// The shortest of `runs` runs of `step`, and the last run's result. The
/// time is this thread's CPU time, so other work on a shared machine does
/// not inflate it.
fn best_of<T>(runs: usize, mut step: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut result = None;
    for _ in 0..runs {
        let start = thread_cpu_time();
        let value = step();
        best = best.min(thread_cpu_time().saturating_sub(start));
        result = Some(std::hint::black_box(value));
    }
    (best, result.expect("at least one run"))
}

fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "the thread CPU clock is readable on Linux");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn ms(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1000.0)
}
