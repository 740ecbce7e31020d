//! Long-term keys from an AWS shared-credentials file (docs/cli.md "Node credentials file").

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{AuthError, CredentialProvider};
use crate::credentials::{Credentials, Secret};
use crate::files::read_private_file;

/// Reads `aws_access_key_id`, `aws_secret_access_key` and the optional
/// `aws_session_token` of one profile. The file is read on every fetch, so a
/// rotated key is picked up; it is refused unless mode 0600 or stricter and
/// owned by the current user.
#[derive(Debug, Clone)]
pub struct StaticFileProvider {
    path: PathBuf,
    profile: String,
}

impl StaticFileProvider {
    pub fn new(path: impl Into<PathBuf>, profile: impl Into<String>) -> Self {
        StaticFileProvider {
            path: path.into(),
            profile: profile.into(),
        }
    }

    /// Reads the file now (also usable outside async code).
    pub fn load(&self) -> Result<Credentials, AuthError> {
        let bytes = read_private_file(&self.path)?;
        let text = String::from_utf8(bytes).map_err(|_| self.format("not UTF-8"))?;
        parse_profile(&text, &self.profile).map_err(|reason| self.format(&reason))
    }

    fn format(&self, reason: &str) -> AuthError {
        AuthError::Format {
            path: self.path.display().to_string(),
            reason: reason.to_owned(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl CredentialProvider for StaticFileProvider {
    async fn fetch(&self) -> Result<Credentials, AuthError> {
        self.load()
    }
}

/// Parses the INI text and picks `profile`. Errors never quote values.
fn parse_profile(text: &str, profile: &str) -> Result<Credentials, String> {
    let mut in_profile = false;
    let mut found = false;
    let (mut akid, mut secret, mut token) = (None, None, None);
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            found |= in_profile;
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected key = value", n + 1))?;
        if !in_profile {
            continue;
        }
        let v = v.trim().to_owned();
        match k.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => akid = Some(v),
            "aws_secret_access_key" => secret = Some(v),
            "aws_session_token" => token = Some(v),
            _ => {}
        }
    }
    if !found {
        return Err(format!("profile [{profile}] not found"));
    }
    let akid = akid.filter(|s| !s.is_empty());
    let akid = akid.ok_or_else(|| format!("profile [{profile}] has no aws_access_key_id"))?;
    let secret = secret.filter(|s| !s.is_empty());
    let secret =
        secret.ok_or_else(|| format!("profile [{profile}] has no aws_secret_access_key"))?;
    Ok(Credentials {
        access_key_id: akid,
        secret_access_key: Secret::new(secret),
        session_token: token.filter(|t| !t.is_empty()).map(Secret::new),
        expiration: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const FILE: &str = "# comment\n[default]\naws_access_key_id = AKIDNC1EXAMPLE0001\naws_secret_access_key = s3cr3t/+=\n\n[other]\naws_access_key_id=AKIDOTHER\naws_secret_access_key=x\naws_session_token = tok\n";

    #[test]
    fn parses_profiles() {
        let c = parse_profile(FILE, "default").unwrap();
        assert_eq!(c.access_key_id, "AKIDNC1EXAMPLE0001");
        assert_eq!(c.secret_access_key.expose(), "s3cr3t/+=");
        assert!(c.session_token.is_none());
        let c = parse_profile(FILE, "other").unwrap();
        assert_eq!(c.session_token.unwrap().expose(), "tok");
        assert!(parse_profile(FILE, "missing")
            .unwrap_err()
            .contains("not found"));
        let err = parse_profile("[default]\naws_access_key_id=A\n", "default").unwrap_err();
        assert!(err.contains("aws_secret_access_key"));
    }

    #[tokio::test]
    async fn refuses_loose_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node-credentials");
        std::fs::write(&path, FILE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let p = StaticFileProvider::new(&path, "default");
        let msg = p.fetch().await.unwrap_err().to_string();
        assert!(
            msg.contains("0640") && msg.contains(path.to_str().unwrap()),
            "{msg}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(p.fetch().await.unwrap().access_key_id, "AKIDNC1EXAMPLE0001");
    }
}
