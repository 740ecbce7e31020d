//! The JSON form of a change set (docs/cli.md): one document, one change a
//! line, so that it reads (and tests) like the text form.

use std::fmt::Write as _;

use serde::Serialize;

use super::{ChangeSet, Op};

#[derive(Serialize)]
struct JsonChange {
    op: Op,
    kind: &'static str,
    object: String,
    detail: String,
}

#[derive(Serialize)]
struct JsonHeader<'a> {
    node: &'a str,
    from: Option<&'a str>,
    to: &'a str,
}

impl ChangeSet<'_> {
    /// CLI.md's JSON diff: one JSON document, one change a line so that it
    /// reads (and tests) like the text form.
    pub fn render_json(&self, node: &str, from_id: Option<&str>, to_id: &str) -> String {
        let header = serde_json::to_string(&JsonHeader {
            node,
            from: from_id,
            to: to_id,
        })
        .expect("plain strings serialise");
        // `{"node":..,"to":..}` → `{"node":..,"to":..,"changes":[`
        let mut text = header[..header.len() - 1].to_string();
        text.push_str(",\"changes\":[");
        let sorted = self.sorted();
        for (index, change) in sorted.iter().enumerate() {
            let json = serde_json::to_string(&JsonChange {
                op: change.op(),
                kind: change.kind(),
                object: change.object(),
                detail: change.detail(),
            })
            .expect("plain strings serialise");
            let comma = if index + 1 < sorted.len() { "," } else { "" };
            let _ = write!(text, "\n{json}{comma}");
        }
        if !sorted.is_empty() {
            text.push('\n');
        }
        text.push_str("]}\n");
        text
    }
}
