//! Driving a TLS handshake over a non-blocking socket: server side towards
//! the client (the ClientHello already peeked is fed first), client side
//! towards a TLS backend. One absolute deadline for the whole handshake.
//!
//! `advance` is the sans-IO step (rustls processes what was read, records to
//! send go to `tx`) and says what `run` must do next: write, read, done or
//! failed. Only readiness polls are ever in flight, so a deadline that fires
//! loses no bytes. On a protocol failure the alert rustls produced is
//! written (best effort, without waiting past the deadline) before the
//! caller closes. `flush` is the one deadline-bounded write of queued
//! records, also used for a refusal's close_notify.

use std::io;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};

use super::side::{encode, Conn, TlsError, TlsSide};

/// How long a failed handshake may spend writing its alert when no deadline
/// was given: the alert is a courtesy, never worth holding a connection.
const ALERT_WRITE_MAX: Duration = Duration::from_millis(500);

/// Why a handshake did not complete.
#[derive(Debug)]
pub enum HsError {
    /// rustls refused (the peer's alert or ours), or a bound of ours.
    Tls(TlsError),
    /// The deadline passed.
    Timeout,
    /// The peer closed or reset the connection.
    Closed(Option<io::Error>),
}

/// What a handshake needs after one `advance`.
#[derive(Debug, PartialEq)]
pub(super) enum Next {
    /// rustls has more to do at once.
    Continue,
    /// Write `tx` (a flight is complete), then advance again.
    Flush,
    /// Write `tx`, then read more of the peer's records into `cin`.
    Read,
    /// The handshake is complete once `tx` is written.
    Done,
    /// It failed; the alert is queued with `TlsSide::queue_alert`.
    Fail(TlsError),
}

/// One sans-IO step of a handshake: let rustls process what `cin` holds,
/// encode what it asks to send into `tx`, and say what the caller must do
/// next. Nothing here touches a socket.
pub(super) fn advance<C: Conn>(side: &mut TlsSide<C>) -> Next {
    let TlsSide {
        conn,
        cin,
        tx,
        plain,
        peer_closed,
        ..
    } = &mut *side;
    let UnbufferedStatus { mut discard, state } = conn.process(cin.data_mut());
    let next = match state {
        Err(e) => Next::Fail(e.into()),
        Ok(ConnectionState::EncodeTlsData(mut e)) => match encode(tx, &mut e) {
            Ok(()) => Next::Continue,
            Err(e) => Next::Fail(e),
        },
        Ok(ConnectionState::TransmitTlsData(t)) => {
            // Marked sent now; `Flush` writes it before rustls runs again.
            t.done();
            Next::Flush
        }
        Ok(ConnectionState::BlockedHandshake) => Next::Read,
        Ok(ConnectionState::WriteTraffic(_)) => {
            if conn.handshaking() {
                // TLS 1.3 server after its flight: the client's
                // Finished (and certificate) is still to come.
                Next::Read
            } else {
                Next::Done
            }
        }
        Ok(ConnectionState::ReadTraffic(mut r)) => {
            let mut next = Next::Continue;
            while let Some(rec) = r.next_record() {
                match rec {
                    Ok(rec) => {
                        discard += rec.discard;
                        if plain.push(rec.payload) != rec.payload.len() {
                            next = Next::Fail(TlsError::EarlyDataOverflow);
                        }
                    }
                    Err(e) => next = Next::Fail(e.into()),
                }
            }
            next
        }
        Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => {
            *peer_closed = true;
            if conn.handshaking() {
                Next::Fail(TlsError::ClosedInHandshake)
            } else {
                Next::Done
            }
        }
        Ok(_) => Next::Fail(TlsError::UnexpectedState("during the handshake")),
    };
    side.cin.consume(discard);
    next
}

/// Complete the handshake of `side` on `sock`. Application data that arrives
/// with the peer's last flight is kept in `side.plain`.
pub async fn run<C: Conn>(
    side: &mut TlsSide<C>,
    sock: &TcpStream,
    deadline: Option<Instant>,
) -> Result<(), HsError> {
    let fd = crate::sys::fd(sock);
    loop {
        match advance(side) {
            Next::Continue => {}
            Next::Flush => flush(side, sock, deadline).await?,
            Next::Done => {
                flush(side, sock, deadline).await?;
                return Ok(());
            }
            Next::Read => {
                flush(side, sock, deadline).await?;
                loop {
                    match side.read(fd) {
                        Ok((0, _)) => return Err(HsError::Closed(None)),
                        Ok(_) => break,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            wait(sock.readable(false), deadline).await?
                        }
                        Err(e) => return Err(HsError::Closed(Some(e))),
                    }
                }
            }
            Next::Fail(e) => {
                side.queue_alert();
                let alert_deadline = Instant::now() + ALERT_WRITE_MAX;
                let d = deadline.map_or(alert_deadline, |d| d.min(alert_deadline));
                let _ = flush(side, sock, Some(d)).await;
                return Err(HsError::Tls(e));
            }
        }
    }
}

/// Write what `side` has queued, waiting for writability until `deadline`.
pub(super) async fn flush<C: Conn>(
    side: &mut TlsSide<C>,
    sock: &TcpStream,
    deadline: Option<Instant>,
) -> Result<(), HsError> {
    let fd = crate::sys::fd(sock);
    loop {
        match side.flush(fd) {
            Ok(true) => return Ok(()),
            Ok(false) => wait(sock.writable(false), deadline).await?,
            Err(e) => return Err(HsError::Closed(Some(e))),
        }
    }
}

/// Wait for `ready` (a readiness poll) until `deadline`: the one deadline
/// wait of the TLS handshakes and of a refusal's close_notify.
async fn wait(
    ready: impl std::future::Future<Output = io::Result<()>>,
    deadline: Option<Instant>,
) -> Result<(), HsError> {
    let r = match deadline {
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            match monoio::time::timeout(left, ready).await {
                Ok(r) => r,
                Err(_) => return Err(HsError::Timeout),
            }
        }
        None => ready.await,
    };
    r.map_err(|e| HsError::Closed(Some(e)))
}
