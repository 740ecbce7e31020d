//! The nft text form of rules, as `nft` reads it: what plans print and what
//! rule hashes are made of, so it must not change by a byte (a changed text
//! changes every hash, and every chain is rewritten).

use std::fmt;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

use super::rule::*;

/// Writes statements as nft text into `out`, separated by spaces.
pub(super) struct TextWriter<O> {
    out: O,
    started: bool,
}

impl<O: fmt::Write> TextWriter<O> {
    pub(super) fn new(out: O) -> Self {
        TextWriter {
            out,
            started: false,
        }
    }

    /// Begins a statement: a space before every one but the first.
    fn statement(&mut self) -> Result<&mut O, fmt::Error> {
        if self.started {
            self.out.write_char(' ')?;
        }
        self.started = true;
        Ok(&mut self.out)
    }
}

impl<'s, O: fmt::Write> RuleWriter<'s> for TextWriter<O> {
    type Error = fmt::Error;

    fn compare(&mut self, left: Left<'s>, equal: bool, right: Right<'s>) -> fmt::Result {
        let out = self.statement()?;
        match left {
            Left::Field(field) => write!(out, "{field}")?,
            Left::Concat(fields) => {
                for (index, field) in fields.iter().enumerate() {
                    if index > 0 {
                        out.write_str(" . ")?;
                    }
                    write!(out, "{field}")?;
                }
            }
        }
        out.write_str(if equal { " " } else { " != " })?;
        match right {
            Right::Value(value) => write!(out, "{value}"),
            Right::Set(set) => write!(out, "@{set}"),
        }
    }

    fn verdict(&mut self, verdict: Verdict<'s>) -> fmt::Result {
        let out = self.statement()?;
        match verdict {
            Verdict::Accept => out.write_str("accept"),
            Verdict::Drop => out.write_str("drop"),
            Verdict::Return => out.write_str("return"),
            Verdict::Jump(target) => write!(out, "jump {target}"),
        }
    }

    fn verdict_map(&mut self, key: &'s Field, map: &'s str) -> fmt::Result {
        write!(self.statement()?, "{key} vmap @{map}")
    }

    fn nat(&mut self, kind: NatKind, family: IpFamily, to: NatTo<'s>) -> fmt::Result {
        let out = self.statement()?;
        write!(out, "{} {} to ", kind.as_str(), family.protocol())?;
        match to {
            NatTo::Map { key, map } => write!(out, "{key} map @{map}"),
            NatTo::Addr {
                addr: IpAddr::V6(v6),
                port: Some(port),
            } => write!(out, "[{v6}]:{port}"),
            NatTo::Addr {
                addr,
                port: Some(port),
            } => write!(out, "{addr}:{port}"),
            NatTo::Addr { addr, port: None } => write!(out, "{addr}"),
        }
    }
}

/// Feeds formatted text straight into a digest.
pub(super) struct DigestWriter<'d>(pub(super) &'d mut Sha256);

impl fmt::Write for DigestWriter<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.0.update(text.as_bytes());
        Ok(())
    }
}

impl fmt::Display for Stmt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(&mut TextWriter::new(f))
    }
}

impl fmt::Display for RuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Payload(protocol, field) => write!(f, "{protocol} {field}"),
            Field::Meta(key) => write!(f, "meta {key}"),
            Field::Ct(key) => write!(f, "ct {key}"),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Addr(addr) => write!(f, "{addr}"),
            Value::Prefix(net) => write!(f, "{net}"),
            Value::Number(n) => write!(f, "{n}"),
            Value::Range(a, b) => write!(f, "{a}-{b}"),
            Value::Text(text) => write!(f, "\"{text}\""),
            Value::Keyword(word) => f.write_str(word),
            Value::Mac(mac) => f.write_str(mac),
            Value::SetRef(name) => write!(f, "@{name}"),
            Value::Keywords(words) => f.write_str(&words.join(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn rule_hash_depends_on_chain_position_and_text() {
        let stmts = vec![Stmt::Accept];
        let a = NftRule::new("sg_a", 0, stmts.clone());
        assert_eq!(a.hash, NftRule::new("sg_a", 0, stmts.clone()).hash);
        assert_ne!(a.hash, NftRule::new("sg_b", 0, stmts.clone()).hash);
        assert_ne!(a.hash, NftRule::new("sg_a", 1, stmts).hash);
        assert_ne!(a.hash, NftRule::new("sg_a", 0, vec![Stmt::Drop]).hash);
        assert_eq!(a.hash.to_string().len(), 20);
        assert_eq!(RuleHash::from_hex(&a.hash.to_string()), Some(a.hash));
    }

    #[test]
    fn statements_print_as_nft_text() {
        let rule = NftRule::new(
            "sg_web",
            0,
            vec![
                Stmt::matches(
                    Field::Payload("ip", "saddr"),
                    Value::Prefix("10.0.0.0/8".parse().unwrap()),
                ),
                Stmt::matches(Field::Meta("l4proto"), Value::Number(6)),
                Stmt::matches(Field::Payload("tcp", "dport"), Value::Range(80, 81)),
                Stmt::Accept,
            ],
        );
        assert_eq!(
            rule.text(),
            "ip saddr 10.0.0.0/8 meta l4proto 6 tcp dport 80-81 accept"
        );
        let nat = Stmt::Nat {
            kind: NatKind::Dnat,
            family: IpFamily::V4,
            addr: "10.111.5.11".parse().unwrap(),
            port: Some(8773),
        };
        assert_eq!(nat.to_string(), "dnat ip to 10.111.5.11:8773");
    }

    #[test]
    fn the_hash_is_of_the_text_as_written() {
        use sha2::{Digest, Sha256};
        let statements = vec![
            Stmt::differs(Field::Ct("state"), Value::Keywords(vec!["new", "invalid"])),
            Stmt::Jump("sg_a".into()),
        ];
        let rule = NftRule::new("in_x", 3, statements);
        let mut digest = Sha256::new();
        digest.update(b"in_x\0");
        digest.update(3usize.to_le_bytes());
        digest.update(rule.text().as_bytes());
        assert_eq!(rule.text(), "ct state != new,invalid jump sg_a");
        assert_eq!(rule.hash.0, digest.finalize()[..10]);
    }
}
