//! `edgenetd plan`: what an apply would change, without changing it.

use anyhow::Result;

use super::{
    kernel_or_empty, load_config, one_snapshot, render_settings, write_stdout, EXIT_DIFFERENCES,
};
use crate::cli::{DataplaneKind, PlanArgs};
use crate::commands::dry_run;
use crate::diff::diff;
use crate::diff::plan::PlanHeader;
use crate::source::snapshot_from_model_file;

pub async fn plan(args: PlanArgs) -> Result<u8> {
    let config = load_config(&args.source)?;
    let node = config.require_node()?.to_string();
    let snapshot = one_snapshot(&args.source, &config, &node).await?;
    let from = match &args.from_model {
        Some(from) => Some(snapshot_from_model_file(from, &node)?),
        None => None,
    };
    let baseline = match &from {
        Some(from) => dry_run::desired_state(from, &render_settings(&config))?,
        None => kernel_or_empty(args.source.dataplane, &config).await,
    };
    let desired = dry_run::desired_state(&snapshot, &render_settings(&config))?;
    let changes = diff(&baseline, &desired);
    // Devices matter only when the plan is against this host's kernel.
    let check_devices = from.is_none() && args.source.dataplane == DataplaneKind::Kernel;
    let context = dry_run::plan_context(&snapshot, from.as_ref(), check_devices);
    let header = PlanHeader {
        node: &node,
        from: baseline.state_id.as_deref(),
        to: &snapshot.state_id,
    };
    let text = dry_run::format_diff(&changes, header, &context, args.output);
    write_stdout(&text)?;
    Ok(if changes.is_empty() {
        0
    } else {
        EXIT_DIFFERENCES
    })
}
