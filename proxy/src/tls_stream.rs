//! TLS termination on rustls' unbuffered API.
//!
//! Why not tokio-rustls: its buffered `ServerConnection` keeps a 4 KiB receive
//! buffer, zero-filled, for the whole life of a connection, idle or not. At
//! 10,000 idle keep-alive connections that is 40 MiB, a fifth of what such a
//! connection costs (docs/performance.md, "Memory per idle connection"). Here a
//! connection holds no buffer while it waits: one is taken from a short
//! per-thread spare list when the socket is readable or a record is to be sent,
//! and given back as soon as it is empty (nginx does the same with OpenSSL's
//! `SSL_MODE_RELEASE_BUFFERS`).
//!
//! The ClientHello is read first with rustls' `Acceptor`, so that the server
//! config (its cipher suite order) can be chosen per client, as
//! `LazyConfigAcceptor` did; the bytes are then handed to the connection.
//!
//! With its hold switch set, shutting the stream down only flushes it: that is
//! how hyper hands an idle HTTP/1.1 connection back to be parked (server.rs,
//! `serve_http1_tls`) without closing it.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::server::{Acceptor, ClientHello, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// One buffer: room for the largest record a peer may send (2^14 + 2048 + 5)
/// and, outgoing, for one record of `MAX_PLAIN` bytes and its overhead.
const BUF_LEN: usize = 20 * 1024;
/// Plaintext encrypted into one record per write.
const MAX_PLAIN: usize = 16 * 1024;
/// Room for a whole record's overhead (header, AEAD tag, content type).
const RECORD_OVERHEAD: usize = 5 + 16 + 1 + 256;
/// rustls joins a handshake message's records in our buffer and refuses
/// messages over 64 KiB; beyond this the peer is sending nonsense.
const MAX_INCOMING: usize = 64 * 1024 + BUF_LEN;
/// Empty buffers kept per thread for the next connection that needs one.
const SPARES: usize = 16;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// Where the slices of a vectored write are gathered into one record.
    static GATHER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn take_buf() -> Vec<u8> {
    SPARE
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; BUF_LEN])
}

fn give_back(buf: Vec<u8>) {
    // A buffer grown for a large handshake message is not kept.
    if buf.len() == BUF_LEN {
        SPARE.with(|s| {
            let mut spare = s.borrow_mut();
            if spare.len() < SPARES {
                spare.push(buf);
            }
        });
    }
}

/// Bytes `buf[start..end]`; the buffer exists only while it is needed.
#[derive(Default)]
struct Chunk {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Chunk {
    fn len(&self) -> usize {
        self.end - self.start
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Gives the buffer back if it holds nothing.
    fn release(&mut self) {
        if self.is_empty() && !self.buf.is_empty() {
            give_back(std::mem::take(&mut self.buf));
        }
    }

    /// Free room after the data, at least `want` bytes.
    fn room(&mut self, want: usize) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = take_buf();
        }
        if self.buf.len() - self.end < want && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < want {
            self.buf.resize(self.end + want, 0);
        }
        &mut self.buf[self.end..]
    }

    fn filled(&mut self, n: usize) {
        self.end += n;
    }

    fn push(&mut self, bytes: &[u8]) {
        self.room(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        self.filled(bytes.len());
    }
}

/// What one call of `process_tls_records` came to.
enum Step {
    /// Something was done; call again.
    Again,
    /// Application data was handed out (or kept for the next read).
    Read,
    /// Records are waiting in `outgoing`: send them, then call again.
    NeedFlush,
    /// The handshake needs more bytes from the peer.
    NeedInput,
    /// Handshake done, nothing pending: application data may flow.
    Idle,
    /// This many bytes of the caller's plaintext were encrypted.
    Wrote(usize),
    /// The peer sent close_notify.
    PeerClosed,
    /// Both sides sent close_notify.
    Closed,
}

/// What a step does when the connection may send application data.
enum Job<'d> {
    Nothing,
    Encrypt(&'d [u8]),
    CloseNotify,
}

/// A TLS server connection over a TCP stream.
pub struct TlsStream {
    io: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext read, not yet consumed by rustls.
    incoming: Chunk,
    /// Ciphertext to send.
    outgoing: Chunk,
    /// Decrypted data the reader had no room for yet.
    plaintext: Chunk,
    read_closed: bool,
    write_closed: bool,
    /// The last write was refused (`Pending`): its writer still holds data.
    write_blocked: bool,
    /// Set while the connection is handed back from its HTTP server to be
    /// parked: shutting the stream down then only flushes it.
    hold: Arc<AtomicBool>,
}

/// A finished handshake: the stream and the SNI name the client sent.
pub struct Accepted {
    pub stream: TlsStream,
    pub sni: Option<String>,
}

/// Reads the ClientHello, asks `choose` for the config to answer it with, and
/// completes the handshake. On a refused handshake the alert rustls made is
/// sent before the error is returned.
pub async fn accept(
    mut io: TcpStream,
    choose: impl FnOnce(&ClientHello<'_>) -> Arc<ServerConfig>,
) -> io::Result<Accepted> {
    let mut incoming = Chunk::default();
    let mut acceptor = Acceptor::default();
    // The acceptor gets its own copy of the bytes; ours go to the connection.
    let mut fed = 0;
    let (config, sni) = loop {
        if !fill(&mut io, &mut incoming).await? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the ClientHello",
            ));
        }
        // Fed 4 KiB at a time (its read size), each followed by `accept`:
        // until the acceptor starts joining a handshake message it refuses
        // to hold more than one record's worth.
        let mut new = &incoming.data()[fed..];
        let mut outcome = Ok(None);
        while !new.is_empty() {
            if acceptor.read_tls(&mut new)? == 0 {
                break;
            }
            outcome = acceptor.accept();
            if !matches!(outcome, Ok(None)) {
                break;
            }
        }
        fed = incoming.len() - new.len();
        match outcome {
            Ok(None) => {}
            Ok(Some(accepted)) => {
                let hello = accepted.client_hello();
                let sni = hello.server_name().map(str::to_owned);
                break (choose(&hello), sni);
            }
            Err((e, mut alert)) => {
                let mut out = Vec::new();
                if alert.write_all(&mut out).is_ok() {
                    let _ = io.write_all(&out).await;
                }
                return Err(tls_error(e));
            }
        }
    };
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut stream = TlsStream {
        io,
        conn,
        incoming,
        outgoing: Chunk::default(),
        plaintext: Chunk::default(),
        read_closed: false,
        write_closed: false,
        write_blocked: false,
        hold: Arc::default(),
    };
    match poll_fn(|cx| stream.poll_handshake(cx)).await {
        Ok(()) => Ok(Accepted { stream, sni }),
        Err(e) => {
            stream.queue_alert();
            let TlsStream {
                mut io, outgoing, ..
            } = stream;
            if !outgoing.is_empty() {
                let _ = io.write_all(outgoing.data()).await;
            }
            Err(e)
        }
    }
}

/// Reads what the socket has into `incoming`; false at end of stream.
async fn fill(io: &mut TcpStream, incoming: &mut Chunk) -> io::Result<bool> {
    poll_fn(|cx| poll_fill(io, incoming, cx)).await
}

fn poll_fill(io: &TcpStream, incoming: &mut Chunk, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
    loop {
        match io.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                // Waiting: hold no buffer.
                incoming.release();
                return Poll::Pending;
            }
        }
        if incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS message too large",
            )));
        }
        let want = if incoming.is_empty() { BUF_LEN } else { 4096 };
        match io.try_read(incoming.room(want)) {
            Ok(0) => {
                incoming.release();
                return Poll::Ready(Ok(false));
            }
            Ok(n) => {
                incoming.filled(n);
                return Poll::Ready(Ok(true));
            }
            // Readiness was stale: it is cleared; wait again.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsStream {
    /// The ALPN protocol the handshake agreed on.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The switch that makes `poll_shutdown` only flush (see `hold`): set it
    /// before asking the HTTP server that owns the stream to finish.
    pub fn hold_switch(&self) -> Arc<AtomicBool> {
        self.hold.clone()
    }

    /// Makes shutting down close the connection again.
    pub fn release_hold(&self) {
        self.hold.store(false, Ordering::Relaxed);
    }

    /// Puts `bytes` back in front of what the next read returns: bytes the
    /// HTTP server had read but not used when it handed the stream back.
    pub fn unread(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let rest = self.plaintext.data().to_vec();
        self.plaintext.consume(self.plaintext.len());
        self.plaintext.push(bytes);
        self.plaintext.push(&rest);
    }

    /// Ready when a read would not wait: data is buffered, the socket is
    /// readable (or closed), or the stream has ended. Takes no buffer.
    pub fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.plaintext.is_empty() || !self.incoming.is_empty() || self.read_closed {
            return Poll::Ready(Ok(()));
        }
        self.io.poll_read_ready(cx)
    }

    /// Bytes of buffer this connection holds: 0 while it waits for the peer
    /// with nothing to send.
    pub fn buffers_held(&self) -> usize {
        self.incoming.buf.capacity() + self.outgoing.buf.capacity() + self.plaintext.buf.capacity()
    }

    /// One call of `process_tls_records`, its state handled. Decrypted data
    /// goes to `dst` while it has room, the rest to `self.plaintext`.
    fn step(&mut self, mut dst: Option<&mut ReadBuf<'_>>, job: Job<'_>) -> io::Result<Step> {
        let status = self.conn.process_tls_records(self.incoming.data_mut());
        let discard = status.discard;
        let step = match status.state {
            Err(e) => Err(tls_error(e)),
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                let mut failed = None;
                while let Some(record) = traffic.next_record() {
                    match record {
                        Ok(record) => {
                            let mut payload = record.payload;
                            if self.plaintext.is_empty() {
                                if let Some(dst) = dst.as_deref_mut() {
                                    let n = payload.len().min(dst.remaining());
                                    dst.put_slice(&payload[..n]);
                                    payload = &payload[n..];
                                }
                            }
                            if !payload.is_empty() {
                                self.plaintext.push(payload);
                            }
                        }
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                match failed {
                    Some(e) => Err(tls_error(e)),
                    None => Ok(Step::Read),
                }
            }
            Ok(ConnectionState::EncodeTlsData(mut data)) => {
                let mut want = 4096;
                loop {
                    match data.encode(self.outgoing.room(want)) {
                        Ok(n) => {
                            self.outgoing.filled(n);
                            break Ok(Step::Again);
                        }
                        Err(EncodeError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => want = required_size,
                        Err(EncodeError::AlreadyEncoded) => break Ok(Step::Again),
                    }
                }
            }
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                if self.outgoing.is_empty() {
                    transmit.done();
                    Ok(Step::Again)
                } else {
                    Ok(Step::NeedFlush)
                }
            }
            Ok(ConnectionState::BlockedHandshake) => Ok(Step::NeedInput),
            Ok(ConnectionState::WriteTraffic(mut traffic)) => match job {
                Job::Nothing => Ok(Step::Idle),
                Job::Encrypt(data) => {
                    let data = &data[..data.len().min(MAX_PLAIN)];
                    let mut want = data.len() + RECORD_OVERHEAD;
                    loop {
                        match traffic.encrypt(data, self.outgoing.room(want)) {
                            Ok(n) => {
                                self.outgoing.filled(n);
                                break Ok(Step::Wrote(data.len()));
                            }
                            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) if required_size > want => want = required_size,
                            Err(e) => break Err(io::Error::other(e)),
                        }
                    }
                }
                Job::CloseNotify => {
                    let mut want = 64;
                    loop {
                        match traffic.queue_close_notify(self.outgoing.room(want)) {
                            Ok(n) => {
                                self.outgoing.filled(n);
                                break Ok(Step::Wrote(0));
                            }
                            Err(EncryptError::InsufficientSize(InsufficientSizeError {
                                required_size,
                            })) if required_size > want => want = required_size,
                            Err(e) => break Err(io::Error::other(e)),
                        }
                    }
                }
            },
            Ok(ConnectionState::PeerClosed) => Ok(Step::PeerClosed),
            Ok(ConnectionState::Closed) => Ok(Step::Closed),
            // Early data is not enabled in our configs.
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unexpected TLS state",
            )),
        };
        self.incoming.consume(discard);
        step
    }

    /// Encodes the alert rustls queued with its last error, if any.
    fn queue_alert(&mut self) {
        let status = self.conn.process_tls_records(&mut []);
        if let Ok(ConnectionState::EncodeTlsData(mut data)) = status.state {
            if let Ok(n) = data.encode(self.outgoing.room(512)) {
                self.outgoing.filled(n);
            }
        }
    }

    /// After an error on an established connection: the alert, if the socket
    /// takes it now.
    fn fail(&mut self, e: io::Error) -> io::Error {
        self.queue_alert();
        if !self.outgoing.is_empty() {
            let _ = self.io.try_write(self.outgoing.data());
        }
        e
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self.step(None, Job::Nothing)? {
                Step::Again | Step::Read | Step::Wrote(_) => {}
                Step::NeedFlush => ready!(self.poll_send(cx))?,
                Step::Idle if !self.conn.is_handshaking() => {
                    ready!(self.poll_send(cx))?;
                    self.incoming.release();
                    return Poll::Ready(Ok(()));
                }
                Step::Idle | Step::NeedInput => {
                    if !ready!(poll_fill(&self.io, &mut self.incoming, cx))? {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed during the TLS handshake",
                        )));
                    }
                }
                Step::PeerClosed | Step::Closed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "close_notify during the TLS handshake",
                    )))
                }
            }
        }
    }

    /// Sends what `outgoing` holds; its buffer is given back once empty.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outgoing.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, self.outgoing.data()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing.consume(n);
        }
        self.outgoing.release();
        Poll::Ready(Ok(()))
    }

    fn poll_read_inner(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.plaintext.is_empty() {
                let n = self.plaintext.len().min(buf.remaining());
                buf.put_slice(&self.plaintext.data()[..n]);
                self.plaintext.consume(n);
                self.plaintext.release();
                return Poll::Ready(Ok(()));
            }
            if self.read_closed {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            match self.step(Some(buf), Job::Nothing)? {
                Step::Read => {
                    if buf.filled().len() > before {
                        return Poll::Ready(Ok(()));
                    }
                }
                Step::Again | Step::Wrote(_) => {}
                Step::NeedFlush => ready!(self.poll_send(cx))?,
                Step::Idle | Step::NeedInput => {
                    if !ready!(poll_fill(&self.io, &mut self.incoming, cx))? {
                        if !self.incoming.is_empty() {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "connection closed inside a TLS record",
                            )));
                        }
                        // Closed without close_notify: HTTP messages carry
                        // their own length, so this is an ordinary end.
                        self.read_closed = true;
                    }
                }
                Step::PeerClosed | Step::Closed => self.read_closed = true,
            }
        }
    }

    fn poll_write_inner(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Send what is queued before it outgrows one buffer.
        if self.outgoing.len() + data.len().min(MAX_PLAIN) + RECORD_OVERHEAD > BUF_LEN {
            ready!(self.poll_send(cx))?;
        }
        loop {
            match self.step(None, Job::Encrypt(data))? {
                Step::Wrote(n) => return Poll::Ready(Ok(n)),
                Step::Again | Step::Read | Step::Idle => {}
                Step::NeedFlush => ready!(self.poll_send(cx))?,
                Step::PeerClosed => self.read_closed = true,
                Step::NeedInput => {
                    return Poll::Ready(Err(io::Error::other("TLS handshake not complete")))
                }
                Step::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        match ready!(this.poll_read_inner(cx, buf)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(this.fail(e))),
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = this.poll_write_inner(cx, data);
        this.write_blocked = written.is_pending();
        match ready!(written) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(this.fail(e))),
        }
    }

    /// Gathers the slices into one record (up to `MAX_PLAIN` bytes): a
    /// response head and a small body go out as one record, not two.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty()).map(|b| &b[..]);
        let Some(first) = first else {
            return Poll::Ready(Ok(0));
        };
        if first.len() >= MAX_PLAIN || bufs.iter().filter(|b| !b.is_empty()).count() == 1 {
            return self.poll_write(cx, first);
        }
        let this = self.get_mut();
        GATHER.with(|gather| {
            let mut gather = gather.borrow_mut();
            gather.clear();
            for b in bufs {
                let take = b.len().min(MAX_PLAIN - gather.len());
                gather.extend_from_slice(&b[..take]);
                if gather.len() == MAX_PLAIN {
                    break;
                }
            }
            let written = this.poll_write_inner(cx, &gather);
            this.write_blocked = written.is_pending();
            match ready!(written) {
                Ok(n) => Poll::Ready(Ok(n)),
                Err(e) => Poll::Ready(Err(this.fail(e))),
            }
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.hold.load(Ordering::Relaxed) {
            ready!(this.poll_send(cx))?;
            if this.write_blocked {
                // The HTTP server may still hold bytes we refused: polled
                // again, it writes them (hyper flushes before it shuts down)
                // and only then hands the stream back.
                this.write_blocked = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            return Pin::new(&mut this.io).poll_flush(cx);
        }
        while !this.write_closed {
            match this.step(None, Job::CloseNotify)? {
                Step::Wrote(_) | Step::Closed | Step::NeedInput => this.write_closed = true,
                Step::NeedFlush => ready!(this.poll_send(cx))?,
                Step::PeerClosed => this.read_closed = true,
                Step::Again | Step::Read | Step::Idle => {}
            }
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
