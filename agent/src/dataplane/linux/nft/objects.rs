//! nft JSON for tables, chains, rules and sets, through the `nftables`
//! crate's schema types where they fit.

use std::borrow::Cow;
use std::collections::HashSet;

use nftables::expr::{self, Expression, NamedExpression};
use nftables::schema::{self, NfCmd, NfListObject, NfObject};
use nftables::stmt::{self, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::json;

use crate::desired::*;

pub(super) fn nf_family(family: Family) -> NfFamily {
    match family {
        Family::Inet => NfFamily::INet,
        Family::Bridge => NfFamily::Bridge,
    }
}

/// One command of a transaction, already serialised: 76,000 rules kept as
/// `serde_json::Value` trees would cost hundreds of MiB; as text, tens.
pub type NftCommand = String;

pub(super) fn cmd(command: NfCmd<'_>) -> NftCommand {
    serde_json::to_string(&NfObject::CmdObject(command)).expect("nftables schema serialises")
}

pub(super) fn table_object(id: &TableId) -> NfListObject<'static> {
    NfListObject::Table(schema::Table {
        family: nf_family(id.family),
        name: Cow::Owned(id.name.clone()),
        handle: None,
    })
}

pub(super) fn chain_object(
    id: &TableId,
    name: &str,
    base: Option<&BaseChain>,
) -> schema::Chain<'static> {
    let mut chain = schema::Chain {
        family: nf_family(id.family),
        table: Cow::Owned(id.name.clone()),
        name: Cow::Owned(name.to_string()),
        ..Default::default()
    };
    if let Some(base) = base {
        chain._type = Some(match base.chain_type {
            ChainType::Filter => NfChainType::Filter,
            ChainType::Nat => NfChainType::NAT,
        });
        chain.hook = Some(match base.hook {
            Hook::Prerouting => NfHook::Prerouting,
            Hook::Input => NfHook::Input,
            Hook::Forward => NfHook::Forward,
            Hook::Output => NfHook::Output,
            Hook::Postrouting => NfHook::Postrouting,
        });
        chain.prio = Some(base.priority);
        chain.policy = Some(if base.policy_accept {
            NfChainPolicy::Accept
        } else {
            NfChainPolicy::Drop
        });
    }
    chain
}

pub(super) fn rule_object(id: &TableId, chain: &str, rule: &NftRule) -> NftCommand {
    rule_with_comment(id, chain, rule, rule.comment())
}

fn rule_with_comment(id: &TableId, chain: &str, rule: &NftRule, comment: String) -> NftCommand {
    let statements: Vec<Statement<'static>> = rule.statements.iter().map(statement).collect();
    cmd(NfCmd::Add(NfListObject::Rule(schema::Rule {
        family: nf_family(id.family),
        table: Cow::Owned(id.name.clone()),
        chain: Cow::Owned(chain.to_string()),
        expr: Cow::Owned(statements),
        handle: None,
        index: None,
        comment: Some(Cow::Owned(comment)),
    })))
}

fn field_expr(field: &Field) -> Expression<'static> {
    match field {
        Field::Payload(protocol, name) => Expression::Named(NamedExpression::Payload(
            expr::Payload::PayloadField(expr::PayloadField {
                protocol: Cow::Borrowed(protocol),
                field: Cow::Borrowed(name),
            }),
        )),
        Field::Meta(key) => Expression::Named(NamedExpression::Meta(expr::Meta {
            key: match *key {
                "l4proto" => expr::MetaKey::L4proto,
                "iifname" => expr::MetaKey::Iifname,
                _ => expr::MetaKey::Nfproto,
            },
        })),
        Field::Ct(key) => Expression::Named(NamedExpression::CT(expr::CT {
            key: Cow::Borrowed(key),
            family: None,
            dir: None,
        })),
    }
}

fn value_expr(value: &Value) -> Expression<'static> {
    let text = |s: String| Expression::String(Cow::Owned(s));
    match value {
        Value::Addr(addr) => text(addr.to_string()),
        Value::Prefix(net) => Expression::Named(NamedExpression::Prefix(expr::Prefix {
            addr: Box::new(text(net.addr().to_string())),
            len: net.prefix_len().into(),
        })),
        Value::Number(n) => Expression::Number(*n),
        Value::Range(a, b) => Expression::Range(Box::new(expr::Range {
            range: [Expression::Number(*a), Expression::Number(*b)],
        })),
        Value::Text(s) | Value::Mac(s) => text(s.clone()),
        Value::Keyword(word) => Expression::String(Cow::Borrowed(word)),
        Value::SetRef(name) => text(format!("@{name}")),
        Value::Keywords(words) => Expression::List(
            words
                .iter()
                .map(|w| Expression::String(Cow::Borrowed(w)))
                .collect(),
        ),
    }
}

fn statement(stmt: &Stmt) -> Statement<'static> {
    match stmt {
        Stmt::Match {
            field,
            equal,
            value,
        } => Statement::Match(stmt::Match {
            left: field_expr(field),
            right: value_expr(value),
            op: match (equal, value) {
                (true, Value::Keywords(_)) => stmt::Operator::IN,
                (true, _) => stmt::Operator::EQ,
                (false, _) => stmt::Operator::NEQ,
            },
        }),
        Stmt::ConcatMatch { fields, equal, set } => Statement::Match(stmt::Match {
            left: Expression::Named(NamedExpression::Concat(
                fields.iter().map(field_expr).collect(),
            )),
            right: Expression::String(Cow::Owned(format!("@{set}"))),
            op: if *equal {
                stmt::Operator::EQ
            } else {
                stmt::Operator::NEQ
            },
        }),
        Stmt::Accept => Statement::Accept(None),
        Stmt::Drop => Statement::Drop(None),
        Stmt::Return => Statement::Return(None),
        Stmt::Jump(target) => Statement::Jump(stmt::JumpTarget {
            target: Cow::Owned(target.clone()),
        }),
        Stmt::VerdictMap { field, map } => Statement::VerdictMap(stmt::VerdictMap {
            key: field_expr(field),
            data: Expression::String(Cow::Owned(format!("@{map}"))),
        }),
        Stmt::NatMap {
            kind,
            family,
            field,
            map,
        } => nat_statement(
            *kind,
            *family,
            Expression::Named(NamedExpression::Map(Box::new(expr::Map {
                key: field_expr(field),
                data: Expression::String(Cow::Owned(format!("@{map}"))),
            }))),
            None,
        ),
        Stmt::Nat {
            kind,
            family,
            addr,
            port,
        } => nat_statement(
            *kind,
            *family,
            Expression::String(Cow::Owned(addr.to_string())),
            port.map(|p| Expression::Number(p.into())),
        ),
    }
}

fn nat_statement(
    kind: NatKind,
    family: IpFamily,
    addr: Expression<'static>,
    port: Option<Expression<'static>>,
) -> Statement<'static> {
    let nat = stmt::NAT {
        addr: Some(addr),
        family: Some(match family {
            IpFamily::V4 => stmt::NATFamily::IP,
            IpFamily::V6 => stmt::NATFamily::IP6,
        }),
        port,
        flags: None,
    };
    match kind {
        NatKind::Dnat => Statement::DNAT(Some(nat)),
        NatKind::Snat => Statement::SNAT(Some(nat)),
    }
}

fn set_type(name: &str) -> schema::SetType {
    match name {
        "ipv6_addr" => schema::SetType::Ipv6Addr,
        "ifname" => schema::SetType::Ifname,
        _ => schema::SetType::Ipv4Addr,
    }
}

/// `add set` / `add map` (elements follow separately).
pub(super) fn add_set_command(id: &TableId, name: &str, set: &NftSet) -> NftCommand {
    let flags = set
        .interval
        .then(|| HashSet::from([schema::SetFlag::Interval]));
    if set.key_type.contains(" . ") {
        // Concatenated type: written as nft's JSON array of types.
        let types: Vec<&str> = set.key_type.split(" . ").collect();
        return json!({"add": {"set": {
            "family": id.family.as_str(), "table": id.name, "name": name, "type": types,
        }}})
        .to_string();
    }
    match set.value {
        SetValue::None => cmd(NfCmd::Add(NfListObject::Set(Box::new(schema::Set {
            family: nf_family(id.family),
            table: Cow::Owned(id.name.clone()),
            name: Cow::Owned(name.to_string()),
            set_type: schema::SetTypeValue::Single(set_type(set.key_type)),
            flags,
            ..Default::default()
        })))),
        SetValue::Data(data) => cmd(NfCmd::Add(NfListObject::Map(Box::new(schema::Map {
            family: nf_family(id.family),
            table: Cow::Owned(id.name.clone()),
            name: Cow::Owned(name.to_string()),
            set_type: schema::SetTypeValue::Single(set_type(set.key_type)),
            map: schema::SetTypeValue::Single(set_type(data)),
            flags,
            ..Default::default()
        })))),
        SetValue::Verdict => json!({"add": {"map": {
            "family": id.family.as_str(), "table": id.name, "name": name,
            "type": set.key_type, "map": "verdict",
        }}})
        .to_string(),
    }
}

pub(super) fn delete_set_command(id: &TableId, name: &str, was_map: bool) -> NftCommand {
    let kind = if was_map { "map" } else { "set" };
    json!({"delete": {kind: {"family": id.family.as_str(), "table": id.name, "name": name}}})
        .to_string()
}
