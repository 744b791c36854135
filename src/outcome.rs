//! How a connection ended, as one typed value: the `outcome=` of its
//! access-log line and the `outcome` label of `sluicegate_connections_total`.
//!
//! Owns: the set of outcome names (`Outcome::as_str` is the one table both
//! the access log and the metrics read; dashboards and tests match these
//! strings, so a name never changes) and their dense numbering
//! (`Outcome::index`, what metrics indexes its per-outcome counters with).
//! The detailed cause behind an outcome (the bytes that were not TLS, the
//! TLS alert, the errno) stays with the session, for the access log's
//! `error=` field.
//!
//! Depends on no other module of the crate, so every layer may name an
//! outcome (`metrics` below `session`, which maps its endings here once).

/// How a connection ended. `Copy`, one byte: cheap to pass to the metrics
/// hook and to index counters with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Outcome {
    // Forwarding ran and ended this way.
    /// Both directions ended with a FIN.
    Closed,
    /// The client reset (or failed); the backend was reset in turn.
    ClientReset,
    /// The backend reset (or failed); the client was reset in turn.
    BackendReset,
    /// One direction ended and the other did not within `terminationDelay`.
    TerminationDelay,
    /// Nothing moved for `idleTimeout`.
    IdleTimeout,
    /// The drain's time ran out (before or while forwarding).
    DrainCut,
    /// Cut for `onServerDown = "close"`: the session's server went down.
    ServerDown,

    // It ended before forwarding.
    /// No router matched.
    NoRoute,
    /// A TLS router needed a ClientHello and the bytes were something else.
    NotTls,
    /// An ipAllowList middleware refused the client.
    Denied,
    /// inFlightConn limit reached for the client address.
    TooManyConnections,
    /// Every server was tried and none accepted the connection.
    DialFailed,
    /// A dial failed for lack of a local resource.
    LocalResourceExhausted,
    /// The service has no server that may be picked.
    NoServer,
    /// The picked server stayed at its `maxConn` for the whole `queueTimeout`.
    QueueTimeout,
    /// The deadline passed before the routing decision.
    ReadTimeout,
    /// The client closed or reset before the routing decision.
    ClientClosed,
    /// The ClientHello announced more bytes than the cap.
    HelloTooLarge,
    /// A PROXY signature without a valid header.
    ProxyProtocolInvalid,
    /// Bytes were sent after a PostgreSQL request before its reply.
    PgBytesAfterRequest,
    /// The PostgreSQL backend refused or failed our SSLRequest.
    BackendRefusedTls,
    /// The PROXY header or the replayed bytes could not be written.
    BackendWriteFailed,
    /// The TLS handshake failed.
    TlsHandshakeFailed,
    /// `sniStrict` and no certificate for the client's SNI.
    TlsNoCertificate,
    /// mTLS: the client's certificate was missing or did not verify.
    TlsClientCertificateRefused,
    /// The TLS handshake deadline passed.
    TlsTimeout,
    /// The client closed or reset during the TLS handshake.
    TlsClientClosed,
    /// No TLS options or configuration for the router (never expected).
    TlsNotConfigured,
    /// A terminated PostgreSQL client whose backend cannot do TLS.
    PgBackendTlsUnsupported,
    /// A PostgreSQL CancelRequest was sent to the server that issued the key.
    PgCancelForwarded,
    /// A PostgreSQL CancelRequest whose key no live session has.
    PgCancelUnknownKey,
    /// The server that issued a CancelRequest's key could not be reached.
    PgCancelFailed,
    /// A PostgreSQL first message that is not valid.
    PgBadStartup,
    /// An ACME HTTP-01 validation was answered.
    AcmeHttp01,
    /// An ACME TLS-ALPN-01 validation was answered.
    AcmeTlsAlpn,
}

impl Outcome {
    /// How many outcomes there are (the length of a per-outcome array).
    pub const COUNT: usize = Outcome::ALL.len();

    /// Every outcome, in `index` order.
    pub const ALL: [Outcome; 35] = [
        Outcome::Closed,
        Outcome::ClientReset,
        Outcome::BackendReset,
        Outcome::TerminationDelay,
        Outcome::IdleTimeout,
        Outcome::DrainCut,
        Outcome::ServerDown,
        Outcome::NoRoute,
        Outcome::NotTls,
        Outcome::Denied,
        Outcome::TooManyConnections,
        Outcome::DialFailed,
        Outcome::LocalResourceExhausted,
        Outcome::NoServer,
        Outcome::QueueTimeout,
        Outcome::ReadTimeout,
        Outcome::ClientClosed,
        Outcome::HelloTooLarge,
        Outcome::ProxyProtocolInvalid,
        Outcome::PgBytesAfterRequest,
        Outcome::BackendRefusedTls,
        Outcome::BackendWriteFailed,
        Outcome::TlsHandshakeFailed,
        Outcome::TlsNoCertificate,
        Outcome::TlsClientCertificateRefused,
        Outcome::TlsTimeout,
        Outcome::TlsClientClosed,
        Outcome::TlsNotConfigured,
        Outcome::PgBackendTlsUnsupported,
        Outcome::PgCancelForwarded,
        Outcome::PgCancelUnknownKey,
        Outcome::PgCancelFailed,
        Outcome::PgBadStartup,
        Outcome::AcmeHttp01,
        Outcome::AcmeTlsAlpn,
    ];

    /// The outcome's name: the access log's `outcome=` and the metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::ClientReset => "client_reset",
            Outcome::BackendReset => "backend_reset",
            Outcome::TerminationDelay => "termination_delay",
            Outcome::IdleTimeout => "idle_timeout",
            Outcome::DrainCut => "drain_cut",
            Outcome::ServerDown => "server_down",
            Outcome::NoRoute => "no_route",
            Outcome::NotTls => "not_tls",
            Outcome::Denied => "denied",
            Outcome::TooManyConnections => "too_many_connections",
            Outcome::DialFailed => "dial_failed",
            Outcome::LocalResourceExhausted => "local_resource_exhausted",
            Outcome::NoServer => "no_server",
            Outcome::QueueTimeout => "queue_timeout",
            Outcome::ReadTimeout => "read_timeout",
            Outcome::ClientClosed => "client_closed",
            Outcome::HelloTooLarge => "hello_too_large",
            Outcome::ProxyProtocolInvalid => "proxy_protocol_invalid",
            Outcome::PgBytesAfterRequest => "pg_bytes_after_request",
            Outcome::BackendRefusedTls => "backend_refused_tls",
            Outcome::BackendWriteFailed => "backend_write_failed",
            Outcome::TlsHandshakeFailed => "tls_handshake_failed",
            Outcome::TlsNoCertificate => "tls_no_certificate",
            Outcome::TlsClientCertificateRefused => "tls_client_certificate_refused",
            Outcome::TlsTimeout => "tls_timeout",
            Outcome::TlsClientClosed => "tls_client_closed",
            Outcome::TlsNotConfigured => "tls_not_configured",
            Outcome::PgBackendTlsUnsupported => "pg_backend_tls_unsupported",
            Outcome::PgCancelForwarded => "pg_cancel_forwarded",
            Outcome::PgCancelUnknownKey => "pg_cancel_unknown_key",
            Outcome::PgCancelFailed => "pg_cancel_failed",
            Outcome::PgBadStartup => "pg_bad_startup",
            Outcome::AcmeHttp01 => "acme_http01",
            Outcome::AcmeTlsAlpn => "acme_tls_alpn",
        }
    }

    /// The outcome's place in `ALL` (`0..COUNT`): the discriminant, since
    /// `ALL` lists the variants in declaration order (checked when the crate
    /// compiles, below). A new variant goes into `ALL` too; a reader of a
    /// per-outcome array still uses `get` so that a forgotten one is not
    /// counted rather than a panic.
    pub const fn index(self) -> usize {
        self as usize
    }
}

// `ALL[i].index() == i` for every i: the numbering is dense and ordered.
const _: () = {
    let mut i = 0;
    while i < Outcome::COUNT {
        assert!(Outcome::ALL[i].index() == i);
        i += 1;
    }
};

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_outcome_at_its_index() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i, "{o:?}");
        }
        assert_eq!(Outcome::COUNT, Outcome::ALL.len());
    }

    #[test]
    fn names_are_distinct_snake_case() {
        let mut seen = std::collections::BTreeSet::new();
        for o in Outcome::ALL {
            let s = o.as_str();
            assert!(seen.insert(s), "`{s}` names two outcomes");
            assert!(
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "`{s}` is not a plain label value"
            );
            assert_eq!(o.to_string(), s);
        }
        assert_eq!(seen.len(), Outcome::COUNT);
    }
}
