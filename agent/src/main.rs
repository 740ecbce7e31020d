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
    if let Err(error) = init_logging(cli.log_level.as_deref()) {
        eprintln!("edgenetd: --log-level: {error} (see edgenetd --help)");
        return ExitCode::from(1);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            // Our errors carry their cause in their message already.
            let priority = if stderr_is_the_journal() { "<3>" } else { "" };
            eprintln!("{priority}edgenetd: {}", one_line(&error.to_string()));
            ExitCode::from(1)
        }
    }
}

/// `--help`/`--version` print and succeed; anything else is a bad flag:
/// one line, exit 1 (docs/cli.md), not clap's usual 2.
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

/// `flag` (`--log-level`) must parse; the variables fall back to `info`.
fn init_logging(flag: Option<&str>) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match flag {
        Some(flag) => EnvFilter::try_new(flag).map_err(|e| e.to_string())?,
        None => std::env::var("EDGENET_LOG")
            .ok()
            .or_else(|| std::env::var("RUST_LOG").ok())
            .and_then(|f| EnvFilter::try_new(f).ok())
            .unwrap_or_else(|| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if stderr_is_the_journal() {
        // journald stamps each line itself and reads the priority from the
        // sd-daemon prefix (sd-daemon(3)).
        builder
            .with_ansi(false)
            .event_format(JournalPrefix(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_target(false),
            ))
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
    Ok(())
}

/// Whether stderr is the journal's stream: systemd sets `JOURNAL_STREAM`
/// to its `device:inode`, which a redirection would not keep
/// (systemd.exec(5)).
fn stderr_is_the_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(metadata) = std::fs::File::from(stderr).metadata() else {
        return false;
    };
    stream == format!("{}:{}", metadata.dev(), metadata.ino())
}

/// Puts the sd-daemon priority prefix (`<3>` error ... `<7>` debug) before
/// each line of the inner format.
struct JournalPrefix<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPrefix<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}
