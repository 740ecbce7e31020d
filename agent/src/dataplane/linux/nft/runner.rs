//! Runs `nft`: lists our tables (parsed as the output arrives) and feeds it
//! a transaction on its stdin.

use std::collections::BTreeMap;
use std::process::Stdio;

use tokio::process::Command;

use super::listing::parse_table;
use super::transaction::{write_transaction, Transaction};
use crate::dataplane::DataplaneError;
use crate::state::{Family, NftTable, TableId, TABLE_NAME};

/// How to run `nft`: the program and arguments put before ours (tests and
/// odd setups may use e.g. `ip netns exec NS nft`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRunner {
    pub program: String,
    pub prefix_args: Vec<String>,
}

impl Default for NftRunner {
    fn default() -> Self {
        NftRunner {
            program: "nft".to_string(),
            prefix_args: Vec::new(),
        }
    }
}

impl NftRunner {
    async fn run(
        &self,
        args: &[&str],
        stdin: Option<&Transaction<'_>>,
        purpose: &'static str,
    ) -> Result<std::process::Output, DataplaneError> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.prefix_args)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawn_error = |source| self.spawn_error(purpose, source);
        let mut child = command.spawn().map_err(spawn_error)?;
        if let (Some(transaction), Some(pipe)) = (stdin, child.stdin.take()) {
            write_transaction(pipe, transaction)
                .await
                .map_err(spawn_error)?;
        }
        child.wait_with_output().await.map_err(spawn_error)
    }

    /// Our two tables as they are in the kernel, and the state id recorded
    /// in `inet edgenet`.
    pub async fn read(
        &self,
    ) -> Result<(BTreeMap<TableId, NftTable>, Option<String>), DataplaneError> {
        let mut tables = BTreeMap::new();
        let mut state_id = None;
        for family in [Family::Inet, Family::Bridge] {
            let Some((table, recorded)) = self.list_table(family).await? else {
                continue; // the table does not exist (yet, or any more)
            };
            if family == Family::Inet {
                state_id = recorded;
            }
            tables.insert(TableId::ours(family), table);
        }
        Ok((tables, state_id))
    }

    /// One of our tables, parsed from `nft -j list` as its output arrives:
    /// 10,000 instances list as ~9 MiB of JSON, which held whole (in a
    /// buffer grown by doubling) stayed in the allocator after each resync.
    /// serde_json reads a `Read`, so this runs on a thread of its own, made
    /// by the calling thread (same network namespace) for this one listing.
    async fn list_table(
        &self,
        family: Family,
    ) -> Result<Option<(NftTable, Option<String>)>, DataplaneError> {
        let runner = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("nft-list".into())
            .spawn(move || {
                let _ = tx.send(runner.list_table_blocking(family));
            })
            .map_err(|source| self.spawn_error("listing our tables", source))?;
        rx.await.map_err(|_| DataplaneError::NftParse {
            context: format!("table {family} {TABLE_NAME}"),
            detail: "the listing thread ended without an answer".into(),
        })?
    }

    fn list_table_blocking(
        &self,
        family: Family,
    ) -> Result<Option<(NftTable, Option<String>)>, DataplaneError> {
        let purpose = "listing our tables";
        let id = TableId::ours(family);
        let mut child = std::process::Command::new(&self.program)
            .args(&self.prefix_args)
            .args(["-j", "list", "table", family.as_str(), TABLE_NAME])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error(purpose, source))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let parsed = parse_table(std::io::BufReader::with_capacity(64 * 1024, stdout), &id);
        // nft writes little to stderr (one error), so reading it after
        // stdout cannot block nft.
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        let status = child
            .wait()
            .map_err(|source| self.spawn_error(purpose, source))?;
        if status.success() {
            return parsed.map(Some);
        }
        let stderr = stderr.trim().to_string();
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        Err(classify_failure(stderr, |stderr| DataplaneError::NftList {
            table: id.to_string(),
            stderr,
        }))
    }

    fn spawn_error(&self, purpose: &'static str, source: std::io::Error) -> DataplaneError {
        DataplaneError::NftSpawn {
            program: self.program.clone(),
            purpose,
            source,
        }
    }

    /// Run one transaction. `Ok(0)` when there was nothing to write.
    pub async fn apply(&self, transaction: &Transaction<'_>) -> Result<usize, DataplaneError> {
        let commands = transaction.commands();
        if commands == 0 {
            return Ok(0);
        }
        let output = self
            .run(
                &["-j", "-f", "-"],
                Some(transaction),
                "applying a transaction",
            )
            .await?;
        if output.status.success() {
            return Ok(commands);
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        Err(classify_failure(stderr, |stderr| {
            DataplaneError::NftTransaction {
                commands,
                stderr: truncate(&stderr, 2000),
            }
        }))
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn classify_failure(
    stderr: String,
    otherwise: impl FnOnce(String) -> DataplaneError,
) -> DataplaneError {
    if stderr.contains("Operation not permitted") {
        DataplaneError::PermissionDenied {
            operation: "nft (nftables)".into(),
        }
    } else {
        otherwise(stderr)
    }
}
