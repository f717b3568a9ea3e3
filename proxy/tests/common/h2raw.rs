//! A minimal HTTP/2 frame writer and reader (RFC 9113 section 4) for sending
//! frames no well-behaved client would send.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const REFUSED_STREAM: u32 = 0x7;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame: 9-byte header, then the payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in values {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

pub fn settings_ack() -> Vec<u8> {
    frame(SETTINGS, ACK, 0, &[])
}

pub fn ping(data: [u8; 8]) -> Vec<u8> {
    frame(PING, 0, 0, &data)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn headers(stream: u32, block: &[u8], flags: u8) -> Vec<u8> {
    frame(HEADERS, flags, stream, block)
}

/// The client preface, empty SETTINGS and an ACK of the server's.
pub fn handshake() -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    out.extend(settings(&[]));
    out
}

/// HPACK integer with an `n`-bit prefix whose high bits are `first`.
pub fn hpack_int(first: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

/// An HPACK string literal without Huffman coding.
pub fn hpack_str(s: &[u8], out: &mut Vec<u8>) {
    hpack_int(0, 7, s.len(), out);
    out.extend_from_slice(s);
}

/// Literal header field without indexing, name from the static table.
pub fn literal_indexed_name(index: usize, value: &[u8], out: &mut Vec<u8>) {
    hpack_int(0, 4, index, out);
    hpack_str(value, out);
}

/// Literal header field with incremental indexing and a new name (it enters
/// the dynamic table).
pub fn literal_new_name_indexed(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x40);
    hpack_str(name, out);
    hpack_str(value, out);
}

/// Literal header field without indexing and a new name.
pub fn literal_new_name(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    hpack_str(name, out);
    hpack_str(value, out);
}

/// The header block of `GET http://{authority}{path}`.
pub fn get_block(authority: &str, path: &str) -> Vec<u8> {
    let mut out = vec![0x82, 0x86]; // :method GET, :scheme http
    literal_indexed_name(4, path.as_bytes(), &mut out); // :path
    literal_indexed_name(1, authority.as_bytes(), &mut out); // :authority
    out
}

#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// (last stream id, error code) of a GOAWAY.
    pub fn goaway(&self) -> Option<(u32, u32)> {
        (self.kind == GOAWAY && self.payload.len() >= 8).then(|| {
            let last = u32::from_be_bytes(self.payload[0..4].try_into().unwrap()) & 0x7fff_ffff;
            let code = u32::from_be_bytes(self.payload[4..8].try_into().unwrap());
            (last, code)
        })
    }

    /// The error code of a RST_STREAM.
    pub fn rst_code(&self) -> Option<u32> {
        (self.kind == RST_STREAM && self.payload.len() == 4)
            .then(|| u32::from_be_bytes(self.payload[0..4].try_into().unwrap()))
    }

    /// The `:status` of a response HEADERS frame that starts a connection's
    /// first response (so the dynamic table is empty): a static-table index or
    /// a literal whose value is three Huffman- or plain-coded digits.
    pub fn status(&self) -> Option<u16> {
        if self.kind != HEADERS {
            return None;
        }
        let mut p = &self.payload[..];
        if self.flags & 0x8 != 0 {
            let pad = *p.first()? as usize;
            p = p.get(1..p.len().checked_sub(pad)?)?;
        }
        if self.flags & 0x20 != 0 {
            p = p.get(5..)?;
        }
        let first = *p.first()?;
        if first & 0x80 != 0 {
            return match first & 0x7f {
                8 => Some(200),
                9 => Some(204),
                10 => Some(206),
                11 => Some(304),
                12 => Some(400),
                13 => Some(404),
                14 => Some(500),
                _ => None,
            };
        }
        // Literal (with or without indexing) whose name is :status (index 8).
        let name = if first & 0x40 != 0 {
            first & 0x3f
        } else {
            first & 0x0f
        };
        if name != 8 {
            return None;
        }
        let len = (p.get(1)? & 0x7f) as usize;
        let value = p.get(2..2 + len)?;
        let digits = if p[1] & 0x80 != 0 {
            huffman_digits(value)?
        } else {
            String::from_utf8(value.to_vec()).ok()?
        };
        digits.parse().ok()
    }
}

/// Decodes a Huffman string of digits only (RFC 7541 appendix B: `0`-`2` are
/// 5 bits 0-2, `3`-`9` are 6 bits 0x19-0x1f).
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    while i + 5 <= bits.len() {
        let five = bits[i..i + 5].iter().fold(0u8, |a, b| a << 1 | b);
        if five <= 2 {
            out.push((b'0' + five) as char);
            i += 5;
            continue;
        }
        if i + 6 > bits.len() {
            break;
        }
        let six = bits[i..i + 6].iter().fold(0u8, |a, b| a << 1 | b);
        if (0x19..=0x1f).contains(&six) {
            out.push((b'3' + six - 0x19) as char);
            i += 6;
        } else {
            break;
        }
    }
    // What remains must be EOS padding (all ones, under 8 bits).
    (bits.len() - i < 8 && bits[i..].iter().all(|b| *b == 1)).then_some(out)
}

/// Frames read until `stop` holds for one, the peer closes, or `deadline`.
pub struct Read {
    pub frames: Vec<Frame>,
    pub closed: bool,
    pub elapsed: Duration,
}

impl Read {
    pub fn goaway(&self) -> Option<(u32, u32)> {
        self.frames.iter().find_map(Frame::goaway)
    }

    pub fn count(&self, kind: u8) -> usize {
        self.frames.iter().filter(|f| f.kind == kind).count()
    }
}

pub async fn read_frames<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Duration,
    mut stop: impl FnMut(&Frame) -> bool,
) -> Read {
    let start = Instant::now();
    let mut frames = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        // Parse what is buffered.
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let f = Frame {
                kind: buf[3],
                flags: buf[4],
                stream: u32::from_be_bytes(buf[5..9].try_into().unwrap()) & 0x7fff_ffff,
                payload: buf[9..9 + len].to_vec(),
            };
            buf.drain(..9 + len);
            let done = stop(&f);
            frames.push(f);
            if done {
                return Read {
                    frames,
                    closed: false,
                    elapsed: start.elapsed(),
                };
            }
        }
        let left = deadline.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Read {
                    frames,
                    closed: true,
                    elapsed: start.elapsed(),
                }
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {
                return Read {
                    frames,
                    closed: false,
                    elapsed: start.elapsed(),
                }
            }
        }
    }
}

#[test]
fn huffman_digit_decoding() {
    // "431": `4` 011010, `3` 011001, `1` 00001, then EOS padding.
    let mut bits = String::from("01101001100100001");
    while bits.len() % 8 != 0 {
        bits.push('1');
    }
    let bytes: Vec<u8> = bits
        .as_bytes()
        .chunks(8)
        .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 2).unwrap())
        .collect();
    assert_eq!(huffman_digits(&bytes).as_deref(), Some("431"));
}
