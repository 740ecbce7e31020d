//! nf_tables event monitor: someone deleted or flushed something in our
//! tables (`nft flush ruleset`, which a restart or reload of
//! nftables.service runs, or `nft delete table inet edgenet`) → one drift
//! event per kernel transaction, naming what vanished, so the loop repairs
//! it at once instead of at the next periodic resync.
//!
//! The kernel multicasts every committed nf_tables change to the
//! `NFNLGRP_NFTABLES` group, the objects first and a `NEWGEN` message
//! closing each transaction. Only deletions in `inet edgenet` and
//! `bridge edgenet` matter here.
//!
//! Our own writes delete objects too (a rewritten chain is flushed, a gone
//! instance's elements removed). Each of our writes commits at most one
//! transaction, so as many transactions as we have written are taken for
//! ours ([`OwnWrites`]), except one that deletes `inet edgenet` or its
//! state chain, which we never do. A transaction of ours taken for someone
//! else's (another one came in between) costs one full read that finds
//! nothing to change and writes nothing: no loop.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::dataplane::DataplaneError;
use crate::state::{DriftEvent, DriftKind, Family, STATE_CHAIN, TABLE_NAME};

/// How long after one of our nftables writes the events it caused may
/// still be arriving.
pub const OWN_WRITE_GRACE: Duration = Duration::from_millis(300);

/// Flushing 10,000 instances' chains notifies every rule and set: room for
/// most of that; an overflow is itself reported as drift (then read in full).
const RECEIVE_BUFFER: usize = 8 << 20;

// linux/netfilter/nfnetlink.h, linux/netfilter/nf_tables.h (stable ABI).
const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NFPROTO_INET: u8 = 1;
const NFPROTO_BRIDGE: u8 = 7;
/// The table's name is attribute 1 of tables, chains, rules, sets and
/// element lists alike.
const ATTR_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_SET_NAME: u16 = 2;

/// Our nftables writes, shared between the dataplane (which marks each)
/// and the monitor (which takes that many transactions for ours). Each
/// write commits at most one transaction; one the kernel refused commits
/// none, so its mark lapses [`OWN_WRITE_GRACE`] after the write returned.
#[derive(Debug, Default)]
pub struct OwnWrites {
    marks: Mutex<OwnMarks>,
}

#[derive(Debug, Default)]
struct OwnMarks {
    next: u64,
    /// Unclaimed writes, oldest first: id, and when the mark lapses
    /// (`None` while the write runs).
    pending: VecDeque<(u64, Option<Instant>)>,
}

impl OwnWrites {
    /// Marks a write; the guard's drop starts the mark's grace period.
    pub fn begin(self: &Arc<Self>) -> OwnWriteGuard {
        let mut marks = self.lock();
        let id = marks.next;
        marks.next += 1;
        marks.pending.push_back((id, None));
        OwnWriteGuard {
            writes: self.clone(),
            id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OwnMarks> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one transaction, committed now, for one of our writes if a
    /// mark is left for it.
    fn claim(&self, now: Instant) -> bool {
        let mut marks = self.lock();
        marks
            .pending
            .retain(|(_, lapses)| lapses.is_none_or(|at| now < at));
        marks.pending.pop_front().is_some()
    }
}

pub struct OwnWriteGuard {
    writes: Arc<OwnWrites>,
    id: u64,
}

impl Drop for OwnWriteGuard {
    fn drop(&mut self) {
        let lapses = Instant::now() + OWN_WRITE_GRACE;
        let mut marks = self.writes.lock();
        if let Some(mark) = marks.pending.iter_mut().find(|(id, _)| *id == self.id) {
            mark.1 = Some(lapses);
        }
    }
}

/// Starts the monitor on the calling thread's network namespace; drift
/// events go to `tx`.
pub fn start(
    own: Arc<OwnWrites>,
    tx: mpsc::Sender<DriftEvent>,
) -> Result<JoinHandle<()>, DataplaneError> {
    let socket = open().map_err(|e| DataplaneError::Netlink {
        operation: "open the nftables event monitor".into(),
        detail: e.to_string(),
    })?;
    Ok(tokio::spawn(watch(socket, own, tx)))
}

fn open() -> std::io::Result<AsyncFd<Socket>> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.add_membership(NFNLGRP_NFTABLES)?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_rx_buf_sz(RECEIVE_BUFFER);
    socket.set_non_blocking(true)?;
    // SAFETY: the socket owns its descriptor, which nothing else closes or
    // replaces while the AsyncFd holds it.
    let registered = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) };
    registered.map_err(std::io::Error::from)
}

async fn watch(socket: AsyncFd<Socket>, own: Arc<OwnWrites>, tx: mpsc::Sender<DriftEvent>) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut transaction = Vanished::default();
    loop {
        let received = match socket.readable().await {
            Ok(mut ready) => match ready.try_io(|s| s.get_ref().recv(&mut &mut buf[..], 0)) {
                Ok(result) => result,
                Err(_would_block) => continue,
            },
            Err(error) => {
                tracing::error!(%error, "nftables event monitor stopped");
                return;
            }
        };
        let len = match received {
            Ok(len) => len,
            Err(error) if error.raw_os_error() == Some(libc_enobufs()) => {
                // Events were lost: anything may have vanished.
                transaction = Vanished::default();
                send(
                    &tx,
                    "nftables events (some lost: receive buffer full)".into(),
                );
                continue;
            }
            Err(error) => {
                tracing::error!(%error, "nftables event monitor stopped");
                return;
            }
        };
        for message in messages(&buf[..len]) {
            if message.kind == NFT_MSG_NEWGEN {
                let vanished = std::mem::take(&mut transaction);
                if let Some(what) = vanished.drift(own.claim(Instant::now())) {
                    send(&tx, what);
                }
            } else if let Some(object) = deleted_object(&message) {
                transaction.add(object);
            }
        }
    }
}

fn send(tx: &mpsc::Sender<DriftEvent>, object: String) {
    tracing::info!(%object, "drift: vanished from our nftables tables");
    // Full channel: a resync is already pending; dropping is fine.
    let _ = tx.try_send(DriftEvent {
        object,
        what: DriftKind::Removed,
    });
}

const fn libc_enobufs() -> i32 {
    105 // ENOBUFS on every Linux architecture
}

/// One object of ours deleted in a transaction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Deleted {
    Table(Family),
    Chain(Family, String),
    /// Rules of this chain (one entry however many rules).
    Rules(Family, String),
    Set(Family, String),
    /// Elements of this set.
    Elements(Family, String),
}

/// What one transaction deleted of ours.
#[derive(Debug, Default)]
struct Vanished(BTreeSet<Deleted>);

impl Vanished {
    fn add(&mut self, object: Deleted) {
        self.0.insert(object);
    }

    /// The drift to report, if any: `ours` when the transaction may be our
    /// own write, which never deletes `inet edgenet` or its state chain.
    fn drift(&self, ours: bool) -> Option<String> {
        let never_ours = |d: &Deleted| match d {
            Deleted::Table(Family::Inet) => true,
            Deleted::Chain(Family::Inet, chain) => chain == STATE_CHAIN,
            _ => false,
        };
        if self.0.is_empty() || (ours && !self.0.iter().any(never_ours)) {
            return None;
        }
        Some(self.describe())
    }

    /// Deleted tables name themselves alone (their contents went with them);
    /// the rest is named one by one, the first few of them.
    fn describe(&self) -> String {
        const NAMED: usize = 4;
        let tables: BTreeSet<Family> = self
            .0
            .iter()
            .filter_map(|d| match d {
                Deleted::Table(family) => Some(*family),
                _ => None,
            })
            .collect();
        let names: Vec<String> = self
            .0
            .iter()
            .filter(|d| matches!(d, Deleted::Table(_)) || !tables.contains(&d.family()))
            .map(Deleted::describe)
            .collect();
        let mut text = names[..names.len().min(NAMED)].join(", ");
        if names.len() > NAMED {
            text.push_str(&format!(" and {} more", names.len() - NAMED));
        }
        text
    }
}

impl Deleted {
    fn family(&self) -> Family {
        match self {
            Deleted::Table(f)
            | Deleted::Chain(f, _)
            | Deleted::Rules(f, _)
            | Deleted::Set(f, _)
            | Deleted::Elements(f, _) => *f,
        }
    }

    fn describe(&self) -> String {
        let table = |f: &Family| format!("{} {TABLE_NAME}", f.as_str());
        match self {
            Deleted::Table(f) => format!("nft table {}", table(f)),
            Deleted::Chain(f, c) => format!("nft chain {} {c}", table(f)),
            Deleted::Rules(f, c) => format!("nft rules of chain {} {c}", table(f)),
            Deleted::Set(f, s) => format!("nft set {} {s}", table(f)),
            Deleted::Elements(f, s) => format!("nft elements of set {} {s}", table(f)),
        }
    }
}

/// One nf_tables message of a datagram: its type and what follows the
/// nfgenmsg header.
struct Message<'a> {
    kind: u16,
    family: u8,
    attributes: &'a [u8],
}

fn messages(mut datagram: &[u8]) -> Vec<Message<'_>> {
    let mut out = Vec::new();
    while datagram.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(datagram[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(datagram[4..6].try_into().expect("2 bytes"));
        if len < NLMSG_HDRLEN || len > datagram.len() {
            break;
        }
        let body = &datagram[NLMSG_HDRLEN..len];
        if kind >> 8 == NFNL_SUBSYS_NFTABLES && body.len() >= NFGENMSG_LEN {
            out.push(Message {
                kind: kind & 0xff,
                family: body[0],
                attributes: &body[NFGENMSG_LEN..],
            });
        }
        datagram = &datagram[align(len).min(datagram.len())..];
    }
    out
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// The string attribute `wanted` (NUL-terminated), if present.
fn string_attribute(mut attributes: &[u8], wanted: u16) -> Option<&str> {
    while attributes.len() >= 4 {
        let len = u16::from_ne_bytes([attributes[0], attributes[1]]) as usize;
        let kind = u16::from_ne_bytes([attributes[2], attributes[3]]) & 0x3fff;
        if len < 4 || len > attributes.len() {
            return None;
        }
        if kind == wanted {
            let value = &attributes[4..len];
            let value = value.split(|b| *b == 0).next().unwrap_or(value);
            return std::str::from_utf8(value).ok();
        }
        attributes = &attributes[align(len).min(attributes.len())..];
    }
    None
}

/// The deleted object, when the message deletes something of our tables.
fn deleted_object(message: &Message<'_>) -> Option<Deleted> {
    let family = match message.family {
        NFPROTO_INET => Family::Inet,
        NFPROTO_BRIDGE => Family::Bridge,
        _ => return None,
    };
    if string_attribute(message.attributes, ATTR_TABLE)? != TABLE_NAME {
        return None;
    }
    let name = |attribute| string_attribute(message.attributes, attribute).map(str::to_string);
    Some(match message.kind {
        NFT_MSG_DELTABLE => Deleted::Table(family),
        NFT_MSG_DELCHAIN => Deleted::Chain(family, name(NFTA_CHAIN_NAME)?),
        NFT_MSG_DELRULE => Deleted::Rules(family, name(NFTA_RULE_CHAIN)?),
        NFT_MSG_DELSET => Deleted::Set(family, name(NFTA_SET_NAME)?),
        NFT_MSG_DELSETELEM => Deleted::Elements(family, name(NFTA_SET_NAME)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, value: &str) -> Vec<u8> {
        let mut bytes = Vec::new();
        let len = 4 + value.len() + 1;
        bytes.extend((len as u16).to_ne_bytes());
        bytes.extend(kind.to_ne_bytes());
        bytes.extend(value.as_bytes());
        bytes.push(0);
        bytes.resize(align(bytes.len()), 0);
        bytes
    }

    fn message(kind: u16, family: u8, attributes: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = attributes.concat();
        let len = NLMSG_HDRLEN + NFGENMSG_LEN + body.len();
        let mut bytes = Vec::new();
        bytes.extend((len as u32).to_ne_bytes());
        bytes.extend(((NFNL_SUBSYS_NFTABLES << 8) | kind).to_ne_bytes());
        bytes.extend([0u8; 10]);
        bytes.extend([family, 0, 0, 0]);
        bytes.extend(body);
        bytes
    }

    #[test]
    fn a_flushed_ruleset_names_our_tables_alone() {
        let datagram = [
            message(
                NFT_MSG_DELRULE,
                NFPROTO_INET,
                &[attribute(1, "edgenet"), attribute(2, "forward")],
            ),
            message(
                NFT_MSG_DELCHAIN,
                NFPROTO_INET,
                &[attribute(1, "edgenet"), attribute(3, "state")],
            ),
            message(NFT_MSG_DELTABLE, NFPROTO_INET, &[attribute(1, "edgenet")]),
            message(NFT_MSG_DELTABLE, NFPROTO_BRIDGE, &[attribute(1, "edgenet")]),
            message(NFT_MSG_DELTABLE, NFPROTO_INET, &[attribute(1, "filter")]),
        ]
        .concat();
        let mut vanished = Vanished::default();
        for m in messages(&datagram) {
            if let Some(object) = deleted_object(&m) {
                vanished.add(object);
            }
        }
        let expected = "nft table inet edgenet, nft table bridge edgenet";
        assert_eq!(vanished.drift(false).as_deref(), Some(expected));
        // Even while our own write runs: we never delete that table.
        assert_eq!(vanished.drift(true).as_deref(), Some(expected));
    }

    #[test]
    fn deletions_during_our_own_writes_are_ours() {
        let mut vanished = Vanished::default();
        vanished.add(Deleted::Rules(Family::Inet, "sg_web".into()));
        vanished.add(Deleted::Elements(Family::Inet, "instances".into()));
        assert_eq!(vanished.drift(true), None);
        assert_eq!(
            vanished.drift(false).as_deref(),
            Some("nft rules of chain inet edgenet sg_web, nft elements of set inet edgenet instances")
        );
        assert_eq!(Vanished::default().drift(false), None);
    }

    #[test]
    fn each_own_write_claims_one_transaction_until_its_mark_lapses() {
        let own = Arc::new(OwnWrites::default());
        assert!(!own.claim(Instant::now()), "nothing written");
        let running = own.begin();
        assert!(own.claim(Instant::now()));
        assert!(!own.claim(Instant::now()), "one transaction per write");
        drop(running);
        // A refused write commits nothing: its mark lapses.
        drop(own.begin());
        assert!(!own.claim(Instant::now() + OWN_WRITE_GRACE));
        let _long = own.begin();
        assert!(
            own.claim(Instant::now() + OWN_WRITE_GRACE * 10),
            "still running"
        );
    }
}
