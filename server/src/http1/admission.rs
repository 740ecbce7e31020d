//! Which connections the server keeps when file descriptors run short.
//!
//! Every accepted connection costs a descriptor, and the process has a fixed
//! number (`RLIMIT_NOFILE`). Clients that connect and then make the server
//! wait (idle, trickling a head, or never reading an answer) could otherwise
//! take them all, and a normal client would wait in the listen backlog until
//! one of them timed out. So connections are counted against a budget below
//! the limit, and at the budget a new connection is let in by closing one
//! that is waiting on its client: the longest-waiting one of the source (peer
//! address) holding the most connections. A connection whose request is
//! being handled (a parked poll) is never closed this way. When nothing can
//! be closed, the new connection is refused.
//!
//! A fixed cap per source was not chosen: nodes behind one NAT address, or a
//! load generator holding the parked-poll target from one host, are normal;
//! only under pressure does the largest source pay first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;

/// Descriptors left to everything that is not a client connection (the
/// listener, the runtime, the model file and its watch, logging) and to
/// connections being closed.
pub const RESERVED_FDS: usize = 64;
/// At most this many evicted connections may be closing at once; past it the
/// accept loop waits, so the reserve above is never used up by them.
pub const MAX_PENDING_EVICTIONS: usize = 32;

/// Descriptors freed at once when `accept` fails for the lack of them.
const RELIEF_ON_EMFILE: usize = 16;
/// Pauses after failed accepts: the first, and the longest.
const FIRST_ACCEPT_PAUSE: Duration = Duration::from_millis(5);
const MAX_ACCEPT_PAUSE: Duration = Duration::from_millis(500);
/// Accept failures and budget pressure are logged once, then summed up at
/// most this often.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);
const PRESSURE_LOG_INTERVAL: Duration = ACCEPT_LOG_INTERVAL;
/// `EMFILE` and `ENFILE` on Linux: the process or the system is out of
/// file descriptors.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// A connection's turn word: whose move it is, and since when.
const SERVER_TURN: u64 = 0;
const EVICTED: u64 = u64::MAX;

/// The connection budget and who holds it.
#[derive(Debug)]
pub struct Admission {
    budget: usize,
    epoch: Instant,
    registry: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    sources: HashMap<IpAddr, Source>,
    open: usize,
    evicting: usize,
    /// Evictions and refusals since the last log line, and when that was.
    unlogged: (u64, u64),
    last_log: Option<Instant>,
}

impl Registry {
    /// Pressure is logged once, then summed up at most every interval.
    fn count(&mut self, evicted: bool, budget: usize) {
        if evicted {
            self.unlogged.0 += 1;
        } else {
            self.unlogged.1 += 1;
        }
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= PRESSURE_LOG_INTERVAL)
        {
            let (evicted, refused) = std::mem::take(&mut self.unlogged);
            tracing::warn!(
                budget,
                evicted,
                refused,
                "connection budget reached: closing connections that wait on their clients"
            );
            self.last_log = Some(Instant::now());
        }
    }
}

#[derive(Debug, Default)]
struct Source {
    slots: Vec<Arc<Slot>>,
    evicting: usize,
}

impl Source {
    fn live(&self) -> usize {
        self.slots.len() - self.evicting
    }
}

#[derive(Debug)]
struct Slot {
    source: IpAddr,
    /// `SERVER_TURN`, `EVICTED`, or 1 + the milliseconds since the epoch
    /// at which the connection began waiting on its client.
    turn: AtomicU64,
    abort: OnceLock<AbortHandle>,
}

/// Why a connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection budget of {budget} reached and every connection is being handled")]
pub struct Refused {
    pub budget: usize,
}

impl Admission {
    /// At most `budget` connections at once.
    pub fn new(budget: usize) -> Arc<Self> {
        Arc::new(Admission {
            budget: budget.max(1),
            epoch: Instant::now(),
            registry: Mutex::default(),
        })
    }

    /// The budget this process's descriptor limit allows; unlimited when the
    /// limit cannot be read (then only [`Admission::relieve`] helps).
    pub fn for_this_process() -> Arc<Self> {
        let budget =
            open_files_soft_limit().map_or(usize::MAX, |limit| limit.saturating_sub(RESERVED_FDS));
        Self::new(budget)
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Connections open now, those being closed included.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    /// Evicted connections whose tasks have not yet ended.
    pub fn pending_evictions(&self) -> usize {
        self.lock().evicting
    }

    /// Waits (briefly) while many evicted connections are still closing,
    /// so that accepting more does not use up the reserved descriptors.
    pub async fn settle(&self) {
        for _ in 0..1000 {
            if self.pending_evictions() < MAX_PENDING_EVICTIONS {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Lets a connection from `peer` in, closing one that waits on its
    /// client if the budget is reached. The ticket's connection starts as
    /// waiting on its client (a TLS handshake, then its first request).
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, Refused> {
        let source = peer.to_canonical();
        let mut registry = self.lock();
        if registry.open - registry.evicting >= self.budget {
            let evicted = self.evict(&mut registry);
            registry.count(evicted, self.budget);
            if !evicted {
                return Err(Refused {
                    budget: self.budget,
                });
            }
        }
        let slot = Arc::new(Slot {
            source,
            turn: AtomicU64::new(self.now()),
            abort: OnceLock::new(),
        });
        registry
            .sources
            .entry(source)
            .or_default()
            .slots
            .push(slot.clone());
        registry.open += 1;
        Ok(Ticket {
            slot: Some(slot),
            admission: Some(self.clone()),
        })
    }

    /// Closes up to `count` connections waiting on their clients, as the
    /// budget rule would (for when the descriptor limit is hit anyway).
    /// Returns how many were closed.
    pub fn relieve(&self, count: usize) -> usize {
        let mut registry = self.lock();
        (0..count).take_while(|_| self.evict(&mut registry)).count()
    }

    /// Evicts one connection: of the largest source that has one waiting on
    /// its client, the one waiting longest. False if there is none.
    fn evict(&self, registry: &mut Registry) -> bool {
        let mut sources: Vec<&Source> = registry.sources.values().collect();
        sources.sort_unstable_by_key(|s| std::cmp::Reverse(s.live()));
        let Some(victim) = sources
            .iter()
            .find_map(|s| longest_waiting(&s.slots))
            .cloned()
        else {
            return false;
        };
        if let Some(abort) = victim.abort.get() {
            abort.abort();
        }
        if let Some(s) = registry.sources.get_mut(&victim.source) {
            s.evicting += 1;
        }
        registry.evicting += 1;
        true
    }

    fn now(&self) -> u64 {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 2);
        ms.saturating_add(1).min(EVICTED - 1)
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry holds only counts and handles; a panic elsewhere
        // cannot leave it inconsistent.
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn release(&self, slot: &Arc<Slot>) {
        let mut registry = self.lock();
        let evicted = slot.turn.load(Ordering::Acquire) == EVICTED;
        registry.open -= 1;
        registry.evicting -= usize::from(evicted);
        if let Some(source) = registry.sources.get_mut(&slot.source) {
            if let Some(i) = source.slots.iter().position(|s| Arc::ptr_eq(s, slot)) {
                source.slots.swap_remove(i);
            }
            source.evicting -= usize::from(evicted);
            if source.slots.is_empty() {
                registry.sources.remove(&slot.source);
            }
        }
    }
}

/// The longest-waiting evictable connection among `slots`, marked evicted.
/// A connection that changes turn meanwhile is skipped (the mark is a
/// compare-and-swap against the turn word it was chosen by).
fn longest_waiting(slots: &[Arc<Slot>]) -> Option<&Arc<Slot>> {
    loop {
        let (slot, since) = slots
            .iter()
            .filter(|s| s.abort.get().is_some())
            .map(|s| (s, s.turn.load(Ordering::Acquire)))
            .filter(|&(_, t)| t != SERVER_TURN && t != EVICTED)
            .min_by_key(|&(_, t)| t)?;
        if slot
            .turn
            .compare_exchange(since, EVICTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Some(slot);
        }
    }
}

/// A connection's place in the budget, held by its task; dropping it (the
/// task ending, or being aborted by an eviction) gives the place back.
#[derive(Debug)]
pub struct Ticket {
    slot: Option<Arc<Slot>>,
    admission: Option<Arc<Admission>>,
}

/// Hands a ticket's connection the means to be closed: the handle of the
/// task that serves it.
#[derive(Debug)]
pub struct Binder(Option<Arc<Slot>>);

impl Binder {
    pub fn bind(self, task: AbortHandle) {
        if let Some(slot) = self.0 {
            let _ = slot.abort.set(task);
        }
    }
}

/// The ticket of connections served outside any budget.
pub static UNLISTED: Ticket = Ticket {
    slot: None,
    admission: None,
};

impl Ticket {
    /// What binds the serving task to this ticket, taken before the task
    /// is spawned with the ticket.
    pub fn binder(&self) -> Binder {
        Binder(self.slot.clone())
    }

    /// The connection now waits on its client (for a request, its bytes, or
    /// to take an answer) and may be evicted. False: it already was.
    pub fn client_turn(&self) -> bool {
        let (Some(slot), Some(admission)) = (&self.slot, &self.admission) else {
            return true;
        };
        let now = admission.now();
        slot.turn
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t != EVICTED).then_some(now)
            })
            .is_ok()
    }

    /// The connection's request is being handled: it is not evicted while
    /// so. False: it was evicted before it got here.
    pub fn server_turn(&self) -> bool {
        let Some(slot) = &self.slot else {
            return true;
        };
        slot.turn
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t != EVICTED).then_some(SERVER_TURN)
            })
            .is_ok()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let (Some(slot), Some(admission)) = (&self.slot, &self.admission) {
            admission.release(slot);
        }
    }
}

/// What the accept loop does when `accept` fails: out of descriptors, close
/// connections waiting on their clients; pause, longer while it keeps
/// failing, so a full descriptor table costs no CPU; log the first failure
/// and then a count now and then, not a line per retry.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    in_a_row: u32,
    unlogged: u64,
    last_log: Option<Instant>,
}

impl AcceptErrors {
    /// The pause before the next accept.
    pub fn failed(&mut self, error: &std::io::Error, admission: &Admission) -> Duration {
        let out_of_fds = matches!(error.raw_os_error(), Some(EMFILE | ENFILE));
        let relieved = if out_of_fds {
            admission.relieve(RELIEF_ON_EMFILE)
        } else {
            0
        };
        self.unlogged += 1;
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= ACCEPT_LOG_INTERVAL)
        {
            tracing::warn!(
                error = %error,
                failures = self.unlogged,
                relieved,
                open = admission.open(),
                budget = admission.budget(),
                "accept failed"
            );
            self.unlogged = 0;
            self.last_log = Some(Instant::now());
        }
        let pause = FIRST_ACCEPT_PAUSE.saturating_mul(1 << self.in_a_row.min(7));
        self.in_a_row += 1;
        pause.min(MAX_ACCEPT_PAUSE)
    }

    /// An accept succeeded.
    pub fn recovered(&mut self) {
        self.in_a_row = 0;
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits`
/// (`Max open files  <soft>  <hard>  files`).
pub fn open_files_soft_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_soft_limit(&limits)
}

fn parse_open_files_soft_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => None,
        n => n.parse().ok(),
    }
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
