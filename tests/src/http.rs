//! A minimal HTTP/1.1 client over a socket made inside a namespace, and the
//! SigV4-signed `DescribeNodeStatus` call an operator would make.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use edgenet_auth::{query_get_request, sign_request, Credentials};

use crate::netns::Netns;

/// Status, headers and body of an answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// `GET path_and_query` to `addr` from inside `ns` (`Connection: close`).
pub fn get(
    ns: &Netns,
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<Response> {
    let mut request = format!("GET {path_and_query} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    let mut stream = ns.run_in(move || Ok(TcpStream::connect_timeout(&addr, timeout)?))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading answer from {addr}"))?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("not an HTTP answer: {text:?}");
    };
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// A signed EC2 Query API `GET` to the server at `addr` (seen from `ns`).
pub fn signed_query(
    ns: &Netns,
    addr: SocketAddr,
    params: &[(&str, &str)],
    creds: &Credentials,
    region: &str,
) -> Result<Response> {
    let endpoint = format!("http://{addr}/");
    let mut req = query_get_request(&endpoint, params)?;
    sign_request(&mut req, creds, region, "ec2", SystemTime::now())?;
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    get(ns, addr, &path, &headers, Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_headers_and_body() {
        let r = parse_response(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1-x\"\r\n\r\n").unwrap();
        assert_eq!(r.status, 304);
        assert_eq!(r.headers, vec![("ETag".into(), "\"v1-x\"".into())]);
        assert_eq!(r.body, "");
    }
}
