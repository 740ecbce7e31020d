//! `edgenetd apply`: one view from a model file, applied once.

use anyhow::{anyhow, bail, Result};

use super::{load_config, open_dataplane, render_settings, write_stdout};
use crate::cli::ApplyArgs;
use crate::reconcile::apply_once;
use crate::source::snapshot_from_model_file;

pub async fn apply(args: ApplyArgs) -> Result<u8> {
    let Some(model) = args.source.model.as_deref() else {
        bail!("apply needs --model FILE");
    };
    let config = load_config(&args.source)?;
    let node = config.require_node()?.to_string();
    let snapshot = snapshot_from_model_file(model, &node)?;
    if snapshot.view.is_none() {
        bail!(
            "the view of {node} in {} is unusable: {}",
            model.display(),
            snapshot.left_out.join("; ")
        );
    }
    let mut dataplane = open_dataplane(args.source.dataplane, &config, false)?
        .ok_or_else(|| anyhow!("--dataplane none cannot apply"))?;
    let text = apply_once(dataplane.as_mut(), &snapshot, &render_settings(&config)).await?;
    for left_out in &snapshot.left_out {
        tracing::warn!("left out: {left_out}");
    }
    write_stdout(&text)?;
    Ok(0)
}
