//! Reading what a connection sends before it can be routed: a PROXY protocol
//! header (on entrypoints with a `proxyProtocol` table), a PostgreSQL
//! SSLRequest / GSSENCRequest, and the TLS ClientHello. All under one
//! absolute deadline from accept (`readTimeout`), never reset per byte, so a
//! slow client costs one idle task and never blocks the accept loop or other
//! connections.
//!
//! The decisions are the pure codecs' (`wire::*`); this module only reads and
//! answers. Every byte that belongs to the client's stream (the hello and
//! whatever followed it) stays in `Peeked::buf` to be replayed to the backend
//! exactly.

use std::io;
use std::time::Instant;

use monoio::net::TcpStream;

use crate::forward::write_all;
use crate::sys;
use crate::wire::client_hello::{self, ClientHello, NotTls, Peek};
use crate::wire::postgres::{self, First, PgFirst};
use crate::wire::proxy_protocol::{self, Decoded, Header};

/// First allocation for pre-routing bytes: a typical ClientHello (≈ 500 B, up
/// to ≈ 1.8 KiB with a post-quantum key share) fits; larger ones grow it.
const INITIAL_BUF: usize = 2048;

/// Why a connection was closed before routing (the access-log outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeekError {
    /// The deadline passed before the routing decision.
    Timeout,
    /// The client closed or reset before the routing decision.
    ClientClosed,
    /// The ClientHello announced more bytes than the cap.
    HelloTooLarge,
    /// A connection started with a PROXY signature but not a valid header.
    ProxyInvalid,
    /// Bytes were sent after a PostgreSQL request before its reply.
    PgInjection,
}

impl PeekError {
    pub fn as_str(self) -> &'static str {
        match self {
            PeekError::Timeout => "read_timeout",
            PeekError::ClientClosed => "client_closed",
            PeekError::HelloTooLarge => "hello_too_large",
            PeekError::ProxyInvalid => "proxy_protocol_invalid",
            PeekError::PgInjection => "pg_bytes_after_request",
        }
    }
}

/// What was learnt before routing.
#[derive(Debug, Default)]
pub struct Peeked {
    /// Client bytes to replay to the backend (PROXY header and PostgreSQL
    /// request removed, everything else exactly as received).
    pub buf: Vec<u8>,
    /// The ClientHello, when the connection is TLS.
    pub hello: Option<ClientHello>,
    /// Why the first bytes are not a ClientHello, when a TLS router asked for
    /// one: the access-log reason when no non-TLS router takes them.
    pub not_tls: Option<NotTls>,
    /// The client sent an SSLRequest and was answered `S`.
    pub pg_ssl: bool,
}

/// The first PostgreSQL message of a session (`Reader::pg_first`); its bytes
/// are the first `len` of the reader's buffer.
#[derive(Debug)]
pub enum PgOpen {
    Startup {
        startup: postgres::Startup,
        len: usize,
    },
    Cancel {
        cancel: postgres::Cancel,
        len: usize,
    },
    /// Not a valid first message: answer an ErrorResponse with this reason.
    Malformed(&'static str),
}

/// Reads from `client` into a buffer until the deadline.
pub struct Reader<'a> {
    client: &'a TcpStream,
    deadline: Option<Instant>,
    pub buf: Vec<u8>,
}

impl<'a> Reader<'a> {
    pub fn new(client: &'a TcpStream, deadline: Option<Instant>) -> Reader<'a> {
        Reader {
            client,
            deadline,
            buf: Vec::new(),
        }
    }

    /// Read until the buffer holds at least `min_len` bytes.
    ///
    /// The buffer grows by doubling from `INITIAL_BUF` towards `min_len`, and
    /// only once more bytes are waiting: a length field is only a claim, so a
    /// peer that announces a 16 KiB hello and sends 9 bytes (or 8 KiB) holds
    /// about what it sent, not the cap (RELIABILITY.md: buffers grow from
    /// small). Reserving `min_len` at once pinned 16 KiB per 9-byte client.
    async fn fill(&mut self, min_len: usize) -> Result<(), PeekError> {
        self.fill_by(min_len, self.deadline).await
    }

    /// `fill` under `deadline` instead of the reader's own.
    async fn fill_by(
        &mut self,
        min_len: usize,
        deadline: Option<Instant>,
    ) -> Result<(), PeekError> {
        let fd = sys::fd(self.client);
        while self.buf.len() < min_len {
            let len = self.buf.len();
            if len == self.buf.capacity() {
                if len > 0 {
                    self.wait_readable(deadline).await?;
                }
                let target = if len < INITIAL_BUF {
                    INITIAL_BUF
                } else {
                    (len * 2).min(min_len)
                };
                self.buf.reserve_exact(target - len);
            }
            let spare = self.buf.capacity() - len;
            self.buf.resize(len + spare, 0);
            let r = sys::recv(fd, &mut self.buf[len..]);
            match r {
                Ok(0) => {
                    self.buf.truncate(len);
                    return Err(PeekError::ClientClosed);
                }
                Ok(n) => self.buf.truncate(len + n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.buf.truncate(len);
                    self.wait_readable(deadline).await?;
                }
                Err(_) => {
                    self.buf.truncate(len);
                    return Err(PeekError::ClientClosed);
                }
            }
        }
        Ok(())
    }

    async fn wait_readable(&self, deadline: Option<Instant>) -> Result<(), PeekError> {
        // Only a readiness poll is in flight, so a timeout loses no bytes.
        let ready = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                match monoio::time::timeout(left, self.client.readable(false)).await {
                    Ok(r) => r,
                    Err(_) => return Err(PeekError::Timeout),
                }
            }
            None => self.client.readable(false).await,
        };
        ready.map_err(|_| PeekError::ClientClosed)
    }

    /// Look for a PROXY protocol header at the start of the stream and take
    /// it out of the buffer, on an entrypoint with a `proxyProtocol` table
    /// (Traefik's go-proxyproto listener). Whether its addresses count is the
    /// caller's decision (the source's trust), not this one's: every source
    /// may send a header, and every header is stripped, so none ever reaches
    /// a backend as data.
    ///
    /// The stream is direct (no header) as soon as its first bytes cannot
    /// start a signature (`PROXY ` or the v2 signature): one byte is enough
    /// for a TLS, PostgreSQL or other binary client, two for `PING`. A client
    /// that sends nothing (a server-speaks-first protocol) is direct once
    /// `undecided_by` passes with the signature still undecided, and its
    /// bytes so far are data; `None` waits under the reader's deadline (a
    /// router that peeks waits for the client's bytes anyway). Once a full
    /// signature has arrived the header must complete and be valid under the
    /// reader's deadline, or the connection is closed (`ProxyInvalid`,
    /// `Timeout`), as go-proxyproto fails the connection on a malformed header.
    pub async fn proxy_header(
        &mut self,
        undecided_by: Option<Instant>,
    ) -> Result<Option<Header>, PeekError> {
        let wait = match (undecided_by, self.deadline) {
            (Some(u), Some(d)) => Some(u.min(d)),
            (u, d) => u.or(d),
        };
        loop {
            match proxy_prefix(&self.buf) {
                Some(false) => return Ok(None),
                Some(true) => break,
                None => {
                    let n = self.buf.len() + 1;
                    match self.fill_by(n, wait).await {
                        Ok(()) => {}
                        Err(PeekError::Timeout) if undecided_by.is_some() => return Ok(None),
                        // A client that closes before deciding sent data (or
                        // nothing), not a header; the close is seen again
                        // when its bytes are forwarded.
                        Err(PeekError::ClientClosed) if undecided_by.is_some() => return Ok(None),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        loop {
            match proxy_protocol::decode(&self.buf) {
                Decoded::NeedMore { min_len } => self.fill(min_len).await?,
                Decoded::Invalid(_) => return Err(PeekError::ProxyInvalid),
                Decoded::Header(h) => {
                    self.buf.drain(..h.consumed_len);
                    return Ok(Some(h));
                }
            }
        }
    }

    /// Peek the ClientHello, answering PostgreSQL's SSLRequest (`S`) and
    /// GSSENCRequest (`N`) on the way.
    pub async fn hello(mut self, cap: usize) -> Result<Peeked, PeekError> {
        let mut pg_ssl = false;
        if self.buf.is_empty() {
            self.fill(1).await?;
        }
        loop {
            if !pg_ssl {
                match postgres::classify(&self.buf) {
                    PgFirst::NeedMore => {
                        let n = self.buf.len() + 1;
                        self.fill(n).await?;
                        continue;
                    }
                    PgFirst::SslRequest => {
                        self.buf.clear();
                        self.reply(postgres::REPLY_TLS_ACCEPTED).await?;
                        pg_ssl = true;
                        self.fill(1).await?;
                        continue;
                    }
                    PgFirst::GssEncRequest => {
                        // libpq then falls back to SSLRequest or plain.
                        self.buf.clear();
                        self.reply(postgres::REPLY_REFUSED).await?;
                        self.fill(1).await?;
                        continue;
                    }
                    PgFirst::BytesAfterRequest => return Err(PeekError::PgInjection),
                    PgFirst::NotPostgres => {}
                }
            }
            match client_hello::peek(&self.buf, cap) {
                Peek::NeedMore { min_len } => self.fill(min_len).await?,
                Peek::TooLarge { .. } => return Err(PeekError::HelloTooLarge),
                Peek::NotTls(reason) => {
                    return Ok(Peeked {
                        buf: self.buf,
                        hello: None,
                        not_tls: Some(reason),
                        pg_ssl,
                    })
                }
                Peek::Hello(h) => {
                    return Ok(Peeked {
                        buf: self.buf,
                        hello: Some(h),
                        not_tls: None,
                        pg_ssl,
                    })
                }
            }
        }
    }

    /// Read the first PostgreSQL message of a plain session (a router here
    /// carries PostgreSQL): a StartupMessage or a CancelRequest, under the
    /// reader's deadline. An SSLRequest or GSSENCRequest is answered `N`
    /// (TLS on such an entrypoint is a TLS router's), and the client goes
    /// on in plain or gives up, as its `sslmode` says.
    pub async fn pg_first(&mut self) -> Result<PgOpen, PeekError> {
        loop {
            match postgres::decode_first(&self.buf) {
                First::NeedMore { min_len } => self.fill(min_len).await?,
                First::SslRequest | First::GssEncRequest => {
                    if self.buf.len() > postgres::REQUEST_LEN {
                        return Err(PeekError::PgInjection);
                    }
                    self.buf.clear();
                    self.reply(postgres::REPLY_REFUSED).await?;
                }
                First::Startup { startup, len } => return Ok(PgOpen::Startup { startup, len }),
                First::Cancel { cancel, len } => return Ok(PgOpen::Cancel { cancel, len }),
                First::Malformed(why) => return Ok(PgOpen::Malformed(why)),
            }
        }
    }

    /// Read at least one more byte (under the reader's deadline).
    pub async fn read_more(&mut self) -> Result<(), PeekError> {
        let n = self.buf.len() + 1;
        self.fill(n).await
    }

    async fn reply(&self, byte: u8) -> Result<(), PeekError> {
        write_all(self.client, &[byte])
            .await
            .map_err(|_| PeekError::ClientClosed)
    }
}

/// Whether the buffer starts with a PROXY v1 (`PROXY `) or v2 signature:
/// `None` while the bytes so far are a prefix of one (undecided).
fn proxy_prefix(buf: &[u8]) -> Option<bool> {
    const V1: &[u8] = b"PROXY ";
    let v2: &[u8] = &proxy_protocol::V2_SIGNATURE;
    for sig in [V1, v2] {
        if buf.len() >= sig.len() && buf.starts_with(sig) {
            return Some(true);
        }
        if buf.len() < sig.len() && sig.starts_with(buf) {
            return None;
        }
    }
    Some(false)
}
