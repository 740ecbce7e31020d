//! `edgenetd gen-model`: a synthetic cloud model, for tests and benchmarks.

use anyhow::Result;

use super::write_stdout;
use crate::cli::GenModelArgs;

pub fn gen_model(args: GenModelArgs) -> Result<u8> {
    use edgenet_model::synthetic::{generate, Shape};
    let model = generate(Shape {
        nodes: args.nodes,
        instances: args.instances,
        groups: args.groups,
        seed: args.seed,
    });
    let mut text = serde_json::to_string_pretty(&model)?;
    text.push('\n');
    write_stdout(&text)?;
    Ok(0)
}
