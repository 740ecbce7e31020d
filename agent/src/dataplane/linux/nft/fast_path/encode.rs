//! Element keys, map values and rule verdicts in the kernel's layout, from
//! the canonical text the desired state keeps; `None` for anything the
//! fast path does not write (then `nft` does).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::abi::{IFNAMSIZ, NFT_JUMP, NFT_RETURN, NF_ACCEPT, NF_DROP};
use crate::desired::{NftRule, NftSet, SetValue, Stmt, DROP_VALUE};

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

    /// The rule's one verdict statement, if that is all it is.
    pub fn of_rule(rule: &'a NftRule) -> Option<Self> {
        match rule.statements.as_slice() {
            [Stmt::Jump(target)] => Some(Verdict::jump(target)),
            [Stmt::Drop] => Some(Verdict::plain(NF_DROP)),
            [Stmt::Accept] => Some(Verdict::plain(NF_ACCEPT)),
            [Stmt::Return] => Some(Verdict::plain(NFT_RETURN)),
            _ => None,
        }
    }
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
}
