//! The nf_tables netlink fast path: a small change made of set and map
//! elements and of chains that only jump, drop, accept or return (an
//! instance's `in_<id>` chain) is written as one nfnetlink batch from our
//! own socket, without spawning `nft`.
//!
//! Why: before every transaction that adds an element or a rule, `nft`
//! fetches every chain of the table into its cache, and `inet edgenet`
//! holds a chain per instance. Adding one instance through `nft` cost
//! 45 ms with 10,000 instances and 230 ms with 50,000; the same batch from
//! here costs well under a millisecond of kernel time whatever the size.
//!
//! The batch is still one nf_tables transaction: the kernel takes all of it
//! or none of it. Anything outside this subset (sets, base chains, rules
//! that match packets, interval sets, new tables), and any failure here,
//! goes to `nft` instead, which stays the one writer of everything else and
//! the only reader. What this writes reads back through `nft` exactly as
//! what `nft` writes: the same keys, the same verdicts, the same comments.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::desired::{
    Family, KernelState, NftChain, NftRule, NftSet, SetValue, Stmt, TableId, DROP_VALUE,
    STATE_CHAIN, STATE_COMMENT_PREFIX,
};
use crate::diff::Change;

/// Past this many changes `nft`'s one cache fetch is worth paying, and the
/// batch and its acknowledgements stay far below the socket buffers and the
/// 64 KiB limit of one netlink attribute.
pub const MAX_FAST_CHANGES: usize = 256;

/// Why the fast path did not write a batch (then `nft` does).
#[derive(Debug, thiserror::Error)]
pub enum NfnlError {
    #[error("cannot open an nfnetlink socket: {0}")]
    Open(std::io::Error),
    #[error("cannot send the batch: {0}")]
    Send(std::io::Error),
    #[error("cannot read the kernel's answer: {0}")]
    Receive(std::io::Error),
    #[error("the kernel refused to {what}: {error}")]
    Refused { what: String, error: std::io::Error },
    #[error("the kernel acknowledged {got} of {expected} messages")]
    MissingAcks { got: usize, expected: usize },
    #[error("malformed answer from the kernel")]
    Malformed,
}

// Constants from linux/netlink.h, linux/netfilter/nfnetlink.h and
// linux/netfilter/nf_tables.h (stable kernel ABI).
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NFPROTO_BRIDGE: u8 = 7;
// Attribute numbers: chains, rules, expressions, data, set elements.
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;
/// libnftnl's user-data type for a rule comment (what `nft` reads back).
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_RETURN: i32 = -5;
const IFNAMSIZ: usize = 16;

/// One nfnetlink batch, ready to send, and what each message does (for
/// the error when the kernel refuses one).
#[derive(Debug)]
pub struct Batch {
    bytes: Vec<u8>,
    first_seq: u32,
    purposes: Vec<String>,
}

impl Batch {
    /// Messages inside the batch (its begin and end markers not counted).
    pub fn messages(&self) -> usize {
        self.purposes.len()
    }
}

/// The batch for `changes`, or `None` when a change is outside what the
/// fast path writes. Same order as `nft::build_transaction`: chains, their
/// rules, element deletes, element adds, removed chains flushed, then
/// deleted; the state id last.
pub fn plan(changes: &[&Change], desired: &KernelState, state_id: Option<&str>) -> Option<Batch> {
    if changes.len() > MAX_FAST_CHANGES || changes.iter().any(|c| !supported(c, desired)) {
        return None;
    }
    let mut batch = BatchBuilder::new();
    // Every new chain before any rule, so a jump to a chain made in this
    // batch finds it.
    for change in changes {
        if let Change::AddChain { table, name, .. } = change {
            batch.new_chain(table, name);
        }
    }
    for change in changes {
        match change {
            Change::AddChain { table, name, chain } => batch.rules(table, name, chain),
            Change::ChangeChain {
                table, name, chain, ..
            } => {
                batch.flush_chain(table, name);
                batch.rules(table, name, chain);
            }
            _ => {}
        }
    }
    batch.elements(changes, desired, ElementVerb::Delete)?;
    batch.elements(changes, desired, ElementVerb::Add)?;
    let removed = || {
        changes.iter().filter_map(|c| match c {
            Change::RemoveChain { table, name, .. } => Some((table, name)),
            _ => None,
        })
    };
    for (table, name) in removed() {
        batch.flush_chain(table, name);
    }
    for (table, name) in removed() {
        batch.delete_chain(table, name);
    }
    if let Some(state_id) = state_id {
        batch.state(state_id);
    }
    Some(batch.finish())
}

fn supported(change: &Change, desired: &KernelState) -> bool {
    match change {
        Change::AddChain { chain, .. } | Change::ChangeChain { chain, .. } => {
            chain.base.is_none() && chain.rules.iter().all(|r| rule_verdict(r).is_some())
        }
        // A base chain is never removed alone: its table goes with it.
        Change::RemoveChain { .. } => true,
        Change::AddElement { table, set, .. }
        | Change::ChangeElement { table, set, .. }
        | Change::RemoveElement { table, set, .. } => {
            desired_set(desired, table, set).is_some_and(|s| !s.interval)
        }
        _ => false,
    }
}

fn desired_set<'d>(desired: &'d KernelState, table: &TableId, set: &str) -> Option<&'d NftSet> {
    desired.tables.get(table)?.sets.get(set)
}

/// The rule's one verdict statement, if that is all it is.
fn rule_verdict(rule: &NftRule) -> Option<(i32, Option<&str>)> {
    match rule.statements.as_slice() {
        [Stmt::Jump(target)] => Some((NFT_JUMP, Some(target))),
        [Stmt::Drop] => Some((NF_DROP, None)),
        [Stmt::Accept] => Some((NF_ACCEPT, None)),
        [Stmt::Return] => Some((NFT_RETURN, None)),
        _ => None,
    }
}

/// An element's key and, in a map, its value, as the desired state writes them.
type ElementText<'c> = (&'c str, Option<&'c str>);

#[derive(Clone, Copy, PartialEq)]
enum ElementVerb {
    Add,
    Delete,
}

/// The element (key and, in a map, its value) a change adds or deletes.
fn element_of<'c>(
    change: &Change<'c>,
    verb: ElementVerb,
) -> Option<(&'c TableId, &'c str, &'c str, Option<&'c str>)> {
    use ElementVerb::*;
    match (change, verb) {
        (
            Change::AddElement {
                table,
                set,
                key,
                value,
            },
            Add,
        )
        | (
            Change::RemoveElement {
                table,
                set,
                key,
                value,
            },
            Delete,
        ) => Some((table, set, key, value.as_deref())),
        (
            Change::ChangeElement {
                table,
                set,
                key,
                new,
                ..
            },
            Add,
        ) => Some((table, set, key, new.as_deref())),
        (
            Change::ChangeElement {
                table,
                set,
                key,
                old,
                ..
            },
            Delete,
        ) => Some((table, set, key, old.as_deref())),
        _ => None,
    }
}

// ------------------------------------------------------------ encoding

fn family_number(family: Family) -> u8 {
    match family {
        Family::Inet => NFPROTO_INET,
        Family::Bridge => NFPROTO_BRIDGE,
    }
}

/// An element key or data value in the kernel's layout, from the canonical
/// text the desired state keeps. Concatenated fields are each padded to
/// four bytes, as nft lays them out.
fn encode_data(data_type: &str, text: &str) -> Option<Vec<u8>> {
    let types: Vec<&str> = data_type.split(" . ").collect();
    if types.len() == 1 {
        return encode_field(data_type, text);
    }
    let fields: Vec<&str> = text.split(" . ").collect();
    if fields.len() != types.len() {
        return None;
    }
    let mut bytes = Vec::new();
    for (field_type, field) in types.iter().zip(fields) {
        bytes.extend(encode_field(field_type, field)?);
        bytes.resize(bytes.len().next_multiple_of(4), 0);
    }
    Some(bytes)
}

fn encode_field(field_type: &str, text: &str) -> Option<Vec<u8>> {
    match field_type {
        "ipv4_addr" => Some(text.parse::<Ipv4Addr>().ok()?.octets().to_vec()),
        "ipv6_addr" => Some(text.parse::<Ipv6Addr>().ok()?.octets().to_vec()),
        "ifname" if text.len() < IFNAMSIZ && !text.contains('\0') => {
            let mut bytes = text.as_bytes().to_vec();
            bytes.resize(IFNAMSIZ, 0);
            Some(bytes)
        }
        "ether_addr" => {
            let octets: Option<Vec<u8>> = text
                .split(':')
                .map(|o| u8::from_str_radix(o, 16).ok())
                .collect();
            octets.filter(|o| o.len() == 6)
        }
        _ => None,
    }
}

/// A map value: a verdict (`jump <chain>`, `drop`) or data of the map's type.
enum ElementValue<'a> {
    Verdict(i32, Option<&'a str>),
    Data(Vec<u8>),
}

fn element_value<'a>(set: &NftSet, value: Option<&'a str>) -> Option<Option<ElementValue<'a>>> {
    match (set.value, value) {
        (SetValue::None, None) => Some(None),
        (SetValue::Verdict, Some(DROP_VALUE)) => Some(Some(ElementValue::Verdict(NF_DROP, None))),
        (SetValue::Verdict, Some(v)) => {
            let target = v.strip_prefix("jump ")?;
            Some(Some(ElementValue::Verdict(NFT_JUMP, Some(target))))
        }
        (SetValue::Data(data_type), Some(v)) => {
            Some(Some(ElementValue::Data(encode_data(data_type, v)?)))
        }
        _ => None,
    }
}

/// Appends netlink attributes to a message being built.
struct Attrs<'b>(&'b mut Vec<u8>);

impl Attrs<'_> {
    fn put(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.0.extend((len as u16).to_ne_bytes());
        self.0.extend(kind.to_ne_bytes());
        self.0.extend(payload);
        self.pad();
    }

    fn put_str(&mut self, kind: u16, text: &str) {
        let mut payload = text.as_bytes().to_vec();
        payload.push(0);
        self.put(kind, &payload);
    }

    fn put_be32(&mut self, kind: u16, value: u32) {
        self.put(kind, &value.to_be_bytes());
    }

    fn nest(&mut self, kind: u16, body: impl FnOnce(&mut Attrs)) {
        let start = self.0.len();
        self.0.extend([0, 0]);
        self.0.extend((kind | NLA_F_NESTED).to_ne_bytes());
        body(&mut Attrs(self.0));
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn verdict(&mut self, kind: u16, code: i32, chain: Option<&str>) {
        self.nest(kind, |data| {
            data.nest(NFTA_DATA_VERDICT, |verdict| {
                verdict.put_be32(NFTA_VERDICT_CODE, code as u32);
                if let Some(chain) = chain {
                    verdict.put_str(NFTA_VERDICT_CHAIN, chain);
                }
            })
        });
    }

    fn pad(&mut self) {
        let padded = self.0.len().next_multiple_of(4);
        self.0.resize(padded, 0);
    }
}

struct BatchBuilder {
    bytes: Vec<u8>,
    next_seq: u32,
    first_seq: u32,
    purposes: Vec<String>,
}

impl BatchBuilder {
    fn new() -> Self {
        // Sequence numbers only match answers to messages on our own socket.
        let first_seq = 1;
        let mut builder = BatchBuilder {
            bytes: Vec::with_capacity(4096),
            next_seq: first_seq,
            first_seq,
            purposes: Vec::new(),
        };
        builder.marker(NFNL_MSG_BATCH_BEGIN);
        builder.first_seq = builder.next_seq;
        builder
    }

    fn finish(mut self) -> Batch {
        self.marker(NFNL_MSG_BATCH_END);
        Batch {
            bytes: self.bytes,
            first_seq: self.first_seq,
            purposes: self.purposes,
        }
    }

    /// Batch begin/end: not acknowledged, so not counted.
    fn marker(&mut self, kind: u16) {
        self.header(kind, NLM_F_REQUEST, 0, |_| {});
        // res_id of a batch marker names the subsystem (big endian).
        let at = self.bytes.len() - 2;
        self.bytes[at..].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
    }

    fn header(&mut self, kind: u16, flags: u16, family: u8, body: impl FnOnce(&mut Attrs)) {
        let start = self.bytes.len();
        self.bytes.extend([0u8; 4]); // length, filled in below
        self.bytes.extend(kind.to_ne_bytes());
        self.bytes.extend(flags.to_ne_bytes());
        self.bytes.extend(self.next_seq.to_ne_bytes());
        self.bytes.extend(0u32.to_ne_bytes()); // port id: the kernel's
        self.bytes.extend([family, 0, 0, 0]); // nfgenmsg: family, version 0, res_id 0
        body(&mut Attrs(&mut self.bytes));
        let len = (self.bytes.len() - start) as u32;
        self.bytes[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        self.next_seq += 1;
    }

    fn message(
        &mut self,
        msg: u16,
        flags: u16,
        table: &TableId,
        purpose: String,
        body: impl FnOnce(&mut Attrs),
    ) {
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        let flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        self.header(kind, flags, family_number(table.family), body);
        self.purposes.push(purpose);
    }

    fn new_chain(&mut self, table: &TableId, name: &str) {
        let purpose = format!("add chain {table} {name}");
        self.message(NFT_MSG_NEWCHAIN, NLM_F_CREATE, table, purpose, |a| {
            a.put_str(NFTA_CHAIN_TABLE, &table.name);
            a.put_str(NFTA_CHAIN_NAME, name);
        });
    }

    fn delete_chain(&mut self, table: &TableId, name: &str) {
        let purpose = format!("delete chain {table} {name}");
        self.message(NFT_MSG_DELCHAIN, 0, table, purpose, |a| {
            a.put_str(NFTA_CHAIN_TABLE, &table.name);
            a.put_str(NFTA_CHAIN_NAME, name);
        });
    }

    /// `DELRULE` naming only the chain deletes all its rules.
    fn flush_chain(&mut self, table: &TableId, name: &str) {
        let purpose = format!("flush chain {table} {name}");
        self.message(NFT_MSG_DELRULE, 0, table, purpose, |a| {
            a.put_str(NFTA_RULE_TABLE, &table.name);
            a.put_str(NFTA_RULE_CHAIN, name);
        });
    }

    fn rules(&mut self, table: &TableId, chain_name: &str, chain: &NftChain) {
        for rule in &chain.rules {
            let (code, target) = rule_verdict(rule).expect("checked by supported()");
            self.verdict_rule(table, chain_name, code, target, &rule.comment());
        }
    }

    /// A rule of one immediate verdict, with its comment where `nft` keeps
    /// it (rule user data), so it lists as `jump sg_a comment "…"`.
    fn verdict_rule(
        &mut self,
        table: &TableId,
        chain: &str,
        code: i32,
        target: Option<&str>,
        comment: &str,
    ) {
        self.one_expression_rule(table, chain, comment, |expr| {
            expr.put_str(NFTA_EXPR_NAME, "immediate");
            expr.nest(NFTA_EXPR_DATA, |imm| {
                imm.put_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                imm.verdict(NFTA_IMMEDIATE_DATA, code, target);
            });
        });
    }

    /// A rule of one `counter` (no verdict, so no jump-graph validation at
    /// commit; see `nft::state_commands`).
    fn counter_rule(&mut self, table: &TableId, chain: &str, comment: &str) {
        self.one_expression_rule(table, chain, comment, |expr| {
            expr.put_str(NFTA_EXPR_NAME, "counter")
        });
    }

    /// A rule appended to `chain` holding the one expression `expression`
    /// writes, and `comment`.
    fn one_expression_rule(
        &mut self,
        table: &TableId,
        chain: &str,
        comment: &str,
        expression: impl FnOnce(&mut Attrs),
    ) {
        let purpose = format!("add a rule to chain {table} {chain}");
        let flags = NLM_F_CREATE | NLM_F_APPEND;
        self.message(NFT_MSG_NEWRULE, flags, table, purpose, |a| {
            a.put_str(NFTA_RULE_TABLE, &table.name);
            a.put_str(NFTA_RULE_CHAIN, chain);
            a.nest(NFTA_RULE_EXPRESSIONS, |exprs| {
                exprs.nest(NFTA_LIST_ELEM, expression);
            });
            a.put(NFTA_RULE_USERDATA, &comment_udata(comment));
        });
    }

    /// One message per set and verb with all its elements.
    fn elements(
        &mut self,
        changes: &[&Change],
        desired: &KernelState,
        verb: ElementVerb,
    ) -> Option<()> {
        let mut by_set: BTreeMap<(&TableId, &str), Vec<ElementText>> = BTreeMap::new();
        for change in changes {
            if let Some((table, set, key, value)) = element_of(change, verb) {
                by_set.entry((table, set)).or_default().push((key, value));
            }
        }
        for ((table, set_name), elements) in by_set {
            let set = desired_set(desired, table, set_name)?;
            let mut encoded = Vec::with_capacity(elements.len());
            for (key, value) in elements {
                encoded.push((encode_data(set.key_type, key)?, element_value(set, value)?));
            }
            self.element_message(table, set_name, &encoded, verb);
        }
        Some(())
    }

    fn element_message(
        &mut self,
        table: &TableId,
        set: &str,
        elements: &[(Vec<u8>, Option<ElementValue>)],
        verb: ElementVerb,
    ) {
        let (msg, flags, what) = match verb {
            ElementVerb::Add => (NFT_MSG_NEWSETELEM, NLM_F_CREATE, "add"),
            ElementVerb::Delete => (NFT_MSG_DELSETELEM, 0, "delete"),
        };
        let purpose = format!("{what} {} elements of {table} {set}", elements.len());
        self.message(msg, flags, table, purpose, |a| {
            a.put_str(NFTA_SET_ELEM_LIST_TABLE, &table.name);
            a.put_str(NFTA_SET_ELEM_LIST_SET, set);
            a.nest(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
                for (key, value) in elements {
                    list.nest(NFTA_LIST_ELEM, |elem| {
                        elem.nest(NFTA_SET_ELEM_KEY, |k| k.put(NFTA_DATA_VALUE, key));
                        match value {
                            Some(ElementValue::Verdict(code, chain))
                                if verb == ElementVerb::Add =>
                            {
                                elem.verdict(NFTA_SET_ELEM_DATA, *code, *chain)
                            }
                            Some(ElementValue::Data(data)) if verb == ElementVerb::Add => {
                                elem.nest(NFTA_SET_ELEM_DATA, |d| d.put(NFTA_DATA_VALUE, data))
                            }
                            _ => {} // a delete names the key alone
                        }
                    });
                }
            });
        });
    }

    /// The state chain made sure of, emptied, and given the one rule whose
    /// comment is the state id (as `nft::state_commands` writes it).
    fn state(&mut self, state_id: &str) {
        let table = TableId::ours(Family::Inet);
        self.new_chain(&table, STATE_CHAIN);
        self.flush_chain(&table, STATE_CHAIN);
        let comment = format!("{STATE_COMMENT_PREFIX}{state_id}");
        self.counter_rule(&table, STATE_CHAIN, &comment);
    }
}

/// libnftnl's user-data TLV for a comment: type, length, text with its NUL.
fn comment_udata(comment: &str) -> Vec<u8> {
    let mut udata = vec![NFTNL_UDATA_RULE_COMMENT, (comment.len() + 1) as u8];
    udata.extend(comment.as_bytes());
    udata.push(0);
    udata
}

// ------------------------------------------------------------ the socket

/// Our nfnetlink socket, in the network namespace of the thread that
/// opened it (like the rtnetlink one).
pub struct NfnlSocket {
    socket: Socket,
}

impl NfnlSocket {
    pub fn open() -> Result<Self, NfnlError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NfnlError::Open)?;
        socket.bind_auto().map_err(NfnlError::Open)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NfnlError::Open)?;
        // An error then echoes only the header of the refused message.
        let _ = socket.set_cap_ack(true);
        socket.set_non_blocking(true).map_err(NfnlError::Open)?;
        Ok(NfnlSocket { socket })
    }

    /// Send the batch and check every acknowledgement. The kernel handles a
    /// batch inside `send`, so every answer is queued when `send` returns.
    pub fn commit(&self, batch: &Batch) -> Result<(), NfnlError> {
        let mut buf = vec![0u8; 64 * 1024];
        self.drain_stale(&mut buf);
        let sent = self.socket.send(&batch.bytes, 0).map_err(NfnlError::Send)?;
        if sent != batch.bytes.len() {
            return Err(NfnlError::Send(std::io::Error::other("short send")));
        }
        let expected = batch.messages();
        let mut acked = 0;
        while acked < expected {
            let len = match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(len) => len,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(NfnlError::MissingAcks {
                        got: acked,
                        expected,
                    })
                }
                Err(e) => return Err(NfnlError::Receive(e)),
            };
            acked += check_acks(&buf[..len], batch)?;
        }
        Ok(())
    }

    /// Answers left from an earlier batch that failed half-way through
    /// reading must not be taken for this one's.
    fn drain_stale(&self, buf: &mut [u8]) {
        while self.socket.recv(&mut &mut buf[..], 0).is_ok() {}
    }
}

/// Acknowledgements in one datagram; the first refusal is the error.
fn check_acks(mut datagram: &[u8], batch: &Batch) -> Result<usize, NfnlError> {
    let mut acked = 0;
    while datagram.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(datagram[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(datagram[4..6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(datagram[8..12].try_into().expect("4 bytes"));
        if len < NLMSG_HDRLEN || len > datagram.len() {
            return Err(NfnlError::Malformed);
        }
        if kind == NLMSG_ERROR {
            let code = datagram
                .get(NLMSG_HDRLEN..NLMSG_HDRLEN + 4)
                .ok_or(NfnlError::Malformed)?;
            let errno = -i32::from_ne_bytes(code.try_into().expect("4 bytes"));
            if errno != 0 {
                let index = seq.wrapping_sub(batch.first_seq) as usize;
                let what = batch.purposes.get(index).cloned().unwrap_or_default();
                let error = std::io::Error::from_raw_os_error(errno);
                return Err(NfnlError::Refused { what, error });
            }
            acked += 1;
        }
        datagram = &datagram[len.next_multiple_of(4).min(datagram.len())..];
    }
    Ok(acked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_keys_pad_each_field_to_four_bytes() {
        let key = encode_data("ifname . ether_addr", "vn0 . d0:0d:00:00:00:01").unwrap();
        assert_eq!(key.len(), 16 + 8);
        assert_eq!(&key[..4], b"vn0\0");
        assert_eq!(&key[16..24], &[0xd0, 0x0d, 0, 0, 0, 1, 0, 0]);
        let key = encode_data("ifname . ipv4_addr", "vn7 . 10.0.0.9").unwrap();
        assert_eq!(&key[16..], &[10, 0, 0, 9]);
    }

    #[test]
    fn keys_it_cannot_encode_are_refused() {
        assert!(encode_data("ipv4_addr", "10.0.0.0/8").is_none());
        assert!(encode_data("ifname", "a-name-far-too-long").is_none());
        assert!(encode_data("ifname . ipv4_addr", "vn0").is_none());
        assert!(encode_data("inet_service", "80").is_none());
    }

    #[test]
    fn new_chains_come_before_any_rule_that_may_jump_to_them() {
        let table = TableId::ours(Family::Inet);
        let (instance, group) = ("in_x".to_string(), "sg_new".to_string());
        let rules = vec![
            NftRule::new(&instance, 0, vec![Stmt::Jump(group.clone())]),
            NftRule::new(&instance, 1, vec![Stmt::Drop]),
        ];
        let (instance_chain, group_chain) = (NftChain::regular(rules), NftChain::regular(vec![]));
        let add_instance = Change::AddChain {
            table: &table,
            name: &instance,
            chain: &instance_chain,
        };
        let add_group = Change::AddChain {
            table: &table,
            name: &group,
            chain: &group_chain,
        };
        let batch = plan(&[&add_instance, &add_group], &KernelState::default(), None).unwrap();
        let first_rule = batch.purposes.iter().position(|p| p.contains("rule"));
        let last_chain = batch
            .purposes
            .iter()
            .rposition(|p| p.starts_with("add chain"));
        assert_eq!(
            (last_chain, first_rule),
            (Some(1), Some(2)),
            "{:?}",
            batch.purposes
        );
    }

    #[test]
    fn comments_are_libnftnl_user_data() {
        assert_eq!(comment_udata("ab"), vec![0, 3, b'a', b'b', 0]);
    }

    #[test]
    fn every_message_length_covers_its_bytes() {
        let table = TableId::ours(Family::Inet);
        let mut builder = BatchBuilder::new();
        builder.new_chain(&table, "in_x");
        builder.verdict_rule(&table, "in_x", NFT_JUMP, Some("sg_a"), "edgenet:00");
        let batch = builder.finish();
        assert_eq!(batch.messages(), 2);
        let mut rest = &batch.bytes[..];
        let mut count = 0;
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            assert_eq!(len % 4, 0, "messages stay aligned");
            rest = &rest[len..];
            count += 1;
        }
        assert_eq!(count, 4, "begin, two messages, end");
    }
}
