//! Benchmark support only: the desired ruleset as nft text, the baseline
//! the dataplane benchmark feeds to `nft -f`. The agent never writes text.

use crate::state::*;

/// The same ruleset as nft text, for `nft -f` (the benchmark's baseline).
pub fn ruleset_text(state: &KernelState) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    for (id, table) in &state.tables {
        let _ = writeln!(text, "table {id} {{");
        for (name, set) in &table.sets {
            let kind = if set.is_map() { "map" } else { "set" };
            let value = match set.value {
                SetValue::None => String::new(),
                SetValue::Verdict => " : verdict".to_string(),
                SetValue::Data(data) => format!(" : {data}"),
            };
            let _ = writeln!(text, "  {kind} {name} {{ type {}{value};", set.key_type);
            if set.interval {
                let _ = writeln!(text, "    flags interval;");
            }
            if !set.elements.is_empty() {
                let elems: Vec<String> = set
                    .elements
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => format!("{} : {v}", quote_ifname(set, k)),
                        None => quote_ifname(set, k),
                    })
                    .collect();
                let _ = writeln!(text, "    elements = {{ {} }}", elems.join(", "));
            }
            let _ = writeln!(text, "  }}");
        }
        for (name, chain) in &table.chains {
            let _ = writeln!(text, "  chain {name} {{");
            if let Some(base) = &chain.base {
                let _ = writeln!(
                    text,
                    "    type {} hook {} priority {}; policy accept;",
                    base.chain_type.as_str(),
                    base.hook.as_str(),
                    base.priority
                );
            }
            for rule in &chain.rules {
                let _ = writeln!(text, "    {} comment \"{}\"", rule.text(), rule.comment());
            }
            let _ = writeln!(text, "  }}");
        }
        let _ = writeln!(text, "}}");
    }
    text
}

/// Interface names are quoted in nft text; in a concatenation only the
/// ifname part is.
fn quote_ifname(set: &NftSet, key: &str) -> String {
    if !set.key_type.starts_with("ifname") {
        return key.to_string();
    }
    match key.split_once(" . ") {
        Some((ifname, rest)) => format!("\"{ifname}\" . {rest}"),
        None => format!("\"{key}\""),
    }
}
