//! The driver between the agent loop and the kernel.
//!
//! The loop reads the actual state (in full at start, after a failure, on
//! drift and at each periodic resync), diffs it against the desired state
//! and hands the change set to `apply`. Between full reads it keeps its copy
//! of the actual state current with `ChangeSet::apply_to`, skipping what the
//! report says was deferred.

use std::path::PathBuf;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::diff::{Change, ChangeSet};
use crate::state::{DriftEvent, KernelState};

pub mod linux;
pub mod memory;

pub use memory::MemoryDataplane;

#[async_trait]
pub trait Dataplane: Send {
    /// Everything of ours in the kernel, with the applied state id.
    async fn read(&mut self) -> Result<KernelState, DataplaneError>;

    /// Make `changes` and record `state_id`.
    ///
    /// `changes` are the diff of the last read against `desired`, or, when
    /// no read came between, of the cached actual state against it; then
    /// `desired` may be a fragment (`crate::incremental`): what the changes
    /// lead to, holding every chain and set they touch, but not the rest.
    ///
    /// nftables changes are all-or-nothing: on `Err` none of them was made.
    /// Route and address changes the kernel cannot take yet (a device not
    /// up) are returned in `ApplyReport::deferred` while the rest is made;
    /// the state id is then still recorded, and the next resync retries.
    async fn apply<'a>(
        &mut self,
        changes: &ChangeSet<'a>,
        desired: &KernelState,
        state_id: &str,
    ) -> Result<ApplyReport<'a>, DataplaneError>;

    /// The sysctls forwarding needs, set first when the dataplane manages
    /// them; never an error (a problem is reported, the rest applied).
    fn check_sysctls(&mut self) -> Vec<SysctlCheck> {
        Vec::new()
    }

    /// Events for our routes and addresses removed or changed by someone
    /// else. `Some` once (the first call); `None` when there is no monitor.
    fn drift_events(&mut self) -> Option<mpsc::Receiver<DriftEvent>>;
}

/// What an apply did. Deferred changes borrow from the states the change
/// set was computed from, like the change set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport<'a> {
    /// Changes made.
    pub applied: usize,
    /// Changes the kernel could not take now, with why; retried later.
    pub deferred: Vec<DeferredChange<'a>>,
    /// Of `deferred`, the routes whose key another protocol holds in the
    /// kernel (left as they are), one line each naming route and owner.
    pub route_conflicts: Vec<String>,
    /// Netlink requests sent.
    pub netlink_ops: usize,
    /// nft transactions run (0 or 1 per apply).
    pub nft_transactions: usize,
}

/// One sysctl forwarding needs, as the dataplane found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlCheck {
    /// As `sysctl` names it: `net.ipv4.ip_forward`.
    pub name: String,
    /// Whether instances lose their traffic or security groups without it
    /// (`status` then exits 2).
    pub critical: bool,
    /// What is wrong (off, missing, cannot be set); `None` when it is as
    /// needed.
    pub problem: Option<String>,
}

impl<'a> ApplyReport<'a> {
    pub fn deferred_changes(&self) -> Vec<Change<'a>> {
        self.deferred.iter().map(|d| d.change).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredChange<'a> {
    pub change: Change<'a>,
    pub reason: String,
}

/// Every way the dataplane can fail, each with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("missing privileges: {operation} needs CAP_NET_ADMIN (run edgenetd as root)")]
    PermissionDenied { operation: String },

    #[error("cannot run {program:?} for {purpose}: {source}")]
    NftSpawn {
        program: String,
        purpose: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("nft refused the transaction ({commands} commands, nothing applied): {stderr}")]
    NftTransaction { commands: usize, stderr: String },

    #[error("nft failed to list {table}: {stderr}")]
    NftList { table: String, stderr: String },

    #[error("cannot parse nft's JSON for {context}: {detail}")]
    NftParse { context: String, detail: String },

    #[error("netlink {operation} failed: {detail}")]
    Netlink { operation: String, detail: String },

    #[error("cannot open network namespace {path}: {detail}")]
    Namespace { path: PathBuf, detail: String },

    #[error("{operation} timed out after {after:?}")]
    Timeout {
        operation: String,
        after: std::time::Duration,
    },

    #[error("injected failure: {context}")]
    Injected { context: String },
}

impl DataplaneError {
    /// Whether retrying can help (missing privileges will not go away).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, DataplaneError::PermissionDenied { .. })
    }
}
