//! Development STS: `AssumeRole` for the keys of the server's credentials file,
//! with self-contained session tokens sealed under the token key.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};

use crate::credentials::{Credentials, Secret};
use crate::keys::{KeyStore, TokenKey};
use crate::principal::Principal;
use crate::verify::{Api, KeyResolver, ResolvedKey, SignedRequest, Verifier, VerifyError};

const TOKEN_PREFIX: &str = "EN1.";
const TOKEN_AAD: &[u8] = b"edgenet session token v1";
const NONCE_LEN: usize = 24;
const STS_NS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

/// An STS error, answered as `ErrorResponse/Error/{Type,Code,Message}`.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StsError {
    #[error("{0}")]
    InvalidClientTokenId(String),
    #[error("{0}")]
    SignatureDoesNotMatch(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    ValidationError(String),
    #[error("The security token included in the request is expired")]
    ExpiredToken,
    #[error("Request is missing Authentication Token")]
    MissingAuthenticationToken,
    #[error("{0}")]
    IncompleteSignature(String),
    #[error("{0}")]
    InvalidAction(String),
    #[error("{0}")]
    InternalError(String),
}

impl StsError {
    /// HTTP status and STS error code (docs/protocol.md "AssumeRole").
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            StsError::InvalidClientTokenId(_) => (403, "InvalidClientTokenId"),
            StsError::SignatureDoesNotMatch(_) => (403, "SignatureDoesNotMatch"),
            StsError::AccessDenied(_) => (403, "AccessDenied"),
            StsError::ValidationError(_) => (400, "ValidationError"),
            StsError::ExpiredToken => (400, "ExpiredToken"),
            StsError::MissingAuthenticationToken => (403, "MissingAuthenticationToken"),
            StsError::IncompleteSignature(_) => (400, "IncompleteSignature"),
            StsError::InvalidAction(_) => (400, "InvalidAction"),
            StsError::InternalError(_) => (500, "InternalError"),
        }
    }

    /// The STS error document.
    pub fn to_xml(&self, request_id: &str) -> String {
        let (status, code) = self.status_and_code();
        let kind = if status >= 500 { "Receiver" } else { "Sender" };
        format!(
            "<ErrorResponse xmlns=\"{STS_NS}\">\n  <Error>\n    <Type>{kind}</Type>\n    <Code>{code}</Code>\n    <Message>{}</Message>\n  </Error>\n  <RequestId>{}</RequestId>\n</ErrorResponse>\n",
            xml_escape(&self.to_string()),
            xml_escape(request_id)
        )
    }
}

impl From<VerifyError> for StsError {
    fn from(e: VerifyError) -> Self {
        let msg = e.to_string();
        match e.status_and_code(Api::Sts).1 {
            "MissingAuthenticationToken" => StsError::MissingAuthenticationToken,
            "IncompleteSignature" => StsError::IncompleteSignature(msg),
            "InvalidClientTokenId" => StsError::InvalidClientTokenId(msg),
            "ExpiredToken" => StsError::ExpiredToken,
            _ => StsError::SignatureDoesNotMatch(msg),
        }
    }
}

/// Settings of the development STS.
#[derive(Debug, Clone)]
pub struct DevStsConfig {
    /// Region in the signature scope.
    pub region: String,
    /// Shortest `DurationSeconds` accepted: 900 as in AWS; tests may lower it.
    pub min_duration_seconds: u32,
    pub max_duration_seconds: u32,
}

impl DevStsConfig {
    pub fn new(region: impl Into<String>) -> Self {
        DevStsConfig {
            region: region.into(),
            min_duration_seconds: 900,
            max_duration_seconds: 43200,
        }
    }

    /// Accept durations down to one second (the server's test flag).
    pub fn allow_short_durations(mut self) -> Self {
        self.min_duration_seconds = 1;
        self
    }
}

/// The parameters of an `AssumeRole` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssumeRoleParams {
    pub role_arn: String,
    pub role_session_name: String,
    /// `None` = the default of one hour.
    pub duration_seconds: Option<u32>,
}

impl AssumeRoleParams {
    /// From decoded form/query pairs (`Action` and `Version` are ignored here).
    pub fn from_pairs(pairs: &[(String, String)]) -> Result<Self, StsError> {
        let get = |name: &str| -> Result<Option<&str>, StsError> {
            let mut it = pairs.iter().filter(|(k, _)| k == name);
            let first = it.next().map(|(_, v)| v.as_str());
            if it.next().is_some() {
                return Err(StsError::ValidationError(format!(
                    "{name} given more than once"
                )));
            }
            Ok(first)
        };
        let required = |name: &str| -> Result<String, StsError> {
            get(name)?
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| {
                    StsError::ValidationError(format!(
                        "1 validation error detected: {name} must not be null"
                    ))
                })
        };
        let duration_seconds = match get("DurationSeconds")? {
            None => None,
            Some(d) => Some(d.parse::<u32>().map_err(|_| {
                StsError::ValidationError(format!("DurationSeconds {d:?} is not a number"))
            })?),
        };
        Ok(AssumeRoleParams {
            role_arn: required("RoleArn")?,
            role_session_name: required("RoleSessionName")?,
            duration_seconds,
        })
    }
}

/// A successful `AssumeRole`.
#[derive(Debug, Clone)]
pub struct AssumeRoleResponse {
    pub credentials: Credentials,
    pub assumed_role_arn: String,
    pub assumed_role_id: String,
}

impl AssumeRoleResponse {
    /// The AWS STS XML answer.
    pub fn to_xml(&self, request_id: &str) -> String {
        let c = &self.credentials;
        let exp = c.expiration.map(format_iso8601).unwrap_or_default();
        let token = c
            .session_token
            .as_ref()
            .map(|t| t.expose())
            .unwrap_or_default();
        format!(
            "<AssumeRoleResponse xmlns=\"{STS_NS}\">\n  <AssumeRoleResult>\n    <AssumedRoleUser>\n      <AssumedRoleId>{}</AssumedRoleId>\n      <Arn>{}</Arn>\n    </AssumedRoleUser>\n    <Credentials>\n      <AccessKeyId>{}</AccessKeyId>\n      <SecretAccessKey>{}</SecretAccessKey>\n      <SessionToken>{}</SessionToken>\n      <Expiration>{exp}</Expiration>\n    </Credentials>\n  </AssumeRoleResult>\n  <ResponseMetadata>\n    <RequestId>{}</RequestId>\n  </ResponseMetadata>\n</AssumeRoleResponse>\n",
            xml_escape(&self.assumed_role_id),
            xml_escape(&self.assumed_role_arn),
            xml_escape(&c.access_key_id),
            xml_escape(c.secret_access_key.expose()),
            xml_escape(token),
            xml_escape(request_id),
        )
    }
}

/// What a session token carries, sealed so only holders of the token key can
/// read or forge it.
#[derive(Serialize, Deserialize)]
struct TokenClaims {
    akid: String,
    secret: String,
    /// Expiry, Unix seconds.
    exp: u64,
    src: String,
    node: Option<String>,
    admin: bool,
}

/// The development STS. Cheap to clone; also the [`KeyResolver`] the server's
/// verifiers use, for long-term keys and for the session tokens it issued (or
/// that any replica sharing the token key issued).
#[derive(Clone)]
pub struct DevSts {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DevSts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevSts")
            .field("keys", &self.inner.keys.len())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Inner {
    keys: KeyStore,
    cipher: XChaCha20Poly1305,
    config: DevStsConfig,
}

impl DevSts {
    pub fn new(keys: KeyStore, token_key: &TokenKey, config: DevStsConfig) -> Self {
        let cipher = XChaCha20Poly1305::new(token_key.bytes().into());
        DevSts {
            inner: Arc::new(Inner {
                keys,
                cipher,
                config,
            }),
        }
    }

    pub fn keys(&self) -> &KeyStore {
        &self.inner.keys
    }

    /// A verifier for this server's region that knows these keys and tokens.
    pub fn verifier(&self) -> Verifier {
        Verifier::new(self.inner.config.region.clone(), Arc::new(self.clone()))
    }

    /// Serves one signed STS request (any method; parameters from the query
    /// and the form body): returns the HTTP status and the XML body.
    pub fn handle(&self, req: &SignedRequest<'_>, now: SystemTime) -> (u16, String) {
        let request_id = new_request_id();
        match self.handle_inner(req, now) {
            Ok(resp) => (200, resp.to_xml(&request_id)),
            Err(e) => {
                tracing::info!(error = %e, "AssumeRole refused");
                (e.status_and_code().0, e.to_xml(&request_id))
            }
        }
    }

    fn handle_inner(
        &self,
        req: &SignedRequest<'_>,
        now: SystemTime,
    ) -> Result<AssumeRoleResponse, StsError> {
        let caller = self.verifier().verify(req, "sts", now)?;
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(req.query.as_bytes())
            .into_owned()
            .collect();
        pairs.extend(form_urlencoded::parse(req.body).into_owned());
        let actions: Vec<&str> = pairs
            .iter()
            .filter(|(k, _)| k == "Action")
            .map(|(_, v)| v.as_str())
            .collect();
        if actions != ["AssumeRole"] {
            return Err(StsError::InvalidAction(format!(
                "Could not find operation {}",
                actions.join(",")
            )));
        }
        let params = AssumeRoleParams::from_pairs(&pairs)?;
        self.assume_role(&caller, &params, now)
    }

    /// `AssumeRole` for an authenticated `caller` (docs/protocol.md rules: no role
    /// chaining, only the key's roles, node-bound keys only as their node).
    pub fn assume_role(
        &self,
        caller: &Principal,
        params: &AssumeRoleParams,
        now: SystemTime,
    ) -> Result<AssumeRoleResponse, StsError> {
        if caller.temporary {
            return Err(StsError::AccessDenied(
                "role chaining is not allowed: call AssumeRole with long-term credentials".into(),
            ));
        }
        let key = self.inner.keys.get(&caller.access_key_id).ok_or_else(|| {
            StsError::InvalidClientTokenId(
                "The security token included in the request is invalid".into(),
            )
        })?;
        let duration = self.check_duration(params.duration_seconds)?;
        check_session_name(&params.role_session_name)?;
        if !key.roles.iter().any(|r| r == &params.role_arn) {
            return Err(StsError::AccessDenied(format!(
                "{} is not authorized to assume {}",
                caller.access_key_id, params.role_arn
            )));
        }
        if let Some(node) = &key.node {
            if node != &params.role_session_name {
                return Err(StsError::AccessDenied(format!(
                    "{} is bound to node {node}: RoleSessionName must be {node}",
                    caller.access_key_id
                )));
            }
        }
        let expiration = now + Duration::from_secs(duration.into());
        let claims = TokenClaims {
            akid: new_access_key_id(),
            secret: new_secret(),
            exp: unix_secs(expiration),
            src: key.access_key_id.clone(),
            node: key.node.clone(),
            admin: key.admin,
        };
        let token = self.seal(&claims)?;
        let (account, role_name) = split_role_arn(&params.role_arn);
        let session = &params.role_session_name;
        tracing::info!(source = %key.access_key_id, access_key_id = %claims.akid, role = %params.role_arn, %session, duration, "issued temporary credentials");
        Ok(AssumeRoleResponse {
            assumed_role_arn: format!("arn:aws:sts::{account}:assumed-role/{role_name}/{session}"),
            assumed_role_id: format!("AROA{}:{session}", &claims.akid[4..]),
            credentials: Credentials::temporary(
                claims.akid,
                Secret::new(claims.secret),
                Secret::new(token),
                SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp),
            ),
        })
    }

    fn check_duration(&self, requested: Option<u32>) -> Result<u32, StsError> {
        let (min, max) = (
            self.inner.config.min_duration_seconds,
            self.inner.config.max_duration_seconds,
        );
        let d = requested.unwrap_or(3600);
        if !(min..=max).contains(&d) {
            return Err(StsError::ValidationError(format!(
                "1 validation error detected: Value '{d}' at 'durationSeconds' failed to satisfy constraint: Member must have value between {min} and {max}"
            )));
        }
        Ok(d)
    }

    fn seal(&self, claims: &TokenClaims) -> Result<String, StsError> {
        let plain =
            serde_json::to_vec(claims).map_err(|e| StsError::InternalError(e.to_string()))?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .inner
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: TOKEN_AAD,
                },
            )
            .map_err(|_| StsError::InternalError("token sealing failed".into()))?;
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&sealed);
        Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw)))
    }

    /// Opens a token; `None` when it was not sealed with this key (or is not one of ours).
    fn open(&self, token: &str) -> Option<TokenClaims> {
        let raw = URL_SAFE_NO_PAD
            .decode(token.strip_prefix(TOKEN_PREFIX)?)
            .ok()?;
        if raw.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let plain = self
            .inner
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: TOKEN_AAD,
                },
            )
            .ok()?;
        serde_json::from_slice(&plain).ok()
    }
}

impl KeyResolver for DevSts {
    fn resolve(
        &self,
        access_key_id: &str,
        token: Option<&str>,
        now: SystemTime,
    ) -> Result<ResolvedKey, VerifyError> {
        let Some(token) = token else {
            let key = self
                .inner
                .keys
                .get(access_key_id)
                .ok_or_else(|| VerifyError::UnknownAccessKey(access_key_id.to_owned()))?;
            return Ok(ResolvedKey {
                secret: key.secret_access_key.clone(),
                principal: Principal {
                    access_key_id: key.access_key_id.clone(),
                    source_key_id: key.access_key_id.clone(),
                    node: key.node.clone(),
                    admin: key.admin,
                    temporary: false,
                    expiration: None,
                },
            });
        };
        let claims = self.open(token).ok_or(VerifyError::InvalidToken)?;
        // A token is only good with the key id it was issued for, and only
        // while the long-term key it came from is still configured.
        let matches: bool =
            subtle::ConstantTimeEq::ct_eq(claims.akid.as_bytes(), access_key_id.as_bytes()).into();
        if !matches || self.inner.keys.get(&claims.src).is_none() {
            return Err(VerifyError::InvalidToken);
        }
        let expiration = SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp);
        if expiration <= now {
            return Err(VerifyError::ExpiredToken);
        }
        Ok(ResolvedKey {
            secret: Secret::new(claims.secret),
            principal: Principal {
                access_key_id: claims.akid,
                source_key_id: claims.src,
                node: claims.node,
                admin: claims.admin,
                temporary: true,
                expiration: Some(expiration),
            },
        })
    }
}

fn check_session_name(name: &str) -> Result<(), StsError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c);
    if !(2..=64).contains(&name.len()) || !name.chars().all(ok_char) {
        return Err(StsError::ValidationError(format!(
            "1 validation error detected: Value '{name}' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]{{2,64}}"
        )));
    }
    Ok(())
}

/// (account, role name) of `arn:aws:iam::ACCOUNT:role/path/NAME`.
fn split_role_arn(arn: &str) -> (String, String) {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let account = parts.get(4).copied().unwrap_or("000000000000");
    let resource = parts.get(5).copied().unwrap_or(arn);
    let name = resource.rsplit('/').next().unwrap_or(resource);
    (account.to_owned(), name.to_owned())
}

const ID_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// `ASIA` + 16 random characters, like AWS temporary key ids.
fn new_access_key_id() -> String {
    let mut rng = rand::rngs::OsRng;
    let tail: String = (0..16)
        .map(|_| ID_CHARS[rng.gen_range(0..ID_CHARS.len())] as char)
        .collect();
    format!("ASIA{tail}")
}

/// 40 characters from 30 random bytes.
fn new_secret() -> String {
    let mut b = [0u8; 30];
    rand::rngs::OsRng.fill_bytes(&mut b);
    STANDARD.encode(b)
}

fn new_request_id() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2026-11-27T17:40:26Z`, as STS writes `Expiration`.
fn format_iso8601(t: SystemTime) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from(t)
        .format(&fmt)
        .unwrap_or_default()
}

pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE_ROLE: &str = "arn:aws:iam::000000000000:role/edgenet-node";

    fn sts(key: &TokenKey) -> DevSts {
        let keys = KeyStore::from_toml(&format!(
            "[[keys]]\naccess_key_id = \"AKIDNC1\"\nsecret_access_key = \"s1\"\nnode = \"nc-1\"\nroles = [\"{NODE_ROLE}\"]\n"
        ))
        .unwrap();
        DevSts::new(
            keys,
            key,
            DevStsConfig::new("eucalyptus").allow_short_durations(),
        )
    }

    fn caller(temporary: bool) -> Principal {
        Principal {
            access_key_id: "AKIDNC1".into(),
            source_key_id: "AKIDNC1".into(),
            node: Some("nc-1".into()),
            admin: false,
            temporary,
            expiration: None,
        }
    }

    fn params(role: &str, session: &str, d: Option<u32>) -> AssumeRoleParams {
        AssumeRoleParams {
            role_arn: role.into(),
            role_session_name: session.into(),
            duration_seconds: d,
        }
    }

    #[test]
    fn issues_and_opens_tokens() {
        let key = TokenKey::generate();
        let s = sts(&key);
        let now = SystemTime::now();
        let r = s
            .assume_role(&caller(false), &params(NODE_ROLE, "nc-1", Some(60)), now)
            .unwrap();
        let c = &r.credentials;
        assert!(c.access_key_id.starts_with("ASIA") && c.access_key_id.len() == 20);
        assert_eq!(
            r.assumed_role_arn,
            "arn:aws:sts::000000000000:assumed-role/edgenet-node/nc-1"
        );
        let token = c.session_token.as_ref().unwrap().expose();
        let k = s.resolve(&c.access_key_id, Some(token), now).unwrap();
        assert_eq!(&k.secret, &c.secret_access_key);
        assert!(k.principal.temporary);
        assert_eq!(k.principal.node.as_deref(), Some("nc-1"));
        assert_eq!(
            s.resolve("ASIAOTHER", Some(token), now).unwrap_err(),
            VerifyError::InvalidToken
        );
        let later = now + Duration::from_secs(61);
        assert_eq!(
            s.resolve(&c.access_key_id, Some(token), later).unwrap_err(),
            VerifyError::ExpiredToken
        );
        let other = sts(&TokenKey::generate());
        assert_eq!(
            other
                .resolve(&c.access_key_id, Some(token), now)
                .unwrap_err(),
            VerifyError::InvalidToken
        );
        let xml = r.to_xml("req-1");
        assert!(xml.contains("<SessionToken>EN1.") && xml.contains("<RequestId>req-1</RequestId>"));
    }

    #[test]
    fn policy_checks() {
        let s = sts(&TokenKey::generate());
        let now = SystemTime::now();
        let code = |r: Result<AssumeRoleResponse, StsError>| r.unwrap_err().status_and_code().1;
        assert_eq!(
            code(s.assume_role(&caller(true), &params(NODE_ROLE, "nc-1", None), now)),
            "AccessDenied"
        );
        assert_eq!(
            code(s.assume_role(&caller(false), &params(NODE_ROLE, "nc-2", None), now)),
            "AccessDenied"
        );
        let other_role = "arn:aws:iam::000000000000:role/edgenet-admin";
        assert_eq!(
            code(s.assume_role(&caller(false), &params(other_role, "nc-1", None), now)),
            "AccessDenied"
        );
        assert_eq!(
            code(s.assume_role(&caller(false), &params(NODE_ROLE, "nc-1", Some(43201)), now)),
            "ValidationError"
        );
        assert_eq!(
            code(s.assume_role(&caller(false), &params(NODE_ROLE, "n c", None), now)),
            "ValidationError"
        );
        let strict = DevSts::new(
            s.keys().clone(),
            &TokenKey::generate(),
            DevStsConfig::new("eucalyptus"),
        );
        assert_eq!(
            code(strict.assume_role(&caller(false), &params(NODE_ROLE, "nc-1", Some(899)), now)),
            "ValidationError"
        );
        assert!(strict
            .assume_role(&caller(false), &params(NODE_ROLE, "nc-1", Some(900)), now)
            .is_ok());
    }

    #[test]
    fn params_and_error_xml() {
        let pairs = |s: &str| {
            form_urlencoded::parse(s.as_bytes())
                .into_owned()
                .collect::<Vec<_>>()
        };
        let p = AssumeRoleParams::from_pairs(&pairs(
            "RoleArn=a&RoleSessionName=nc-1&DurationSeconds=900",
        ))
        .unwrap();
        assert_eq!(p.duration_seconds, Some(900));
        assert!(AssumeRoleParams::from_pairs(&pairs("RoleSessionName=nc-1")).is_err());
        assert!(
            AssumeRoleParams::from_pairs(&pairs("RoleArn=a&RoleArn=b&RoleSessionName=x")).is_err()
        );
        assert!(AssumeRoleParams::from_pairs(&pairs(
            "RoleArn=a&RoleSessionName=x&DurationSeconds=x"
        ))
        .is_err());
        let xml = StsError::AccessDenied("a<b".into()).to_xml("r");
        assert!(
            xml.contains("<Type>Sender</Type>")
                && xml.contains("<Code>AccessDenied</Code>")
                && xml.contains("a&lt;b")
        );
    }
}
