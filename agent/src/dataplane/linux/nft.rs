//! nftables through `nft`'s JSON interface, with the `nftables` crate's
//! schema types for what we write.
//!
//! Reads list only `inet edgenet` and `bridge edgenet`. Each apply is one
//! `nft -j -f -` run, which the kernel commits as one transaction: it takes
//! all of it or none of it. Only changed chains (flushed and rewritten),
//! sets and elements appear in it.
//!
//! The crate has no `verdict` set type and writes verdicts as bare strings,
//! so verdict maps and their elements are written as raw JSON next to the
//! crate's objects.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::process::Stdio;

use ipnet::IpNet;
use nftables::expr::{self, Expression, NamedExpression};
use nftables::schema::{self, NfCmd, NfListObject, NfObject};
use nftables::stmt::{self, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::{json, Value as Json};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::dataplane::DataplaneError;
use crate::desired::*;
use crate::diff::Change;

/// How to run `nft`: the program and arguments put before ours (tests and
/// odd setups may use e.g. `ip netns exec NS nft`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRunner {
    pub program: String,
    pub prefix_args: Vec<String>,
}

impl Default for NftRunner {
    fn default() -> Self {
        NftRunner {
            program: "nft".to_string(),
            prefix_args: Vec::new(),
        }
    }
}

impl NftRunner {
    async fn run(
        &self,
        args: &[&str],
        stdin: Option<&Transaction<'_>>,
        purpose: &'static str,
    ) -> Result<std::process::Output, DataplaneError> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.prefix_args)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawn_error = |source| self.spawn_error(purpose, source);
        let mut child = command.spawn().map_err(spawn_error)?;
        if let (Some(transaction), Some(pipe)) = (stdin, child.stdin.take()) {
            write_transaction(pipe, transaction)
                .await
                .map_err(spawn_error)?;
        }
        child.wait_with_output().await.map_err(spawn_error)
    }

    /// Our two tables as they are in the kernel, and the state id recorded
    /// in `inet edgenet`.
    pub async fn read(
        &self,
    ) -> Result<(BTreeMap<TableId, NftTable>, Option<String>), DataplaneError> {
        let mut tables = BTreeMap::new();
        let mut state_id = None;
        for family in [Family::Inet, Family::Bridge] {
            let Some((table, recorded)) = self.list_table(family).await? else {
                continue; // the table does not exist (yet, or any more)
            };
            if family == Family::Inet {
                state_id = recorded;
            }
            tables.insert(TableId::ours(family), table);
        }
        Ok((tables, state_id))
    }

    /// One of our tables, parsed from `nft -j list` as its output arrives:
    /// 10,000 instances list as ~9 MiB of JSON, which held whole (in a
    /// buffer grown by doubling) stayed in the allocator after each resync.
    /// serde_json reads a `Read`, so this runs on a thread of its own, made
    /// by the calling thread (same network namespace) for this one listing.
    async fn list_table(
        &self,
        family: Family,
    ) -> Result<Option<(NftTable, Option<String>)>, DataplaneError> {
        let runner = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("nft-list".into())
            .spawn(move || {
                let _ = tx.send(runner.list_table_blocking(family));
            })
            .map_err(|source| self.spawn_error("listing our tables", source))?;
        rx.await.map_err(|_| DataplaneError::NftParse {
            context: format!("table {family} {TABLE_NAME}"),
            detail: "the listing thread ended without an answer".into(),
        })?
    }

    fn list_table_blocking(
        &self,
        family: Family,
    ) -> Result<Option<(NftTable, Option<String>)>, DataplaneError> {
        let purpose = "listing our tables";
        let id = TableId::ours(family);
        let mut child = std::process::Command::new(&self.program)
            .args(&self.prefix_args)
            .args(["-j", "list", "table", family.as_str(), TABLE_NAME])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error(purpose, source))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let parsed = parse_table(std::io::BufReader::with_capacity(64 * 1024, stdout), &id);
        // nft writes little to stderr (one error), so reading it after
        // stdout cannot block nft.
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        let status = child
            .wait()
            .map_err(|source| self.spawn_error(purpose, source))?;
        if status.success() {
            return parsed.map(Some);
        }
        let stderr = stderr.trim().to_string();
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        Err(classify_failure(stderr, |stderr| DataplaneError::NftList {
            table: id.to_string(),
            stderr,
        }))
    }

    fn spawn_error(&self, purpose: &'static str, source: std::io::Error) -> DataplaneError {
        DataplaneError::NftSpawn {
            program: self.program.clone(),
            purpose,
            source,
        }
    }

    /// Run one transaction. `Ok(0)` when there was nothing to write.
    pub async fn apply(&self, transaction: &Transaction<'_>) -> Result<usize, DataplaneError> {
        let commands = transaction.commands();
        if commands == 0 {
            return Ok(0);
        }
        let output = self
            .run(
                &["-j", "-f", "-"],
                Some(transaction),
                "applying a transaction",
            )
            .await?;
        if output.status.success() {
            return Ok(commands);
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        Err(classify_failure(stderr, |stderr| {
            DataplaneError::NftTransaction {
                commands,
                stderr: truncate(&stderr, 2000),
            }
        }))
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn classify_failure(
    stderr: String,
    otherwise: impl FnOnce(String) -> DataplaneError,
) -> DataplaneError {
    if stderr.contains("Operation not permitted") {
        DataplaneError::PermissionDenied {
            operation: "nft (nftables)".into(),
        }
    } else {
        otherwise(stderr)
    }
}

// ---------------------------------------------------------------- reading

fn parse_error(id: &TableId, detail: impl Into<String>) -> DataplaneError {
    DataplaneError::NftParse {
        context: format!("table {id}"),
        detail: detail.into(),
    }
}

/// `nft -j list table` output to our types. Rules are known by the hash in
/// their comment; a rule without our comment (someone else's) gets a hash
/// that matches nothing, so its chain is rewritten.
///
/// The listing is read item by item straight from nft's output into the
/// table (typed structs, set elements converted one at a time), never
/// held whole: a listing of 10,000 instances held as `serde_json::Value`
/// trees cost ~35 MiB, and as one buffer ~16 MiB.
fn parse_table(
    listing: impl std::io::Read,
    id: &TableId,
) -> Result<(NftTable, Option<String>), DataplaneError> {
    let mut builder = TableBuilder::default();
    let mut deserializer = serde_json::Deserializer::from_reader(listing);
    serde::de::DeserializeSeed::deserialize(ListingSeed(&mut builder), &mut deserializer)
        .and_then(|()| deserializer.end())
        .map_err(|e| parse_error(id, e.to_string()))?;
    Ok((builder.table, builder.state_id))
}

/// What the listing read so far adds up to.
#[derive(Default)]
struct TableBuilder {
    table: NftTable,
    state_id: Option<String>,
}

impl TableBuilder {
    fn add(&mut self, item: ListItem<'_>) {
        if let Some(chain) = item.chain {
            if chain.name != STATE_CHAIN {
                self.table.chains.insert(
                    chain.name.to_string(),
                    NftChain {
                        base: parse_base_chain(&chain),
                        rules: Vec::new(),
                    },
                );
            }
        } else if let Some(set) = item.set.or(item.map) {
            let name = set.name.to_string();
            self.table.sets.insert(name, parse_set(set));
        } else if let Some(rule) = item.rule {
            self.add_rule(rule);
        }
    }

    fn add_rule(&mut self, rule: RuleListing<'_>) {
        let comment = rule.comment.as_deref().unwrap_or("");
        if rule.chain == STATE_CHAIN {
            if let Some(state) = comment.strip_prefix(STATE_COMMENT_PREFIX) {
                self.state_id = Some(state.to_string());
            }
            return;
        }
        let hash = comment
            .strip_prefix(RULE_COMMENT_PREFIX)
            .and_then(RuleHash::from_hex)
            .unwrap_or_else(|| RuleHash::foreign(rule.handle.unwrap_or(0)));
        if let Some(chain) = self.table.chains.get_mut(rule.chain.as_ref()) {
            chain.rules.push(NftRule {
                hash,
                statements: Vec::new(),
                handle: rule.handle,
            });
        }
    }
}

/// `{"nftables": [item, ...]}`, each item handed to the builder as soon as
/// it is read, so the listing is never held as a whole.
struct ListingSeed<'b>(&'b mut TableBuilder);

impl<'de> serde::de::DeserializeSeed<'de> for ListingSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ListingSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an nft JSON listing")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = false;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == "nftables" {
                map.next_value_seed(ItemsSeed(&mut *self.0))?;
                seen = true;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        if !seen {
            return Err(serde::de::Error::missing_field("nftables"));
        }
        Ok(())
    }
}

struct ItemsSeed<'b>(&'b mut TableBuilder);

impl<'de> serde::de::DeserializeSeed<'de> for ItemsSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ItemsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of nft objects")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<ListItem<'de>>()? {
            self.0.add(item);
        }
        Ok(())
    }
}

/// The parts of one listed object we read. Rules are most of the listing,
/// and we need only their chain, handle and comment: their expressions are
/// skipped unparsed. Names borrow from nft's output where they can.
#[derive(serde::Deserialize)]
struct ListItem<'a> {
    #[serde(borrow)]
    chain: Option<ChainListing<'a>>,
    #[serde(borrow)]
    set: Option<SetListing<'a>>,
    #[serde(borrow)]
    map: Option<SetListing<'a>>,
    #[serde(borrow)]
    rule: Option<RuleListing<'a>>,
}

#[derive(serde::Deserialize)]
struct ChainListing<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    hook: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    chain_type: Option<Cow<'a, str>>,
    prio: Option<Json>,
    #[serde(borrow)]
    policy: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct SetListing<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    /// A type name, or an array of them for a concatenation.
    #[serde(rename = "type", default)]
    key_type: Json,
    #[serde(borrow)]
    map: Option<Cow<'a, str>>,
    #[serde(default)]
    flags: Json,
    #[serde(default)]
    elem: ListedElements,
}

#[derive(serde::Deserialize)]
struct RuleListing<'a> {
    #[serde(borrow)]
    chain: Cow<'a, str>,
    handle: Option<u64>,
    #[serde(borrow)]
    comment: Option<Cow<'a, str>>,
}

/// A set's elements as canonical key and value text, each element read as
/// a small JSON value and converted at once (a set of 10,000 elements is
/// never a tree). Keys are as printed: the interval normalisation is done
/// by `parse_set`, which knows the flags.
#[derive(Default)]
struct ListedElements(BTreeMap<ElemText, Option<ElemText>>);

impl<'de> serde::Deserialize<'de> for ListedElements {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(ElementsVisitor)
    }
}

struct ElementsVisitor;

impl<'de> serde::de::Visitor<'de> for ElementsVisitor {
    type Value = ListedElements;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of set elements")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> Result<ListedElements, A::Error> {
        let mut elements = BTreeMap::new();
        while let Some(elem) = seq.next_element::<Json>()? {
            let (key, value) = match elem.as_array() {
                Some(pair) if pair.len() == 2 => (&pair[0], Some(&pair[1])),
                _ => (&elem, None),
            };
            let key = element_key(key).ok_or_else(|| {
                serde::de::Error::custom(format!("an element we cannot read: {elem}"))
            })?;
            elements.insert(key.into(), value.map(|v| element_value(v).into()));
        }
        Ok(ListedElements(elements))
    }
}

fn parse_base_chain(chain: &ChainListing<'_>) -> Option<BaseChain> {
    let hook = match chain.hook.as_deref()? {
        "prerouting" => Hook::Prerouting,
        "input" => Hook::Input,
        "forward" => Hook::Forward,
        "output" => Hook::Output,
        "postrouting" => Hook::Postrouting,
        _ => return None,
    };
    let chain_type = match chain.chain_type.as_deref()? {
        "nat" => ChainType::Nat,
        _ => ChainType::Filter,
    };
    Some(BaseChain {
        chain_type,
        hook,
        priority: chain.prio.as_ref().and_then(Json::as_i64).unwrap_or(0) as i32,
        policy_accept: chain.policy.as_deref() != Some("drop"),
    })
}

fn parse_set(set: SetListing<'_>) -> NftSet {
    let key_type = match &set.key_type {
        Json::Array(parts) => {
            let parts: Vec<&str> = parts.iter().filter_map(Json::as_str).collect();
            static_type(&parts.join(" . "))
        }
        other => static_type(other.as_str().unwrap_or("")),
    };
    let value = match set.map.as_deref() {
        None => SetValue::None,
        Some("verdict") => SetValue::Verdict,
        Some(other) => SetValue::Data(static_type(other)),
    };
    let interval = set
        .flags
        .as_array()
        .is_some_and(|flags| flags.iter().any(|f| f == "interval"));
    let mut elements = set.elem.0;
    if interval {
        elements = elements
            .into_iter()
            .map(|(key, value)| (interval_key(key), value))
            .collect();
    }
    NftSet {
        key_type,
        value,
        interval,
        elements,
    }
}

/// An interval set prints a host prefix as a bare address.
fn interval_key(key: ElemText) -> ElemText {
    match key.parse::<IpAddr>() {
        Ok(addr) => IpNet::from(addr).to_string().into(),
        Err(_) => key,
    }
}

/// Type names we write, as `&'static str`; anything else is someone's
/// tampering and reads as a type we never use (so the set is made anew).
fn static_type(name: &str) -> &'static str {
    match name {
        "ipv4_addr" => "ipv4_addr",
        "ipv6_addr" => "ipv6_addr",
        "ifname" => "ifname",
        "ifname . ether_addr" => "ifname . ether_addr",
        "ifname . ipv4_addr" => "ifname . ipv4_addr",
        "ifname . ipv6_addr" => "ifname . ipv6_addr",
        _ => "unknown",
    }
}

fn element_key(key: &Json) -> Option<String> {
    let key = key.get("elem").map(|e| &e["val"]).unwrap_or(key);
    if let Some(Json::Array(parts)) = key.get("concat") {
        let parts: Option<Vec<&str>> = parts.iter().map(Json::as_str).collect();
        return Some(parts?.join(" . "));
    }
    if let Some(prefix) = key.get("prefix") {
        return Some(format!(
            "{}/{}",
            prefix["addr"].as_str()?,
            prefix["len"].as_u64()?
        ));
    }
    key.as_str().map(str::to_string)
}

fn element_value(value: &Json) -> String {
    if let Some(jump) = value.get("jump") {
        return jump_value(jump["target"].as_str().unwrap_or("")).into();
    }
    if value.get("drop").is_some() {
        return DROP_VALUE.to_string();
    }
    match value.as_str() {
        Some(text) => text.to_string(),
        None => value.to_string(),
    }
}

// ---------------------------------------------------------------- writing

fn nf_family(family: Family) -> NfFamily {
    match family {
        Family::Inet => NfFamily::INet,
        Family::Bridge => NfFamily::Bridge,
    }
}

/// One command of a transaction, already serialised: 76,000 rules kept as
/// `serde_json::Value` trees would cost hundreds of MiB; as text, tens.
pub type NftCommand = String;

fn cmd(command: NfCmd<'_>) -> NftCommand {
    serde_json::to_string(&NfObject::CmdObject(command)).expect("nftables schema serialises")
}

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
async fn write_transaction(
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

fn table_object(id: &TableId) -> NfListObject<'static> {
    NfListObject::Table(schema::Table {
        family: nf_family(id.family),
        name: Cow::Owned(id.name.clone()),
        handle: None,
    })
}

fn chain_object(id: &TableId, name: &str, base: Option<&BaseChain>) -> schema::Chain<'static> {
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

fn rule_object(id: &TableId, chain: &str, rule: &NftRule) -> NftCommand {
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
fn add_set_command(id: &TableId, name: &str, set: &NftSet) -> NftCommand {
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

fn delete_set_command(id: &TableId, name: &str, was_map: bool) -> NftCommand {
    let kind = if was_map { "map" } else { "set" };
    json!({"delete": {kind: {"family": id.family.as_str(), "table": id.name, "name": name}}})
        .to_string()
}

/// One set element as nft JSON: the key alone, or `[key, value]` for a map.
/// Typed, so it is serialised straight into its command's text without a
/// `serde_json::Value` per element (80,000 of them at 10,000 instances).
#[derive(serde::Serialize)]
#[serde(untagged)]
enum ElementJson<'a> {
    Key(KeyJson<'a>),
    Pair(KeyJson<'a>, ValueJson<'a>),
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum KeyJson<'a> {
    Concat { concat: Vec<&'a str> },
    Prefix { prefix: PrefixJson },
    Plain(&'a str),
}

#[derive(serde::Serialize)]
struct PrefixJson {
    addr: IpAddr,
    len: u8,
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum ValueJson<'a> {
    Jump { jump: JumpJson<'a> },
    Drop { drop: () },
    Plain(&'a str),
}

#[derive(serde::Serialize)]
struct JumpJson<'a> {
    target: &'a str,
}

fn element_json<'a>(key: &'a str, value: Option<&'a str>, interval: bool) -> ElementJson<'a> {
    let key_json = if key.contains(" . ") {
        KeyJson::Concat {
            concat: key.split(" . ").collect(),
        }
    } else {
        plain_key_json(key, interval)
    };
    match value {
        None => ElementJson::Key(key_json),
        Some(value) => {
            let value_json = if let Some(target) = value.strip_prefix("jump ") {
                ValueJson::Jump {
                    jump: JumpJson { target },
                }
            } else if value == DROP_VALUE {
                ValueJson::Drop { drop: () }
            } else {
                ValueJson::Plain(value)
            };
            ElementJson::Pair(key_json, value_json)
        }
    }
}

fn plain_key_json(key: &str, interval: bool) -> KeyJson<'_> {
    match (interval, key.parse::<IpNet>()) {
        (true, Ok(net)) => KeyJson::Prefix {
            prefix: PrefixJson {
                addr: net.addr(),
                len: net.prefix_len(),
            },
        },
        _ => KeyJson::Plain(key),
    }
}

/// Elements to add or delete, grouped by set so each set takes one command;
/// each set's elements are kept as their JSON text, comma separated.
#[derive(Default)]
struct ElementBatch<'c> {
    by_set: BTreeMap<(&'c TableId, &'c str), Vec<u8>>,
}

impl<'c> ElementBatch<'c> {
    fn push(&mut self, id: &'c TableId, set: &'c str, element: ElementJson<'_>) {
        let text = self.by_set.entry((id, set)).or_default();
        if !text.is_empty() {
            text.push(b',');
        }
        serde_json::to_writer(text, &element).expect("an element serialises");
    }

    fn commands(self, verb: &str) -> Vec<NftCommand> {
        self.by_set
            .into_iter()
            .map(|((id, set), elems)| element_command(verb, id, set, &elems))
            .collect()
    }
}

/// `{"<verb>":{"element":{"family":…,"table":…,"name":…,"elem":[<elems>]}}}`.
fn element_command(verb: &str, id: &TableId, set: &str, elems: &[u8]) -> NftCommand {
    let text = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let mut command = format!(
        "{{{}:{{\"element\":{{\"family\":{},\"table\":{},\"name\":{},\"elem\":[",
        text(verb),
        text(id.family.as_str()),
        text(&id.name),
        text(set),
    );
    // Serialised by serde_json from `&str`s: valid UTF-8.
    command.push_str(std::str::from_utf8(elems).expect("serde_json writes UTF-8"));
    command.push_str("]}}}");
    command
}

/// The one transaction that makes `changes`, in an order the kernel
/// accepts: containers first, then chain contents and elements (so every
/// reference resolves), removals last (after what referenced them is gone).
/// `state_id` is written into the state chain when `write_state` is set.
pub fn build_transaction<'c>(
    changes: &[&'c Change],
    desired: &KernelState,
    actual_sets: &dyn Fn(&TableId, &str) -> Option<bool>,
    state: Option<&str>,
) -> Transaction<'c> {
    let mut containers = Vec::new();
    let mut contents = Transaction::default();
    let mut element_deletes = ElementBatch::default();
    let mut element_adds = ElementBatch::default();
    let mut flush_removed = Vec::new();
    let mut removals = Vec::new();
    let interval = |id: &TableId, set: &str| {
        desired
            .tables
            .get(id)
            .and_then(|t| t.sets.get(set))
            .is_some_and(|s| s.interval)
    };
    for &change in changes {
        match change {
            Change::AddTable(id) => containers.push(cmd(NfCmd::Add(table_object(id)))),
            Change::RemoveTable(id) => {
                removals.push(cmd(NfCmd::Delete(table_object(id))));
            }
            Change::AddSet { table, name, set } => {
                containers.push(add_set_command(table, name, set));
            }
            Change::RemoveSet { table, name } => {
                let was_map = actual_sets(table, name).unwrap_or(false);
                let delete = delete_set_command(table, name, was_map);
                // A set made anew (same name) must go before it is added.
                let remade = changes.iter().any(|c| {
                    matches!(c, Change::AddSet { table: t, name: n, .. } if t == table && n == name)
                });
                if remade {
                    containers.insert(0, delete);
                } else {
                    removals.push(delete);
                }
            }
            Change::AddChain { table, name, chain } => {
                containers.push(cmd(NfCmd::Add(NfListObject::Chain(chain_object(
                    table,
                    name,
                    chain.base.as_ref(),
                )))));
                contents.push_rules(table, name, &chain.rules);
            }
            Change::ChangeChain {
                table, name, chain, ..
            } => {
                // `add chain` with the base definition restores a hook
                // someone removed; on an existing chain it changes nothing.
                contents.push(cmd(NfCmd::Add(NfListObject::Chain(chain_object(
                    table,
                    name,
                    chain.base.as_ref(),
                )))));
                contents.push(cmd(NfCmd::Flush(schema::FlushObject::Chain(chain_object(
                    table, name, None,
                )))));
                contents.push_rules(table, name, &chain.rules);
            }
            Change::RemoveChain { table, name, .. } => {
                flush_removed.push(cmd(NfCmd::Flush(schema::FlushObject::Chain(chain_object(
                    table, name, None,
                )))));
                removals.push(cmd(NfCmd::Delete(NfListObject::Chain(chain_object(
                    table, name, None,
                )))));
            }
            Change::AddElement {
                table,
                set,
                key,
                value,
            } => element_adds.push(
                table,
                set,
                element_json(key, value.as_deref(), interval(table, set)),
            ),
            Change::ChangeElement {
                table,
                set,
                key,
                old,
                new,
            } => {
                let interval = interval(table, set);
                element_deletes.push(table, set, element_json(key, old.as_deref(), interval));
                element_adds.push(table, set, element_json(key, new.as_deref(), interval));
            }
            Change::RemoveElement {
                table,
                set,
                key,
                value,
            } => element_deletes.push(
                table,
                set,
                element_json(key, value.as_deref(), interval(table, set)),
            ),
            _ => {}
        }
    }
    let mut batch = Transaction::default();
    batch.extend(containers);
    batch.parts.extend(contents.parts);
    batch.extend(element_deletes.commands("delete"));
    batch.extend(element_adds.commands("add"));
    batch.extend(flush_removed);
    batch.extend(removals);
    if let Some(state_id) = state {
        batch.extend(state_commands(state_id));
    }
    batch
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
        cmd(NfCmd::Add(NfListObject::Chain(chain_object(
            &id,
            STATE_CHAIN,
            None,
        )))),
        cmd(NfCmd::Flush(schema::FlushObject::Chain(chain_object(
            &id,
            STATE_CHAIN,
            None,
        )))),
        add_rule,
    ]
}

/// The same ruleset as nft text, for `nft -f` (the benchmark's baseline).
pub fn ruleset_text(state: &KernelState) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    for (id, table) in &state.tables {
        let _ = writeln!(text, "table {id} {{");
        for (name, set) in &table.sets {
            let kind = if set.is_map() { "map" } else { "set" };
            let value = match set.value {
                SetValue::None => String::new(),
                SetValue::Verdict => " : verdict".to_string(),
                SetValue::Data(data) => format!(" : {data}"),
            };
            let _ = writeln!(text, "  {kind} {name} {{ type {}{value};", set.key_type);
            if set.interval {
                let _ = writeln!(text, "    flags interval;");
            }
            if !set.elements.is_empty() {
                let elems: Vec<String> = set
                    .elements
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => format!("{} : {v}", quote_ifname(set, k)),
                        None => quote_ifname(set, k),
                    })
                    .collect();
                let _ = writeln!(text, "    elements = {{ {} }}", elems.join(", "));
            }
            let _ = writeln!(text, "  }}");
        }
        for (name, chain) in &table.chains {
            let _ = writeln!(text, "  chain {name} {{");
            if let Some(base) = &chain.base {
                let _ = writeln!(
                    text,
                    "    type {} hook {} priority {}; policy accept;",
                    base.chain_type.as_str(),
                    base.hook.as_str(),
                    base.priority
                );
            }
            for rule in &chain.rules {
                let _ = writeln!(text, "    {} comment \"{}\"", rule.text(), rule.comment());
            }
            let _ = writeln!(text, "  }}");
        }
        let _ = writeln!(text, "}}");
    }
    text
}

/// Interface names are quoted in nft text; in a concatenation only the
/// ifname part is.
fn quote_ifname(set: &NftSet, key: &str) -> String {
    if !set.key_type.starts_with("ifname") {
        return key.to_string();
    }
    match key.split_once(" . ") {
        Some((ifname, rest)) => format!("\"{ifname}\" . {rest}"),
        None => format!("\"{key}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_json(element: ElementJson<'_>) -> Json {
        serde_json::to_value(element).unwrap()
    }

    #[test]
    fn element_json_forms() {
        assert_eq!(
            as_json(element_json("10.1.0.1", None, false)),
            json!("10.1.0.1")
        );
        assert_eq!(
            as_json(element_json("10.1.0.0/16", None, true)),
            json!({"prefix": {"addr": "10.1.0.0", "len": 16}})
        );
        assert_eq!(
            as_json(element_json("10.1.0.33", Some("jump in_x"), false)),
            json!(["10.1.0.33", {"jump": {"target": "in_x"}}])
        );
        assert_eq!(
            as_json(element_json("10.1.0.34", Some("drop"), false)),
            json!(["10.1.0.34", {"drop": null}])
        );
        assert_eq!(
            as_json(element_json("vn_x . d0:0d:00:00:00:01", None, false)),
            json!({"concat": ["vn_x", "d0:0d:00:00:00:01"]})
        );
        assert_eq!(
            element_key(&json!({"concat": ["vn_x", "10.1.0.33"]})).as_deref(),
            Some("vn_x . 10.1.0.33")
        );
    }

    #[test]
    fn read_back_parses_rules_sets_and_state() {
        let listing = json!({"nftables": [
            {"metainfo": {"json_schema_version": 1}},
            {"table": {"family": "inet", "name": "edgenet", "handle": 1}},
            {"chain": {"family": "inet", "table": "edgenet", "name": "forward", "handle": 2,
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"chain": {"family": "inet", "table": "edgenet", "name": "state", "handle": 3}},
            {"map": {"family": "inet", "name": "instances", "table": "edgenet", "type": "ipv4_addr",
                     "handle": 4, "map": "verdict",
                     "elem": [["10.1.0.33", {"jump": {"target": "in_i-1"}}], ["10.1.0.34", {"drop": null}]]}},
            {"set": {"family": "inet", "name": "subnets4", "table": "edgenet", "type": "ipv4_addr",
                     "handle": 5, "flags": ["interval"],
                     "elem": [{"prefix": {"addr": "10.1.0.0", "len": 16}}, "10.2.0.1"]}},
            {"rule": {"family": "inet", "table": "edgenet", "chain": "forward", "handle": 7,
                      "comment": "edgenet:00112233445566778899", "expr": []}},
            {"rule": {"family": "inet", "table": "edgenet", "chain": "forward", "handle": 8, "expr": []}},
            {"rule": {"family": "inet", "table": "edgenet", "chain": "state", "handle": 9,
                      "comment": "edgenet-state:v1-abc", "expr": []}}
        ]});
        let id = TableId::ours(Family::Inet);
        let (table, state) = parse_table(listing.to_string().as_bytes(), &id).unwrap();
        assert_eq!(state.as_deref(), Some("v1-abc"));
        assert!(!table.chains.contains_key(STATE_CHAIN));
        let forward = &table.chains["forward"];
        assert_eq!(forward.base.unwrap().hook, Hook::Forward);
        let hashes: Vec<String> = forward.rule_hashes().map(|h| h.to_string()).collect();
        assert_eq!(
            hashes,
            ["00112233445566778899", &RuleHash::foreign(8).to_string()]
        );
        assert_eq!(forward.rules[0].handle, Some(7));
        let instances = &table.sets["instances"];
        assert_eq!(instances.value, SetValue::Verdict);
        assert_eq!(
            instances.elements["10.1.0.33"].as_deref(),
            Some("jump in_i-1")
        );
        assert_eq!(instances.elements["10.1.0.34"].as_deref(), Some("drop"));
        assert!(table.sets["subnets4"].elements.contains_key("10.1.0.0/16"));
        assert!(table.sets["subnets4"].elements.contains_key("10.2.0.1/32"));
    }

    #[test]
    fn unreadable_element_is_a_parse_error() {
        let listing = json!({"nftables": [
            {"set": {"family": "inet", "name": "s", "table": "edgenet", "type": "ipv4_addr",
                     "elem": [{"range": ["10.0.0.1", "10.0.0.9"]}]}}
        ]});
        let id = TableId::ours(Family::Inet);
        let error = parse_table(listing.to_string().as_bytes(), &id).unwrap_err();
        assert!(matches!(error, DataplaneError::NftParse { .. }), "{error}");
    }

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

    #[test]
    fn element_commands_are_one_json_object_per_set() {
        let id = TableId::ours(Family::Inet);
        let mut batch = ElementBatch::default();
        batch.push(
            &id,
            "instances",
            element_json("10.1.0.33", Some("jump in_x"), false),
        );
        batch.push(
            &id,
            "instances",
            element_json("10.1.0.34", Some("drop"), false),
        );
        let commands = batch.commands("add");
        assert_eq!(commands.len(), 1);
        let parsed: Json = serde_json::from_str(&commands[0]).unwrap();
        assert_eq!(
            parsed,
            json!({"add": {"element": {"family": "inet", "table": "edgenet", "name": "instances",
                "elem": [["10.1.0.33", {"jump": {"target": "in_x"}}], ["10.1.0.34", {"drop": null}]]}}})
        );
    }
}
