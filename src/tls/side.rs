//! One TLS endpoint of a proxied connection: a rustls unbuffered connection
//! (server towards the client, or client towards a TLS backend) and the
//! connection's own buffers.
//!
//! - `cin`: ciphertext read from the socket; rustls decrypts records in place
//!   there and we discard what it consumed.
//! - `tx`: ciphertext to write to the socket (records we encrypted, handshake
//!   and alert records rustls encoded), written in the order produced.
//! - `plain`: decrypted bytes not yet delivered, filled only when the other
//!   socket could not take a record at once (backpressure) or when rustls
//!   decrypted a record while we were asking it for permission to encrypt.
//!
//! Bounds: `cin` is only refilled once `plain` is empty, so `plain` never
//! holds more than one `cin` worth of plaintext (plaintext is never longer
//! than its ciphertext). `tx` takes one encrypted chunk only when empty, and
//! input that could produce control records is not processed while `tx` is
//! above `TX_HIGH`. All buffers go back to the pool when empty.
//!
//! `TlsPeer` is the role-free interface (server towards the client, client
//! towards a backend) the pump drives; `TlsError` is why a side failed
//! (rustls' error or one of our bounds). After a failure `queue_alert` moves
//! the one fatal alert rustls queued into `tx`, during the handshake as
//! after it.
//!
//! Nothing here touches a socket except `read`/`flush`, which are
//! non-blocking and report `WouldBlock` to the caller. No `await` here.

use std::io;
use std::os::fd::BorrowedFd;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedStatus, WriteTraffic,
};

use super::buf::{Buf, BUF_SIZE, SLACK};
use crate::sys;

/// Largest plaintext chunk encrypted in one go: four full records, so the
/// ciphertext (plus overhead) fits an empty `tx`.
pub const MAX_CHUNK: usize = BUF_SIZE - SLACK;
/// Above this many queued bytes in `tx`, input that may make rustls queue
/// more (key updates, alerts) waits until `tx` drains: a peer that floods
/// control messages without reading cannot grow our memory.
const TX_HIGH: usize = BUF_SIZE - SLACK / 2;

/// The two rustls unbuffered connection types, behind one interface.
pub trait Conn {
    type Data;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn handshaking(&self) -> bool;
}

impl Conn for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }
    fn handshaking(&self) -> bool {
        self.is_handshaking()
    }
}

impl Conn for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, buf: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(buf)
    }
    fn handshaking(&self) -> bool {
        self.is_handshaking()
    }
}

/// One TLS endpoint whatever its role (server towards the client, client
/// towards a TLS backend): the interface the pump drives, so no caller
/// matches on the role.
pub trait TlsPeer {
    /// See `TlsSide::pull`.
    fn pull(&mut self, deliver: &mut dyn FnMut(&[u8]) -> io::Result<usize>) -> Pull;
    /// See `TlsSide::encrypt`.
    fn encrypt(&mut self, data: &[u8]) -> io::Result<usize>;
    /// See `TlsSide::close_notify`.
    fn close_notify(&mut self) -> io::Result<()>;
    /// See `TlsSide::flush`.
    fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool>;
    /// See `TlsSide::read`.
    fn read(&mut self, fd: BorrowedFd<'_>) -> io::Result<(usize, bool)>;
    /// Ciphertext queued in `tx` and not yet written.
    fn tx_len(&self) -> usize;
}

impl<C: Conn> TlsPeer for TlsSide<C> {
    fn pull(&mut self, deliver: &mut dyn FnMut(&[u8]) -> io::Result<usize>) -> Pull {
        TlsSide::pull(self, deliver)
    }
    fn encrypt(&mut self, data: &[u8]) -> io::Result<usize> {
        TlsSide::encrypt(self, data)
    }
    fn close_notify(&mut self) -> io::Result<()> {
        TlsSide::close_notify(self)
    }
    fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        TlsSide::flush(self, fd)
    }
    fn read(&mut self, fd: BorrowedFd<'_>) -> io::Result<(usize, bool)> {
        TlsSide::read(self, fd)
    }
    fn tx_len(&self) -> usize {
        self.tx.len()
    }
}

/// Why a TLS side failed: rustls refused, or one of sluicegate's own bounds
/// or expectations did not hold.
#[derive(Debug, Clone, PartialEq)]
pub enum TlsError {
    /// rustls' own error (the peer's alert, or the one we send).
    Rustls(rustls::Error),
    /// Decrypted data did not fit the connection's buffer (never expected:
    /// see the module doc; the connection fails rather than truncates).
    PlaintextOverflow,
    /// A record rustls encoded needs this many bytes, more than the output
    /// buffer holds.
    RecordTooLarge(usize),
    /// The ClientHello (and what came with it) exceeds the input buffer.
    HelloTooLarge,
    /// More early application data than the buffer holds came with the
    /// peer's last handshake flight.
    EarlyDataOverflow,
    /// The peer closed before the handshake completed.
    ClosedInHandshake,
    /// rustls reached a state that cannot happen at this point (the
    /// handshake, or forwarding after it).
    UnexpectedState(&'static str),
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> TlsError {
        TlsError::Rustls(e)
    }
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Rustls(e) => e.fmt(f),
            TlsError::PlaintextOverflow => {
                f.write_str("decrypted data exceeds the connection buffer")
            }
            TlsError::RecordTooLarge(n) => {
                write!(
                    f,
                    "a TLS record of {n} bytes does not fit the output buffer"
                )
            }
            TlsError::HelloTooLarge => f.write_str("client hello larger than the input buffer"),
            TlsError::EarlyDataOverflow => f.write_str("too much early application data"),
            TlsError::ClosedInHandshake => f.write_str("peer closed during the handshake"),
            TlsError::UnexpectedState(when) => write!(f, "unexpected TLS state {when}"),
        }
    }
}

/// What one `pull` achieved.
#[derive(Debug)]
pub enum Pull {
    /// `n` plaintext bytes were taken by the destination (may be 0 when only
    /// control records were handled); call again.
    Moved(usize),
    /// Plaintext is waiting and the destination took none.
    DstBlocked,
    /// No complete record is buffered: read more ciphertext.
    NeedInput,
    /// `tx` must drain before more input is processed.
    TxFull,
    /// The peer sent close_notify and every byte before it was delivered.
    Eof,
    /// The peer broke the protocol (an alert is queued in `tx`).
    Failed(TlsError),
    /// The destination failed.
    DstFailed(io::Error),
}

pub struct TlsSide<C> {
    pub conn: C,
    pub cin: Buf,
    pub tx: Buf,
    pub plain: Buf,
    /// close_notify received (rustls reports it once; we remember it).
    pub peer_closed: bool,
    /// close_notify queued by us.
    pub sent_close: bool,
}

impl<C: Conn> TlsSide<C> {
    pub fn new(conn: C) -> TlsSide<C> {
        TlsSide {
            conn,
            cin: Buf::default(),
            tx: Buf::default(),
            plain: Buf::default(),
            peer_closed: false,
            sent_close: false,
        }
    }

    /// Deliver decrypted bytes to `deliver` (which returns how many the
    /// destination took): first what is waiting in `plain`, then the next
    /// record decrypted from `cin`. Handles control records on the way.
    pub fn pull(&mut self, deliver: &mut dyn FnMut(&[u8]) -> io::Result<usize>) -> Pull {
        if !self.plain.is_empty() {
            return match deliver(self.plain.data()) {
                Ok(0) => Pull::DstBlocked,
                Ok(n) => {
                    self.plain.consume(n);
                    Pull::Moved(n)
                }
                Err(e) => Pull::DstFailed(e),
            };
        }
        if self.tx.len() > TX_HIGH {
            return Pull::TxFull;
        }
        let TlsSide {
            conn,
            cin,
            tx,
            plain,
            peer_closed,
            ..
        } = self;
        let UnbufferedStatus { mut discard, state } = conn.process(cin.data_mut());
        let out = match state {
            Ok(ConnectionState::ReadTraffic(mut r)) => {
                let mut moved = 0;
                let mut out = None;
                while let Some(rec) = r.next_record() {
                    let rec = match rec {
                        Ok(rec) => rec,
                        Err(e) => {
                            out = Some(Pull::Failed(e.into()));
                            break;
                        }
                    };
                    discard += rec.discard;
                    let payload = rec.payload;
                    // Straight from rustls' record to the destination; only
                    // what it cannot take now is kept.
                    let taken = if plain.is_empty() && out.is_none() {
                        match deliver(payload) {
                            Ok(n) => n,
                            Err(e) => {
                                out = Some(Pull::DstFailed(e));
                                0
                            }
                        }
                    } else {
                        0
                    };
                    moved += taken;
                    if !stash(plain, &payload[taken..]) {
                        out = Some(Pull::Failed(overflow()));
                    }
                }
                out.unwrap_or(Pull::Moved(moved))
            }
            Ok(ConnectionState::EncodeTlsData(mut e)) => match encode(tx, &mut e) {
                Ok(()) => Pull::Moved(0),
                Err(e) => Pull::Failed(e),
            },
            Ok(ConnectionState::TransmitTlsData(t)) => {
                // The records are queued in `tx`, which is written in order.
                t.done();
                Pull::Moved(0)
            }
            Ok(ConnectionState::PeerClosed) => {
                *peer_closed = true;
                Pull::Moved(0)
            }
            Ok(ConnectionState::Closed) => {
                *peer_closed = true;
                Pull::Eof
            }
            Ok(ConnectionState::WriteTraffic(_)) | Ok(ConnectionState::BlockedHandshake) => {
                if *peer_closed {
                    Pull::Eof
                } else {
                    Pull::NeedInput
                }
            }
            Ok(_) => Pull::Failed(TlsError::UnexpectedState("after the handshake")),
            Err(e) => Pull::Failed(e.into()),
        };
        self.cin.consume(discard);
        if let Pull::Failed(_) = out {
            self.queue_alert();
        }
        out
    }

    /// Run rustls until it allows encrypting, then call `f` with the
    /// permission and `tx`. Records decrypted meanwhile go to `plain`.
    /// `Ok(None)`: the connection can no longer send.
    pub fn with_write<R>(
        &mut self,
        f: impl FnOnce(&mut WriteTraffic<'_, C::Data>, &mut Buf) -> R,
    ) -> Result<Option<R>, TlsError> {
        let mut f = Some(f);
        loop {
            let TlsSide {
                conn,
                cin,
                tx,
                plain,
                peer_closed,
                ..
            } = self;
            let UnbufferedStatus { mut discard, state } = conn.process(cin.data_mut());
            let mut result = None;
            let done = match state {
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    if let Some(f) = f.take() {
                        result = Some(f(&mut w, tx));
                    }
                    Ok(true)
                }
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    let mut ok = Ok(false);
                    while let Some(rec) = r.next_record() {
                        match rec {
                            Ok(rec) => {
                                discard += rec.discard;
                                if !stash(plain, rec.payload) {
                                    ok = Err(overflow());
                                }
                            }
                            Err(e) => ok = Err(e.into()),
                        }
                    }
                    ok
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => encode(tx, &mut e).map(|()| false),
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    Ok(false)
                }
                Ok(ConnectionState::PeerClosed) => {
                    *peer_closed = true;
                    Ok(false)
                }
                Ok(_) => Ok(true),
                Err(e) => Err(e.into()),
            };
            self.cin.consume(discard);
            match done {
                Ok(true) => return Ok(result),
                Ok(false) => {}
                Err(e) => {
                    self.queue_alert();
                    return Err(e);
                }
            }
        }
    }

    /// Encrypt up to `MAX_CHUNK` bytes of `data` into `tx`; returns how many
    /// were taken (0 while `tx` is not empty: the socket is behind).
    pub fn encrypt(&mut self, data: &[u8]) -> io::Result<usize> {
        if !self.tx.is_empty() || data.is_empty() {
            return Ok(0);
        }
        let chunk = &data[..data.len().min(MAX_CHUNK)];
        let r = self
            .with_write(|w, tx| {
                let room = tx.spare();
                match w.encrypt(chunk, room) {
                    Ok(n) => {
                        tx.commit(n);
                        Ok(chunk.len())
                    }
                    // Control records queued first left too little room:
                    // retry once `tx` has drained.
                    Err(EncryptError::InsufficientSize(_)) => Ok(0),
                    Err(e) => Err(io::Error::other(format!("TLS: {e}"))),
                }
            })
            .map_err(tls_io)?;
        r.unwrap_or_else(|| Err(io::Error::new(io::ErrorKind::BrokenPipe, "TLS closed")))
    }

    /// Queue our close_notify (once).
    pub fn close_notify(&mut self) -> io::Result<()> {
        if self.sent_close {
            return Ok(());
        }
        self.sent_close = true;
        self.with_write(|w, tx| {
            if let Ok(n) = w.queue_close_notify(tx.spare()) {
                tx.commit(n);
            }
        })
        .map_err(tls_io)?;
        Ok(())
    }

    /// After a protocol error rustls has queued an alert: move it to `tx`
    /// (during the handshake as after it). rustls is given the real input
    /// buffer, not an empty one: it may still index into it; after an error
    /// it only hands out what it queued.
    pub fn queue_alert(&mut self) {
        // rustls hands out queued records before it reads more input, so
        // when a call fails nothing was queued before it: what is queued now
        // is the fatal alert, one record. Hand it out and stop. Processing
        // once more would run the input again: a record that failed to
        // decrypt is still at the front of `cin`, fails again, and makes
        // rustls queue a second fatal alert (a debug assertion inside it).
        let UnbufferedStatus { discard, state } = self.conn.process(self.cin.data_mut());
        match state {
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                let _ = encode(&mut self.tx, &mut e);
            }
            Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
            _ => {}
        }
        self.cin.consume(discard);
    }

    /// Write queued ciphertext. `Ok(true)` when `tx` is empty.
    pub fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        while !self.tx.is_empty() {
            match sys::send(fd, self.tx.data()) {
                Ok(n) => self.tx.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Read ciphertext into `cin`: `Ok((n, full))`, `full` when the read
    /// filled the free space (more may be waiting). `Ok((0, _))` is EOF;
    /// `WouldBlock` is passed on.
    pub fn read(&mut self, fd: BorrowedFd<'_>) -> io::Result<(usize, bool)> {
        let room = self.cin.spare();
        let len = room.len();
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS record larger than the input buffer",
            ));
        }
        let r = sys::recv(fd, room);
        match r {
            Ok(n) => {
                self.cin.commit(n);
                Ok((n, n == len))
            }
            Err(e) => {
                self.cin.commit(0);
                Err(e)
            }
        }
    }
}

/// Keep undelivered plaintext; `false` if it would not fit (never expected,
/// see the module doc; the connection is then failed, not truncated).
fn stash(plain: &mut Buf, bytes: &[u8]) -> bool {
    bytes.is_empty() || plain.push(bytes) == bytes.len()
}

fn overflow() -> TlsError {
    TlsError::PlaintextOverflow
}

pub(super) fn encode<D>(
    tx: &mut Buf,
    e: &mut rustls::unbuffered::EncodeTlsData<'_, D>,
) -> Result<(), TlsError> {
    match e.encode(tx.spare()) {
        Ok(n) => {
            tx.commit(n);
            Ok(())
        }
        Err(EncodeError::InsufficientSize(s)) => Err(TlsError::RecordTooLarge(s.required_size)),
        Err(EncodeError::AlreadyEncoded) => Ok(()),
    }
}

/// A TLS failure as an `io::Error` (for access-log `error=`).
pub fn tls_io(e: impl Into<TlsError>) -> io::Error {
    let e = e.into();
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

/// Transcripts of one TLS side driven without sockets: a client and a server
/// `TlsSide` whose `tx` is moved by hand into the other's `cin`, each test
/// asserting the exact sequence of what the side reported.
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::UnbufferedClientConnection;
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::server::UnbufferedServerConnection;
    use rustls::{ClientConfig, RootCertStore, ServerConfig};

    use super::super::handshake::{advance, Next};
    use super::*;

    type Client = TlsSide<UnbufferedClientConnection>;
    type Server = TlsSide<UnbufferedServerConnection>;

    fn pair(versions: &[&'static rustls::SupportedProtocolVersion]) -> (Client, Server) {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["side.test".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap().der().clone();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("side.test").unwrap();
        let c = UnbufferedClientConnection::new(Arc::new(client), name).unwrap();
        let s = UnbufferedServerConnection::new(Arc::new(server)).unwrap();
        (TlsSide::new(c), TlsSide::new(s))
    }

    /// Move everything `from` queued into `to`'s input, as a socket would.
    fn wire(tx: &mut Buf, cin: &mut Buf) -> usize {
        let n = cin.push(tx.data());
        assert_eq!(n, tx.len(), "the peer's input buffer is full");
        tx.consume(n);
        n
    }

    /// Run both handshakes to completion, returning who reported what.
    fn handshake(c: &mut Client, s: &mut Server) -> Vec<String> {
        let mut log = Vec::new();
        let mut client_turn = true;
        let mut done = [false, false];
        for _ in 0..64 {
            let next = if client_turn { advance(c) } else { advance(s) };
            let who = if client_turn { "client" } else { "server" };
            let moved = if client_turn {
                wire(&mut c.tx, &mut s.cin)
            } else {
                wire(&mut s.tx, &mut c.cin)
            };
            log.push(format!("{who} {next:?} sent={}", moved > 0));
            match next {
                Next::Continue | Next::Flush => {}
                Next::Read => client_turn = !client_turn,
                Next::Done => {
                    done[usize::from(!client_turn)] = true;
                    if done == [true, true] {
                        return log;
                    }
                    client_turn = !client_turn;
                }
                Next::Fail(e) => panic!("handshake failed: {e}\n{log:#?}"),
            }
        }
        panic!("handshake did not finish: {log:#?}");
    }

    /// What a `pull` reported, without the error values' details.
    fn pull(side: &mut impl TlsPeer, take: usize, got: &mut Vec<u8>) -> String {
        let r = side.pull(&mut |b| {
            let n = b.len().min(take);
            got.extend_from_slice(&b[..n]);
            Ok(n)
        });
        match r {
            Pull::Moved(n) => format!("Moved({n})"),
            Pull::DstBlocked => "DstBlocked".into(),
            Pull::NeedInput => "NeedInput".into(),
            Pull::TxFull => "TxFull".into(),
            Pull::Eof => "Eof".into(),
            Pull::Failed(e) => format!("Failed({e:?})"),
            Pull::DstFailed(e) => format!("DstFailed({})", e.kind()),
        }
    }

    #[test]
    fn handshake_transcript_tls13() {
        let (mut c, mut s) = pair(&[&rustls::version::TLS13]);
        let log = handshake(&mut c, &mut s);
        assert_eq!(
            log,
            [
                "client Continue sent=true",
                "client Flush sent=false",
                "client Read sent=false",
                "server Continue sent=true",
                "server Continue sent=true",
                "server Continue sent=true",
                "server Flush sent=false",
                "server Read sent=false",
                "client Continue sent=true",
                "client Continue sent=true",
                "client Flush sent=false",
                "client Done sent=false",
                "server Continue sent=true",
                "server Flush sent=false",
                "server Done sent=false",
            ]
        );
    }

    #[test]
    fn handshake_transcript_tls12() {
        let (mut c, mut s) = pair(&[&rustls::version::TLS12]);
        let log = handshake(&mut c, &mut s);
        assert_eq!(
            log,
            [
                "client Continue sent=true",
                "client Flush sent=false",
                "client Read sent=false",
                "server Continue sent=true",
                "server Flush sent=false",
                "server Read sent=false",
                "client Continue sent=true",
                "client Continue sent=true",
                "client Continue sent=true",
                "client Flush sent=false",
                "client Read sent=false",
                "server Continue sent=true",
                "server Continue sent=true",
                "server Flush sent=false",
                "server Done sent=false",
                "client Done sent=false",
            ]
        );
    }

    /// Plaintext one way under backpressure, then close_notify: what the
    /// destination cannot take is kept (`Moved(0)` then `DstBlocked`),
    /// delivered in order, and the end of stream comes only after it.
    #[test]
    fn data_backpressure_and_close_transcript() {
        let (mut c, mut s) = pair(&[&rustls::version::TLS13]);
        handshake(&mut c, &mut s);
        let mut log = Vec::new();
        let mut got = Vec::new();
        // The server's last flight (its session tickets) is taken in on the
        // way: nothing to deliver.
        log.push(format!("client {}", pull(&mut c, 0, &mut got)));
        log.push(format!("client {}", pull(&mut c, 0, &mut got)));
        log.push(format!("encrypt {:?}", c.encrypt(b"hello").unwrap()));
        wire(&mut c.tx, &mut s.cin);
        for take in [0, 0, 2, 10, 10] {
            log.push(format!(
                "server take={take} {}",
                pull(&mut s, take, &mut got)
            ));
        }
        c.close_notify().unwrap();
        wire(&mut c.tx, &mut s.cin);
        for _ in 0..3 {
            log.push(format!("server {}", pull(&mut s, 10, &mut got)));
        }
        assert_eq!(got, b"hello");
        assert_eq!(
            log,
            [
                "client NeedInput",
                "client NeedInput",
                "encrypt 5",
                "server take=0 Moved(0)",
                "server take=0 DstBlocked",
                "server take=2 Moved(2)",
                "server take=10 Moved(3)",
                "server take=10 NeedInput",
                "server Moved(0)",
                "server Eof",
                "server Eof",
            ]
        );
    }

    /// A damaged record fails the side that reads it with the rustls error
    /// and queues an alert; the peer reading that alert fails in turn.
    #[test]
    fn damaged_record_transcript() {
        let (mut c, mut s) = pair(&[&rustls::version::TLS13]);
        handshake(&mut c, &mut s);
        let mut log = Vec::new();
        let mut got = Vec::new();
        log.push(format!("encrypt {:?}", c.encrypt(b"x").unwrap()));
        let last = c.tx.len() - 1;
        c.tx.data_mut()[last] ^= 0x55;
        wire(&mut c.tx, &mut s.cin);
        log.push(format!("server {}", pull(&mut s, 10, &mut got)));
        log.push(format!("server alert queued {}", s.tx_len() > 0));
        wire(&mut s.tx, &mut c.cin);
        for _ in 0..3 {
            log.push(format!("client {}", pull(&mut c, 10, &mut got)));
        }
        assert!(got.is_empty());
        assert_eq!(
            log,
            [
                "encrypt 1",
                "server Failed(Rustls(DecryptError))",
                "server alert queued true",
                "client Failed(Rustls(AlertReceived(BadRecordMac)))",
                "client NeedInput",
                "client NeedInput",
            ]
        );
    }
}
