//! Netlink multicast monitor: someone removed or changed one of our
//! routes or addresses → a drift event, so the agent repairs it at once
//! rather than at the next periodic resync.
//!
//! Our own writes cause events too. They are told apart by comparing with
//! what we currently want: removing what we do not want, or adding what we
//! do, is no drift.
//!
//! nftables has a monitor of its own (`ruleset_monitor`), sending into the
//! same channel.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::netlink::Links;
use super::ruleset_monitor::{self, OwnWrites};
use crate::dataplane::DataplaneError;
use crate::state::{AddressEntry, DriftEvent, DriftKind, RouteKey, RouteSpec};

/// What we want, as the monitor needs it; updated before each apply.
#[derive(Debug, Default)]
pub struct Watched {
    pub routes: BTreeMap<RouteKey, RouteSpec>,
    pub addresses: BTreeSet<AddressEntry>,
    pub links: Links,
}

pub type SharedWatched = Arc<Mutex<Watched>>;

/// Start both monitors (routes and addresses; nftables) on the calling
/// thread's network namespace.
pub fn start(
    protocol: u8,
    watched: SharedWatched,
    own_nft_writes: Arc<OwnWrites>,
) -> Result<(mpsc::Receiver<DriftEvent>, Vec<JoinHandle<()>>), DataplaneError> {
    let groups = [
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ];
    let (connection, _handle, mut messages) = rtnetlink::new_multicast_connection(&groups)
        .map_err(|e| DataplaneError::Netlink {
            operation: "open the route/address monitor".into(),
            detail: e.to_string(),
        })?;
    let (tx, rx) = mpsc::channel(256);
    let ruleset_task = ruleset_monitor::start(own_nft_writes, tx.clone())?;
    let connection_task = tokio::spawn(connection);
    let events_task = tokio::spawn(async move {
        while let Some((message, _)) = messages.next().await {
            let NetlinkPayload::InnerMessage(inner) = message.payload else {
                continue;
            };
            let event = {
                let watched = watched.lock().unwrap_or_else(|p| p.into_inner());
                drift_of(&inner, protocol, &watched)
            };
            if let Some(event) = event {
                tracing::info!(object = %event.object, what = ?event.what, "drift");
                // Full channel: a resync is already pending; dropping is fine.
                let _ = tx.try_send(event);
            }
        }
    });
    Ok((rx, vec![connection_task, events_task, ruleset_task]))
}

fn drift_of(message: &RouteNetlinkMessage, protocol: u8, watched: &Watched) -> Option<DriftEvent> {
    match message {
        RouteNetlinkMessage::DelRoute(route) | RouteNetlinkMessage::NewRoute(route) => {
            if u8::from(route.header.protocol) != protocol {
                return None;
            }
            let removed = matches!(message, RouteNetlinkMessage::DelRoute(_));
            let (key, spec) = super::netlink::parse_route_message(route, &watched.links, protocol)?;
            let wanted = watched.routes.get(&key)?;
            let what = if removed {
                DriftKind::Removed
            } else if !wanted.satisfied_by(&spec) {
                DriftKind::Changed
            } else {
                return None;
            };
            Some(DriftEvent {
                object: format!("route {}", wanted.describe(&key)),
                what,
            })
        }
        RouteNetlinkMessage::DelAddress(address) => {
            let entry = super::netlink::parse_address_message(address, &watched.links)?;
            watched.addresses.contains(&entry).then(|| DriftEvent {
                object: format!("address {entry}"),
                what: DriftKind::Removed,
            })
        }
        _ => None,
    }
}
