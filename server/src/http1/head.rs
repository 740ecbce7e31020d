//! Request heads: httparse does the parsing; this file turns its borrowed
//! result into an owned `http::Request<()>` and decides the body framing and
//! keep-alive, the way RFC 9112 section 6.3 orders them.

use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::uri::Authority;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};

use super::ConnError;

/// More headers than this is 431, as hyper did; agents send about a dozen.
pub const MAX_HEADERS: usize = 64;

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
}

/// A complete, checked request head.
#[derive(Debug)]
pub struct Head {
    pub request: Request<()>,
    /// Bytes of the buffer the head took, request line to the blank line.
    pub len: usize,
    pub framing: Framing,
    pub keep_alive: bool,
    pub expect_continue: bool,
}

/// True once `buf` holds a blank line: only then is a full parse worth it.
/// `scanned` is how much of `buf` an earlier call already searched, so a
/// client trickling one byte at a time costs linear, not quadratic, time.
pub fn may_be_complete(buf: &[u8], scanned: usize) -> bool {
    let from = scanned.saturating_sub(3);
    buf[from..]
        .windows(2)
        .enumerate()
        .any(|(i, w)| w == b"\n\n" || (w == b"\n\r" && buf.get(from + i + 2) == Some(&b'\n')))
}

/// Parses the head at the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse(buf: &[u8], max_head_bytes: usize) -> Result<Option<Head>, ConnError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ConnError::TooManyHeaders(MAX_HEADERS)),
        Err(e) => return Err(ConnError::BadHead(e.to_string())),
    };
    if len > max_head_bytes {
        return Err(ConnError::HeadTooLarge(max_head_bytes));
    }
    let (method, path, minor) = match (req.method, req.path, req.version) {
        (Some(m), Some(p), Some(v)) => (m, p, v),
        _ => return Err(ConnError::BadHead("incomplete request line".into())),
    };
    let version = if minor == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let headers = owned_headers(req.headers)?;
    let meaning = Meaning::of(&headers, version)?;
    let mut request = Request::new(());
    *request.method_mut() =
        Method::from_bytes(method.as_bytes()).map_err(|e| ConnError::BadHead(e.to_string()))?;
    *request.uri_mut() = path
        .parse::<Uri>()
        .map_err(|e| ConnError::BadHead(format!("request target: {e}")))?;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        len,
        framing: meaning.framing,
        keep_alive: meaning.keep_alive,
        expect_continue: meaning.expect_continue,
    }))
}

fn owned_headers(parsed: &[httparse::Header<'_>]) -> Result<HeaderMap, ConnError> {
    let mut headers = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| ConnError::BadHead(format!("header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| ConnError::BadHead(format!("value of header {}", h.name)))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// What the framing headers say.
struct Meaning {
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

impl Meaning {
    fn of(headers: &HeaderMap, version: Version) -> Result<Meaning, ConnError> {
        let http11 = version == Version::HTTP_11;
        check_host(headers, http11)?;
        let mut keep_alive = if http11 {
            !has_token(headers, CONNECTION, "close")
        } else {
            has_token(headers, CONNECTION, "keep-alive") && !has_token(headers, CONNECTION, "close")
        };
        let framing = if headers.contains_key(TRANSFER_ENCODING) {
            if !http11 {
                return Err(ConnError::BadFraming("Transfer-Encoding in HTTP/1.0"));
            }
            check_transfer_codings(headers)?;
            // Both headers is how request smuggling starts: ignore the length
            // (RFC 9112 6.3) and do not reuse the connection.
            if headers.contains_key(CONTENT_LENGTH) {
                keep_alive = false;
            }
            Framing::Chunked
        } else {
            Framing::Length(content_length(headers)?)
        };
        let expect_continue = http11
            && headers
                .get(EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        Ok(Meaning {
            framing,
            keep_alive,
            expect_continue,
        })
    }
}

/// Every `Content-Length` value (and every item of a comma list) must be the
/// same number; anything else would let two parsers disagree on the body.
fn content_length(headers: &HeaderMap) -> Result<u64, ConnError> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let text = value
            .to_str()
            .map_err(|_| ConnError::BadFraming("Content-Length"))?;
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() || item.len() > 19 || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ConnError::BadFraming("Content-Length"));
            }
            let n: u64 = item
                .parse()
                .map_err(|_| ConnError::BadFraming("Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ConnError::BadFraming("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(length.unwrap_or(0))
}

/// RFC 9112 6.3: a final coding other than chunked leaves the body length
/// unknown (400). Anything before a final chunked (`gzip, chunked`, or
/// chunked applied twice) is a coding this server does not implement: 501,
/// as nginx answers, rather than a body read as if the coding were absent.
fn check_transfer_codings(headers: &HeaderMap) -> Result<(), ConnError> {
    let mut codings = Vec::new();
    for value in headers.get_all(TRANSFER_ENCODING) {
        let text = value
            .to_str()
            .map_err(|_| ConnError::BadFraming("Transfer-Encoding"))?;
        codings.extend(text.split(',').map(str::trim).filter(|c| !c.is_empty()));
    }
    match codings.split_last() {
        Some((last, _)) if !last.eq_ignore_ascii_case("chunked") => Err(ConnError::BadFraming(
            "Transfer-Encoding other than chunked",
        )),
        None => Err(ConnError::BadFraming("empty Transfer-Encoding")),
        Some((_, [])) => Ok(()),
        Some(_) => Err(ConnError::Unimplemented(
            "a transfer coding other than a single chunked",
        )),
    }
}

/// RFC 9112 3.2: an HTTP/1.1 request without `Host`, any request with more
/// than one, or one whose value is not a host and port, is 400.
fn check_host(headers: &HeaderMap, http11: bool) -> Result<(), ConnError> {
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if http11 => Err(ConnError::BadFraming("no Host header")),
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(ConnError::BadFraming("more than one Host header")),
        // Empty is allowed: a request target without an authority.
        (Some(host), None) if host.is_empty() => Ok(()),
        (Some(host), None) => match Authority::try_from(host.as_bytes()) {
            Ok(a) if !a.as_str().contains('@') => Ok(()),
            _ => Err(ConnError::BadFraming("Host")),
        },
    }
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, ConnError> {
        parse(text.as_bytes(), 16 * 1024)
    }

    #[test]
    fn a_plain_get() {
        let h = head("GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(h.request.uri().query(), Some("b=c"));
        assert_eq!(h.len, "GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n".len());
        assert_eq!(h.framing, Framing::Length(0));
        assert!(h.keep_alive);
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |t: &str| head(t).unwrap().unwrap().keep_alive;
        assert!(!ka(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n"
        ));
        assert!(!ka("GET / HTTP/1.0\r\n\r\n"));
        assert!(ka("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(!ka(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
    }

    #[test]
    fn framing_rules() {
        let f = |t: &str| head(t).map(|h| h.unwrap().framing);
        assert_eq!(
            f("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n").unwrap(),
            Framing::Length(5)
        );
        assert!(
            f("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n")
                .is_err()
        );
        assert!(f("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n").is_err());
        assert!(f("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
        assert!(f("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        let both = head(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(both.framing, Framing::Chunked);
        assert!(!both.keep_alive);
    }

    #[test]
    fn transfer_codings_before_chunked_are_not_implemented() {
        let f = |te: &str| head(&format!("POST / HTTP/1.1\r\nHost: x\r\n{te}\r\n"));
        let unimplemented = |te: &str| matches!(f(te), Err(ConnError::Unimplemented(_)));
        assert!(unimplemented("Transfer-Encoding: gzip, chunked\r\n"));
        assert!(unimplemented("Transfer-Encoding: chunked, chunked\r\n"));
        assert!(unimplemented(
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
        ));
        assert!(matches!(
            f("Transfer-Encoding: chunked, gzip\r\n"),
            Err(ConnError::BadFraming(_))
        ));
        assert!(matches!(
            f("Transfer-Encoding: ,\r\n"),
            Err(ConnError::BadFraming(_))
        ));
        let one = f("Transfer-Encoding: , Chunked\r\n").unwrap().unwrap();
        assert_eq!(one.framing, Framing::Chunked);
    }

    #[test]
    fn host_rules() {
        let bad_host = |t: &str| matches!(head(t), Err(ConnError::BadFraming(_)));
        assert!(bad_host("GET / HTTP/1.1\r\n\r\n"));
        assert!(bad_host("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"));
        assert!(bad_host("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"));
        assert!(bad_host("GET / HTTP/1.1\r\nHost: u@h\r\n\r\n"));
        assert!(bad_host("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"));
        for ok in [
            "GET / HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost:\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: [::1]:8773\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: clc.example.internal:8773\r\n\r\n",
        ] {
            assert!(head(ok).unwrap().is_some(), "{ok}");
        }
    }

    #[test]
    fn partial_large_and_garbage() {
        assert!(head("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "y".repeat(100)
        );
        assert!(matches!(
            parse(big.as_bytes(), 64),
            Err(ConnError::HeadTooLarge(64))
        ));
        let many: String = (0..70).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert!(matches!(
            head(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
            Err(ConnError::TooManyHeaders(_))
        ));
        assert!(matches!(
            head("\x00\x01GARBAGE \u{ff}\r\n\r\n"),
            Err(ConnError::BadHead(_))
        ));
    }

    /// Mutations of a real request and plain noise: refused or parsed,
    /// never a panic, and a parsed head never claims more bytes than it had.
    #[test]
    fn noise_never_panics() {
        let valid = b"POST /x?Action=A HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, close\r\nExpect: 100-continue\r\n\r\nabc";
        let mut next = crate::http1::xorshift(0x9e37_79b9_7f4a_7c15_u64);
        for round in 0..20_000 {
            let mut input = if round % 4 == 0 {
                (0..next() % 200).map(|_| next() as u8).collect()
            } else {
                valid.to_vec()
            };
            for _ in 0..1 + next() % 4 {
                if input.is_empty() {
                    break;
                }
                let at = (next() as usize) % input.len();
                match next() % 3 {
                    0 => input[at] = next() as u8,
                    1 => input.truncate(at),
                    _ => input.insert(
                        at,
                        b"\r\n:;, \t\x00\x7f\xff0123456789"[next() as usize % 20],
                    ),
                }
            }
            if let Ok(Some(h)) = parse(&input, 256) {
                assert!(h.len <= input.len());
            }
            let _ = may_be_complete(&input, (next() as usize) % (input.len() + 1));
        }
    }

    #[test]
    fn completeness_scan() {
        assert!(may_be_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0));
        assert!(may_be_complete(b"GET / HTTP/1.1\n\n", 0));
        assert!(!may_be_complete(b"GET / HTTP/1.1\r\nHost: x\r\n", 0));
        // The blank line straddles two reads.
        assert!(may_be_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 16));
    }
}
