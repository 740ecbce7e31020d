//! Decoding a `Transfer-Encoding: chunked` request body, resumable so the
//! connection can feed it whatever the socket delivered so far.

use super::BodyError;

/// A chunk-size line longer than this is an attack, not an extension.
const MAX_SIZE_LINE: usize = 1024;
/// The trailer section is read and dropped; bound it like a head.
const MAX_TRAILERS: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers { seen: usize },
}

/// Where decoding stands.
#[derive(Debug)]
pub struct Chunked {
    state: State,
    /// Next undecoded byte of the buffer handed to `decode`.
    pub pos: usize,
    max: usize,
}

impl Chunked {
    pub fn new(pos: usize, max: usize) -> Self {
        Chunked {
            state: State::Size,
            pos,
            max,
        }
    }

    /// Decodes `buf[self.pos..]` into `out`. `Ok(true)`: the body is complete
    /// and `self.pos` is its end; `Ok(false)`: more bytes are needed.
    pub fn decode(&mut self, buf: &[u8], out: &mut Vec<u8>) -> Result<bool, BodyError> {
        loop {
            let rest = &buf[self.pos..];
            let progressed = match self.state {
                State::Size => self.size_line(rest, out.len())?,
                State::Data(left) => {
                    let take = rest.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..take]);
                    self.pos += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    take > 0
                }
                State::DataEnd => self.data_end(rest)?,
                State::Trailers { seen } => match self.trailers(rest, seen)? {
                    Some(done) => return Ok(done),
                    None => true,
                },
            };
            if !progressed {
                return Ok(false);
            }
        }
    }

    fn size_line(&mut self, rest: &[u8], decoded: usize) -> Result<bool, BodyError> {
        match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete((used, size))) => {
                if size > (self.max - decoded.min(self.max)) as u64 {
                    return Err(BodyError::TooLarge { limit: self.max });
                }
                self.pos += used;
                self.state = if size == 0 {
                    State::Trailers { seen: 0 }
                } else {
                    State::Data(size)
                };
                Ok(true)
            }
            Ok(httparse::Status::Partial) if rest.len() > MAX_SIZE_LINE => {
                Err(BodyError::BadChunk("chunk-size line too long"))
            }
            Ok(httparse::Status::Partial) => Ok(false),
            Err(_) => Err(BodyError::BadChunk("invalid chunk size")),
        }
    }

    fn data_end(&mut self, rest: &[u8]) -> Result<bool, BodyError> {
        match rest {
            [b'\r', b'\n', ..] => {
                self.pos += 2;
                self.state = State::Size;
                Ok(true)
            }
            [] | [b'\r'] => Ok(false),
            _ => Err(BodyError::BadChunk("chunk data not followed by CRLF")),
        }
    }

    /// `Some(true)`: the blank line ending the body was consumed;
    /// `Some(false)`: incomplete; `None`: one trailer line consumed.
    fn trailers(&mut self, rest: &[u8], seen: usize) -> Result<Option<bool>, BodyError> {
        let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
            if seen + rest.len() > MAX_TRAILERS {
                return Err(BodyError::BadChunk("trailer section too large"));
            }
            return Ok(Some(false));
        };
        let line = &rest[..nl];
        self.pos += nl + 1;
        if line.is_empty() || line == b"\r" {
            return Ok(Some(true));
        }
        if seen + nl + 1 > MAX_TRAILERS {
            return Err(BodyError::BadChunk("trailer section too large"));
        }
        self.state = State::Trailers {
            seen: seen + nl + 1,
        };
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `piece` bytes; `Ok(None)`: never complete.
    fn decode_in_pieces(
        wire: &[u8],
        piece: usize,
        max: usize,
    ) -> Result<Option<(Vec<u8>, usize)>, BodyError> {
        let mut d = Chunked::new(0, max);
        let mut out = Vec::new();
        let mut end = 0;
        while end < wire.len() {
            end = (end + piece).min(wire.len());
            if d.decode(&wire[..end], &mut out)? {
                return Ok(Some((out, d.pos)));
            }
        }
        Ok(None)
    }

    #[test]
    fn decodes_whatever_the_split() {
        let wire =
            b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in 1..wire.len() {
            let (out, pos) = decode_in_pieces(wire, piece, 1024).unwrap().unwrap();
            assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");
            assert_eq!(&wire[pos..], b"NEXT");
        }
    }

    /// Mutated chunked bodies fed in random pieces: decoded, refused or
    /// incomplete, never a panic, never past the limit or the input.
    #[test]
    fn noise_never_panics() {
        let valid = b"4\r\nWiki\r\n5;e=1\r\npedia\r\n0\r\nT: 1\r\n\r\n";
        let mut next = crate::http1::xorshift(0x2545_f491_4f6c_dd1d_u64);
        for _ in 0..20_000 {
            let mut input = valid.to_vec();
            for _ in 0..1 + next() % 3 {
                let at = (next() as usize) % input.len().max(1);
                match next() % 3 {
                    0 if !input.is_empty() => input[at] = next() as u8,
                    1 => input.truncate(at),
                    _ => input.insert(at, b"\r\n;0fF \xff"[next() as usize % 8]),
                }
            }
            let piece = 1 + (next() as usize) % 8;
            if let Ok(Some((out, pos))) = decode_in_pieces(&input, piece, 8) {
                assert!(out.len() <= 8 && pos <= input.len());
            }
        }
    }

    #[test]
    fn refuses_bad_and_oversized_bodies() {
        assert_eq!(
            decode_in_pieces(b"10\r\n0123456789abcdef\r\n0\r\n\r\n", 100, 8).unwrap_err(),
            BodyError::TooLarge { limit: 8 }
        );
        assert!(matches!(
            decode_in_pieces(b"zz\r\n", 100, 8),
            Err(BodyError::BadChunk(_))
        ));
        assert_eq!(decode_in_pieces(b"4\r\nab", 100, 8), Ok(None));
        assert!(matches!(
            decode_in_pieces(b"2\r\nabXY", 100, 8),
            Err(BodyError::BadChunk(_))
        ));
        let long_ext = format!("1;{}", "e".repeat(2000));
        assert!(matches!(
            decode_in_pieces(long_ext.as_bytes(), 100, 8),
            Err(BodyError::BadChunk(_))
        ));
    }
}
