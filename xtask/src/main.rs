//! `cargo run -p edgenet-xtask -- man|completions DIR`: generates man pages
//! and shell completions from the binaries' own clap definitions, so the
//! documentation cannot drift from the flags.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(task), Some(dir)) = (args.next(), args.next()) else {
        bail!("usage: xtask man|completions DIR");
    };
    let dir = PathBuf::from(dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for command in commands() {
        match task.as_str() {
            "man" => write_man_pages(&command, &dir)?,
            "completions" => write_completions(command, &dir)?,
            other => bail!("unknown task {other:?}: expected man or completions"),
        }
    }
    Ok(())
}

fn commands() -> [clap::Command; 2] {
    [
        edgenet_agent::cli::Cli::command(),
        edgenet_server::cli::Cli::command(),
    ]
}

/// One page for the binary and one per subcommand (`edgenetd-run.8`), as
/// git and cargo do, in section 8: these are system daemons.
fn write_man_pages(command: &clap::Command, dir: &Path) -> Result<()> {
    let name = command.get_name().to_string();
    write_man_page(command.clone().name(name.clone()), &name, dir)?;
    for subcommand in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let page = format!("{name}-{}", subcommand.get_name());
        write_man_page(subcommand.clone().name(page.clone()), &page, dir)?;
    }
    Ok(())
}

fn write_man_page(command: clap::Command, page: &str, dir: &Path) -> Result<()> {
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .section("8")
        .render(&mut out)?;
    let path = dir.join(format!("{page}.8"));
    fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
}

fn write_completions(mut command: clap::Command, dir: &Path) -> Result<()> {
    let name = command.get_name().to_string();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command, &name, dir)
            .with_context(|| format!("{shell} completions for {name}"))?;
    }
    Ok(())
}
