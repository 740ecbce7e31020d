//! One nfnetlink batch being built: the chain, rule and element messages
//! between its begin and end markers, each with the purpose its refusal
//! would be reported under.

use netlink_packet_core::{NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST};

use super::abi::*;
use super::encode::{counter, rule_expressions, ElementValue};
use super::message::{comment_udata, Attr, NfgenMessage};
use super::NfnlError;
use crate::state::{Family, NftChain, TableId, STATE_CHAIN, STATE_COMMENT_PREFIX};

/// One nfnetlink batch, ready to send, and what each message does (for
/// the error when the kernel refuses one).
#[derive(Debug)]
pub struct Batch {
    pub(super) bytes: Vec<u8>,
    pub(super) first_seq: u32,
    pub(super) purposes: Vec<String>,
}

impl Batch {
    /// Messages inside the batch (its begin and end markers not counted).
    pub fn messages(&self) -> usize {
        self.purposes.len()
    }
}

/// An element key and, in a map, the value it adds, encoded.
pub type EncodedElement<'c> = (Vec<u8>, Option<ElementValue<'c>>);

#[derive(Clone, Copy, PartialEq)]
pub enum ElementVerb {
    Add,
    Delete,
}

pub struct BatchBuilder {
    bytes: Vec<u8>,
    next_seq: u32,
    first_seq: u32,
    purposes: Vec<String>,
}

impl BatchBuilder {
    pub fn new() -> Result<Self, NfnlError> {
        // Sequence numbers only match answers to messages on our own socket.
        let mut builder = BatchBuilder {
            bytes: Vec::with_capacity(4096),
            next_seq: 1,
            first_seq: 1,
            purposes: Vec::new(),
        };
        builder.marker(NFNL_MSG_BATCH_BEGIN)?;
        builder.first_seq = builder.next_seq;
        Ok(builder)
    }

    pub fn finish(mut self) -> Result<Batch, NfnlError> {
        self.marker(NFNL_MSG_BATCH_END)?;
        Ok(Batch {
            bytes: self.bytes,
            first_seq: self.first_seq,
            purposes: self.purposes,
        })
    }

    /// Batch begin/end: not acknowledged, so not counted.
    fn marker(&mut self, kind: u16) -> Result<(), NfnlError> {
        NfgenMessage::batch_marker(kind).write(NLM_F_REQUEST, self.next_seq, &mut self.bytes)?;
        self.next_seq += 1;
        Ok(())
    }

    fn message(
        &mut self,
        message: u8,
        flags: u16,
        table: &TableId,
        purpose: String,
        attributes: Vec<Attr>,
    ) -> Result<(), NfnlError> {
        let family = match table.family {
            Family::Inet => NFPROTO_INET,
            Family::Bridge => NFPROTO_BRIDGE,
        };
        let flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        NfgenMessage::nf_tables(message, family, attributes).write(
            flags,
            self.next_seq,
            &mut self.bytes,
        )?;
        self.next_seq += 1;
        self.purposes.push(purpose);
        Ok(())
    }

    pub fn new_chain(&mut self, table: &TableId, name: &str) -> Result<(), NfnlError> {
        let purpose = format!("add chain {table} {name}");
        let attributes = vec![
            Attr::string(NFTA_CHAIN_TABLE, &table.name)?,
            Attr::string(NFTA_CHAIN_NAME, name)?,
        ];
        self.message(NFT_MSG_NEWCHAIN, NLM_F_CREATE, table, purpose, attributes)
    }

    pub fn delete_chain(&mut self, table: &TableId, name: &str) -> Result<(), NfnlError> {
        let purpose = format!("delete chain {table} {name}");
        let attributes = vec![
            Attr::string(NFTA_CHAIN_TABLE, &table.name)?,
            Attr::string(NFTA_CHAIN_NAME, name)?,
        ];
        self.message(NFT_MSG_DELCHAIN, 0, table, purpose, attributes)
    }

    /// `DELRULE` naming only the chain deletes all its rules.
    pub fn flush_chain(&mut self, table: &TableId, name: &str) -> Result<(), NfnlError> {
        let purpose = format!("flush chain {table} {name}");
        let attributes = vec![
            Attr::string(NFTA_RULE_TABLE, &table.name)?,
            Attr::string(NFTA_RULE_CHAIN, name)?,
        ];
        self.message(NFT_MSG_DELRULE, 0, table, purpose, attributes)
    }

    /// The chain's rules, each as its description is written (the fast
    /// path's rules only, as `supported` checked).
    pub fn rules(
        &mut self,
        table: &TableId,
        chain_name: &str,
        chain: &NftChain,
    ) -> Result<(), NfnlError> {
        for rule in &chain.rules {
            let expressions = rule_expressions(rule)?;
            self.rule(table, chain_name, &rule.comment(), expressions)?;
        }
        Ok(())
    }

    /// A rule appended to `chain` holding `expressions` (`NFTA_LIST_ELEM`s),
    /// with its comment where `nft` keeps it (rule user data), so it lists
    /// as `jump sg_a comment "…"`.
    pub fn rule(
        &mut self,
        table: &TableId,
        chain: &str,
        comment: &str,
        expressions: Vec<Attr>,
    ) -> Result<(), NfnlError> {
        let purpose = format!("add a rule to chain {table} {chain}");
        let attributes = vec![
            Attr::string(NFTA_RULE_TABLE, &table.name)?,
            Attr::string(NFTA_RULE_CHAIN, chain)?,
            Attr::nested(NFTA_RULE_EXPRESSIONS, expressions)?,
            Attr::bytes(NFTA_RULE_USERDATA, comment_udata(comment)?)?,
        ];
        let flags = NLM_F_CREATE | NLM_F_APPEND;
        self.message(NFT_MSG_NEWRULE, flags, table, purpose, attributes)
    }

    /// One message adding or deleting `elements` of one set.
    pub fn element_message(
        &mut self,
        table: &TableId,
        set: &str,
        elements: &[EncodedElement],
        verb: ElementVerb,
    ) -> Result<(), NfnlError> {
        let (message, flags, what) = match verb {
            ElementVerb::Add => (NFT_MSG_NEWSETELEM, NLM_F_CREATE, "add"),
            ElementVerb::Delete => (NFT_MSG_DELSETELEM, 0, "delete"),
        };
        let purpose = format!("{what} {} elements of {table} {set}", elements.len());
        let mut list = Vec::with_capacity(elements.len());
        for (key, value) in elements {
            let mut element = vec![Attr::data(NFTA_SET_ELEM_KEY, key.clone())?];
            if verb == ElementVerb::Add {
                // A delete names the key alone.
                match value {
                    Some(ElementValue::Verdict(verdict)) => element.push(Attr::verdict(
                        NFTA_SET_ELEM_DATA,
                        verdict.code,
                        verdict.chain,
                    )?),
                    Some(ElementValue::Data(data)) => {
                        element.push(Attr::data(NFTA_SET_ELEM_DATA, data.clone())?)
                    }
                    None => {}
                }
            }
            list.push(Attr::nested(NFTA_LIST_ELEM, element)?);
        }
        let attributes = vec![
            Attr::string(NFTA_SET_ELEM_LIST_TABLE, &table.name)?,
            Attr::string(NFTA_SET_ELEM_LIST_SET, set)?,
            Attr::nested(NFTA_SET_ELEM_LIST_ELEMENTS, list)?,
        ];
        self.message(message, flags, table, purpose, attributes)
    }

    /// The state chain made sure of, emptied, and given the one rule whose
    /// comment is the state id (as `nft::transaction::state_commands`
    /// writes it).
    pub fn state(&mut self, state_id: &str) -> Result<(), NfnlError> {
        let table = TableId::ours(Family::Inet);
        self.new_chain(&table, STATE_CHAIN)?;
        self.flush_chain(&table, STATE_CHAIN)?;
        let comment = format!("{STATE_COMMENT_PREFIX}{state_id}");
        // One `counter`: no verdict, so no jump-graph validation at commit
        // (see `nft::transaction::state_commands`).
        self.rule(&table, STATE_CHAIN, &comment, vec![counter()?])
    }
}
