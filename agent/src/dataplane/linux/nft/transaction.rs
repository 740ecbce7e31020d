//! The one nft transaction that makes a set of changes: its order, and its
//! writing to `nft`'s stdin without holding the document whole.

use std::borrow::Cow;

use nftables::schema::{self, NfCmd, NfListObject};
use nftables::stmt::{self, Statement};
use tokio::io::AsyncWriteExt;

use super::elements::{element_json, ElementBatch};
use super::objects::*;
use crate::diff::Change;
use crate::state::*;

/// A transaction in the order it is written. A chain's rules (most of a
/// full apply: ~26,000 at 10,000 instances) are serialised only as they
/// are written to nft, so their text is never all held at once; the other
/// commands are few or small and are serialised when built.
#[derive(Default)]
pub struct Transaction<'c> {
    parts: Vec<Part<'c>>,
}

enum Part<'c> {
    Command(NftCommand),
    Rules {
        table: &'c TableId,
        chain: &'c str,
        rules: &'c [NftRule],
    },
}

impl<'c> Transaction<'c> {
    /// How many nft commands the transaction holds.
    pub fn commands(&self) -> usize {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Command(_) => 1,
                Part::Rules { rules, .. } => rules.len(),
            })
            .sum()
    }

    fn push(&mut self, command: NftCommand) {
        self.parts.push(Part::Command(command));
    }

    fn extend(&mut self, commands: impl IntoIterator<Item = NftCommand>) {
        self.parts.extend(commands.into_iter().map(Part::Command));
    }

    fn push_rules(&mut self, table: &'c TableId, chain: &'c str, rules: &'c [NftRule]) {
        self.parts.push(Part::Rules {
            table,
            chain,
            rules,
        });
    }

    /// Every command's JSON text, in order (for tests).
    #[cfg(test)]
    fn texts(&self) -> Vec<NftCommand> {
        let mut texts = Vec::new();
        for part in &self.parts {
            match part {
                Part::Command(text) => texts.push(text.clone()),
                Part::Rules {
                    table,
                    chain,
                    rules,
                } => texts.extend(rules.iter().map(|r| rule_object(table, chain, r))),
            }
        }
        texts
    }
}

/// Write `{"nftables":[cmd,cmd,...]}` to nft's stdin command by command,
/// through a small buffer: the document is never assembled in memory (it
/// is tens of MiB for a full apply of 10,000 instances).
pub(super) async fn write_transaction(
    pipe: tokio::process::ChildStdin,
    transaction: &Transaction<'_>,
) -> std::io::Result<()> {
    let mut out = tokio::io::BufWriter::with_capacity(64 * 1024, pipe);
    out.write_all(b"{\"nftables\":[").await?;
    let mut first = true;
    for part in &transaction.parts {
        match part {
            Part::Command(text) => write_command(&mut out, &mut first, text).await?,
            Part::Rules {
                table,
                chain,
                rules,
            } => {
                for rule in rules.iter() {
                    let text = rule_object(table, chain, rule);
                    write_command(&mut out, &mut first, &text).await?;
                }
            }
        }
    }
    out.write_all(b"]}").await?;
    out.flush().await
}

async fn write_command<W: tokio::io::AsyncWrite + Unpin>(
    out: &mut W,
    first: &mut bool,
    command: &str,
) -> std::io::Result<()> {
    if !std::mem::take(first) {
        out.write_all(b",").await?;
    }
    out.write_all(command.as_bytes()).await
}

/// The one transaction that makes `changes`, in an order the kernel
/// accepts: containers first, then chain contents and elements (so every
/// reference resolves), removals last (after what referenced them is gone).
/// `state`, when given, is written into the state chain last.
pub fn build_transaction<'c>(
    changes: &[&'c Change],
    desired: &KernelState,
    actual_sets: &dyn Fn(&TableId, &str) -> Option<bool>,
    state: Option<&str>,
) -> Transaction<'c> {
    let mut ordered = Ordered {
        changes,
        desired,
        actual_sets,
        containers: Vec::new(),
        contents: Transaction::default(),
        element_deletes: ElementBatch::default(),
        element_adds: ElementBatch::default(),
        flush_removed: Vec::new(),
        removals: Vec::new(),
    };
    for &change in changes {
        ordered.add(change);
    }
    ordered.finish(state)
}

/// The commands of one transaction so far, in the groups whose order makes
/// the transaction's.
struct Ordered<'c, 'a> {
    changes: &'a [&'c Change<'c>],
    desired: &'a KernelState,
    actual_sets: &'a dyn Fn(&TableId, &str) -> Option<bool>,
    containers: Vec<NftCommand>,
    contents: Transaction<'c>,
    element_deletes: ElementBatch<'c>,
    element_adds: ElementBatch<'c>,
    flush_removed: Vec<NftCommand>,
    removals: Vec<NftCommand>,
}

impl<'c> Ordered<'c, '_> {
    fn add(&mut self, change: &'c Change<'c>) {
        match change {
            Change::AddTable(id) => self.containers.push(cmd(NfCmd::Add(table_object(id)))),
            Change::RemoveTable(id) => {
                self.removals.push(cmd(NfCmd::Delete(table_object(id))));
            }
            Change::AddSet { table, name, set } => {
                self.containers.push(add_set_command(table, name, set));
            }
            Change::RemoveSet { table, name } => self.remove_set(table, name),
            Change::AddChain { table, name, chain } => {
                self.containers
                    .push(add_chain_command(table, name, chain.base.as_ref()));
                self.contents.push_rules(table, name, &chain.rules);
            }
            Change::ChangeChain {
                table, name, chain, ..
            } => {
                // `add chain` with the base definition restores a hook
                // someone removed; on an existing chain it changes nothing.
                self.contents
                    .push(add_chain_command(table, name, chain.base.as_ref()));
                self.contents.push(flush_chain_command(table, name));
                self.contents.push_rules(table, name, &chain.rules);
            }
            Change::RemoveChain { table, name, .. } => {
                self.flush_removed.push(flush_chain_command(table, name));
                self.removals
                    .push(cmd(NfCmd::Delete(NfListObject::Chain(chain_object(
                        table, name, None,
                    )))));
            }
            _ => self.add_element_change(change),
        }
    }

    fn remove_set(&mut self, table: &TableId, name: &str) {
        let was_map = (self.actual_sets)(table, name).unwrap_or(false);
        let delete = delete_set_command(table, name, was_map);
        // A set made anew (same name) must go before it is added.
        let remade = self.changes.iter().any(
            |c| matches!(c, Change::AddSet { table: t, name: n, .. } if *t == table && *n == name),
        );
        if remade {
            self.containers.insert(0, delete);
        } else {
            self.removals.push(delete);
        }
    }

    fn add_element_change(&mut self, change: &'c Change<'c>) {
        let interval = |id: &TableId, set: &str| {
            self.desired
                .tables
                .get(id)
                .and_then(|t| t.sets.get(set))
                .is_some_and(|s| s.interval)
        };
        match change {
            Change::AddElement {
                table,
                set,
                key,
                value,
            } => {
                let element = element_json(key, value.as_deref(), interval(table, set));
                self.element_adds.push(table, set, element);
            }
            Change::ChangeElement {
                table,
                set,
                key,
                old,
                new,
            } => {
                let interval = interval(table, set);
                let old = element_json(key, old.as_deref(), interval);
                self.element_deletes.push(table, set, old);
                let new = element_json(key, new.as_deref(), interval);
                self.element_adds.push(table, set, new);
            }
            Change::RemoveElement {
                table,
                set,
                key,
                value,
            } => {
                let element = element_json(key, value.as_deref(), interval(table, set));
                self.element_deletes.push(table, set, element);
            }
            _ => {} // routes, addresses, sysctls: not nftables
        }
    }

    fn finish(self, state: Option<&str>) -> Transaction<'c> {
        let mut batch = Transaction::default();
        batch.extend(self.containers);
        batch.parts.extend(self.contents.parts);
        batch.extend(self.element_deletes.commands("delete"));
        batch.extend(self.element_adds.commands("add"));
        batch.extend(self.flush_removed);
        batch.extend(self.removals);
        if let Some(state_id) = state {
            batch.extend(state_commands(state_id));
        }
        batch
    }
}

fn add_chain_command(table: &TableId, name: &str, base: Option<&BaseChain>) -> NftCommand {
    cmd(NfCmd::Add(NfListObject::Chain(chain_object(
        table, name, base,
    ))))
}

fn flush_chain_command(table: &TableId, name: &str) -> NftCommand {
    cmd(NfCmd::Flush(schema::FlushObject::Chain(chain_object(
        table, name, None,
    ))))
}

/// Record the state id: chain `state` in `inet edgenet` holds one rule
/// whose comment is the id. Never jumped to, so it filters nothing.
///
/// The rule is a `counter`, not a verdict: a new rule holding any verdict
/// makes the kernel validate the table's whole jump graph at commit (every
/// element of the instance maps, every chain behind them), 45 ms at 50,000
/// instances against 3 ms for a counter, and the state id is written at
/// every apply, even one that only adds a map element.
fn state_commands(state_id: &str) -> Vec<NftCommand> {
    let id = TableId::ours(Family::Inet);
    let add_rule = cmd(NfCmd::Add(NfListObject::Rule(schema::Rule {
        family: nf_family(id.family),
        table: Cow::Owned(id.name.clone()),
        chain: Cow::Borrowed(STATE_CHAIN),
        expr: Cow::Owned(vec![Statement::Counter(stmt::Counter::Anonymous(None))]),
        handle: None,
        index: None,
        comment: Some(Cow::Owned(format!("{STATE_COMMENT_PREFIX}{state_id}"))),
    })));
    vec![
        cmd(NfCmd::Add(table_object(&id))),
        add_chain_command(&id, STATE_CHAIN, None),
        flush_chain_command(&id, STATE_CHAIN),
        add_rule,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as Json;

    #[test]
    fn transaction_writes_chain_then_its_rules_then_elements_then_state() {
        let table = TableId::ours(Family::Inet);
        let rule = |byte| NftRule {
            hash: RuleHash([byte; 10]),
            statements: vec![Stmt::Accept],
            handle: None,
        };
        let (name, set, key, value) = (
            "in_x".to_string(),
            "instances".to_string(),
            ElemText::from("10.1.0.33"),
            Some(ElemText::from("jump in_x")),
        );
        let chain = NftChain {
            base: None,
            rules: vec![rule(1), rule(2)],
        };
        let add_chain = Change::AddChain {
            table: &table,
            name: &name,
            chain: &chain,
        };
        let add_element = Change::AddElement {
            table: &table,
            set: &set,
            key: &key,
            value: &value,
        };
        let transaction = build_transaction(
            &[&add_chain, &add_element],
            &KernelState::default(),
            &|_, _| None,
            Some("v1-a"),
        );
        let texts = transaction.texts();
        assert_eq!(transaction.commands(), texts.len());
        let kinds: Vec<String> = texts
            .iter()
            .map(|text| {
                let command: Json = serde_json::from_str(text).unwrap();
                let (verb, object) = command.as_object().unwrap().iter().next().unwrap();
                let kind = object.as_object().unwrap().keys().next().unwrap();
                format!("{verb} {kind}")
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "add chain",
                "add rule",
                "add rule",
                "add element",
                "add table",
                "add chain",
                "flush chain",
                "add rule"
            ]
        );
        assert!(texts[1].contains(&RuleHash([1; 10]).to_string()));
        assert!(texts[2].contains(&RuleHash([2; 10]).to_string()));
    }
}
