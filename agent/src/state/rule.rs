//! One nftables rule, written once: the statements edgenet's rules are made
//! of, and the one description of each from which every form is derived.
//!
//! A rule has three forms: nft text (what rule hashes are made of, and what
//! plans print; `text`), nft JSON (what `nft -j` is given;
//! `dataplane::linux::nft::objects`) and nfnetlink attributes (what the fast
//! path sends; `dataplane::linux::nft::fast_path::encode`). None of them
//! looks at a [`Stmt`]: [`Stmt::write_to`] is the only `match` over the
//! statement kinds, and it describes each one to a [`RuleWriter`] in a few
//! neutral terms (a comparison, a verdict, a verdict map, a NAT). Each form
//! is one implementation of that trait.
//!
//! A new statement kind made of those terms is added in `write_to` alone.
//! One that needs a new term adds a method to [`RuleWriter`], which every
//! form must then implement: the compiler names each place, and the fast
//! path may refuse it (then `nft` writes the rule).

use std::net::IpAddr;

use sha2::{Digest, Sha256};

use super::text::{DigestWriter, TextWriter};
use super::RULE_COMMENT_PREFIX;

/// The identity of a rule's content: 80 bits of SHA-256, written in the
/// rule's comment as 20 hex digits. Fixed size, so rendering 10,000
/// instances does not allocate a string per rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleHash(pub [u8; 10]);

impl RuleHash {
    /// Parse the hex form; `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        Some(RuleHash(bytes.try_into().ok()?))
    }

    /// A stand-in for a rule without our comment (someone else's): it
    /// matches no rule of ours, so its chain is rewritten.
    pub fn foreign(handle: u64) -> Self {
        let mut bytes = [0xff; 10];
        bytes[2..].copy_from_slice(&handle.to_le_bytes());
        RuleHash(bytes)
    }
}

/// One rule: statements to write plus the hash that identifies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRule {
    /// Digest of the chain name, the rule's position and its text.
    pub hash: RuleHash,
    /// Empty for a rule read back from the kernel.
    pub statements: Vec<Stmt>,
    /// Kernel handle of a rule read back; `None` in a desired rule.
    pub handle: Option<u64>,
}

impl NftRule {
    /// A desired rule. The hash covers the chain and position too (as
    /// Calico's does), so a rule moved elsewhere counts as changed.
    pub fn new(chain: &str, position: usize, statements: Vec<Stmt>) -> Self {
        let mut digest = Sha256::new();
        digest.update(chain.as_bytes());
        digest.update([0]);
        digest.update(position.to_le_bytes());
        // The same bytes as `text`, streamed: no string per rule.
        let mut text = TextWriter::new(DigestWriter(&mut digest));
        let _ = write_rule(&statements, &mut text);
        let mut hash = [0; 10];
        hash.copy_from_slice(&digest.finalize()[..10]);
        NftRule {
            hash: RuleHash(hash),
            statements,
            handle: None,
        }
    }

    pub fn comment(&self) -> String {
        format!("{RULE_COMMENT_PREFIX}{}", self.hash)
    }

    /// The rule in `nft` syntax (without the comment).
    pub fn text(&self) -> String {
        let mut text = String::new();
        let _ = write_rule(&self.statements, &mut TextWriter::new(&mut text));
        text
    }
}

/// What a match or a map looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A packet header field: protocol (`ip`, `tcp`, `arp`, …) and field.
    Payload(&'static str, &'static str),
    /// A `meta` key (`l4proto`, `iifname`, `nfproto`).
    Meta(&'static str),
    /// A `ct` key (`state`).
    Ct(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Addr(IpAddr),
    Prefix(ipnet::IpNet),
    Number(u32),
    Range(u32, u32),
    /// A quoted string (interface name) or a keyword (MAC address).
    Text(String),
    Keyword(&'static str),
    /// A MAC address (`d0:0d:0a:1b:2c:3d`).
    Mac(String),
    /// `@name`: membership in a set of this table.
    SetRef(String),
    /// `{ a, b }` of keywords (ct states).
    Keywords(Vec<&'static str>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    Dnat,
    Snat,
}

impl NatKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NatKind::Dnat => "dnat",
            NatKind::Snat => "snat",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(addr: &IpAddr) -> Self {
        if addr.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    /// The nft payload protocol name: `ip` or `ip6`.
    pub fn protocol(self) -> &'static str {
        match self {
            IpFamily::V4 => "ip",
            IpFamily::V6 => "ip6",
        }
    }

    pub fn addr_type(self) -> &'static str {
        match self {
            IpFamily::V4 => "ipv4_addr",
            IpFamily::V6 => "ipv6_addr",
        }
    }
}

/// The statements edgenet's rules are made of: a deliberately small subset
/// of nft, each described once by [`Stmt::write_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    Match {
        field: Field,
        equal: bool,
        value: Value,
    },
    /// `<f1> . <f2> [!=] @set`: membership of a concatenation.
    ConcatMatch {
        fields: Vec<Field>,
        equal: bool,
        set: String,
    },
    Accept,
    Drop,
    Return,
    Jump(String),
    /// `<field> vmap @map`
    VerdictMap {
        field: Field,
        map: String,
    },
    /// `dnat ip to ip daddr map @map` / `snat ip6 to ip6 saddr map @map`
    NatMap {
        kind: NatKind,
        family: IpFamily,
        field: Field,
        map: String,
    },
    /// `dnat ip to addr[:port]`
    Nat {
        kind: NatKind,
        family: IpFamily,
        addr: IpAddr,
        port: Option<u16>,
    },
}

/// The left side of a comparison: what it looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left<'s> {
    Field(&'s Field),
    /// Fields joined into one key (`meta iifname . ether saddr`).
    Concat(&'s [Field]),
}

/// The right side of a comparison: a value, or a set of this table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right<'s> {
    Value(&'s Value),
    /// Membership in the named set (`@name`).
    Set(&'s str),
}

/// A verdict, as the statement that ends (or continues) evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'s> {
    Accept,
    Drop,
    Return,
    Jump(&'s str),
}

/// Where a NAT statement translates to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatTo<'s> {
    /// The address `key` maps to in the data map `map`.
    Map { key: &'s Field, map: &'s str },
    /// One address, and a port when given.
    Addr { addr: &'s IpAddr, port: Option<u16> },
}

/// One form of a rule (text, nft JSON, nfnetlink), told its statements in
/// order, one call each, by [`write_rule`].
pub trait RuleWriter<'s> {
    /// Why this form cannot hold a statement (`Infallible` for a form that
    /// holds them all).
    type Error;

    /// `<left> <right>` (equal) or `<left> != <right>`.
    fn compare(&mut self, left: Left<'s>, equal: bool, right: Right<'s>)
        -> Result<(), Self::Error>;

    fn verdict(&mut self, verdict: Verdict<'s>) -> Result<(), Self::Error>;

    /// `<key> vmap @<map>`: the verdict the map holds for `key`.
    fn verdict_map(&mut self, key: &'s Field, map: &'s str) -> Result<(), Self::Error>;

    /// `dnat`/`snat` of one IP family to `to`.
    fn nat(&mut self, kind: NatKind, family: IpFamily, to: NatTo<'s>) -> Result<(), Self::Error>;
}

impl Stmt {
    pub fn matches(field: Field, value: Value) -> Self {
        Stmt::Match {
            field,
            equal: true,
            value,
        }
    }

    pub fn differs(field: Field, value: Value) -> Self {
        Stmt::Match {
            field,
            equal: false,
            value,
        }
    }

    /// Describes this statement to `writer`: the one place each statement
    /// kind is spelled out.
    pub fn write_to<'s, W: RuleWriter<'s>>(&'s self, writer: &mut W) -> Result<(), W::Error> {
        match self {
            Stmt::Match {
                field,
                equal,
                value,
            } => writer.compare(Left::Field(field), *equal, Right::Value(value)),
            Stmt::ConcatMatch { fields, equal, set } => {
                writer.compare(Left::Concat(fields), *equal, Right::Set(set))
            }
            Stmt::Accept => writer.verdict(Verdict::Accept),
            Stmt::Drop => writer.verdict(Verdict::Drop),
            Stmt::Return => writer.verdict(Verdict::Return),
            Stmt::Jump(target) => writer.verdict(Verdict::Jump(target)),
            Stmt::VerdictMap { field, map } => writer.verdict_map(field, map),
            Stmt::NatMap {
                kind,
                family,
                field,
                map,
            } => writer.nat(*kind, *family, NatTo::Map { key: field, map }),
            Stmt::Nat {
                kind,
                family,
                addr,
                port,
            } => writer.nat(*kind, *family, NatTo::Addr { addr, port: *port }),
        }
    }
}

/// Describes a rule's statements to `writer`, in order.
pub fn write_rule<'s, W: RuleWriter<'s>>(
    statements: &'s [Stmt],
    writer: &mut W,
) -> Result<(), W::Error> {
    statements
        .iter()
        .try_for_each(|statement| statement.write_to(writer))
}
