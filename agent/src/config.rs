//! The agent's TOML configuration (docs/cli.md), merged with command-line flags.
//!
//! Precedence: flags (and the `EDGENET_*` variables clap maps onto the
//! non-secret flags) over the file over the defaults. Secrets only ever come
//! from files: the configuration names the credentials file, never a key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the configuration is read from when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/edgenet/edgenetd.toml";
pub const DEFAULT_REGION: &str = "eucalyptus";
pub use edgenet_model::protocol::DEFAULT_WAIT_SECONDS;

/// Why the configuration cannot be used. Each renders as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The file as written. Unknown keys are refused so a typo is not silently
/// ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<String>,
    endpoints: Option<Vec<String>>,
    region: Option<String>,
    wait_seconds: Option<u32>,
    credentials: Option<CredentialsConfig>,
    #[serde(default)]
    tls: TlsConfig,
    #[serde(default)]
    dataplane: DataplaneConfig,
    #[serde(default)]
    metrics: MetricsConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialSource {
    AssumeRole,
    Static,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    pub source: CredentialSource,
    pub long_term_file: PathBuf,
    #[serde(default = "default_profile")]
    pub profile: String,
    pub role_arn: Option<String>,
    /// Defaults to the first endpoint (edgenet-server serves STS too).
    pub sts_endpoint: Option<String>,
    #[serde(default = "default_duration")]
    pub duration_seconds: u32,
}

fn default_profile() -> String {
    "default".into()
}
fn default_duration() -> u32 {
    3600
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    pub route_protocol: u8,
    pub resync_seconds: u64,
    pub manage_sysctls: bool,
    /// Write small element and instance-chain changes through the agent's
    /// own nfnetlink socket rather than `nft` (docs/design.md, "The nfnetlink fast path").
    pub nft_fast_path: bool,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            route_protocol: 159,
            resync_seconds: 60,
            manage_sysctls: true,
            nft_fast_path: true,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: Option<SocketAddr>,
}

/// What the flags may override.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub node_id: Option<String>,
    pub endpoints: Vec<String>,
    pub region: Option<String>,
    pub wait_seconds: Option<u32>,
    pub metrics_listen: Option<SocketAddr>,
}

/// The configuration in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from, if any (SIGHUP re-reads it).
    pub path: Option<PathBuf>,
    pub node_id: Option<String>,
    pub endpoints: Vec<String>,
    pub region: String,
    pub wait_seconds: u32,
    pub credentials: Option<CredentialsConfig>,
    pub tls: TlsConfig,
    pub dataplane: DataplaneConfig,
    pub metrics: MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config::from_file(None, FileConfig::default())
    }
}

impl Config {
    /// Reads `path` (or the default path when it exists) and applies the
    /// overrides. An explicit path must exist; the default one may not.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (path, file) = match path {
            Some(path) => (Some(path.to_path_buf()), read_file(path)?),
            None => {
                let default = Path::new(DEFAULT_CONFIG_PATH);
                if default.exists() {
                    (Some(default.to_path_buf()), read_file(default)?)
                } else {
                    (None, FileConfig::default())
                }
            }
        };
        let mut config = Config::from_file(path, file);
        config.apply(overrides);
        config.check()?;
        Ok(config)
    }

    /// Parses a configuration from TOML text (no overrides).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let file = parse_toml(Path::new("<text>"), text)?;
        let config = Config::from_file(None, file);
        config.check()?;
        Ok(config)
    }

    fn from_file(path: Option<PathBuf>, file: FileConfig) -> Config {
        Config {
            path,
            node_id: file.node_id,
            endpoints: file.endpoints.unwrap_or_default(),
            region: file.region.unwrap_or_else(|| DEFAULT_REGION.into()),
            wait_seconds: file.wait_seconds.unwrap_or(DEFAULT_WAIT_SECONDS),
            credentials: file.credentials,
            tls: file.tls,
            dataplane: file.dataplane,
            metrics: file.metrics,
        }
    }

    fn apply(&mut self, overrides: &Overrides) {
        if let Some(node) = &overrides.node_id {
            self.node_id = Some(node.clone());
        }
        if !overrides.endpoints.is_empty() {
            self.endpoints = overrides.endpoints.clone();
        }
        if let Some(region) = &overrides.region {
            self.region = region.clone();
        }
        if let Some(wait) = overrides.wait_seconds {
            self.wait_seconds = wait;
        }
        if let Some(listen) = overrides.metrics_listen {
            self.metrics.listen = Some(listen);
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        if let Some(node) = &self.node_id {
            if !valid_node_id(node) {
                return Err(ConfigError::Invalid(format!(
                    "node_id {node:?} is not a valid id ([A-Za-z0-9._-]{{1,64}})"
                )));
            }
        }
        for endpoint in &self.endpoints {
            check_endpoint(endpoint)?;
        }
        if self.dataplane.resync_seconds == 0 {
            return Err(ConfigError::Invalid(
                "dataplane.resync_seconds must be at least 1".into(),
            ));
        }
        if let Some(creds) = &self.credentials {
            if creds.source == CredentialSource::AssumeRole && creds.role_arn.is_none() {
                return Err(ConfigError::Invalid(
                    "credentials.role_arn is required with source = \"assume-role\"".into(),
                ));
            }
            if let Some(sts) = &creds.sts_endpoint {
                check_endpoint(sts)?;
            }
        }
        Ok(())
    }

    /// The node id, which every command but `status` and `gen-model` needs.
    pub fn require_node(&self) -> Result<&str, ConfigError> {
        self.node_id.as_deref().ok_or_else(|| {
            ConfigError::Invalid("no node id: give --node ID or node_id in the config file".into())
        })
    }

    /// How long the server may hold a poll.
    pub fn wait(&self) -> Duration {
        Duration::from_secs(u64::from(self.wait_seconds))
    }

    pub fn resync_period(&self) -> Duration {
        Duration::from_secs(self.dataplane.resync_seconds)
    }

    /// The STS endpoint: the configured one, else the first describe endpoint.
    pub fn sts_endpoint(&self) -> Option<&str> {
        self.credentials
            .as_ref()
            .and_then(|c| c.sts_endpoint.as_deref())
            .or_else(|| self.endpoints.first().map(String::as_str))
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(path, &text)
}

fn parse_toml(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        // toml's messages span several lines (with a caret); keep one.
        message: one_line(&e.to_string()),
    })
}

/// Folds a multi-line message into one line for stderr.
pub fn one_line(text: &str) -> String {
    text.split('\n')
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.chars().all(|c| "|^ 0123456789".contains(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn check_endpoint(endpoint: &str) -> Result<(), ConfigError> {
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| ConfigError::Invalid(format!("endpoint {endpoint:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ConfigError::Invalid(format!(
            "endpoint {endpoint:?}: needs http:// or https:// and a host"
        )));
    }
    Ok(())
}

/// docs/model.md ids: `[A-Za-z0-9._-]{1,64}`.
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
node_id = "nc-1"
endpoints = ["https://clc.example.internal:8773/"]
region = "eucalyptus"
wait_seconds = 30

[credentials]
source = "assume-role"
long_term_file = "/etc/edgenet/node-credentials"
profile = "default"
role_arn = "arn:aws:iam::000000000000:role/edgenet-node"
sts_endpoint = "https://clc.example.internal:8773/"
duration_seconds = 3600

[tls]
ca_file = "/etc/edgenet/ca.pem"

[dataplane]
route_protocol = 159
resync_seconds = 60
manage_sysctls = true

[metrics]
listen = "127.0.0.1:9469"
"#;

    #[test]
    fn parses_the_cli_md_example() {
        let config = Config::from_toml(FULL).unwrap();
        assert_eq!(config.node_id.as_deref(), Some("nc-1"));
        assert_eq!(config.endpoints.len(), 1);
        let creds = config.credentials.unwrap();
        assert_eq!(creds.source, CredentialSource::AssumeRole);
        assert_eq!(
            config.tls.ca_file.unwrap(),
            PathBuf::from("/etc/edgenet/ca.pem")
        );
        assert_eq!(config.metrics.listen.unwrap().port(), 9469);
        assert_eq!(config.dataplane, DataplaneConfig::default());
    }

    #[test]
    fn parses_the_packaged_config() {
        let packaged = include_str!("../../systemd/edgenetd.toml");
        let config = Config::from_toml(packaged).unwrap();
        assert_eq!(config.node_id.as_deref(), Some("nc-1"));
        assert!(!config.dataplane.manage_sysctls);
        assert!(config.dataplane.nft_fast_path);
        let off = Config::from_toml("[dataplane]\nnft_fast_path = false").unwrap();
        assert!(!off.dataplane.nft_fast_path);
    }

    #[test]
    fn defaults_when_empty() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.region, "eucalyptus");
        assert_eq!(config.wait_seconds, 30);
        assert!(config.credentials.is_none());
        assert!(config.metrics.listen.is_none());
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edgenetd.toml");
        std::fs::write(&path, FULL).unwrap();
        let overrides = Overrides {
            node_id: Some("nc-2".into()),
            endpoints: vec!["http://127.0.0.1:1/".into(), "http://127.0.0.1:2/".into()],
            ..Overrides::default()
        };
        let config = Config::load(Some(&path), &overrides).unwrap();
        assert_eq!(config.node_id.as_deref(), Some("nc-2"));
        assert_eq!(config.endpoints.len(), 2);
        assert_eq!(config.region, "eucalyptus");
    }

    #[test]
    fn refuses_typos_bad_values_and_missing_files_in_one_line() {
        for bad in [
            "node_idd = \"nc-1\"",
            "wait_seconds = \"thirty\"",
            "endpoints = [\"ftp://x/\"]",
            "node_id = \"no spaces\"",
            "[credentials]\nsource = \"assume-role\"\nlong_term_file = \"/x\"",
            "[dataplane]\nroute_protocol = 300",
        ] {
            let err = Config::from_toml(bad).unwrap_err().to_string();
            assert!(!err.contains('\n'), "{bad}: {err}");
        }
        let err = Config::load(
            Some(Path::new("/nonexistent/edgenetd.toml")),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read config /nonexistent"),
            "{err}"
        );
    }
}
