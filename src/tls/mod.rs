//! TLS termination (STUB: being written). The session calls
//! `TlsState::build` when a snapshot is built, `handshake` for a router with
//! `tls` and no `passthrough`, dials the backend, then `Accepted::forward`.

use std::time::Instant;

use monoio::net::TcpStream;

use crate::forward::{Opts, Outcome, Report};
use crate::model::Config;

/// Certificates and rustls configs of one snapshot.
#[derive(Debug, Default)]
pub struct TlsState {}

impl TlsState {
    /// Load certificates and build configs; errors are `FILE: message` lines.
    pub fn build(_cfg: &Config) -> Result<TlsState, Vec<String>> {
        Ok(TlsState {})
    }
}

/// Why a terminated connection ended before forwarding.
#[derive(Debug)]
pub enum TlsEnd {
    /// Not implemented yet.
    Unsupported,
}

impl TlsEnd {
    pub fn as_str(&self) -> &'static str {
        match self {
            TlsEnd::Unsupported => "tls_termination_unsupported",
        }
    }
}

/// A client whose TLS handshake completed.
pub struct Accepted {}

/// Complete the server handshake on `client`. `peeked` holds the bytes
/// already read from it (the ClientHello and anything after), which the TLS
/// engine consumes first. `options` indexes `Config::tls.options`.
pub async fn handshake(
    _state: &TlsState,
    _client: &TcpStream,
    _peeked: &[u8],
    _options: usize,
    _deadline: Option<Instant>,
) -> Result<Accepted, TlsEnd> {
    Err(TlsEnd::Unsupported)
}

/// How to talk to the backend: plain, or TLS (`serversTransport.tls` /
/// per-server `tls = true`) using transport `transport` of the snapshot.
pub struct BackendTls {
    pub transport: usize,
}

impl Accepted {
    /// Forward plaintext between the TLS client and the backend until both
    /// directions end (same promises and outcomes as `forward::duplex`).
    pub async fn forward(
        self,
        _state: &TlsState,
        _client: &TcpStream,
        _backend: &TcpStream,
        _backend_tls: Option<BackendTls>,
        _opts: &Opts,
    ) -> (Report, Outcome) {
        (Report::default(), Outcome::ClientReset)
    }
}
