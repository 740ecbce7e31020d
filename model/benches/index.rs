//! Every view and id of a large synthetic model, timed (bench/README.md, "Model").
//!
//! `cargo bench -p edgenet-model --bench index` (optionally
//! `-- NODES INSTANCES GROUPS`). Prints wall time, the peak RSS the step
//! added, and the naive per-node projection as a same-run baseline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgenet_model::synthetic::{generate, Shape};
use edgenet_model::{parse_model, view_for, CloudModel, ModelIndex};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let shape = Shape {
        nodes: args.first().copied().unwrap_or(10_000),
        instances: args.get(1).copied().unwrap_or(100_000),
        groups: args.get(2).copied().unwrap_or(1_000),
        seed: 1,
    };
    println!(
        "shape: {} nodes, {} instances, {} groups",
        shape.nodes, shape.instances, shape.groups
    );
    let model = generate(shape);
    let text = serde_json::to_vec(&model).unwrap();
    println!("model file: {:.1} MiB", text.len() as f64 / 1048576.0);

    let (parsed, parse_time, parse_rss) = measured(|| parse_model(&text).unwrap());
    println!(
        "parse + validate: {} ms, peak RSS added {} MiB",
        ms(parse_time),
        parse_rss
    );
    drop(parsed);

    let model = Arc::new(model);
    let mut best = Duration::MAX;
    let mut index = None;
    let mut build_rss = 0;
    for _ in 0..3 {
        drop(index.take());
        let (built, took, rss) = measured(|| ModelIndex::build(model.clone()));
        best = best.min(took);
        build_rss = build_rss.max(rss);
        index = Some(built);
    }
    let index = index.unwrap();
    let view_bytes: usize = index
        .node_ids()
        .take(100)
        .map(|n| index.view_json(n).unwrap().len())
        .sum();
    println!(
        "full pass (all views + ids): {} ms (best of 3), peak RSS added {} MiB, ~{} KiB per view",
        ms(best),
        build_rss,
        view_bytes / 100 / 1024
    );

    naive_baseline(&model, best);
    one_instance_change(&model, &index, best);
}

/// The obvious way: project and hash each node's view on its own.
fn naive_baseline(model: &CloudModel, full: Duration) {
    let sample = 50.min(model.nodes.len());
    let start = Instant::now();
    for node in model.nodes.iter().take(sample) {
        std::hint::black_box(view_for(model, &node.id).unwrap().state_id());
    }
    let per_node = start.elapsed() / sample as u32;
    let projected = per_node * model.nodes.len() as u32;
    println!(
        "baseline view_for per node: {} ms per node, projected {} ms for all ({:.0}x the index)",
        ms(per_node),
        ms(projected),
        projected.as_secs_f64() / full.as_secs_f64()
    );
}

fn one_instance_change(model: &Arc<CloudModel>, index: &ModelIndex, full: Duration) {
    let middle = model.instances.len() / 2;
    let mut new_mac = (**model).clone();
    new_mac.instances[middle].mac = "d0:0d:ff:ff:ff:fe".into();
    report_update("one-instance change (mac)", index, new_mac, full);
    let mut new_ip = (**model).clone();
    new_ip.instances[middle].private_ip = "10.0.255.250".into();
    report_update(
        "one-instance change (private_ip: its groups' members change)",
        index,
        new_ip,
        full,
    );
}

fn report_update(what: &str, index: &ModelIndex, edited: CloudModel, full: Duration) {
    let edited = Arc::new(edited);
    let mut best = Duration::MAX;
    let mut changed = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let (_next, nodes) = index.update(edited.clone());
        best = best.min(start.elapsed());
        changed = nodes;
    }
    println!(
        "{what}: update {} ms (best of 3) = {:.1}% of the full pass; {} view(s) changed",
        ms(best),
        100.0 * best.as_secs_f64() / full.as_secs_f64(),
        changed.len()
    );
}

fn measured<T>(step: impl FnOnce() -> T) -> (T, Duration, u64) {
    reset_peak_rss();
    let before = rss_kib("VmRSS:");
    let start = Instant::now();
    let value = step();
    let took = start.elapsed();
    let peak = rss_kib("VmHWM:");
    (value, took, peak.saturating_sub(before) / 1024)
}

/// Linux resets VmHWM to the current RSS when 5 is written to clear_refs.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn ms(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1000.0)
}
