//! nft JSON for tables, chains, rules and sets, through the `nftables`
//! crate's schema types where they fit. A rule's statements are written
//! from their one description (`state::RuleWriter`).

use std::borrow::Cow;
use std::collections::HashSet;
use std::convert::Infallible;

use nftables::expr::{self, Expression, NamedExpression};
use nftables::schema::{self, NfCmd, NfListObject, NfObject};
use nftables::stmt::{self, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::json;

use crate::state::*;

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
    let mut json = JsonRuleWriter::default();
    let Ok(()) = write_rule(&rule.statements, &mut json);
    cmd(NfCmd::Add(NfListObject::Rule(schema::Rule {
        family: nf_family(id.family),
        table: Cow::Owned(id.name.clone()),
        chain: Cow::Owned(chain.to_string()),
        expr: Cow::Owned(json.statements),
        handle: None,
        index: None,
        comment: Some(Cow::Owned(comment)),
    })))
}

/// A rule's statements in nft JSON, as its description is written.
#[derive(Default)]
struct JsonRuleWriter {
    statements: Vec<Statement<'static>>,
}

impl<'s> RuleWriter<'s> for JsonRuleWriter {
    type Error = Infallible;

    fn compare(&mut self, left: Left<'s>, equal: bool, right: Right<'s>) -> Result<(), Infallible> {
        let op = match (equal, right) {
            // A list of flags matches when any is set.
            (true, Right::Value(Value::Keywords(_))) => stmt::Operator::IN,
            (true, _) => stmt::Operator::EQ,
            (false, _) => stmt::Operator::NEQ,
        };
        let left = match left {
            Left::Field(field) => field_expr(field),
            Left::Concat(fields) => Expression::Named(NamedExpression::Concat(
                fields.iter().map(field_expr).collect(),
            )),
        };
        let right = match right {
            Right::Value(value) => value_expr(value),
            Right::Set(set) => set_ref(set),
        };
        self.statements
            .push(Statement::Match(stmt::Match { left, right, op }));
        Ok(())
    }

    fn verdict(&mut self, verdict: Verdict<'s>) -> Result<(), Infallible> {
        self.statements.push(match verdict {
            Verdict::Accept => Statement::Accept(None),
            Verdict::Drop => Statement::Drop(None),
            Verdict::Return => Statement::Return(None),
            Verdict::Jump(target) => Statement::Jump(stmt::JumpTarget {
                target: Cow::Owned(target.to_string()),
            }),
        });
        Ok(())
    }

    fn verdict_map(&mut self, key: &'s Field, map: &'s str) -> Result<(), Infallible> {
        self.statements
            .push(Statement::VerdictMap(stmt::VerdictMap {
                key: field_expr(key),
                data: set_ref(map),
            }));
        Ok(())
    }

    fn nat(&mut self, kind: NatKind, family: IpFamily, to: NatTo<'s>) -> Result<(), Infallible> {
        let (addr, port) = match to {
            NatTo::Map { key, map } => {
                let map = expr::Map {
                    key: field_expr(key),
                    data: set_ref(map),
                };
                (Expression::Named(NamedExpression::Map(Box::new(map))), None)
            }
            NatTo::Addr { addr, port } => (
                Expression::String(Cow::Owned(addr.to_string())),
                port.map(|p| Expression::Number(p.into())),
            ),
        };
        let nat = stmt::NAT {
            addr: Some(addr),
            family: Some(match family {
                IpFamily::V4 => stmt::NATFamily::IP,
                IpFamily::V6 => stmt::NATFamily::IP6,
            }),
            port,
            flags: None,
        };
        self.statements.push(match kind {
            NatKind::Dnat => Statement::DNAT(Some(nat)),
            NatKind::Snat => Statement::SNAT(Some(nat)),
        });
        Ok(())
    }
}

/// `@name`: a set or map of this table.
fn set_ref(name: &str) -> Expression<'static> {
    Expression::String(Cow::Owned(format!("@{name}")))
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
        Value::SetRef(name) => set_ref(name),
        Value::Keywords(words) => Expression::List(
            words
                .iter()
                .map(|w| Expression::String(Cow::Borrowed(w)))
                .collect(),
        ),
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

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::net::IpAddr;

    use super::*;
    use crate::render::{render, RenderSettings};

    /// Every rule of the example cloud's views, and one of each statement
    /// shape, as text and as the nft JSON command that adds it. Written by
    /// the code before the rule forms were derived from one description:
    /// the text is what rule hashes are made of, so a byte changed here
    /// would rewrite every chain of every node on upgrade.
    const GOLDEN: &str = include_str!("../../testdata/rule-forms.golden");

    fn rule_forms() -> String {
        let example = include_str!("../../../../../examples/cloud.json");
        let model = edgenet_model::parse_model(example.as_bytes()).unwrap();
        let mut out = String::new();
        for node in &model.nodes {
            let view = edgenet_model::view_for(&model, &node.id).unwrap();
            let rendered = render(&view, &RenderSettings::default());
            for (id, table) in &rendered.desired.tables {
                for (chain, rules) in &table.chains {
                    write_rules(
                        &mut out,
                        &format!("{} {id} {chain}", node.id),
                        id,
                        chain,
                        &rules.rules,
                    );
                }
            }
        }
        let inet = TableId::ours(Family::Inet);
        let shapes: Vec<NftRule> = every_statement_shape()
            .into_iter()
            .enumerate()
            .map(|(at, statements)| NftRule::new("shapes", at, statements))
            .collect();
        write_rules(&mut out, "shapes", &inet, "shapes", &shapes);
        out
    }

    fn write_rules(out: &mut String, label: &str, id: &TableId, chain: &str, rules: &[NftRule]) {
        for (at, rule) in rules.iter().enumerate() {
            let _ = writeln!(out, "{label} #{at}");
            let _ = writeln!(out, "  text: {}", rule.text());
            let _ = writeln!(out, "  json: {}", rule_object(id, chain, rule));
        }
    }

    /// Each statement kind with each operator and value kind, including
    /// shapes the example does not render (IPv6 NAT with a port, `!=`).
    fn every_statement_shape() -> Vec<Vec<Stmt>> {
        let v6: IpAddr = "2001:db8::5".parse().unwrap();
        let v4: IpAddr = "192.0.2.9".parse().unwrap();
        let ip_saddr = Field::Payload("ip", "saddr");
        let values = [
            Value::Addr(v4),
            Value::Addr(v6),
            Value::Prefix("10.0.0.0/8".parse().unwrap()),
            Value::Prefix("2001:db8::/32".parse().unwrap()),
            Value::Number(6),
            Value::Range(1024, 65535),
            Value::Text("vn0".into()),
            Value::Keyword("ipv4"),
            Value::Mac("d0:0d:0a:1b:2c:3d".into()),
            Value::SetRef("grp_sg-web".into()),
            Value::Keywords(vec!["established", "related"]),
        ];
        let mut shapes: Vec<Vec<Stmt>> = Vec::new();
        for value in values {
            shapes.push(vec![Stmt::matches(ip_saddr, value.clone()), Stmt::Accept]);
            shapes.push(vec![Stmt::differs(Field::Ct("state"), value), Stmt::Drop]);
        }
        let fields = vec![Field::Meta("iifname"), Field::Payload("ether", "saddr")];
        for equal in [true, false] {
            shapes.push(vec![Stmt::ConcatMatch {
                fields: fields.clone(),
                equal,
                set: "port_macs".into(),
            }]);
        }
        shapes.push(vec![Stmt::Return]);
        shapes.push(vec![Stmt::Jump("sg_a".into())]);
        shapes.push(vec![Stmt::VerdictMap {
            field: Field::Payload("ip6", "daddr"),
            map: "instances6".into(),
        }]);
        for kind in [NatKind::Dnat, NatKind::Snat] {
            for (family, addr) in [(IpFamily::V4, v4), (IpFamily::V6, v6)] {
                let field = Field::Payload(family.protocol(), "daddr");
                let map = "dnat".to_string();
                shapes.push(vec![Stmt::NatMap {
                    kind,
                    family,
                    field,
                    map,
                }]);
                for port in [None, Some(8773)] {
                    shapes.push(vec![Stmt::Nat {
                        kind,
                        family,
                        addr,
                        port,
                    }]);
                }
            }
        }
        shapes.push(vec![Stmt::matches(
            Field::Meta("l4proto"),
            Value::Number(17),
        )]);
        shapes.push(vec![Stmt::matches(
            Field::Meta("nfproto"),
            Value::Keyword("ipv6"),
        )]);
        shapes
    }

    #[test]
    fn every_rule_keeps_its_text_and_json() {
        let actual = rule_forms();
        if actual != GOLDEN {
            let path = std::env::temp_dir().join("edgenet-rule-forms.actual");
            std::fs::write(&path, &actual).unwrap();
            panic!(
                "rule text or JSON changed; compare {} with agent/src/dataplane/testdata/rule-forms.golden",
                path.display()
            );
        }
    }
}
