//! Credential values. Secrets are wrapped so that they never reach logs.

use std::fmt;
use std::time::{Duration, SystemTime};

/// A secret string (secret access key, session token). Its `Debug` output is
/// redacted and it has no `Display`, so it cannot leak through `{:?}`,
/// `tracing` fields or error messages by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself: call only where it is needed (signing, sealing).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(** redacted **)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// AWS-style credentials: long-term (no token, no expiry) or temporary.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    pub expiration: Option<SystemTime>,
}

impl Credentials {
    /// Long-term credentials: no token, no expiry.
    pub fn long_term(access_key_id: impl Into<String>, secret: impl Into<Secret>) -> Self {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret.into(),
            session_token: None,
            expiration: None,
        }
    }

    /// Temporary credentials, as STS hands them out.
    pub fn temporary(
        access_key_id: impl Into<String>,
        secret: impl Into<Secret>,
        token: impl Into<Secret>,
        expiration: SystemTime,
    ) -> Self {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret.into(),
            session_token: Some(token.into()),
            expiration: Some(expiration),
        }
    }

    /// Time left before expiry at `now`; `None` for credentials that never expire.
    /// Zero when already expired.
    pub fn remaining(&self, now: SystemTime) -> Option<Duration> {
        self.expiration
            .map(|exp| exp.duration_since(now).unwrap_or(Duration::ZERO))
    }

    /// True when the credentials have an expiry that is at or before `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        matches!(self.expiration, Some(exp) if exp <= now)
    }

    /// Same identity (key id and token), used to tell whether credentials that
    /// an endpoint rejected are still the cached ones.
    pub fn same_identity(&self, other: &Credentials) -> bool {
        self.access_key_id == other.access_key_id && self.session_token == other.session_token
    }

    /// Converts to the `aws-credential-types` form used by `aws-sigv4`.
    #[cfg(feature = "client")]
    pub(crate) fn to_aws(&self) -> aws_credential_types::Credentials {
        aws_credential_types::Credentials::new(
            self.access_key_id.clone(),
            self.secret_access_key.expose().to_owned(),
            self.session_token.as_ref().map(|t| t.expose().to_owned()),
            self.expiration,
            "edgenet",
        )
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("session_token", &self.session_token)
            .field("expiration", &self.expiration)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credentials::temporary(
            "ASIAEXAMPLE",
            "very-secret-key",
            "very-secret-token",
            SystemTime::UNIX_EPOCH,
        );
        let s = format!("{c:?} {:?} {:#?}", c.secret_access_key, c);
        assert!(s.contains("ASIAEXAMPLE"));
        assert!(!s.contains("very-secret-key"), "{s}");
        assert!(!s.contains("very-secret-token"), "{s}");
    }

    #[test]
    fn expiry_arithmetic() {
        let now = SystemTime::now();
        let c = Credentials::temporary("a", "b", "c", now + Duration::from_secs(10));
        assert_eq!(c.remaining(now), Some(Duration::from_secs(10)));
        assert!(!c.is_expired_at(now));
        assert!(c.is_expired_at(now + Duration::from_secs(10)));
        assert_eq!(
            c.remaining(now + Duration::from_secs(11)),
            Some(Duration::ZERO)
        );
        assert_eq!(Credentials::long_term("a", "b").remaining(now), None);
    }
}
