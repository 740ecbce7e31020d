//! The long-poll hub: which view each node is at, parked polls, and waking
//! exactly the parked polls whose node's view changed.
//!
//! One atomic swap installs a new model index. Every node that has (or had)
//! parked polls owns a `watch` channel of its current state id. A poll
//! subscribes to its node's channel *before* it reads the current index, and
//! the swap replaces the index while holding the same lock the subscription
//! takes, so a poll either sees the new index or is subscribed in time to be
//! woken by it: no poll can park on a stale id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use edgenet_model::{CloudModel, ModelChange, ModelIndex, StateId};
use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

/// A node's current state id; `None` once the node left the model.
type NodeWatch = watch::Sender<Option<StateId>>;

/// How a poll ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollAnswer {
    /// The node's view differs from the client's: send it.
    View {
        state_id: StateId,
        view_json: Vec<u8>,
    },
    /// The wait expired (or the server is stopping) and the client's state is current.
    NotModified { state_id: StateId },
}

/// Why a poll got no answer from the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    #[error("the node is not in the network model")]
    NodeNotFound,
    #[error("too many parked requests")]
    TooManyParked,
}

/// The client's id against the node's current one.
enum Compared {
    Same(StateId),
    Changed(PollAnswer),
}

/// What one model swap did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwapReport {
    /// Nodes whose view id changed (removed nodes included).
    pub changed_nodes: Vec<String>,
    /// Parked polls that were woken by the swap.
    pub woken_polls: usize,
}

pub struct Hub {
    /// Lock order: `watches` before `current`.
    watches: Mutex<HashMap<String, NodeWatch>>,
    current: RwLock<Arc<ModelIndex>>,
    /// Serialises reloads, so each update diffs against the index it replaces.
    reload: Mutex<()>,
    parked: AtomicUsize,
    max_parked: usize,
    wakeups: AtomicU64,
    shutdown: AtomicBool,
}

/// Holds one of the `max_parked` slots while a poll is parked.
struct ParkSlot<'a>(&'a AtomicUsize);

impl Drop for ParkSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hub {
    pub fn new(index: ModelIndex, max_parked: usize) -> Self {
        Hub {
            watches: Mutex::new(HashMap::new()),
            current: RwLock::new(Arc::new(index)),
            reload: Mutex::new(()),
            parked: AtomicUsize::new(0),
            max_parked,
            wakeups: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
        }
    }

    /// The index being served now.
    pub fn current(&self) -> Arc<ModelIndex> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Polls parked right now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Acquire)
    }

    /// Parked polls woken by a model change (or a shutdown) since start.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Installs `model`: computes the new index off any lock the polls need
    /// (CPU-heavy for big models, so call it from a blocking thread), then swaps.
    pub fn install_model(&self, model: Arc<CloudModel>) -> SwapReport {
        let _one_reload_at_a_time = lock(&self.reload);
        let current = self.current();
        let change = ModelChange::between(current.model(), &model);
        let (next, changed) = current.apply(model, &change);
        self.swap(Arc::new(next), changed)
    }

    /// Installs `model`, which must be the served model with `change`
    /// applied: only the views the change reaches are recomputed, and only
    /// their parked polls are woken.
    pub fn install_change(&self, model: Arc<CloudModel>, change: &ModelChange) -> SwapReport {
        let _one_reload_at_a_time = lock(&self.reload);
        let (next, changed) = self.current().apply(model, change);
        self.swap(Arc::new(next), changed)
    }

    /// The atomic swap: replaces the index and wakes the watchers of the
    /// changed nodes, all under the watch lock that subscriptions take.
    fn swap(&self, next: Arc<ModelIndex>, changed_nodes: Vec<String>) -> SwapReport {
        let mut watches = lock(&self.watches);
        // The old index is dropped after the wake-ups and outside the
        // locks: freeing a large model takes milliseconds no poll should wait.
        let _old = std::mem::replace(
            &mut *self
                .current
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            next.clone(),
        );
        let mut woken_polls = 0;
        for node in &changed_nodes {
            if let Some(tx) = watches.get(node) {
                woken_polls += tx.receiver_count();
                tx.send_replace(next.state_id(node).cloned());
            }
        }
        // A channel nobody listens to is recreated on the next subscription
        // with the then-current id, so dropping it here loses nothing and
        // keeps the map as small as the set of parked nodes.
        watches.retain(|node, tx| tx.receiver_count() > 0 && next.state_id(node).is_some());
        drop(watches);
        SwapReport {
            changed_nodes,
            woken_polls,
        }
    }

    /// Subscribes to `node`'s id changes, creating its channel on first use.
    fn subscribe(&self, node: &str) -> Result<watch::Receiver<Option<StateId>>, PollError> {
        let mut watches = lock(&self.watches);
        if let Some(tx) = watches.get(node) {
            return Ok(tx.subscribe());
        }
        let id = self.current().state_id(node).cloned();
        let id = id.ok_or(PollError::NodeNotFound)?;
        let tx = watch::Sender::new(Some(id));
        let rx = tx.subscribe();
        watches.insert(node.to_owned(), tx);
        Ok(rx)
    }

    /// Answers all parked polls with `304` and every later one at once.
    ///
    /// Parked polls are woken through their nodes' watches, not a shutdown
    /// channel of their own: that would add a receiver and a waiting future
    /// (~140 B) to every one of thousands of parked polls.
    pub fn shut_down(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        // The flag is set before the lock is taken: a poll that subscribes
        // after this wake-up sees the flag, one subscribed before is woken.
        let watches = lock(&self.watches);
        for tx in watches.values() {
            tx.send_modify(|_| {});
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// One `DescribeNetworkModel` poll: the view at once when the client's
    /// `state_id` is not the node's current id, else parked until the view
    /// changes or `wait` (plus jitter of up to wait/16) has passed.
    pub async fn poll(
        &self,
        node: &str,
        client_state: Option<&str>,
        wait: Duration,
    ) -> Result<PollAnswer, PollError> {
        let mut changes = self.subscribe(node)?;
        let current = match self.compare(node, client_state)? {
            Compared::Changed(answer) => return Ok(answer),
            Compared::Same(current) => current,
        };
        if wait.is_zero() || self.is_shutting_down() {
            return Ok(PollAnswer::NotModified { state_id: current });
        }
        let _slot = self.reserve_park_slot()?;
        let deadline = Instant::now() + wait + jitter(wait);
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    self.wakeups.fetch_add(1, Ordering::Relaxed);
                    // Stopping answers now too, with the new view if one is due.
                    if let Compared::Changed(answer) = self.compare(node, client_state)? {
                        return Ok(answer);
                    }
                    if self.is_shutting_down() {
                        return Ok(PollAnswer::NotModified { state_id: current });
                    }
                    if changed.is_err() {
                        // The channel was dropped with no change for us
                        // (cannot happen while we listen); listen anew.
                        changes = self.subscribe(node)?;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Ok(PollAnswer::NotModified { state_id: current });
                }
            }
        }
    }

    /// The node's view from the current index, unless the client holds it.
    fn compare(&self, node: &str, client_state: Option<&str>) -> Result<Compared, PollError> {
        let index = self.current();
        let id = index.state_id(node).ok_or(PollError::NodeNotFound)?;
        if client_state == Some(id.as_str()) {
            return Ok(Compared::Same(id.clone()));
        }
        let view_json = index.view_json(node).ok_or(PollError::NodeNotFound)?;
        Ok(Compared::Changed(PollAnswer::View {
            state_id: id.clone(),
            view_json,
        }))
    }

    fn reserve_park_slot(&self) -> Result<ParkSlot<'_>, PollError> {
        let before = self.parked.fetch_add(1, Ordering::AcqRel);
        let slot = ParkSlot(&self.parked);
        if before >= self.max_parked {
            return Err(PollError::TooManyParked);
        }
        Ok(slot)
    }
}

/// Uniform in [0, wait/16], so polls parked together do not all come back
/// together.
pub fn jitter(wait: Duration) -> Duration {
    let max_nanos = (wait / 16).as_nanos() as u64;
    Duration::from_nanos(rand::thread_rng().gen_range(0..=max_nanos))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not stop the server: the data under these locks
    // is replaced whole, never left half-written.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgenet_model::parse_model;

    /// Three nodes; `bridges` gives each node's bridge name, so changing one
    /// changes only that node's view.
    fn model(bridges: &[(&str, &str)]) -> Arc<CloudModel> {
        let nodes: Vec<String> = bridges
            .iter()
            .map(|(id, br)| format!(r#"{{"id":"{id}","bridge":"{br}","public_interface":"eth0"}}"#))
            .collect();
        let json = format!(r#"{{"schema":1,"nodes":[{}]}}"#, nodes.join(","));
        Arc::new(parse_model(json.as_bytes()).unwrap())
    }

    fn hub(bridges: &[(&str, &str)]) -> Arc<Hub> {
        Arc::new(Hub::new(ModelIndex::build(model(bridges)), 100))
    }

    fn id(hub: &Hub, node: &str) -> String {
        hub.current().state_id(node).unwrap().as_str().to_owned()
    }

    const THREE: [(&str, &str); 3] = [("nc-1", "br0"), ("nc-2", "br0"), ("nc-3", "br0")];

    #[tokio::test]
    async fn different_id_answers_at_once_and_same_id_times_out() {
        let hub = hub(&THREE);
        let a = hub
            .poll("nc-1", None, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(matches!(a, PollAnswer::View { .. }));
        let current = id(&hub, "nc-1");
        let a = hub
            .poll("nc-1", Some(&current), Duration::ZERO)
            .await
            .unwrap();
        assert!(matches!(a, PollAnswer::NotModified { .. }));
        let started = std::time::Instant::now();
        let a = hub
            .poll("nc-1", Some(&current), Duration::from_millis(160))
            .await;
        let took = started.elapsed();
        assert!(matches!(a, Ok(PollAnswer::NotModified { .. })));
        assert!(took >= Duration::from_millis(160) && took < Duration::from_millis(1000));
        assert_eq!(hub.parked(), 0);
        assert_eq!(
            hub.poll("nc-9", None, Duration::ZERO).await,
            Err(PollError::NodeNotFound)
        );
    }

    #[tokio::test]
    async fn a_change_wakes_only_the_changed_node() {
        let hub = hub(&THREE);
        let mut polls = Vec::new();
        for node in ["nc-1", "nc-2", "nc-3"] {
            let (hub, current) = (hub.clone(), id(&hub, node));
            polls.push(tokio::spawn(async move {
                hub.poll(node, Some(&current), Duration::from_secs(5)).await
            }));
        }
        while hub.parked() < 3 {
            tokio::task::yield_now().await;
        }
        let report = hub.install_model(model(&[("nc-1", "br0"), ("nc-2", "br9"), ("nc-3", "br0")]));
        assert_eq!(report.changed_nodes, ["nc-2"]);
        assert_eq!(report.woken_polls, 1);
        let second = polls.remove(1).await.unwrap().unwrap();
        assert!(
            matches!(second, PollAnswer::View { ref state_id, .. } if state_id.as_str() == id(&hub, "nc-2"))
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(polls.iter().all(|p| !p.is_finished()));
        assert_eq!(hub.parked(), 2);
        hub.shut_down();
        for p in polls {
            assert!(matches!(
                p.await.unwrap(),
                Ok(PollAnswer::NotModified { .. })
            ));
        }
    }

    #[tokio::test]
    async fn removed_node_is_answered_not_found() {
        let hub = hub(&THREE);
        let current = id(&hub, "nc-3");
        let h = hub.clone();
        let poll =
            tokio::spawn(
                async move { h.poll("nc-3", Some(&current), Duration::from_secs(5)).await },
            );
        while hub.parked() < 1 {
            tokio::task::yield_now().await;
        }
        hub.install_model(model(&THREE[..2]));
        assert_eq!(poll.await.unwrap(), Err(PollError::NodeNotFound));
    }

    #[tokio::test]
    async fn max_parked_is_enforced() {
        let hub = Arc::new(Hub::new(ModelIndex::build(model(&THREE)), 1));
        let current = id(&hub, "nc-1");
        let h = hub.clone();
        let c = current.clone();
        let first =
            tokio::spawn(async move { h.poll("nc-1", Some(&c), Duration::from_secs(5)).await });
        while hub.parked() < 1 {
            tokio::task::yield_now().await;
        }
        let second = hub
            .poll("nc-1", Some(&current), Duration::from_secs(5))
            .await;
        assert_eq!(second, Err(PollError::TooManyParked));
        assert_eq!(hub.parked(), 1);
        hub.shut_down();
        first.await.unwrap().unwrap();
        assert_eq!(hub.parked(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_poll_parks_on_a_stale_id_while_models_swap() {
        let hub = hub(&THREE);
        let ids: Vec<String> = (0..20)
            .map(|i| {
                let m = model(&[("nc-1", &format!("br{i}"))]);
                ModelIndex::build(m)
                    .state_id("nc-1")
                    .unwrap()
                    .as_str()
                    .to_owned()
            })
            .collect();
        let mut polls = Vec::new();
        for round in 0..20 {
            for _ in 0..20 {
                let (hub, held) = (hub.clone(), id(&hub, "nc-1"));
                polls.push(tokio::spawn(async move {
                    let a = hub.poll("nc-1", Some(&held), Duration::from_secs(10)).await;
                    (held, a)
                }));
            }
            let h = hub.clone();
            tokio::task::spawn_blocking(move || {
                h.install_model(model(&[("nc-1", &format!("br{round}"))]))
            })
            .await
            .unwrap();
        }
        let last = id(&hub, "nc-1");
        assert_eq!(last, ids[19]);
        // Every poll that held an older id must be answered, quickly.
        for p in polls {
            let (held, answer) = tokio::time::timeout(Duration::from_secs(3), async {
                match tokio::time::timeout(Duration::from_secs(2), p).await {
                    Ok(r) => r.unwrap(),
                    Err(_) => panic!("a poll stayed parked"),
                }
            })
            .await
            .unwrap();
            if held != last {
                assert!(matches!(answer, Ok(PollAnswer::View { .. })), "held {held}");
            }
            // Those that hold the last id stay parked: release them.
            hub.shut_down();
        }
    }

    #[tokio::test]
    async fn after_shut_down_a_poll_answers_at_once() {
        let hub = hub(&THREE);
        hub.shut_down();
        let current = id(&hub, "nc-2");
        let wait = Duration::from_secs(30);
        let answer = tokio::time::timeout(
            Duration::from_secs(1),
            hub.poll("nc-2", Some(&current), wait),
        )
        .await
        .expect("not parked");
        assert!(matches!(answer, Ok(PollAnswer::NotModified { .. })));
        assert_eq!(hub.parked(), 0);
    }

    #[test]
    fn jitter_stays_within_a_sixteenth() {
        for _ in 0..1000 {
            assert!(jitter(Duration::from_secs(16)) <= Duration::from_secs(1));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
