//! Routes: the view's routes for this node, into the configured table.

use std::net::IpAddr;

use edgenet_model::validate::is_valid_interface_name;

use super::{parse_network, Renderer};
use crate::state::*;

impl Renderer<'_> {
    pub(super) fn render_routes(&mut self) {
        for route in &self.view.routes {
            if !route.applies_to(&self.view.node.id) {
                continue;
            }
            let name = format!("routes[{}]", route.destination);
            let Some(destination) = parse_network(&route.destination) else {
                self.leave_out(format!("{name}.destination: not a network CIDR"));
                continue;
            };
            let gateway = match &route.gateway {
                None => None,
                Some(text) => match text.parse::<IpAddr>() {
                    Ok(gw) if gw.is_ipv4() == destination.addr().is_ipv4() => Some(gw),
                    _ => {
                        self.leave_out(format!(
                            "{name}.gateway: not an address of the destination's family: {text:?}"
                        ));
                        continue;
                    }
                },
            };
            if let Some(device) = &route.device {
                if !is_valid_interface_name(device) {
                    self.leave_out(format!(
                        "{name}.device: not a Linux interface name: {device:?}"
                    ));
                    continue;
                }
            }
            if gateway.is_none() && route.device.is_none() {
                self.leave_out(format!("{name}: needs a gateway or a device"));
                continue;
            }
            let metric = match route.metric.map(u32::try_from) {
                None => None,
                Some(Ok(metric)) => Some(metric),
                Some(Err(_)) => {
                    self.leave_out(format!("{name}.metric: out of range"));
                    continue;
                }
            };
            let key = RouteKey {
                destination,
                table: self.settings.route_table,
            };
            if self.state.routes.contains_key(&key) {
                self.leave_out(format!("{name}: duplicate destination"));
                continue;
            }
            let spec = RouteSpec {
                gateway,
                device: route.device.clone(),
                metric,
                protocol: self.settings.route_protocol,
            };
            self.state.routes.insert(key, spec);
        }
    }
}
