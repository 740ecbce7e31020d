//! The server's key material: the long-term keys file (`--credentials`) and
//! the token sealing key (`--token-key`).

use std::collections::HashMap;
use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::Deserialize;

use crate::credentials::Secret;
use crate::files::{read_private_file, FileError};

/// Why key material could not be loaded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeysError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// One long-term key of the server's credentials file.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub access_key_id: String,
    #[serde(deserialize_with = "secret_from_string")]
    pub secret_access_key: Secret,
    /// Least privilege: the only node this key (and what is assumed from it) may act as.
    #[serde(default)]
    pub node: Option<String>,
    /// Role ARNs this key may assume.
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub admin: bool,
}

fn secret_from_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    String::deserialize(d).map(Secret::new)
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyEntry")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("node", &self.node)
            .field("roles", &self.roles)
            .field("admin", &self.admin)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

/// The long-term keys, by access key id.
#[derive(Debug, Clone, Default)]
pub struct KeyStore {
    keys: HashMap<String, KeyEntry>,
}

impl KeyStore {
    /// Loads the TOML credentials file (docs/cli.md), refused unless mode 0600 or
    /// stricter and owned by the current user.
    pub fn load(path: &Path) -> Result<Self, KeysError> {
        let bytes = read_private_file(path)?;
        let text = String::from_utf8(bytes).map_err(|_| invalid(path, "not UTF-8"))?;
        parse(&text).map_err(|reason| invalid(path, &reason))
    }

    /// Parses the TOML text (errors name the source as `<credentials>`).
    pub fn from_toml(text: &str) -> Result<Self, KeysError> {
        parse(text).map_err(|reason| invalid(Path::new("<credentials>"), &reason))
    }

    /// Builds a store; ids must be unique, non-empty and not look temporary.
    pub fn from_entries(entries: Vec<KeyEntry>) -> Result<Self, KeysError> {
        check_entries(entries).map_err(|reason| invalid(Path::new("<credentials>"), &reason))
    }

    /// The key with this id.
    pub fn get(&self, access_key_id: &str) -> Option<&KeyEntry> {
        self.keys.get(access_key_id)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Parses the TOML text. Errors never quote secret values.
fn parse(text: &str) -> Result<KeyStore, String> {
    let file: KeysFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    check_entries(file.keys)
}

/// Ids must be unique, non-empty and not look temporary.
fn check_entries(entries: Vec<KeyEntry>) -> Result<KeyStore, String> {
    let mut keys = HashMap::new();
    for k in entries {
        if k.access_key_id.is_empty() || k.secret_access_key.expose().is_empty() {
            return Err("a key has an empty access_key_id or secret_access_key".into());
        }
        if k.access_key_id.starts_with("ASIA") {
            return Err(format!(
                "{}: ASIA… ids are reserved for temporary credentials",
                k.access_key_id
            ));
        }
        if k.node.as_deref() == Some("") {
            return Err(format!("{}: empty node", k.access_key_id));
        }
        let id = k.access_key_id.clone();
        if keys.insert(id.clone(), k).is_some() {
            return Err(format!("access_key_id {id} appears twice"));
        }
    }
    Ok(KeyStore { keys })
}

fn invalid(path: &Path, reason: &str) -> KeysError {
    KeysError::Invalid {
        path: path.display().to_string(),
        reason: reason.to_owned(),
    }
}

/// The 32-byte key that seals session tokens. Replicas that share it accept
/// each other's tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey([u8; 32]);

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(** redacted **)")
    }
}

impl TokenKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        TokenKey(bytes)
    }

    /// A fresh random key (for a single server without `--token-key`).
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        TokenKey(k)
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Loads `path`, or creates it (mode 0600, 32 random bytes) when absent.
    /// An existing file is refused when group or others may read or write it,
    /// or when it is not exactly 32 bytes.
    pub fn load_or_create(path: &Path) -> Result<Self, KeysError> {
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path),
            Err(e) => Err(FileError::io(path, &e).into()),
            Ok(_) => Self::load(path),
        }
    }

    /// Loads an existing key file.
    pub fn load(path: &Path) -> Result<Self, KeysError> {
        let meta = std::fs::metadata(path).map_err(|e| FileError::io(path, &e))?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o066 != 0 {
            return Err(FileError::Mode {
                path: path.to_owned(),
                mode,
            }
            .into());
        }
        let bytes = std::fs::read(path).map_err(|e| FileError::io(path, &e))?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            invalid(
                path,
                &format!("token key must be 32 bytes, found {}", b.len()),
            )
        })?;
        Ok(TokenKey(key))
    }

    /// Writes a new key without ever exposing a partial file: written to a
    /// temporary name, then hard-linked into place (which fails if another
    /// replica won the race, in which case its key is used).
    fn create(path: &Path) -> Result<Self, KeysError> {
        let key = Self::generate();
        let tmp = temp_name(path);
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&key.0)?;
            f.sync_all()
        };
        let linked = write().and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                tracing::info!(path = %path.display(), "created token key");
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(FileError::io(path, &e).into()),
        }
    }
}

fn temp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", rand::random::<u32>()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const TOML: &str = r#"
[[keys]]
access_key_id = "AKIDNC1EXAMPLE0001"
secret_access_key = "nc1-secret"
node = "nc-1"
roles = ["arn:aws:iam::000000000000:role/edgenet-node"]
[[keys]]
access_key_id = "AKIDADMINEXAMPLE01"
secret_access_key = "admin-secret"
admin = true
roles = ["arn:aws:iam::000000000000:role/edgenet-admin"]
"#;

    #[test]
    fn parses_cli_md_example() {
        let ks = KeyStore::from_toml(TOML).unwrap();
        assert_eq!(ks.len(), 2);
        let nc1 = ks.get("AKIDNC1EXAMPLE0001").unwrap();
        assert_eq!(nc1.node.as_deref(), Some("nc-1"));
        assert!(!nc1.admin);
        assert!(ks.get("AKIDADMINEXAMPLE01").unwrap().admin);
        assert!(!format!("{ks:?}").contains("nc1-secret"));
    }

    #[test]
    fn refuses_bad_files() {
        let dup = format!(
            "{TOML}\n[[keys]]\naccess_key_id = \"AKIDNC1EXAMPLE0001\"\nsecret_access_key = \"x\"\n"
        );
        assert!(KeyStore::from_toml(&dup)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let unknown = "[[keys]]\naccess_key_id = \"A\"\nsecret_access_key = \"x\"\nrole = []\n";
        assert!(KeyStore::from_toml(unknown).is_err());
        let asia = "[[keys]]\naccess_key_id = \"ASIAX\"\nsecret_access_key = \"x\"\n";
        assert!(KeyStore::from_toml(asia).is_err());
    }

    #[test]
    fn credentials_file_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("creds.toml");
        std::fs::write(&path, TOML).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let msg = KeyStore::load(&path).unwrap_err().to_string();
        assert!(msg.contains("0644") && msg.contains("creds.toml"), "{msg}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(KeyStore::load(&path).unwrap().len(), 2);
    }

    #[test]
    fn token_key_create_load_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        let k1 = TokenKey::load_or_create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        assert_eq!(TokenKey::load_or_create(&path).unwrap(), k1);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
        for bad in [0o640, 0o620, 0o604, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
            assert!(TokenKey::load_or_create(&path).is_err(), "{bad:o}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(TokenKey::load(&path).is_ok());
        let short = dir.path().join("short.key");
        std::fs::write(&short, [0u8; 31]).unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(TokenKey::load(&short)
            .unwrap_err()
            .to_string()
            .contains("32 bytes"));
        assert!(!format!("{k1:?}").contains(&format!("{:?}", k1.0)));
    }
}
