//! Element keys, map values and rules in the kernel's layout: keys and
//! values from the canonical text the desired state keeps, rules from
//! their one description (`state::RuleWriter`). `None` (or
//! `NfnlError::Unsupported`) for anything the fast path does not write
//! (then `nft` does).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::abi::*;
use super::message::Attr;
use super::NfnlError;
use crate::state::{self, write_rule, Field, IpFamily, Left, NatKind, NatTo, Right, RuleWriter};
use crate::state::{NftRule, NftSet, SetValue, DROP_VALUE};

/// A verdict: its code and, for a jump, the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'a> {
    pub code: i32,
    pub chain: Option<&'a str>,
}

impl<'a> Verdict<'a> {
    const fn plain(code: i32) -> Self {
        Verdict { code, chain: None }
    }

    pub fn jump(chain: &'a str) -> Self {
        Verdict {
            code: NFT_JUMP,
            chain: Some(chain),
        }
    }
}

impl<'a> From<state::Verdict<'a>> for Verdict<'a> {
    fn from(verdict: state::Verdict<'a>) -> Self {
        match verdict {
            state::Verdict::Accept => Verdict::plain(NF_ACCEPT),
            state::Verdict::Drop => Verdict::plain(NF_DROP),
            state::Verdict::Return => Verdict::plain(NFT_RETURN),
            state::Verdict::Jump(chain) => Verdict::jump(chain),
        }
    }
}

/// A rule's expressions (`NFTA_LIST_ELEM`s of `NFTA_RULE_EXPRESSIONS`), as
/// its description is written; `NfnlError::Unsupported` for a rule the fast
/// path does not write.
pub fn rule_expressions(rule: &NftRule) -> Result<Vec<Attr>, NfnlError> {
    let mut writer = ExpressionWriter::default();
    write_rule(&rule.statements, &mut writer)?;
    if writer.expressions.is_empty() {
        return Err(NfnlError::Unsupported("a rule without statements"));
    }
    Ok(writer.expressions)
}

/// Whether the fast path writes `rule` (a length that does not fit is
/// still reported, by `rule_expressions`, when the batch is built).
pub fn writes_rule(rule: &NftRule) -> bool {
    !matches!(rule_expressions(rule), Err(NfnlError::Unsupported(_)))
}

/// The expressions of one rule in the kernel's layout. It writes a rule of
/// one verdict (an instance's `in_<id>` chain: the rules that come and go
/// with instances); rules that match packets, verdict maps and NAT change
/// with the skeleton and the security groups, and go to `nft`.
#[derive(Default)]
struct ExpressionWriter {
    expressions: Vec<Attr>,
}

impl<'s> RuleWriter<'s> for ExpressionWriter {
    type Error = NfnlError;

    fn compare(&mut self, _: Left<'s>, _: bool, _: Right<'s>) -> Result<(), NfnlError> {
        Err(NfnlError::Unsupported("a rule that matches packets"))
    }

    fn verdict(&mut self, verdict: state::Verdict<'s>) -> Result<(), NfnlError> {
        if !self.expressions.is_empty() {
            return Err(NfnlError::Unsupported("a rule of more than one verdict"));
        }
        self.expressions.push(immediate(verdict.into())?);
        Ok(())
    }

    fn verdict_map(&mut self, _: &'s Field, _: &'s str) -> Result<(), NfnlError> {
        Err(NfnlError::Unsupported("a verdict map rule"))
    }

    fn nat(&mut self, _: NatKind, _: IpFamily, _: NatTo<'s>) -> Result<(), NfnlError> {
        Err(NfnlError::Unsupported("a NAT rule"))
    }
}

/// An `immediate` expression setting the verdict register.
pub fn immediate(verdict: Verdict) -> Result<Attr, NfnlError> {
    let immediate = vec![
        Attr::be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT),
        Attr::verdict(NFTA_IMMEDIATE_DATA, verdict.code, verdict.chain)?,
    ];
    expression("immediate", immediate)
}

/// A `counter` expression (it counts, and has no attributes of its own).
pub fn counter() -> Result<Attr, NfnlError> {
    Attr::nested(
        NFTA_LIST_ELEM,
        vec![Attr::string(NFTA_EXPR_NAME, "counter")?],
    )
}

/// An expression list element: the expression's name and its data.
fn expression(name: &str, data: Vec<Attr>) -> Result<Attr, NfnlError> {
    let expression = vec![
        Attr::string(NFTA_EXPR_NAME, name)?,
        Attr::nested(NFTA_EXPR_DATA, data)?,
    ];
    Attr::nested(NFTA_LIST_ELEM, expression)
}

/// A map value: a verdict (`jump <chain>`, `drop`) or data of the map's type.
#[derive(Debug)]
pub enum ElementValue<'a> {
    Verdict(Verdict<'a>),
    Data(Vec<u8>),
}

/// An element's value in the set's layout: `Some(None)` for a plain set's
/// element, `None` when it cannot be encoded.
pub fn element_value<'a>(set: &NftSet, value: Option<&'a str>) -> Option<Option<ElementValue<'a>>> {
    match (set.value, value) {
        (SetValue::None, None) => Some(None),
        (SetValue::Verdict, Some(DROP_VALUE)) => {
            Some(Some(ElementValue::Verdict(Verdict::plain(NF_DROP))))
        }
        (SetValue::Verdict, Some(v)) => {
            let target = v.strip_prefix("jump ")?;
            Some(Some(ElementValue::Verdict(Verdict::jump(target))))
        }
        (SetValue::Data(data_type), Some(v)) => {
            Some(Some(ElementValue::Data(encode_data(data_type, v)?)))
        }
        _ => None,
    }
}

/// An element key or data value. Concatenated fields are each padded to
/// four bytes, as nft lays them out.
pub fn encode_data(data_type: &str, text: &str) -> Option<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Stmt, Value};

    #[test]
    fn concatenated_keys_pad_each_field_to_four_bytes() {
        let key = encode_data("ifname . ether_addr", "vn0 . d0:0d:00:00:00:01").unwrap();
        assert_eq!(key.len(), 16 + 8);
        assert_eq!(&key[..4], b"vn0\0");
        assert_eq!(&key[16..24], &[0xd0, 0x0d, 0, 0, 0, 1, 0, 0]);
        let key = encode_data("ifname . ipv4_addr", "vn7 . 10.0.0.9").unwrap();
        assert_eq!(&key[16..], &[10, 0, 0, 9]);
    }

    fn rule(statements: Vec<Stmt>) -> NftRule {
        NftRule::new("in_x", 0, statements)
    }

    #[test]
    fn rules_of_one_verdict_are_written_and_no_others() {
        let verdicts = [
            Stmt::Jump("sg_a".into()),
            Stmt::Accept,
            Stmt::Drop,
            Stmt::Return,
        ];
        for verdict in verdicts {
            assert!(writes_rule(&rule(vec![verdict.clone()])), "{verdict}");
        }
        let l4proto = Stmt::matches(Field::Meta("l4proto"), Value::Number(6));
        let nat = Stmt::Nat {
            kind: NatKind::Dnat,
            family: IpFamily::V4,
            addr: "10.0.0.1".parse().unwrap(),
            port: None,
        };
        let vmap = Stmt::VerdictMap {
            field: Field::Payload("ip", "daddr"),
            map: "instances".into(),
        };
        let refused = [
            vec![],
            vec![Stmt::Accept, Stmt::Drop],
            vec![l4proto, Stmt::Accept],
            vec![nat],
            vec![vmap],
        ];
        for statements in refused {
            let error = rule_expressions(&rule(statements.clone())).unwrap_err();
            assert!(
                matches!(error, NfnlError::Unsupported(_)),
                "{statements:?}: {error}"
            );
        }
    }

    #[test]
    fn a_jump_too_long_to_encode_is_an_error_not_a_refusal() {
        let long = rule(vec![Stmt::Jump("c".repeat(65_579))]);
        let error = rule_expressions(&long).unwrap_err();
        assert!(matches!(error, NfnlError::TooLong { .. }), "{error}");
        // so the batch reports it, instead of `nft` silently taking over
        assert!(writes_rule(&long));
    }

    #[test]
    fn keys_it_cannot_encode_are_refused() {
        assert!(encode_data("ipv4_addr", "10.0.0.0/8").is_none());
        assert!(encode_data("ifname", "a-name-far-too-long").is_none());
        assert!(encode_data("ifname . ipv4_addr", "vn0").is_none());
        assert!(encode_data("inet_service", "80").is_none());
    }
}
