//! `edgenetd cleanup [--dry-run]`: removes everything of ours from the
//! kernel (docs/dataplane.md "Ownership"): both of our nftables tables, the
//! routes of our protocol and the addresses we own, nothing else. For
//! uninstalling, or for handing the node to something else.
//!
//! Which addresses are ours is the view's to say (the public pool on the
//! public interface, subnet gateways on the bridge): without a view
//! (`--model FILE` or an endpoint) addresses are left, with a note.

use anyhow::{bail, Result};

use super::{load_config, one_snapshot, render_settings, write_stdout};
use crate::cli::{CleanupArgs, DataplaneKind};
use crate::commands::dry_run;
use crate::dataplane::linux::{LinuxConfig, LinuxDataplane};
use crate::dataplane::Dataplane;
use crate::diff::diff;
use crate::state::{AddressOwnership, KernelState};

pub async fn cleanup(args: CleanupArgs) -> Result<u8> {
    if args.source.dataplane != DataplaneKind::Kernel {
        bail!("cleanup works on the kernel dataplane only");
    }
    let config = load_config(&args.source)?;
    let ownership = address_ownership(&args, &config).await;
    let mut dataplane = LinuxDataplane::new(LinuxConfig {
        route_protocol: config.dataplane.route_protocol,
        manage_sysctls: false,
        monitor: false,
        nft_fast_path: false,
        ..LinuxConfig::default()
    })?;
    let actual = dataplane.read().await?;
    // Nothing wanted: the diff removes all that is ours, and only that.
    let nothing = KernelState {
        ownership: ownership.unwrap_or_default(),
        ..KernelState::default()
    };
    let changes = diff(&actual, &nothing);
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removing"
    };
    let mut text = format!("cleanup: {verb} {} objects\n", changes.len());
    for change in changes.sorted() {
        text.push_str(&change.line());
        text.push('\n');
    }
    write_stdout(&text)?;
    if args.dry_run || changes.is_empty() {
        return Ok(0);
    }
    let deferred = dataplane.remove_ours(&changes).await?;
    for item in &deferred {
        tracing::warn!(change = %item.change.line(), reason = %item.reason, "not removed");
    }
    Ok(if deferred.is_empty() { 0 } else { 1 })
}

/// Our addresses, as the view of this node says; `None` (with a note) when
/// there is no view to ask.
async fn address_ownership(
    args: &CleanupArgs,
    config: &crate::config::Config,
) -> Option<AddressOwnership> {
    let has_source = args.source.model.is_some() || !config.endpoints.is_empty();
    let (Some(node), true) = (config.node_id.as_deref(), has_source) else {
        eprintln!("note: addresses left as they are: which are ours needs the node id and its view (--node and --model FILE or an endpoint)");
        return None;
    };
    let planned = match one_snapshot(&args.source, config, node).await {
        Ok(snapshot) => {
            dry_run::desired_state(&snapshot, &render_settings(config)).map_err(anyhow::Error::from)
        }
        Err(error) => Err(error),
    };
    match planned {
        Ok(desired) => Some(desired.ownership),
        Err(error) => {
            eprintln!("note: addresses left as they are: no view to tell ours ({error:#})");
            None
        }
    }
}
