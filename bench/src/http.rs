//! Just enough HTTP/1.1 for long polls: one request at a time per
//! keep-alive connection, `Content-Length` bodies.

use std::time::Instant;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct Conn {
    stream: BufReader<TcpStream>,
}

pub struct Answer {
    pub status: u16,
    pub at: Instant,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    pub body: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        tcp.set_nodelay(true)?;
        // A small read buffer: the client holds 10,000 of these.
        Ok(Conn {
            stream: BufReader::with_capacity(2048, tcp),
        })
    }

    pub async fn request(&mut self, head: &str, body: &[u8]) -> anyhow::Result<Answer> {
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes()).await?;
        if !body.is_empty() {
            s.write_all(body).await?;
        }
        self.read_answer().await
    }

    async fn read_answer(&mut self) -> anyhow::Result<Answer> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        let at = Instant::now();
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .context("status line")?
            .parse()?;
        let (mut len, mut etag, mut last_modified) = (0usize, None, None);
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim().to_owned();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.parse()?,
                    "etag" => etag = Some(v),
                    "last-modified" => last_modified = Some(v),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).await?;
        Ok(Answer {
            status,
            at,
            etag,
            last_modified,
            body,
        })
    }
}
