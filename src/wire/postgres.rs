//! PostgreSQL pre-TLS negotiation: recognise SSLRequest / GSSENCRequest.
//!
//! Role: libpq (before PostgreSQL 17's `sslnegotiation=direct`) opens every
//! TLS connection with an 8-byte SSLRequest and waits for one byte: `S` (go
//! ahead with TLS) or `N`. The proxy answers `S` itself, then peeks at the
//! ClientHello to route by SNI; towards the backend it sends `SSL_REQUEST`
//! and checks the reply with `check_backend_reply` before replaying the hello.
//!
//! Pure: classifies bytes, never does IO. Anything that is not one of the two
//! requests (a StartupMessage, a CancelRequest, a direct TLS ClientHello, or
//! another protocol) is `NotPostgres`: the proxy handles those bytes as they
//! are, so plain PostgreSQL and direct TLS keep working.

use std::fmt;

/// Both requests are exactly 8 bytes: an int32 length (8) and an int32 code.
pub const REQUEST_LEN: usize = 8;

/// SSLRequest: length 8, code 80877103 (`1234 << 16 | 5679`).
pub const SSL_REQUEST: [u8; REQUEST_LEN] = [0x00, 0x00, 0x00, 0x08, 0x04, 0xd2, 0x16, 0x2f];

/// GSSENCRequest: length 8, code 80877104 (`1234 << 16 | 5680`).
pub const GSSENC_REQUEST: [u8; REQUEST_LEN] = [0x00, 0x00, 0x00, 0x08, 0x04, 0xd2, 0x16, 0x30];

/// Reply to SSLRequest: the server will do TLS; the client's ClientHello follows.
pub const REPLY_TLS_ACCEPTED: u8 = b'S';

/// Reply refusing the request. The proxy never terminates GSSAPI encryption,
/// so a GSSENCRequest always gets this; libpq then falls back to SSLRequest or
/// a plain StartupMessage as its `sslmode` allows.
pub const REPLY_REFUSED: u8 = b'N';

/// First byte of an ErrorResponse, which a server may send instead of `S`/`N`.
const ERROR_RESPONSE: u8 = b'E';

/// What the first bytes of a connection on a PostgreSQL entry point are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgFirst {
    /// Fewer than 8 bytes, all matching the start of a request: read more.
    NeedMore,
    /// An SSLRequest: reply `REPLY_TLS_ACCEPTED`, then peek the ClientHello.
    SslRequest,
    /// A GSSENCRequest: reply `REPLY_REFUSED`, then classify the next bytes again.
    GssEncRequest,
    /// No encryption request (StartupMessage, CancelRequest, direct TLS, other): use the bytes as they are.
    NotPostgres,
    /// A request followed by more bytes before any reply: the injection of
    /// CVE-2021-23214 (plain bytes slipped in ahead of TLS); close the connection.
    BytesAfterRequest,
}

/// Classifies the bytes buffered so far. `NotPostgres` is final. A request is
/// a request only at exactly 8 bytes: a client sends nothing more until it
/// has the reply, so a longer buffer is `BytesAfterRequest`.
pub fn classify(buf: &[u8]) -> PgFirst {
    let head = buf.get(..REQUEST_LEN).unwrap_or(buf);
    let is_prefix_of = |request: &[u8; REQUEST_LEN]| request.starts_with(head);
    let kind = if is_prefix_of(&SSL_REQUEST) {
        PgFirst::SslRequest
    } else if is_prefix_of(&GSSENC_REQUEST) {
        PgFirst::GssEncRequest
    } else {
        return PgFirst::NotPostgres;
    };
    match buf.len() {
        n if n < REQUEST_LEN => PgFirst::NeedMore,
        REQUEST_LEN => kind,
        // A client waits for the reply before sending anything else.
        _ => PgFirst::BytesAfterRequest,
    }
}

/// Why a backend did not accept TLS after our SSLRequest (backend side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendRefusedTls {
    /// The backend answered `N`: it has TLS turned off.
    Refused,
    /// The backend answered with an ErrorResponse (`E`), e.g. too many connections.
    Error,
    /// The byte is neither `S`, `N` nor `E`: not a PostgreSQL server.
    Unexpected(u8),
}

impl BackendRefusedTls {
    /// Short stable name, for metric labels and the access log.
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendRefusedTls::Refused => "backend_tls_refused",
            BackendRefusedTls::Error => "backend_error_response",
            BackendRefusedTls::Unexpected(_) => "backend_not_postgres",
        }
    }
}

impl fmt::Display for BackendRefusedTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendRefusedTls::Refused => f.write_str("backend refused TLS (replied N)"),
            BackendRefusedTls::Error => f.write_str("backend sent an ErrorResponse to SSLRequest"),
            BackendRefusedTls::Unexpected(b) => {
                write!(
                    f,
                    "backend replied {b:#04x} to SSLRequest (expected S or N)"
                )
            }
        }
    }
}

impl std::error::Error for BackendRefusedTls {}

/// Checks the backend's one-byte reply to `SSL_REQUEST`. Only the first byte
/// may be read before the TLS handshake: bytes after `S` would be unencrypted
/// data injected ahead of TLS (CVE-2021-23222), so the caller must not read more.
pub fn check_backend_reply(reply: u8) -> Result<(), BackendRefusedTls> {
    match reply {
        REPLY_TLS_ACCEPTED => Ok(()),
        REPLY_REFUSED => Err(BackendRefusedTls::Refused),
        ERROR_RESPONSE => Err(BackendRefusedTls::Error),
        other => Err(BackendRefusedTls::Unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::{corpus, mutate, XorShift, MUTATIONS};

    /// A protocol 3.0 StartupMessage as libpq sends it.
    fn startup_message() -> Vec<u8> {
        let mut body = vec![0x00, 0x03, 0x00, 0x00];
        body.extend(b"user\0app\0database\0orders\0\0");
        let mut msg = u32::try_from(body.len() + 4)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        msg.extend(body);
        msg
    }

    #[test]
    fn requests_are_recognised() {
        assert_eq!(classify(&SSL_REQUEST), PgFirst::SslRequest);
        assert_eq!(classify(&GSSENC_REQUEST), PgFirst::GssEncRequest);
        // The codes are what the PostgreSQL protocol documentation lists.
        assert_eq!(
            u32::from_be_bytes(SSL_REQUEST[4..].try_into().unwrap()),
            80_877_103
        );
        assert_eq!(
            u32::from_be_bytes(GSSENC_REQUEST[4..].try_into().unwrap()),
            80_877_104
        );
    }

    #[test]
    fn every_prefix_needs_more() {
        for request in [SSL_REQUEST, GSSENC_REQUEST] {
            for k in 0..REQUEST_LEN {
                assert_eq!(classify(&request[..k]), PgFirst::NeedMore, "{k}");
            }
        }
    }

    #[test]
    fn other_first_bytes_are_not_postgres_requests() {
        let cancel = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 1, 0, 0, 0, 2];
        let table: &[(&str, &[u8])] = &[
            ("startup message", &startup_message()),
            ("cancel request", &cancel),
            (
                "direct TLS client hello",
                &[0x16, 0x03, 0x01, 0x01, 0x51, 0x01],
            ),
            ("http", b"GET / HTTP/1.1\r\n"),
            ("wrong code", &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x31]),
            ("wrong length", &[0, 0, 0, 9, 0x04, 0xd2, 0x16, 0x2f, 0]),
        ];
        for (what, bytes) in table {
            assert_eq!(classify(bytes), PgFirst::NotPostgres, "{what}");
        }
        // Decided as soon as a byte differs: the startup message at byte 3.
        assert_eq!(classify(&startup_message()[..4]), PgFirst::NotPostgres);
        assert_eq!(classify(&startup_message()[..3]), PgFirst::NeedMore);
    }

    #[test]
    fn bytes_after_a_request_are_refused() {
        let mut injected = SSL_REQUEST.to_vec();
        injected.extend(startup_message());
        assert_eq!(classify(&injected), PgFirst::BytesAfterRequest);
        let mut injected = GSSENC_REQUEST.to_vec();
        injected.push(0);
        assert_eq!(classify(&injected), PgFirst::BytesAfterRequest);
    }

    #[test]
    fn backend_replies() {
        assert_eq!(check_backend_reply(b'S'), Ok(()));
        assert_eq!(check_backend_reply(b'N'), Err(BackendRefusedTls::Refused));
        assert_eq!(check_backend_reply(b'E'), Err(BackendRefusedTls::Error));
        assert_eq!(
            check_backend_reply(0x16),
            Err(BackendRefusedTls::Unexpected(0x16))
        );
        assert_eq!(
            BackendRefusedTls::Unexpected(0x48).to_string(),
            "backend replied 0x48 to SSLRequest (expected S or N)"
        );
    }

    #[test]
    fn corpus_replays_with_expected_outcomes() {
        let expected: &[(&str, PgFirst)] = &[
            ("ssl_request.bin", PgFirst::SslRequest),
            ("gssenc_request.bin", PgFirst::GssEncRequest),
            ("startup_message.bin", PgFirst::NotPostgres),
            ("cancel_request.bin", PgFirst::NotPostgres),
            ("direct_tls_hello.bin", PgFirst::NotPostgres),
            ("ssl_request_prefix.bin", PgFirst::NeedMore),
            ("ssl_request_then_startup.bin", PgFirst::BytesAfterRequest),
        ];
        let files = corpus("postgres");
        for (name, outcome) in expected {
            let (_, bytes) = files
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("missing seed {name}"));
            assert_eq!(classify(bytes), *outcome, "{name}");
        }
    }

    #[test]
    fn mutated_corpus_never_panics_and_decisions_are_final() {
        let seeds = corpus("postgres");
        let mut rng = XorShift(0x5eed_0000_0000_5432);
        let mut requests = 0;
        for _ in 0..MUTATIONS {
            let (_, seed) = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, seed);
            let whole = classify(&input);
            let part = classify(&input[..rng.below(input.len() + 1)]);
            // Once decided, more bytes only turn a request into "bytes after".
            match part {
                PgFirst::NeedMore => {}
                PgFirst::SslRequest | PgFirst::GssEncRequest if input.len() > REQUEST_LEN => {
                    assert_eq!(whole, PgFirst::BytesAfterRequest)
                }
                _ => assert_eq!(whole, part),
            }
            if matches!(whole, PgFirst::SslRequest | PgFirst::GssEncRequest) {
                assert_eq!(input.len(), REQUEST_LEN);
                requests += 1;
            }
        }
        assert!(
            requests > 100,
            "mutations should keep some requests intact: {requests}"
        );
    }
}
