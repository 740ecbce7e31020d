//! Reading STS XML answers: AssumeRole credentials and error documents.

use std::time::{Duration, SystemTime};

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::credentials::{Credentials, Secret};

/// What an STS answer held: credentials and/or an error code.
#[derive(Debug, Default)]
pub(crate) struct StsAnswer {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    pub expiration: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// Parses an STS answer. Credentials are taken from
/// `AssumeRoleResponse/AssumeRoleResult/Credentials/*`; an error code from any
/// `Error/Code`, wherever it sits (STS, moto and EC2-style services nest it
/// differently).
pub(crate) fn parse_sts_answer(xml: &str) -> Result<StsAnswer, String> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut path: Vec<String> = Vec::new();
    let mut out = StsAnswer::default();
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => {
                path.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned())
            }
            Event::End(_) => {
                path.pop();
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(|e| e.to_string())?;
                store(&mut out, &path, text.into_owned());
            }
            Event::CData(t) => store(&mut out, &path, String::from_utf8_lossy(&t).into_owned()),
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

fn store(out: &mut StsAnswer, path: &[String], text: String) {
    let tail: Vec<&str> = path.iter().rev().take(4).map(String::as_str).collect();
    match tail.as_slice() {
        ["Code", "Error", ..] => out.error_code = Some(text),
        ["Message", "Error", ..] => out.error_message = Some(text),
        [field, "Credentials", "AssumeRoleResult", "AssumeRoleResponse"] => {
            let slot = match *field {
                "AccessKeyId" => &mut out.access_key_id,
                "SecretAccessKey" => &mut out.secret_access_key,
                "SessionToken" => &mut out.session_token,
                "Expiration" => &mut out.expiration,
                _ => return,
            };
            *slot = Some(text);
        }
        _ => {}
    }
}

impl StsAnswer {
    /// The credentials, when all four fields are present and valid.
    pub(crate) fn credentials(self) -> Result<Credentials, String> {
        let missing = |f: &str| format!("AssumeRoleResult/Credentials/{f} missing");
        let akid = self.access_key_id.ok_or_else(|| missing("AccessKeyId"))?;
        let secret = self
            .secret_access_key
            .ok_or_else(|| missing("SecretAccessKey"))?;
        let token = self.session_token.ok_or_else(|| missing("SessionToken"))?;
        let exp = self.expiration.ok_or_else(|| missing("Expiration"))?;
        let exp = parse_timestamp(&exp).ok_or_else(|| format!("bad Expiration {exp:?}"))?;
        Ok(Credentials::temporary(
            akid,
            Secret::new(secret),
            Secret::new(token),
            exp,
        ))
    }
}

/// Parses an ISO 8601 / RFC 3339 timestamp with any number of fractional
/// digits (STS sends none, moto six, others nine or more) and `Z`, an
/// offset, or nothing (taken as UTC).
pub(crate) fn parse_timestamp(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let base = s.get(..19)?;
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let dt = time::PrimitiveDateTime::parse(base, &fmt).ok()?;
    let mut rest = &s[19..];
    let mut nanos: u64 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        // Keep nanosecond precision; further digits do not matter.
        let kept = &frac[..digits.min(9)];
        nanos = kept.parse::<u64>().ok()? * 10u64.pow(9 - kept.len() as u32);
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest {
        "" | "Z" | "z" => 0,
        _ => parse_offset(rest)?,
    };
    let unix = dt.assume_utc().unix_timestamp() - offset_secs;
    let secs = u64::try_from(unix).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// `+HH:MM` / `-HH:MM` / `+HHMM` in seconds.
fn parse_offset(s: &str) -> Option<i64> {
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = s[1..].chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: i64 = digits[..2].parse().ok()?;
    let m: i64 = digits[2..].parse().ok()?;
    Some(sign * (h * 3600 + m * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_with_any_fraction() {
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let iso = time::OffsetDateTime::from(base)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let plain = iso.trim_end_matches('Z');
        assert_eq!(parse_timestamp(&iso), Some(base));
        assert_eq!(parse_timestamp(plain), Some(base));
        for frac in ["1", "123", "123456", "123456789", "1234567891234"] {
            let t = parse_timestamp(&format!("{plain}.{frac}Z")).unwrap();
            let ms = t.duration_since(base).unwrap().as_millis();
            assert_eq!(
                ms,
                format!("{frac:0<3}")[..3].parse::<u128>().unwrap(),
                "{frac}"
            );
        }
        let t = parse_timestamp(&format!("{plain}.5+01:00")).unwrap();
        assert_eq!(
            t,
            base - Duration::from_secs(3600) + Duration::from_millis(500)
        );
        assert!(parse_timestamp("yesterday").is_none());
        assert!(parse_timestamp(&format!("{plain}.Z")).is_none());
    }

    #[test]
    fn credentials_and_errors() {
        let ok = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
          <AssumeRoleResult><AssumedRoleUser><Arn>x</Arn></AssumedRoleUser>
          <Credentials><AccessKeyId>ASIAX</AccessKeyId><SecretAccessKey>s&amp;k</SecretAccessKey>
          <SessionToken>tok</SessionToken><Expiration>2026-11-27T22:00:00.123456Z</Expiration></Credentials>
          </AssumeRoleResult></AssumeRoleResponse>"#;
        let c = parse_sts_answer(ok).unwrap().credentials().unwrap();
        assert_eq!(c.access_key_id, "ASIAX");
        assert_eq!(c.secret_access_key.expose(), "s&k");
        assert!(c.expiration.is_some());
        for err in [
            "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>no</Message></Error></ErrorResponse>",
            "<Response><Errors><Error><Code>AccessDenied</Code><Message>no</Message></Error></Errors></Response>",
            "<Error><Code>AccessDenied</Code><Message>no</Message></Error>",
        ] {
            let a = parse_sts_answer(err).unwrap();
            assert_eq!(a.error_code.as_deref(), Some("AccessDenied"), "{err}");
            assert_eq!(a.error_message.as_deref(), Some("no"));
        }
        let partial = ok.replace("<SessionToken>tok</SessionToken>", "");
        assert!(parse_sts_answer(&partial).unwrap().credentials().is_err());
    }
}
