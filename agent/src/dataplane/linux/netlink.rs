//! Routes and addresses through rtnetlink.
//!
//! Reads return only routes of our protocol in our table, and the
//! addresses of every interface (the diff removes only those the view's
//! ownership rules cover). Writes are pipelined: up to `PIPELINE` requests
//! in flight on the one socket, instead of one round trip at a time.
//!
//! Routes are ours by construction (routes of another
//! protocol are never changed or deleted). A route is created exclusively
//! (NLM_F_CREATE|NLM_F_EXCL); when the kernel already holds its key
//! (destination, table, metric), the holder is looked up: ours (a write
//! that half-happened before a crash) is replaced, anyone else's is left as
//! it is and reported as a conflict. Replace semantics are used only on a
//! key our own read found holding our route, and deletes name our protocol,
//! which the kernel matches. Addresses use replace semantics.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{self, StreamExt, TryStreamExt};
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::dataplane::{DataplaneError, DeferredChange};
use crate::diff::Change;
use crate::state::{AddressEntry, RouteKey, RouteSpec};

/// Requests in flight at once on the netlink socket.
const PIPELINE: usize = 128;
const EPERM: i32 = 1;
const EEXIST: i32 = 17;

/// Interface index ↔ name, read once per read or apply.
#[derive(Debug, Default, Clone)]
pub struct Links {
    by_name: BTreeMap<String, u32>,
    by_index: BTreeMap<u32, String>,
}

impl Links {
    pub fn index(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    pub fn name(&self, index: u32) -> Option<&str> {
        self.by_index.get(&index).map(String::as_str)
    }
}

fn netlink_error(operation: impl Into<String>, error: rtnetlink::Error) -> DataplaneError {
    let operation = operation.into();
    if let rtnetlink::Error::NetlinkError(message) = &error {
        if message.raw_code().abs() == EPERM {
            return DataplaneError::PermissionDenied { operation };
        }
    }
    DataplaneError::Netlink {
        operation,
        detail: error.to_string(),
    }
}

pub async fn read_links(handle: &Handle) -> Result<Links, DataplaneError> {
    let messages: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| netlink_error("dump links", e))?;
    let mut links = Links::default();
    for message in messages {
        let index = message.header.index;
        for attribute in message.attributes {
            if let LinkAttribute::IfName(name) = attribute {
                links.by_name.insert(name.clone(), index);
                links.by_index.insert(index, name);
            }
        }
    }
    Ok(links)
}

/// Our routes: protocol `protocol` in table `table`.
pub async fn read_routes(
    handle: &Handle,
    links: &Links,
    protocol: u8,
    table: u32,
) -> Result<BTreeMap<RouteKey, RouteSpec>, DataplaneError> {
    let mut routes = BTreeMap::new();
    let dumps = [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ];
    for request in dumps {
        let messages: Vec<RouteMessage> = handle
            .route()
            .get(request)
            .execute()
            .try_collect()
            .await
            .map_err(|e| netlink_error("dump routes", e))?;
        for message in messages {
            if u8::from(message.header.protocol) != protocol {
                continue;
            }
            if let Some((key, spec)) = parse_route_message(&message, links, protocol) {
                if key.table == table {
                    routes.insert(key, spec);
                }
            }
        }
    }
    Ok(routes)
}

fn route_address(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

pub fn parse_route_message(
    message: &RouteMessage,
    links: &Links,
    protocol: u8,
) -> Option<(RouteKey, RouteSpec)> {
    let mut destination = None;
    let mut gateway = None;
    let mut device = None;
    let mut metric = None;
    let mut table = u32::from(message.header.table);
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(address) => destination = route_address(address),
            RouteAttribute::Gateway(address) => gateway = route_address(address),
            RouteAttribute::Oif(index) => device = links.name(*index).map(str::to_string),
            RouteAttribute::Priority(priority) => metric = Some(*priority),
            RouteAttribute::Table(id) => table = *id,
            _ => {}
        }
    }
    let prefix = message.header.destination_prefix_length;
    let destination = match (destination, message.header.address_family) {
        (Some(addr), _) => addr,
        (None, AddressFamily::Inet6) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        (None, _) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    };
    let destination = IpNet::new(destination, prefix).ok()?;
    Some((
        RouteKey { destination, table },
        RouteSpec {
            gateway,
            device,
            metric,
            protocol,
        },
    ))
}

/// Every address on every interface but loopback.
pub async fn read_addresses(
    handle: &Handle,
    links: &Links,
) -> Result<BTreeSet<AddressEntry>, DataplaneError> {
    let messages: Vec<AddressMessage> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| netlink_error("dump addresses", e))?;
    let mut addresses = BTreeSet::new();
    for message in messages {
        if let Some(entry) = parse_address_message(&message, links) {
            if entry.device != "lo" {
                addresses.insert(entry);
            }
        }
    }
    Ok(addresses)
}

pub fn parse_address_message(message: &AddressMessage, links: &Links) -> Option<AddressEntry> {
    let device = links.name(message.header.index)?;
    // IFA_LOCAL is the address itself on IPv4 (IFA_ADDRESS may be the peer
    // on point-to-point links); IPv6 has only IFA_ADDRESS.
    let mut local = None;
    let mut address = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    Some(AddressEntry {
        device: device.to_string(),
        addr: local.or(address)?,
        prefix_len: message.header.prefix_len,
    })
}

fn route_message(key: &RouteKey, spec: &RouteSpec, links: &Links) -> Result<RouteMessage, String> {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(key.destination.addr(), key.destination.prefix_len())
        .map_err(|e| e.to_string())?
        .table_id(key.table)
        .protocol(RouteProtocol::from(spec.protocol));
    if let Some(gateway) = spec.gateway {
        builder = builder.gateway(gateway).map_err(|e| e.to_string())?;
    } else {
        builder = builder.scope(RouteScope::Link);
    }
    if let Some(device) = &spec.device {
        let index = links
            .index(device)
            .ok_or_else(|| format!("device {device} does not exist"))?;
        builder = builder.output_interface(index);
    }
    if let Some(metric) = spec.metric {
        builder = builder.priority(metric);
    }
    Ok(builder.build())
}

/// A delete by key, metric and protocol only: whatever the device or
/// gateway now is, the route is ours, and the kernel deletes no route of
/// another protocol for it.
fn delete_message(key: &RouteKey, spec: &RouteSpec, links: &Links) -> Result<RouteMessage, String> {
    let mut spec = RouteSpec::clone(spec);
    spec.device = None;
    spec.gateway = None;
    let mut message = route_message(key, &spec, links)?;
    message.header.scope = RouteScope::NoWhere;
    Ok(message)
}

fn address_message(entry: &AddressEntry, index: u32) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = if entry.addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    message.header.prefix_len = entry.prefix_len;
    message.header.index = index;
    message
        .attributes
        .push(AddressAttribute::Address(entry.addr));
    if entry.addr.is_ipv4() {
        message.attributes.push(AddressAttribute::Local(entry.addr));
    }
    message
}

/// The outcome of one netlink change.
enum Outcome<'a> {
    Done,
    Deferred(DeferredChange<'a>),
    /// Deferred because another protocol holds the route's key.
    Conflict(DeferredChange<'a>),
    Failed(DataplaneError),
}

fn raw_code(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
        _ => None,
    }
}

/// Creates (or, where our read found our route on the key, replaces) the
/// route `change` asks for; never overwrites another protocol's.
async fn write_route<'a>(
    handle: &Handle,
    links: &Links,
    change: &Change<'a>,
    (key, spec): (&RouteKey, &RouteSpec),
    old: Option<&RouteSpec>,
) -> Outcome<'a> {
    let message = match route_message(key, spec, links) {
        Ok(message) => message,
        Err(reason) => return deferred(change, reason),
    };
    if old.is_some_and(|old| old.metric == spec.metric) {
        let result = handle.route().add(message).replace().execute().await;
        return finish(change, result);
    }
    match handle.route().add(message.clone()).execute().await {
        Ok(()) => {}
        Err(error) if raw_code(&error) == Some(EEXIST) => {
            match route_holder(handle, key, spec).await {
                Some(holder) if holder == spec.protocol => {
                    let result = handle.route().add(message).replace().execute().await;
                    if let Err(error) = result {
                        return classify(change, error);
                    }
                }
                holder => return conflict(change, key, holder),
            }
        }
        Err(error) => return classify(change, error),
    }
    // A new metric is a new kernel key: our route on the old one goes.
    if let Some(old) = old {
        if let Ok(message) = delete_message(key, old, links) {
            let remove = Change::RemoveRoute { key, spec: old };
            if let Outcome::Failed(error) =
                finish(&remove, handle.route().del(message).execute().await)
            {
                return Outcome::Failed(error);
            }
        }
    }
    Outcome::Done
}

/// The protocol of the route the kernel holds on `key` with `spec`'s
/// metric, if any (looked up only after a refused create: rare).
async fn route_holder(handle: &Handle, key: &RouteKey, spec: &RouteSpec) -> Option<u8> {
    let request = match key.destination {
        IpNet::V4(_) => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        IpNet::V6(_) => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    };
    let messages: Vec<RouteMessage> = handle
        .route()
        .get(request)
        .execute()
        .try_collect()
        .await
        .ok()?;
    let same_key = |message: &&RouteMessage| {
        let parsed = parse_route_message(message, &Links::default(), 0);
        parsed.is_some_and(|(found, _)| found == *key)
    };
    let candidates: Vec<&RouteMessage> = messages.iter().filter(same_key).collect();
    let metric_of = |message: &RouteMessage| {
        message.attributes.iter().find_map(|a| match a {
            RouteAttribute::Priority(priority) => Some(*priority),
            _ => None,
        })
    };
    let holder = candidates
        .iter()
        .find(|m| spec.metric.is_none() || metric_of(m) == spec.metric)
        .or(candidates.first())?;
    Some(u8::from(holder.header.protocol))
}

/// A protocol's name and number, as `ip route` names them.
fn protocol_name(protocol: u8) -> String {
    let name = match protocol {
        0 => "unspec",
        1 => "redirect",
        2 => "kernel",
        3 => "boot",
        4 => "static",
        16 => "dhcp",
        186 => "bgp",
        187 => "isis",
        188 => "ospf",
        189 => "rip",
        _ => return protocol.to_string(),
    };
    format!("{name} ({protocol})")
}

fn conflict<'a>(change: &Change<'a>, key: &RouteKey, holder: Option<u8>) -> Outcome<'a> {
    let owner = holder.map_or_else(|| "unknown".to_string(), protocol_name);
    tracing::warn!(
        route = %key.destination,
        table = key.table,
        owner = %owner,
        "route conflict: the kernel holds this route for another protocol; it is left as it is"
    );
    Outcome::Conflict(DeferredChange {
        change: *change,
        reason: format!(
            "route {} (table {}) is held by protocol {owner}, not ours: left as it is",
            key.destination, key.table
        ),
    })
}

fn deferred<'a>(change: &Change<'a>, reason: String) -> Outcome<'a> {
    Outcome::Deferred(DeferredChange {
        change: *change,
        reason,
    })
}

fn finish<'a>(change: &Change<'a>, result: Result<(), rtnetlink::Error>) -> Outcome<'a> {
    match result {
        Ok(()) => Outcome::Done,
        Err(error) => classify(change, error),
    }
}

async fn send_change<'a>(handle: &Handle, links: &Links, change: &Change<'a>) -> Outcome<'a> {
    let defer = |reason: String| deferred(change, reason);
    let result = match change {
        Change::AddRoute { key, spec } => {
            return write_route(handle, links, change, (key, spec), None).await
        }
        Change::ChangeRoute { key, old, new } => {
            return write_route(handle, links, change, (key, new), Some(old)).await
        }
        Change::RemoveRoute { key, spec } => match delete_message(key, spec, links) {
            Ok(message) => handle.route().del(message).execute().await,
            Err(reason) => return defer(reason),
        },
        Change::AddAddress(entry) => match links.index(&entry.device) {
            Some(index) => {
                handle
                    .address()
                    .add(index, entry.addr, entry.prefix_len)
                    .replace()
                    .execute()
                    .await
            }
            None => return defer(format!("device {} does not exist", entry.device)),
        },
        Change::RemoveAddress(entry) => match links.index(&entry.device) {
            Some(index) => {
                handle
                    .address()
                    .del(address_message(entry, index))
                    .execute()
                    .await
            }
            // Gone with its device: nothing to remove.
            None => Ok(()),
        },
        _ => return Outcome::Done,
    };
    finish(change, result)
}

fn classify<'a>(change: &Change<'a>, error: rtnetlink::Error) -> Outcome<'a> {
    const ESRCH: i32 = 3;
    const EADDRNOTAVAIL: i32 = 99;
    if let rtnetlink::Error::NetlinkError(message) = &error {
        let code = message.raw_code().abs();
        if code == EPERM {
            return Outcome::Failed(DataplaneError::PermissionDenied {
                operation: "netlink route/address changes".into(),
            });
        }
        // Removing what is already gone is success.
        let already_gone = matches!(code, ESRCH | EADDRNOTAVAIL)
            && matches!(
                change,
                Change::RemoveRoute { .. } | Change::RemoveAddress(_)
            );
        if already_gone {
            return Outcome::Done;
        }
    }
    // Anything else (gateway unreachable while the bridge has no address
    // yet, device gone): retried at the next resync, not blocking the rest.
    Outcome::Deferred(DeferredChange {
        change: *change,
        reason: error.to_string(),
    })
}

/// What [`apply`] did.
#[derive(Debug, Default)]
pub struct NetlinkApplied<'a> {
    /// Requests sent.
    pub sent: usize,
    /// Changes not made, conflicts included, each with why.
    pub deferred: Vec<DeferredChange<'a>>,
    /// Of `deferred`, the routes another protocol holds, one line each.
    pub route_conflicts: Vec<String>,
}

/// Make the route and address changes: addresses first (a route's gateway
/// may need the bridge's address to be reachable), removals before adds.
pub async fn apply<'a>(
    handle: &Handle,
    links: &Links,
    changes: &[&Change<'a>],
) -> Result<NetlinkApplied<'a>, DataplaneError> {
    let phase = |change: &Change| match change {
        Change::RemoveAddress(_) => 0,
        Change::AddAddress(_) => 1,
        Change::RemoveRoute { .. } => 2,
        _ => 3,
    };
    let mut applied = NetlinkApplied::default();
    for current in 0..4 {
        let batch: Vec<&Change<'a>> = changes
            .iter()
            .copied()
            .filter(|c| phase(c) == current)
            .collect();
        applied.sent += batch.len();
        // Boxed so the future stays `Send` with one concrete lifetime (a
        // closure returning the future trips the borrow checker's
        // higher-ranked inference inside `async_trait`).
        let requests: Vec<BoxFuture<'_, Outcome>> = batch
            .into_iter()
            .map(|change| send_change(handle, links, change).boxed())
            .collect();
        let outcomes: Vec<Outcome> = stream::iter(requests)
            .buffer_unordered(PIPELINE)
            .collect()
            .await;
        for outcome in outcomes {
            match outcome {
                Outcome::Done => {}
                Outcome::Deferred(change) => applied.deferred.push(change),
                Outcome::Conflict(change) => {
                    applied.route_conflicts.push(change.reason.clone());
                    applied.deferred.push(change);
                }
                Outcome::Failed(error) => return Err(error),
            }
        }
    }
    Ok(applied)
}
