//! `edgenetd`: the binary edge. Parses the command line, sets up logging,
//! and runs the command (`commands/`), turning every error into one line on
//! stderr with the exit codes of docs/cli.md.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use edgenet_agent::cli::Cli;
use edgenet_agent::commands::dispatch;
use edgenet_agent::config::one_line;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    init_logging();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            // Our errors carry their cause in their message already.
            eprintln!("edgenetd: {}", one_line(&error.to_string()));
            ExitCode::from(1)
        }
    }
}

/// `--help`/`--version` print and succeed; anything else is a bad flag:
/// one line, exit 1 (CLI.md), not clap's usual 2.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        };
    }
    let text = error.render().to_string();
    let first = text
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("error: invalid command line");
    eprintln!(
        "edgenetd: {} (see edgenetd --help)",
        first.trim_start_matches("error: ")
    );
    ExitCode::from(1)
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("EDGENET_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
