//! Responses on the wire: status line, the handler's headers, and the
//! framing headers this layer owns (`Content-Length`, `Connection`, `Date`).

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Response, StatusCode, Version};

/// Bodies up to this size are copied behind the head so the answer is one
/// write (one TCP segment for a typical view); larger ones are written as is.
pub const COALESCE_LIMIT: usize = 16 * 1024;

/// What the request said that shapes the response's framing.
#[derive(Debug, Clone, Copy)]
pub struct Framing {
    pub version: Version,
    pub head_request: bool,
    pub keep_alive: bool,
}

/// The response head, with a small body appended; the body is returned
/// separately when it is large or must not be sent.
pub fn encode(response: Response<Bytes>, framing: Framing) -> (Vec<u8>, Option<Bytes>) {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let may_have_body = !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED);
    let send_body = may_have_body && !framing.head_request && !body.is_empty();
    let inline = send_body && body.len() <= COALESCE_LIMIT;
    let mut out = Vec::with_capacity(256 + if inline { body.len() } else { 0 });
    status_line(&mut out, framing.version, status);
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == CONNECTION || name == DATE
        {
            continue;
        }
        header(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    if may_have_body {
        header(
            &mut out,
            b"content-length",
            body.len().to_string().as_bytes(),
        );
    }
    match (framing.version, framing.keep_alive) {
        (Version::HTTP_10, true) => header(&mut out, b"connection", b"keep-alive"),
        (Version::HTTP_10, false) => {}
        (_, false) => header(&mut out, b"connection", b"close"),
        (_, true) => {}
    }
    with_date(|date| header(&mut out, b"date", date));
    out.extend_from_slice(b"\r\n");
    if inline {
        out.extend_from_slice(&body);
        (out, None)
    } else {
        (out, send_body.then_some(body))
    }
}

/// A body-less answer the layer gives on its own (bad head, timeout, panic).
pub fn error(status: StatusCode) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    status_line(&mut out, Version::HTTP_11, status);
    header(&mut out, b"content-length", b"0");
    header(&mut out, b"connection", b"close");
    with_date(|date| header(&mut out, b"date", date));
    out.extend_from_slice(b"\r\n");
    out
}

fn status_line(out: &mut Vec<u8>, version: Version, status: StatusCode) {
    out.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    // Some clients insist on a reason phrase; unknown codes get a neutral one.
    out.extend_from_slice(status.canonical_reason().unwrap_or("Status").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The formatted `Date` of the current second: a fan-out writes
    /// thousands of answers within one second.
    static DATE_NOW: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

fn with_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE_NOW.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, httpdate::fmt_http_date(now));
        }
        f(cached.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: Response<Bytes>, f: Framing) -> String {
        let (head, rest) = encode(r, f);
        let mut all = head;
        if let Some(b) = rest {
            all.extend_from_slice(&b);
        }
        String::from_utf8(all).unwrap()
    }

    const KEEP: Framing = Framing {
        version: Version::HTTP_11,
        head_request: false,
        keep_alive: true,
    };

    #[test]
    fn framing_headers() {
        let t = text(Response::new(Bytes::from_static(b"hello")), KEEP);
        assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
        assert!(t.contains("\r\ncontent-length: 5\r\n"), "{t}");
        assert!(t.contains("\r\ndate: "), "{t}");
        assert!(t.ends_with("\r\n\r\nhello"), "{t}");
        assert!(!t.contains("connection"), "{t}");
        let mut nm = Response::new(Bytes::new());
        *nm.status_mut() = StatusCode::NOT_MODIFIED;
        let t = text(nm, KEEP);
        assert!(!t.contains("content-length"), "{t}");
        let head = Framing {
            head_request: true,
            ..KEEP
        };
        let t = text(Response::new(Bytes::from_static(b"hello")), head);
        assert!(
            t.contains("content-length: 5") && t.ends_with("\r\n\r\n"),
            "{t}"
        );
        let old = Framing {
            version: Version::HTTP_10,
            head_request: false,
            keep_alive: false,
        };
        let t = text(Response::new(Bytes::new()), old);
        assert!(t.starts_with("HTTP/1.0 200 OK\r\n") && t.contains("content-length: 0"));
        let close = Framing {
            keep_alive: false,
            ..KEEP
        };
        assert!(text(Response::new(Bytes::new()), close).contains("connection: close\r\n"));
    }

    #[test]
    fn large_bodies_are_not_copied() {
        let body = Bytes::from(vec![b'x'; COALESCE_LIMIT + 1]);
        let (head, rest) = encode(Response::new(body.clone()), KEEP);
        assert!(head.ends_with(b"\r\n\r\n"));
        assert_eq!(rest.unwrap().as_ptr(), body.as_ptr());
    }
}
