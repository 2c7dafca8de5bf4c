//! Requests whose HTTP/2 `:authority` is not a valid URI authority, as gRPC's C core (Python,
//! C++, Ruby clients) sends over a unix socket by default (the escaped socket path,
//! `tmp%2Fcrated.sock`), are served instead of reset. h2 resets such a stream as malformed;
//! containerd (grpc-go) ignores the authority. This wrapper sits between a unix socket and h2
//! and reads the client's side of the connection: at the first request it decides. A valid
//! authority leaves the connection untouched from then on (bytes pass straight through); an
//! invalid one makes every header block of the connection decoded (HPACK) and encoded again as
//! literals, with `:authority: localhost`, so h2's decoder never depends on the client's
//! dynamic table.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// What frames the wrapper writes carry at most: HTTP/2's initial SETTINGS_MAX_FRAME_SIZE.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this ends the connection (h2's own list limit is 16 MiB; gRPC
/// clients send a few hundred bytes).
const MAX_BLOCK: usize = 1 << 20;
/// h2's SETTINGS_HEADER_TABLE_SIZE, which bounds the client's dynamic table.
const TABLE_SIZE: usize = 4096;
/// What an invalid authority becomes.
const REPLACEMENT: &[u8] = b"localhost";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No request seen yet.
    Undecided,
    /// The first request's authority was valid: bytes pass through.
    Transparent,
    /// Header blocks are decoded and encoded again.
    Rewriting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Preface {
        left: usize,
    },
    FrameHeader,
    /// The rest of a frame passed on as it is.
    PassOn {
        left: usize,
    },
    /// A HEADERS or CONTINUATION payload of `len` bytes, read whole.
    BlockPayload {
        len: usize,
        kind: u8,
        flags: u8,
    },
}

/// A header block being gathered across HEADERS and CONTINUATION frames.
#[derive(Default)]
struct Block {
    stream: u32,
    /// The HEADERS frame's END_STREAM and PRIORITY flags, and its priority fields.
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as they came, for a connection that turns out transparent.
    raw: Vec<u8>,
}

/// Reads the client's side of an HTTP/2 connection, rewriting as the module says.
pub struct AuthorityRewriter<S> {
    inner: S,
    mode: Mode,
    step: Step,
    input: BytesMut,
    output: BytesMut,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    eof: bool,
}

impl<S> AuthorityRewriter<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        AuthorityRewriter {
            inner,
            mode: Mode::Undecided,
            step: Step::Preface { left: PREFACE_LEN },
            input: BytesMut::new(),
            output: BytesMut::new(),
            block: None,
            decoder,
            eof: false,
        }
    }

    /// Moves what the input holds through the steps, as far as it goes.
    fn process(&mut self) -> io::Result<()> {
        loop {
            if self.mode == Mode::Transparent && self.block.is_none() {
                let all = self.input.split();
                self.output.unsplit(all);
                return Ok(());
            }
            match self.step {
                Step::Preface { left } | Step::PassOn { left } => {
                    let n = left.min(self.input.len());
                    if n == 0 && left > 0 {
                        return Ok(());
                    }
                    let passed = self.input.split_to(n);
                    self.output.unsplit(passed);
                    self.step = match (self.step, left - n) {
                        (_, 0) => Step::FrameHeader,
                        (Step::Preface { .. }, left) => Step::Preface { left },
                        (_, left) => Step::PassOn { left },
                    };
                }
                Step::FrameHeader => {
                    if self.input.len() < FRAME_HEADER_LEN {
                        return Ok(());
                    }
                    let h = &self.input[..FRAME_HEADER_LEN];
                    let len =
                        (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                    let (kind, flags) = (h[3], h[4]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    match (kind, &self.block) {
                        (HEADERS, None) => {
                            self.block = Some(Block {
                                stream,
                                ..Block::default()
                            });
                            self.step = Step::BlockPayload { len, kind, flags };
                        }
                        (CONTINUATION, Some(block)) if block.stream == stream => {
                            self.step = Step::BlockPayload { len, kind, flags };
                        }
                        // h2 refuses anything else inside a header block: let it say so.
                        (_, Some(_)) => {
                            let block = self.block.take().map(|b| b.raw).unwrap_or_default();
                            self.output.put_slice(&block);
                            self.mode = Mode::Transparent;
                            continue;
                        }
                        _ => {
                            let header = self.input.split_to(FRAME_HEADER_LEN);
                            self.output.unsplit(header);
                            self.step = Step::PassOn { left: len };
                        }
                    }
                }
                Step::BlockPayload { len, kind, flags } => {
                    if len > MAX_BLOCK {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "an HTTP/2 header block larger than 1 MiB",
                        ));
                    }
                    if self.input.len() < FRAME_HEADER_LEN + len {
                        return Ok(());
                    }
                    let frame = self.input.split_to(FRAME_HEADER_LEN + len);
                    let Some(block) = self.block.as_mut() else {
                        return Err(invalid("a header block without its HEADERS frame"));
                    };
                    block.raw.extend_from_slice(&frame);
                    let mut payload = &frame[FRAME_HEADER_LEN..];
                    if kind == HEADERS {
                        let mut padding = 0;
                        if flags & PADDED != 0 {
                            padding = usize::from(
                                *payload.first().ok_or_else(|| invalid("no pad length"))?,
                            );
                            payload = &payload[1..];
                        }
                        if flags & PRIORITY != 0 {
                            let fields = payload.get(..5).ok_or_else(|| invalid("no priority"))?;
                            block.priority =
                                Some(fields.try_into().map_err(|_| invalid("no priority"))?);
                            payload = &payload[5..];
                        }
                        payload = payload
                            .get(
                                ..payload
                                    .len()
                                    .checked_sub(padding)
                                    .ok_or_else(|| invalid("padding"))?,
                            )
                            .ok_or_else(|| invalid("padding"))?;
                        block.flags = flags & (END_STREAM | PRIORITY);
                    }
                    block.fragment.extend_from_slice(payload);
                    if block.raw.len() > MAX_BLOCK {
                        return Err(invalid("a header block larger than 1 MiB"));
                    }
                    self.step = Step::FrameHeader;
                    if flags & END_HEADERS != 0 {
                        self.finish_block()?;
                    }
                }
            }
        }
    }

    /// A whole header block: decided on, passed on or written again.
    fn finish_block(&mut self) -> io::Result<()> {
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        let mut headers = Vec::new();
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                headers.push((name.into_owned(), value.into_owned()))
            })
            .map_err(|e| invalid(&format!("HPACK: {e}")))?;
        let mut rewrite = false;
        for (name, value) in &mut headers {
            if name == b":authority"
                && tonic::codegen::http::uri::Authority::try_from(value.as_slice()).is_err()
            {
                *value = REPLACEMENT.to_vec();
                rewrite = true;
            }
        }
        if self.mode == Mode::Undecided {
            self.mode = if rewrite {
                Mode::Rewriting
            } else {
                Mode::Transparent
            };
        }
        if self.mode == Mode::Transparent {
            self.output.put_slice(&block.raw);
            return Ok(());
        }
        let mut encoded = Vec::new();
        for (name, value) in &headers {
            // A literal without indexing, its name given: h2's table never changes.
            encoded.push(0);
            put_string(&mut encoded, name);
            put_string(&mut encoded, value);
        }
        self.put_frames(&block, &encoded);
        Ok(())
    }

    /// A HEADERS frame and as many CONTINUATION frames as `encoded` needs.
    fn put_frames(&mut self, block: &Block, encoded: &[u8]) {
        let prefix = if block.priority.is_some() { 5 } else { 0 };
        let first = encoded.len().min(MAX_FRAME - prefix);
        let (head, mut rest) = encoded.split_at(first);
        let end = if rest.is_empty() { END_HEADERS } else { 0 };
        put_frame_header(
            &mut self.output,
            prefix + head.len(),
            HEADERS,
            block.flags | end,
            block.stream,
        );
        if let Some(priority) = block.priority {
            self.output.put_slice(&priority);
        }
        self.output.put_slice(head);
        while !rest.is_empty() {
            let n = rest.len().min(MAX_FRAME);
            let end = if n == rest.len() { END_HEADERS } else { 0 };
            put_frame_header(&mut self.output, n, CONTINUATION, end, block.stream);
            self.output.put_slice(&rest[..n]);
            rest = &rest[n..];
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed HTTP/2 from the client: {what}"),
    )
}

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    out.put_slice(&(len as u32).to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// An HPACK string literal, not Huffman-coded.
fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    // Writing into a Vec cannot fail.
    let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRewriter<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.mode == Mode::Transparent && this.input.is_empty() && this.block.is_none() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => this.input.extend_from_slice(read.filled()),
            }
            this.process()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRewriter<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityRewriter<S>
{
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        put_frame_header(&mut out, payload.len(), kind, flags, stream);
        out.put_slice(payload);
        out.to_vec()
    }

    /// A client's header block, encoded by an HPACK encoder with its dynamic table in use.
    fn encode(encoder: &mut loona_hpack::Encoder<'_>, headers: &[(&str, &str)]) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    async fn through(input: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        AuthorityRewriter::new(&input[..])
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    }

    /// The header blocks of `bytes` (after the preface), decoded as h2 would.
    fn decoded_blocks(bytes: &[u8]) -> Vec<Vec<(String, String)>> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut rest = &bytes[PREFACE_LEN..];
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        while !rest.is_empty() {
            let len =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let mut payload = &rest[9..9 + len];
            if kind == HEADERS && flags & PRIORITY != 0 {
                payload = &payload[5..];
            }
            if kind == HEADERS || kind == CONTINUATION {
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    let list = decoder.decode(&block).unwrap();
                    blocks.push(
                        list.into_iter()
                            .map(|(n, v)| {
                                (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                            })
                            .collect(),
                    );
                    block.clear();
                }
            }
            rest = &rest[9 + len..];
        }
        blocks
    }

    fn request(authority: &str, path: &str) -> Vec<(&'static str, String)> {
        vec![
            (":method", "POST".into()),
            (":scheme", "http".into()),
            (":path", path.into()),
            (":authority", authority.into()),
            ("content-type", "application/grpc".into()),
        ]
    }

    fn connection(authority: &str, requests: usize) -> Vec<u8> {
        let mut encoder = loona_hpack::Encoder::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[]));
        for i in 0..requests {
            let headers = request(authority, &format!("/svc/M{i}"));
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let block = encode(&mut encoder, &pairs);
            let stream = 1 + 2 * i as u32;
            // The first request's block spans a CONTINUATION frame.
            if i == 0 {
                let (a, b) = block.split_at(block.len() / 2);
                bytes.extend(frame(
                    HEADERS,
                    PRIORITY,
                    stream,
                    &[&[0, 0, 0, 0, 15][..], a].concat(),
                ));
                bytes.extend(frame(CONTINUATION, END_HEADERS, stream, b));
            } else {
                bytes.extend(frame(HEADERS, END_HEADERS, stream, &block));
            }
            bytes.extend(frame(0x0, END_STREAM, stream, b"\0\0\0\0\0"));
        }
        bytes
    }

    #[tokio::test]
    async fn a_valid_authority_leaves_the_connection_as_it_was() {
        let input = connection("localhost", 3);
        assert_eq!(through(input.clone()).await, input);
    }

    #[tokio::test]
    async fn an_escaped_socket_path_becomes_localhost_on_every_request() {
        let out = through(connection("tmp%2Fcrated.sock", 3)).await;
        let blocks = decoded_blocks(&out);
        assert_eq!(blocks.len(), 3);
        for (i, block) in blocks.iter().enumerate() {
            let expected: Vec<(String, String)> = request("localhost", &format!("/svc/M{i}"))
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v))
                .collect();
            assert_eq!(block, &expected);
        }
        // DATA frames come through untouched.
        let data = frame(0x0, END_STREAM, 5, b"\0\0\0\0\0");
        assert!(out.windows(data.len()).any(|w| w == data));
    }

    #[tokio::test]
    async fn a_large_block_is_split_into_continuation_frames() {
        let mut encoder = loona_hpack::Encoder::new();
        let big = "v".repeat(40_000);
        let block = encode(&mut encoder, &[(":authority", "a%2Fb"), ("x-big", &big)]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
        let out = through(input).await;
        let blocks = decoded_blocks(&out);
        assert_eq!(blocks[0][0], (":authority".into(), "localhost".into()));
        assert_eq!(blocks[0][1].1.len(), 40_000);
        // HEADERS keeps END_STREAM; no frame is over the initial maximum.
        assert_eq!(out[PREFACE_LEN + 4] & END_STREAM, END_STREAM);
        let mut rest = &out[PREFACE_LEN..];
        while !rest.is_empty() {
            let len =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            assert!(len <= MAX_FRAME);
            rest = &rest[9 + len..];
        }
    }

    #[tokio::test]
    async fn garbage_in_a_header_block_ends_the_connection() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ));
        let mut out = Vec::new();
        let err = AuthorityRewriter::new(&input[..])
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
