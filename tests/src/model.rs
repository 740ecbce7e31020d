//! The cloud model file the server watches, read and changed as JSON.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// The fixture the suite starts from.
pub fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cloud.json")
}

/// Loads the fixture.
pub fn fixture() -> Result<Value> {
    let path = fixture_path();
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

/// Writes `model` to `path` the way an operator's tool should: a temporary
/// file in the same directory renamed over the old one, so a reader never
/// sees half a file.
pub fn write_atomic(path: &Path, model: &Value) -> Result<()> {
    write_bytes_atomic(path, serde_json::to_string_pretty(model)?.as_bytes())
}

/// Like [`write_atomic`] for raw bytes (used to write invalid models).
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// One instance as the topology needs it.
#[derive(Debug, Clone)]
pub struct Instance {
    pub id: String,
    pub node: String,
    pub interface: String,
    pub mac: String,
    pub private_ip: String,
    pub public_ip: Option<String>,
    /// `private_ip/prefix` of its subnet.
    pub cidr: String,
    pub gateway: String,
}

/// The instances of `model`, with their subnet's prefix and gateway.
pub fn instances(model: &Value) -> Result<Vec<Instance>> {
    let subnets = model["subnets"].as_array().context("subnets")?;
    let mut out = Vec::new();
    for inst in model["instances"].as_array().context("instances")? {
        let field = |k: &str| -> Result<String> {
            Ok(inst[k]
                .as_str()
                .with_context(|| format!("instance {k}"))?
                .to_owned())
        };
        let subnet_id = field("subnet")?;
        let Some(subnet) = subnets.iter().find(|s| s["id"] == subnet_id.as_str()) else {
            bail!("instance {} names unknown subnet {subnet_id}", field("id")?);
        };
        let prefix = subnet["cidr"]
            .as_str()
            .and_then(|c| c.split_once('/'))
            .map(|(_, p)| p);
        let private_ip = field("private_ip")?;
        out.push(Instance {
            id: field("id")?,
            node: field("node")?,
            interface: field("interface")?,
            mac: field("mac")?,
            cidr: format!("{private_ip}/{}", prefix.context("subnet cidr")?),
            private_ip,
            public_ip: inst["public_ip"].as_str().map(str::to_owned),
            gateway: subnet["gateway"].as_str().context("gateway")?.to_owned(),
        });
    }
    Ok(out)
}

fn group_mut<'a>(model: &'a mut Value, group: &str) -> Result<&'a mut Vec<Value>> {
    model["security_groups"]
        .as_array_mut()
        .context("security_groups")?
        .iter_mut()
        .find(|g| g["id"] == group)
        .with_context(|| format!("no security group {group}"))?["ingress"]
        .as_array_mut()
        .context("ingress")
}

/// A `tcp <port> from <cidr>` ingress rule.
pub fn tcp_rule(port: u16, cidr: &str) -> Value {
    json!({"protocol": "tcp", "from_port": port, "cidr": cidr})
}

/// Appends `rule` to `group`'s ingress rules.
pub fn add_rule(model: &mut Value, group: &str, rule: Value) -> Result<()> {
    group_mut(model, group)?.push(rule);
    Ok(())
}

/// Removes every ingress rule of `group` equal to `rule`.
pub fn remove_rule(model: &mut Value, group: &str, rule: &Value) -> Result<()> {
    group_mut(model, group)?.retain(|r| r != rule);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_instances_have_prefix_and_gateway() {
        let model = fixture().unwrap();
        let all = instances(&model).unwrap();
        let web1 = all.iter().find(|i| i.id == "i-web1").unwrap();
        assert_eq!(web1.cidr, "10.1.0.11/16");
        assert_eq!(web1.gateway, "10.1.0.1");
        assert_eq!(web1.public_ip.as_deref(), Some("203.0.113.5"));
        assert!(all.iter().all(|i| i.interface.len() <= 15));
    }

    #[test]
    fn rules_are_added_and_removed() {
        let mut model = fixture().unwrap();
        let rule = tcp_rule(7777, "10.0.0.0/8");
        add_rule(&mut model, "sg-admin", rule.clone()).unwrap();
        assert_eq!(
            model["security_groups"][3]["ingress"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        remove_rule(&mut model, "sg-admin", &rule).unwrap();
        assert_eq!(
            model["security_groups"][3]["ingress"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }
}
