//! `edgenetd status`: what the kernel holds of ours, and its drift from the
//! view.

use anyhow::{anyhow, Result};

use super::{
    load_config, one_snapshot, open_dataplane, render_settings, write_stdout, EXIT_DIFFERENCES,
};
use crate::cli::{OutputFormat, SourceArgs, StatusArgs};
use crate::commands::dry_run;
use crate::config::Config;
use crate::diff::diff;
use crate::state::{AddressOwnership, KernelState};

/// The kernel holds no state of ours (never applied, or all of it removed).
const EXIT_NOTHING_APPLIED: u8 = 1;

#[derive(serde::Serialize)]
struct StatusReport {
    node: Option<String>,
    applied_state_id: Option<String>,
    objects: std::collections::BTreeMap<&'static str, usize>,
    drift: Vec<String>,
    /// Sysctls forwarding needs that are not as needed.
    sysctl_problems: Vec<SysctlProblem>,
}

#[derive(serde::Serialize)]
struct SysctlProblem {
    name: String,
    problem: String,
    /// Instances lose their traffic or security groups: exit 2.
    critical: bool,
}

pub async fn status(args: StatusArgs) -> Result<u8> {
    let mut config = load_config(&args.source)?;
    // `status` only looks: it never sets a sysctl.
    config.dataplane.manage_sysctls = false;
    let mut dataplane = open_dataplane(args.source.dataplane, &config, false)?
        .ok_or_else(|| anyhow!("status needs a dataplane to read"))?;
    let sysctl_problems = dataplane
        .check_sysctls()
        .into_iter()
        .filter_map(|check| {
            Some(SysctlProblem {
                problem: check.problem?,
                name: check.name,
                critical: check.critical,
            })
        })
        .collect();
    let kernel = dataplane.read().await?;
    let check = match (&kernel.state_id, config.node_id.as_deref()) {
        (Some(applied), Some(node)) if has_source(&args.source, &config) => {
            Some(check_against_view(&args.source, &config, node, applied, &kernel).await?)
        }
        (Some(_), _) => {
            eprintln!("note: drift not computed: it needs the node id and the view (--model FILE or an endpoint)");
            None
        }
        (None, _) => None,
    };
    let mut objects = kernel.object_counts();
    if let Some(ownership) = check.as_ref().and_then(|c| c.ownership.as_ref()) {
        // The kernel read returns every address of the host; the view
        // says which of them are ours.
        let ours = kernel.addresses.iter().filter(|a| ownership.owns(a));
        objects.insert("address", ours.count());
    }
    let report = StatusReport {
        node: config.node_id.clone(),
        applied_state_id: kernel.state_id.clone(),
        objects,
        drift: check.map(|c| c.drift).unwrap_or_default(),
        sysctl_problems,
    };
    let text = match args.output {
        OutputFormat::Json => serde_json::to_string(&report)? + "\n",
        OutputFormat::Text => status_text(&report),
    };
    write_stdout(&text)?;
    if report.applied_state_id.is_none() {
        // Not "in sync": nothing of ours is in the kernel at all.
        return Ok(EXIT_NOTHING_APPLIED);
    }
    let critical = report.sysctl_problems.iter().any(|p| p.critical);
    Ok(if report.drift.is_empty() && !critical {
        0
    } else {
        EXIT_DIFFERENCES
    })
}

fn has_source(source: &SourceArgs, config: &Config) -> bool {
    source.model.is_some() || !config.endpoints.is_empty()
}

/// What the current view says of the kernel.
struct ViewCheck {
    /// Objects that differ from the view, when the view is the applied
    /// one (otherwise the node is behind, not drifted).
    drift: Vec<String>,
    /// Which addresses are ours (`None` when the view cannot be rendered).
    ownership: Option<AddressOwnership>,
}

async fn check_against_view(
    source: &SourceArgs,
    config: &Config,
    node: &str,
    applied: &str,
    kernel: &KernelState,
) -> Result<ViewCheck> {
    let snapshot = one_snapshot(source, config, node).await?;
    let planned = dry_run::desired_state(&snapshot, &render_settings(config));
    if snapshot.state_id != applied {
        eprintln!(
            "note: applied {applied}, current view is {}: drift not computed",
            snapshot.state_id
        );
        return Ok(ViewCheck {
            drift: Vec::new(),
            ownership: planned.ok().map(|desired| desired.ownership),
        });
    }
    let desired = planned?;
    let drift = diff(kernel, &desired)
        .sorted()
        .iter()
        .map(|c| c.named_object())
        .collect();
    Ok(ViewCheck {
        drift,
        ownership: Some(desired.ownership),
    })
}

fn status_text(report: &StatusReport) -> String {
    let mut text = format!(
        "node: {}\napplied state: {}\n",
        report.node.as_deref().unwrap_or("(not configured)"),
        report.applied_state_id.as_deref().unwrap_or("none")
    );
    for (kind, n) in &report.objects {
        text.push_str(&format!("  {kind}: {n}\n"));
    }
    for sysctl in &report.sysctl_problems {
        text.push_str(&format!("sysctl {} {}\n", sysctl.name, sysctl.problem));
    }
    if report.applied_state_id.is_none() {
        text.push_str("nothing applied\n");
    } else if report.drift.is_empty() {
        text.push_str("in sync\n");
    } else {
        text.push_str(&format!("drift: {} objects\n", report.drift.len()));
        for object in &report.drift {
            text.push_str(&format!("  {object}\n"));
        }
    }
    text
}
