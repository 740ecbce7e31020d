//! The Linux kernel dataplane: rtnetlink for routes and addresses, `nft`
//! JSON for nftables, `/proc/sys` for sysctls, a netlink monitor for drift.
//!
//! Network namespace: the netlink sockets belong to the namespace of the
//! thread that calls `LinuxDataplane::new`, and `nft` runs in the namespace
//! of the thread that spawns it. In a multi-threaded runtime both are the
//! process's namespace; to drive another namespace, call `setns` on a
//! thread and run a current-thread runtime there (the tests do so).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rtnetlink::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{ApplyReport, Dataplane, DataplaneError};
use crate::diff::{Change, ChangeSet};
use crate::state::{
    AddressEntry, DriftEvent, Family, KernelState, RouteKey, RouteSpec, TableId,
    DEFAULT_ROUTE_PROTOCOL, MAIN_TABLE,
};

pub mod monitor;
pub mod netlink;
pub mod nft;
pub mod ruleset_monitor;
pub mod sysctl;

use nft::fast_path as nfnl;
pub use nft::NftRunner;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinuxConfig {
    /// Routes of this protocol are ours (and only those).
    pub route_protocol: u8,
    /// The routing table our routes go into.
    pub route_table: u32,
    /// Set the sysctls forwarding needs (else only report them).
    pub manage_sysctls: bool,
    /// Watch netlink for drift of our routes and addresses.
    pub monitor: bool,
    pub nft: NftRunner,
    /// Write small element and instance-chain changes through our own
    /// nfnetlink socket instead of `nft` (see `nfnl`). Off whenever `nft`
    /// runs through a prefix (another namespace or user): our socket would
    /// not write where `nft` does.
    pub nft_fast_path: bool,
    /// Longest any one `nft` run or netlink exchange may take; an apply
    /// gets [`TIMEOUT_PER_CHANGE`] more per change. A call that overruns
    /// fails the pass, which the loop retries as a full resync.
    pub call_timeout: Duration,
}

/// What a change adds to an apply's timeout: a first apply of 50,000
/// instances (645,066 changes) takes about two minutes.
pub const TIMEOUT_PER_CHANGE: Duration = Duration::from_millis(1);

impl Default for LinuxConfig {
    fn default() -> Self {
        LinuxConfig {
            route_protocol: DEFAULT_ROUTE_PROTOCOL,
            route_table: MAIN_TABLE,
            manage_sysctls: true,
            monitor: true,
            nft: NftRunner::default(),
            nft_fast_path: true,
            call_timeout: Duration::from_secs(60),
        }
    }
}

/// `call`, or a timeout error naming `operation` once `limit` has passed.
/// Dropping the call kills an `nft` it runs (`kill_on_drop`).
async fn bounded<T>(
    limit: Duration,
    operation: &str,
    call: impl std::future::Future<Output = Result<T, DataplaneError>>,
) -> Result<T, DataplaneError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(DataplaneError::Timeout {
            operation: operation.to_string(),
            after: limit,
        }),
    }
}

/// Counters a caller (tests, metrics) can read while the dataplane runs.
#[derive(Debug, Default)]
pub struct LinuxCounters {
    pub netlink_ops: AtomicU64,
    pub nft_transactions: AtomicU64,
    pub nft_commands: AtomicU64,
    /// Of `nft_transactions`, those written by the nfnetlink fast path.
    pub nft_fast_batches: AtomicU64,
}

pub struct LinuxDataplane {
    config: LinuxConfig,
    handle: Handle,
    /// `None` when the fast path is off or its socket could not be opened.
    nfnl: Option<nfnl::NfnlSocket>,
    /// The monitor's copy of our routes and addresses must be taken whole
    /// at the next apply (set by every full read).
    watch_from_scratch: bool,
    counters: Arc<LinuxCounters>,
    watched: monitor::SharedWatched,
    /// Our nftables writes under way, so the monitor does not take them
    /// for drift.
    own_nft_writes: Arc<ruleset_monitor::OwnWrites>,
    drift: Option<mpsc::Receiver<DriftEvent>>,
    tasks: Vec<JoinHandle<()>>,
    /// State id in the kernel as of our last read or write; `None` when
    /// unknown (then the next apply writes it).
    recorded_state_id: Option<String>,
    /// Whether a set is a map in the kernel, as of our last read (to
    /// delete it with the right command).
    maps_in_kernel: std::collections::BTreeSet<(TableId, String)>,
}

impl Drop for LinuxDataplane {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl LinuxDataplane {
    /// Open netlink (and the monitor) in the calling thread's network
    /// namespace. Needs a tokio runtime; privileges are checked at the
    /// first read or apply, which fail with `PermissionDenied` without them.
    pub fn new(config: LinuxConfig) -> Result<Self, DataplaneError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| DataplaneError::Netlink {
                operation: "open a netlink socket".into(),
                detail: e.to_string(),
            })?;
        let mut tasks = vec![tokio::spawn(connection)];
        let watched = monitor::SharedWatched::default();
        let own_nft_writes = Arc::default();
        let mut drift = None;
        if config.monitor {
            let (rx, monitor_tasks) = monitor::start(
                config.route_protocol,
                watched.clone(),
                Arc::clone(&own_nft_writes),
            )?;
            drift = Some(rx);
            tasks.extend(monitor_tasks);
        }
        let nfnl = if config.nft_fast_path && config.nft.prefix_args.is_empty() {
            nfnl::NfnlSocket::open()
                .inspect_err(|e| tracing::info!(error = %e, "nftables fast path off: every change goes through nft"))
                .ok()
        } else {
            None
        };
        Ok(LinuxDataplane {
            config,
            handle,
            nfnl,
            watch_from_scratch: true,
            counters: Arc::default(),
            watched,
            own_nft_writes,
            drift,
            tasks,
            recorded_state_id: None,
            maps_in_kernel: Default::default(),
        })
    }

    pub fn counters(&self) -> Arc<LinuxCounters> {
        self.counters.clone()
    }

    pub fn config(&self) -> &LinuxConfig {
        &self.config
    }

    /// One nftables transaction for `changes`: through the fast path when
    /// it can take them all, else (or when it fails: then nothing of its
    /// batch is in the kernel) through `nft`.
    async fn write_nft(
        &self,
        changes: &[&Change<'_>],
        desired: &KernelState,
        state: Option<&str>,
    ) -> Result<usize, DataplaneError> {
        if changes.is_empty() && state.is_none() {
            return Ok(0);
        }
        let _own = self.own_nft_writes.begin();
        if let Some(socket) = &self.nfnl {
            if let Some(batch) = nfnl::plan(changes, desired, state) {
                if batch.messages() == 0 {
                    return Ok(0);
                }
                match socket.commit(&batch) {
                    Ok(()) => {
                        tracing::debug!(
                            messages = batch.messages(),
                            "nftables changes written through the netlink fast path"
                        );
                        self.counters
                            .nft_fast_batches
                            .fetch_add(1, Ordering::Relaxed);
                        return Ok(batch.messages());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "nftables fast path failed; writing through nft instead")
                    }
                }
            }
        }
        let maps = &self.maps_in_kernel;
        let is_map =
            |id: &TableId, name: &str| Some(maps.contains(&(id.clone(), name.to_string())));
        let batch = nft::build_transaction(changes, desired, &is_map, state);
        self.config.nft.apply(&batch).await
    }

    /// Makes `changes`, the diff of a read against nothing wanted, and
    /// records no state id (`edgenetd cleanup`); returns what the kernel
    /// would not take.
    pub async fn remove_ours<'a>(
        &mut self,
        changes: &ChangeSet<'a>,
    ) -> Result<Vec<super::DeferredChange<'a>>, DataplaneError> {
        let limit = self.config.call_timeout;
        let links = bounded(
            limit,
            "netlink link dump",
            netlink::read_links(&self.handle),
        )
        .await?;
        let netlink_changes: Vec<&Change> = changes.netlink_changes().collect();
        let removal = netlink::apply(&self.handle, &links, &netlink_changes);
        let deferred = bounded(limit, "netlink apply", removal).await?.deferred;
        let nft_changes: Vec<&Change> = changes.nft_changes().collect();
        let batch =
            nft::build_transaction(&nft_changes, &KernelState::default(), &|_, _| None, None);
        bounded(limit, "nft transaction", self.config.nft.apply(&batch)).await?;
        self.recorded_state_id = None;
        Ok(deferred)
    }

    /// Tell the monitor what is ours now. After a full read it takes a
    /// copy of the desired routes and addresses; between reads the desired
    /// state moves only by the changes we make, so it follows those
    /// instead of copying 20,000 objects for a one-instance change.
    fn watch(&mut self, desired: &KernelState, changes: &[&Change<'_>], links: netlink::Links) {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        if std::mem::take(&mut self.watch_from_scratch) {
            watched.routes = desired.routes.clone();
            watched.addresses = desired.addresses.clone();
        } else {
            for change in changes {
                match change {
                    Change::AddRoute { key, spec } | Change::ChangeRoute { key, new: spec, .. } => {
                        watched
                            .routes
                            .insert(RouteKey::clone(key), RouteSpec::clone(spec));
                    }
                    Change::RemoveRoute { key, .. } => {
                        watched.routes.remove(key);
                    }
                    Change::AddAddress(entry) => {
                        watched.addresses.insert(AddressEntry::clone(entry));
                    }
                    Change::RemoveAddress(entry) => {
                        watched.addresses.remove(entry);
                    }
                    _ => {}
                }
            }
        }
        watched.links = links;
    }
}

#[async_trait]
impl Dataplane for LinuxDataplane {
    async fn read(&mut self) -> Result<KernelState, DataplaneError> {
        let limit = self.config.call_timeout;
        let (tables, state_id) = bounded(limit, "nft list", self.config.nft.read()).await?;
        let links = bounded(
            limit,
            "netlink link dump",
            netlink::read_links(&self.handle),
        )
        .await?;
        let routes = netlink::read_routes(
            &self.handle,
            &links,
            self.config.route_protocol,
            self.config.route_table,
        );
        let routes = bounded(limit, "netlink route dump", routes).await?;
        let addresses = netlink::read_addresses(&self.handle, &links);
        let addresses = bounded(limit, "netlink address dump", addresses).await?;
        self.recorded_state_id = state_id.clone();
        self.maps_in_kernel = tables
            .iter()
            .flat_map(|(id, t)| {
                t.sets
                    .iter()
                    .filter(|(_, s)| s.is_map())
                    .map(move |(name, _)| (id.clone(), name.clone()))
            })
            .collect();
        {
            let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
            watched.links = links;
        }
        self.watch_from_scratch = true;
        Ok(KernelState {
            routes,
            addresses,
            tables,
            state_id,
            ownership: Default::default(),
        })
    }

    async fn apply<'a>(
        &mut self,
        changes: &ChangeSet<'a>,
        desired: &KernelState,
        state_id: &str,
    ) -> Result<ApplyReport<'a>, DataplaneError> {
        let mut report = ApplyReport::default();
        if self.config.manage_sysctls {
            // Forwarding before the routes that need it; what cannot be set
            // is reported by `check_sysctls`.
            sysctl::ensure(true);
        }
        let limit = self.config.call_timeout;
        let links = bounded(
            limit,
            "netlink link dump",
            netlink::read_links(&self.handle),
        )
        .await?;
        let netlink_changes: Vec<&Change> = changes.netlink_changes().collect();
        // Tell the monitor first, so our own writes are not taken for drift.
        self.watch(desired, &netlink_changes, links.clone());

        let nft_changes: Vec<&Change> = changes.nft_changes().collect();
        let table_added = nft_changes
            .iter()
            .any(|c| matches!(c, Change::AddTable(id) if id.family == Family::Inet));
        let write_state = table_added || self.recorded_state_id.as_deref() != Some(state_id);
        let state = write_state.then_some(state_id);
        // nft runs as a child process: let it work while this thread
        // drives netlink (neither depends on the other), so a full apply
        // costs about the longer of the two rather than their sum.
        let (netlink_limit, nft_limit) = (
            limit + TIMEOUT_PER_CHANGE * netlink_changes.len() as u32,
            limit + TIMEOUT_PER_CHANGE * nft_changes.len() as u32,
        );
        let (netlink_result, nft_result) = tokio::join!(
            bounded(
                netlink_limit,
                "netlink apply",
                netlink::apply(&self.handle, &links, &netlink_changes)
            ),
            bounded(
                nft_limit,
                "nft transaction",
                self.write_nft(&nft_changes, desired, state)
            )
        );
        let netlink::NetlinkApplied {
            sent,
            deferred,
            route_conflicts,
        } = netlink_result?;
        report.route_conflicts = route_conflicts;
        self.counters
            .netlink_ops
            .fetch_add(sent as u64, Ordering::Relaxed);
        report.netlink_ops = sent;
        report.applied += netlink_changes.len() - deferred.len();
        for item in &deferred {
            tracing::warn!(change = %item.change.line(), reason = %item.reason, "deferred");
        }
        report.deferred = deferred;

        match nft_result {
            Ok(commands) => {
                if commands > 0 {
                    report.nft_transactions = 1;
                    self.counters
                        .nft_transactions
                        .fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .nft_commands
                        .fetch_add(commands as u64, Ordering::Relaxed);
                }
                report.applied += nft_changes.len();
                self.recorded_state_id = Some(state_id.to_string());
                for change in &nft_changes {
                    match change {
                        Change::AddSet { table, name, set } if set.is_map() => {
                            self.maps_in_kernel
                                .insert((TableId::clone(table), name.to_string()));
                        }
                        Change::RemoveSet { table, name } => {
                            self.maps_in_kernel
                                .remove(&(TableId::clone(table), name.to_string()));
                        }
                        _ => {}
                    }
                }
                Ok(report)
            }
            Err(error) => {
                // Nothing of the transaction is in the kernel; what the
                // state id there is we no longer know for sure.
                self.recorded_state_id = None;
                Err(error)
            }
        }
    }

    fn check_sysctls(&mut self) -> Vec<super::SysctlCheck> {
        sysctl::ensure(self.config.manage_sysctls)
    }

    fn drift_events(&mut self) -> Option<mpsc::Receiver<DriftEvent>> {
        self.drift.take()
    }
}
