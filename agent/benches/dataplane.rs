//! Dataplane benchmark (root; makes its own network namespaces).
//!
//!   cargo bench -p edgenet-agent --bench dataplane            # 1k, 10k
//!   cargo bench -p edgenet-agent --bench dataplane -- 1000 10000 50000
//!   cargo bench -p edgenet-agent --bench dataplane -- --dump DIR 10000
//!   cargo bench -p edgenet-agent --bench dataplane -- --incremental-only 1000 10000 50000
//!
//! For each size N: a view with N instances (each with a public IP:
//! N addresses, N map elements, DNAT and SNAT), N/10 security groups and
//! N synthetic routes, applied to a fresh namespace
//! - by the Linux dataplane (read, render, diff, apply: what `edgenetd
//!   apply` does),
//! - by `nft -f` of the same ruleset as text plus `ip -batch` of the same
//!   routes and addresses (near the kernel's limit),
//! - by one `ip`/`nft` exec per object (the ancestor's style) on a sample
//!   of 1,000 objects, scaled to the whole,
//!
//! then one instance added and one removed incrementally (the agent's
//! incremental pass, against the actual state kept current by our own
//! writes), with each stage timed: plan (compare the views, render the
//! changed instances), diff and the kernel write.

use edgenet_agent::render::render_snapshot;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgenet_agent::dataplane::linux::{
    nft::bench_support::ruleset_text, LinuxConfig, LinuxDataplane,
};
use edgenet_agent::dataplane::Dataplane;
use edgenet_agent::diff::diff;
use edgenet_agent::render::incremental::{self, Baseline};
use edgenet_agent::render::{render, RenderSettings};
use edgenet_agent::snapshot::Snapshot;
use edgenet_agent::state::KernelState;
use edgenet_model::*;
use nix::sched::{setns, CloneFlags};

const SUBNETS: usize = 16;
const PER_EXEC_SAMPLE: usize = 1000;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 10_000]
    } else {
        sizes
    };
    if let Some(dir) = flag_value("--dump") {
        for n in sizes {
            dump(n, std::path::Path::new(&dir));
        }
        return;
    }
    println!("dataplane benchmark, sizes {sizes:?} (times are wall clock, one run each)");
    bench_render_diff(10_000);
    if std::env::args().any(|a| a == "--render-only") {
        return;
    }
    if std::env::args().any(|a| a == "--incremental-only") {
        for n in sizes {
            print_incremental(n, None);
        }
        return;
    }
    for n in sizes {
        bench_size(n);
    }
}

fn flag_value(flag: &str) -> Option<String> {
    let mut args = std::env::args().skip_while(|a| a != flag);
    args.next()?;
    args.next()
}

/// `--dump DIR`: write the size's ruleset (nft text) and routes and
/// addresses (`ip -batch`) to DIR, to time `nft` commands against a loaded
/// table by hand.
fn dump(n: usize, dir: &std::path::Path) {
    let desired = render(&view(n), &settings()).desired;
    std::fs::create_dir_all(dir).unwrap();
    let ruleset = dir.join(format!("ruleset-{n}.nft"));
    let batch = dir.join(format!("ip-{n}.batch"));
    std::fs::write(&ruleset, ruleset_text(&desired)).unwrap();
    std::fs::write(&batch, ip_batch_text(&desired)).unwrap();
    println!("wrote {} and {}", ruleset.display(), batch.display());
}

// ------------------------------------------------------------ the view

fn ip_at(base: [u8; 4], offset: usize) -> String {
    let value = u32::from_be_bytes(base) + offset as u32;
    std::net::Ipv4Addr::from(value).to_string()
}

fn instance(n: usize, groups: usize) -> Instance {
    let subnet = n % SUBNETS;
    let host = n / SUBNETS + 10;
    Instance {
        id: format!("i-{n:08x}"),
        interface: format!("vn{n}"),
        mac: format!(
            "d0:0d:{:02x}:{:02x}:{:02x}:{:02x}",
            (n >> 24) & 0xff,
            (n >> 16) & 0xff,
            (n >> 8) & 0xff,
            n & 0xff
        ),
        node: "nc-1".into(),
        private_ip: ip_at([10, 16 + subnet as u8, 0, 0], host),
        public_ip: Some(ip_at([100, 64, 0, 0], n + 1)),
        security_groups: Some(vec![format!("sg-{:05}", n % groups)]),
        subnet: format!("subnet-{subnet:02}"),
    }
}

fn group(g: usize, groups: usize) -> SecurityGroup {
    let rule =
        |protocol: &str, port: Option<i64>, cidr: Option<&str>, group: Option<String>| Rule {
            cidr: cidr.map(str::to_string),
            from_port: port,
            group,
            icmp_code: None,
            icmp_type: None,
            protocol: Protocol::Name(protocol.into()),
            to_port: port,
        };
    SecurityGroup {
        id: format!("sg-{g:05}"),
        ingress: Some(vec![
            rule("tcp", Some(22), Some("0.0.0.0/0"), None),
            rule(
                "tcp",
                Some(80),
                None,
                Some(format!("sg-{:05}", (g + 1) % groups)),
            ),
            rule("icmp", None, Some("10.0.0.0/8"), None),
            rule("all", None, None, Some(format!("sg-{g:05}"))),
        ]),
    }
}

fn view(instances: usize) -> NodeView {
    let groups = (instances / 10).max(1);
    let all: Vec<Instance> = (0..instances).map(|n| instance(n, groups)).collect();
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in &all {
        for g in i.security_groups() {
            members
                .entry(g.clone())
                .or_default()
                .push(i.private_ip.clone());
        }
    }
    NodeView {
        group_members: members,
        instances: all,
        metadata: Some(Metadata {
            ip: "169.254.169.254".into(),
            port: 80,
            target_ip: "10.255.255.11".into(),
            target_port: 8773,
        }),
        node: Node {
            bridge: "br0".into(),
            gateway_on_bridge: Some(true),
            id: "nc-1".into(),
            public_interface: "eth0".into(),
        },
        public_ips: vec!["100.64.0.0/10".into()],
        routes: (0..instances)
            .map(|r| Route {
                destination: format!("{}/28", ip_at([172, 16, 0, 0], r * 16)),
                device: None,
                gateway: Some("10.16.0.254".into()),
                metric: Some(100),
                node: None,
            })
            .collect(),
        schema: SCHEMA_VERSION,
        security_groups: (0..groups).map(|g| group(g, groups)).collect(),
        subnets: (0..SUBNETS)
            .map(|s| Subnet {
                cidr: format!("10.{}.0.0/16", 16 + s),
                gateway: Some(format!("10.{}.0.1", 16 + s)),
                id: format!("subnet-{s:02}"),
            })
            .collect(),
    }
}

fn settings() -> RenderSettings {
    RenderSettings::default()
}

// ------------------------------------------------------------ namespaces

struct NetNs(String);

impl NetNs {
    fn fresh(tag: &str) -> NetNs {
        let name = format!("edgenet-bench-{}-{tag}", std::process::id());
        // Left over from an interrupted run, if any.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh("ip", &["netns", "add", &name]);
        let ns = NetNs(name);
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &ns.0,
                "sh",
                "-c",
                "ip link set lo up && ip link add eth0 type veth peer name eth0-peer && \
                 ip link set eth0 up && ip link set eth0-peer up && \
                 ip link add br0 type bridge && ip link set br0 up && \
                 ip link add port0 type veth peer name vm0 && ip link set port0 master br0 && \
                 ip link set port0 up && ip link set vm0 up",
            ],
        );
        ns
    }

    /// Run `body` on a thread inside the namespace.
    fn run<T: Send + 'static>(&self, body: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            setns(File::open(path).expect("netns"), CloneFlags::CLONE_NEWNET)
                .expect("setns (root)");
            body()
        })
        .join()
        .expect("bench thread")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sh(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("spawn");
    assert!(
        status.success(),
        "{program} {args:?} failed (the benchmark needs root)"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ------------------------------------------------------------ benchmarks

/// Best of five: the machine is shared, and the minimum is the cost.
fn best_of<T>(mut run: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..5 {
        let start = Instant::now();
        let value = run();
        best = best.min(start.elapsed());
        last = Some(value);
    }
    (best, last.expect("ran"))
}

fn bench_render_diff(n: usize) {
    let v = view(n);
    let (render_time, rendered) = best_of(|| render(&v, &settings()));
    let again = render(&v, &settings()).desired;
    let (diff_same, same) = best_of(|| diff(&rendered.desired, &again));
    let empty = KernelState::default();
    let (diff_empty, all) = best_of(|| diff(&empty, &rendered.desired));
    assert!(same.is_empty());
    println!(
        "render+diff {n} instances (best of 5): render {:.1} ms, diff (no change) {:.1} ms, \
         render+diff {:.1} ms; diff from empty ({} changes) {:.1} ms",
        ms(render_time),
        ms(diff_same),
        ms(render_time + diff_same),
        all.len(),
        ms(diff_empty)
    );
}

struct Full {
    objects: usize,
    ours: Duration,
    read: Duration,
    render_diff: Duration,
}

fn bench_size(n: usize) {
    println!(
        "\n== {n} instances, {} security groups, {n} routes ==",
        (n / 10).max(1)
    );
    let full = full_apply(n);
    println!(
        "full apply (edgenetd path): {:.0} ms (read {:.0} ms, render+diff {:.0} ms) for {} objects",
        ms(full.ours),
        ms(full.read),
        ms(full.render_diff),
        full.objects
    );
    let baseline = nft_f_and_ip_batch(n);
    println!(
        "baseline nft -f + ip -batch: {:.0} ms  (ours / baseline = {:.2})",
        ms(baseline),
        full.ours.as_secs_f64() / baseline.as_secs_f64()
    );
    let per_exec = per_object_exec(n);
    println!(
        "baseline one exec per object: {:.0} ms per object, {:.1} s scaled to {} objects",
        ms(per_exec),
        per_exec.as_secs_f64() * full.objects as f64,
        full.objects
    );
    print_incremental(n, Some(full.ours));
}

/// Incremental add and remove, through the fast path and (the baseline,
/// same run) through `nft`, as a share of `full` or of the full apply the
/// incremental run makes first.
fn print_incremental(n: usize, full: Option<Duration>) {
    for fast_path in [true, false] {
        let run = incremental(n, fast_path);
        let full = full.unwrap_or(run.full);
        let share = |d: Duration| 100.0 * d.as_secs_f64() / full.as_secs_f64();
        let path = if fast_path {
            "fast path"
        } else {
            "all through nft"
        };
        println!(
            "incremental, {n} instances, {path} (median of {ROUNDS}): add one {:.1} ms ({:.2} % of a \
             {:.0} ms full apply) = {}; remove one {:.1} ms ({:.2} %) = {}",
            ms(run.add.total()),
            share(run.add.total()),
            ms(full),
            run.add,
            ms(run.remove.total()),
            share(run.remove.total()),
            run.remove,
        );
        println!(
            "  for comparison, same run: full render+diff of the added-to view {:.1} ms; \
             view intake (JSON parse + sanitize, the source's work) {:.1} ms; full read {:.0} ms",
            ms(run.full_render_diff),
            ms(run.intake),
            ms(run.resync)
        );
    }
}

fn count_objects(state: &KernelState) -> usize {
    let counts = state.object_counts();
    [
        "route",
        "address",
        "nft chain",
        "nft set",
        "nft element",
        "nft rule",
    ]
    .iter()
    .map(|k| counts[k])
    .sum()
}

fn full_apply(n: usize) -> Full {
    let ns = NetNs::fresh("full");
    let v = view(n);
    ns.run(move || {
        runtime().block_on(async move {
            let config = LinuxConfig {
                monitor: false,
                ..Default::default()
            };
            let mut dp = LinuxDataplane::new(config).unwrap();
            let start = Instant::now();
            let actual = dp.read().await.unwrap();
            let read = start.elapsed();
            let t = Instant::now();
            let desired = render(&v, &settings()).desired;
            let changes = diff(&actual, &desired);
            let render_diff = t.elapsed();
            let report = dp.apply(&changes, &desired, "v1-bench").await.unwrap();
            let ours = start.elapsed();
            assert!(report.deferred.is_empty(), "{:?}", &report.deferred[..1]);
            let back = dp.read().await.unwrap();
            assert!(diff(&back, &desired).is_empty(), "full apply incomplete");
            Full {
                objects: count_objects(&desired),
                ours,
                read,
                render_diff,
            }
        })
    })
}

fn ip_batch_text(state: &KernelState) -> String {
    let mut text = String::new();
    for address in &state.addresses {
        let _ = writeln!(
            text,
            "address add {}/{} dev {}",
            address.addr, address.prefix_len, address.device
        );
    }
    for (key, spec) in &state.routes {
        let _ = write!(text, "route add {}", key.destination);
        if let Some(gw) = spec.gateway {
            let _ = write!(text, " via {gw}");
        }
        if let Some(metric) = spec.metric {
            let _ = write!(text, " metric {metric}");
        }
        let _ = writeln!(text, " proto {}", spec.protocol);
    }
    text
}

fn nft_f_and_ip_batch(n: usize) -> Duration {
    let desired = render(&view(n), &settings()).desired;
    let dir = std::env::temp_dir().join(format!("edgenet-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ruleset = dir.join("ruleset.nft");
    let batch = dir.join("ip.batch");
    std::fs::write(&ruleset, ruleset_text(&desired)).unwrap();
    std::fs::write(&batch, ip_batch_text(&desired)).unwrap();
    let ns = NetNs::fresh("batch");
    let elapsed = ns.run(move || {
        let start = Instant::now();
        sh("ip", &["-batch", batch.to_str().unwrap()]);
        sh("nft", &["-f", ruleset.to_str().unwrap()]);
        start.elapsed()
    });
    let _ = std::fs::remove_dir_all(&dir);
    elapsed
}

/// Mean time of one exec per object over a sample: a third routes, a third
/// addresses, a third nft elements.
fn per_object_exec(n: usize) -> Duration {
    let desired = render(&view(n.max(PER_EXEC_SAMPLE)), &settings()).desired;
    let ns = NetNs::fresh("exec");
    ns.run(move || {
        sh(
            "nft",
            &["add table inet edgenet { map m { type ipv4_addr : ipv4_addr; }; }"],
        );
        let third = PER_EXEC_SAMPLE / 3;
        let start = Instant::now();
        let mut count = 0;
        for address in desired.addresses.iter().take(third) {
            let addr = format!("{}/{}", address.addr, address.prefix_len);
            sh("ip", &["addr", "add", &addr, "dev", &address.device]);
            count += 1;
        }
        for (key, spec) in desired.routes.iter().take(third) {
            let dest = key.destination.to_string();
            let gw = spec.gateway.unwrap().to_string();
            sh("ip", &["route", "add", &dest, "via", &gw, "proto", "159"]);
            count += 1;
        }
        for i in 0..(PER_EXEC_SAMPLE - 2 * third) {
            let elem = format!(
                "add element inet edgenet m {{ {} : {} }}",
                ip_at([100, 64, 0, 0], i + 1),
                ip_at([10, 16, 0, 0], i + 10)
            );
            sh("nft", &[&elem]);
            count += 1;
        }
        start.elapsed() / count as u32
    })
}

/// Add/remove rounds per incremental run; each stage is the median.
const ROUNDS: usize = 5;

/// What the incremental run measured.
struct Incremental {
    full: Duration,
    add: Pass,
    remove: Pass,
    resync: Duration,
    /// The full render and diff the incremental pass replaces, for the add.
    full_render_diff: Duration,
    /// JSON parse and sanitize of the added-to view (before any pass).
    intake: Duration,
}

/// The stages of one incremental pass.
#[derive(Clone, Copy)]
struct Pass {
    /// Compare the views, render the changed instances twice.
    plan: Duration,
    /// Changes between the fragments, checked against the cached state.
    diff: Duration,
    /// The kernel write (batch built, committed, acknowledged) and the
    /// cached state brought up to date.
    apply: Duration,
}

impl Pass {
    fn total(&self) -> Duration {
        self.plan + self.diff + self.apply
    }

    fn median(mut passes: Vec<Pass>) -> Pass {
        passes.sort_by_key(Pass::total);
        passes[passes.len() / 2]
    }
}

impl std::fmt::Display for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plan {:.2} + diff {:.2} + kernel {:.1} ms",
            ms(self.plan),
            ms(self.diff),
            ms(self.apply)
        )
    }
}

/// Add one instance to the applied state, then remove it, `ROUNDS` times,
/// each as the agent does it: the incremental pass against the actual
/// state kept current by our own writes. `fast_path` off sends every change
/// through `nft` (the baseline for the nfnetlink fast path).
fn incremental(n: usize, fast_path: bool) -> Incremental {
    let ns = NetNs::fresh("incr");
    ns.run(move || {
        runtime().block_on(async move {
            let config = LinuxConfig {
                monitor: false,
                nft_fast_path: fast_path,
                ..Default::default()
            };
            let mut dp = LinuxDataplane::new(config).unwrap();
            let base_view = view(n);
            let base = Arc::new(Snapshot::from_view("nc-1", "v1-base".into(), &base_view));
            let start = Instant::now();
            let rendered = render_snapshot(&base, &settings()).unwrap();
            let empty = dp.read().await.unwrap();
            let changes = diff(&empty, &rendered.desired);
            dp.apply(&changes, &rendered.desired, "v1-base")
                .await
                .unwrap();
            let full = start.elapsed();
            drop(changes);
            let base_desired = rendered.desired.clone();
            let mut actual = rendered.desired;
            let mut baseline = Baseline::after_full_render(base.clone(), rendered.usage).unwrap();
            let start = Instant::now();
            let read_back = dp.read().await.unwrap();
            let resync = start.elapsed();
            assert!(diff(&read_back, &base_desired).is_empty());
            drop(read_back);

            let bigger = serde_json::to_vec(&with_one_more_instance(&base_view)).unwrap();
            let start = Instant::now();
            let parsed: NodeView = serde_json::from_slice(&bigger).unwrap();
            let plus = Arc::new(Snapshot::from_view("nc-1", "v1-plus".into(), &parsed));
            let intake = start.elapsed();
            let start = Instant::now();
            let plus_desired = render_snapshot(&plus, &settings()).unwrap().desired;
            let changes = diff(&actual, &plus_desired);
            let full_render_diff = start.elapsed();
            drop(changes);

            let batches = dp.counters();
            let (mut adds, mut removes) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                let (pass, next) = incremental_pass(&mut dp, &mut actual, baseline, &plus).await;
                adds.push(pass);
                let (pass, next) = incremental_pass(&mut dp, &mut actual, next, &base).await;
                removes.push(pass);
                baseline = next;
            }
            let fast_batches = batches
                .nft_fast_batches
                .load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(fast_batches, if fast_path { 2 * ROUNDS as u64 } else { 0 });
            let back = dp.read().await.unwrap();
            assert!(diff(&back, &base_desired).is_empty());
            Incremental {
                full,
                add: Pass::median(adds),
                remove: Pass::median(removes),
                resync,
                full_render_diff,
                intake,
            }
        })
    })
}

fn with_one_more_instance(base: &NodeView) -> NodeView {
    let mut bigger = base.clone();
    let extra = instance(base.instances.len(), bigger.security_groups.len());
    if let Some(members) = bigger.group_members.get_mut(&extra.security_groups()[0]) {
        members.push(extra.private_ip.clone());
    }
    bigger.instances.push(extra);
    bigger
}

/// One pass from `baseline` to `next`, as `Reconciler` makes it.
async fn incremental_pass(
    dp: &mut LinuxDataplane,
    actual: &mut KernelState,
    baseline: Baseline,
    next: &Arc<Snapshot>,
) -> (Pass, Baseline) {
    let start = Instant::now();
    let fragments = incremental::plan(&baseline, next, &settings(), actual)
        .unwrap_or_else(|why| panic!("an instance launched or terminated renders in full: {why}"));
    let plan = start.elapsed();
    let start = Instant::now();
    let changes = fragments
        .changes(actual)
        .expect("the pass fits the cached state");
    let diff = start.elapsed();
    let start = Instant::now();
    let report = dp
        .apply(&changes, fragments.desired(), &next.state_id)
        .await
        .unwrap();
    assert!(report.deferred.is_empty());
    changes.apply_to(actual, &[]);
    actual.state_id = Some(next.state_id.clone());
    let apply = start.elapsed();
    drop((report, changes));
    let pass = Pass { plan, diff, apply };
    (pass, baseline.advance(next.clone(), fragments))
}
