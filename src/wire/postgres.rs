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

// ---------------------------------------------------------------------------
// The first message of a plain (or TLS-terminated) session, and the backend's
// messages up to ReadyForQuery: what startup routing and cancel forwarding see.

/// CancelRequest code (`1234 << 16 | 5678`).
pub const CANCEL_CODE: u32 = 80_877_102;

/// PostgreSQL's own cap on a startup packet (`MAX_STARTUP_PACKET_LENGTH`,
/// 10000 bytes): a longer one is refused by the server anyway, and the proxy
/// never buffers more than this from a client it has not routed yet.
pub const MAX_STARTUP_LEN: usize = 10_000;

/// Longest cancel key: protocol 3.2 (PostgreSQL 18) keys are up to 256 bytes;
/// 3.0 keys are 4.
pub const MAX_CANCEL_KEY: usize = 256;

/// SQLSTATE for a malformed or oversized startup packet (`protocol_violation`).
pub const SQLSTATE_PROTOCOL_VIOLATION: &str = "08P01";

/// SQLSTATE when no router takes a startup packet
/// (`sqlserver_rejected_establishment_of_sqlconnection`).
pub const SQLSTATE_NO_ROUTE: &str = "08004";

/// One startup parameter: name and value, bytes as sent (no NUL).
pub type Param = (Vec<u8>, Vec<u8>);

/// A StartupMessage: the protocol version and its parameters, bytes as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// Major in the high 16 bits (always 3 here), minor in the low.
    pub version: u32,
    pub params: Vec<Param>,
}

impl Startup {
    /// The value of parameter `name`, if sent.
    pub fn param(&self, name: &[u8]) -> Option<&[u8]> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The database the server will use: `database`, or the user name when
    /// it is absent or empty (PostgreSQL's rule).
    pub fn database(&self) -> Option<&[u8]> {
        match self.param(b"database") {
            Some(d) if !d.is_empty() => Some(d),
            _ => self.param(b"user"),
        }
    }

    /// The packet with `database` and/or `user` replaced (appended when the
    /// client did not send them), every other parameter in its order.
    pub fn encode_with(&self, database: Option<&[u8]>, user: Option<&[u8]>) -> Vec<u8> {
        let mut body = self.version.to_be_bytes().to_vec();
        let mut seen_db = false;
        let mut seen_user = false;
        for (k, v) in &self.params {
            let v: &[u8] = match (k.as_slice(), database, user) {
                (b"database", Some(d), _) => {
                    seen_db = true;
                    d
                }
                (b"user", _, Some(u)) => {
                    seen_user = true;
                    u
                }
                _ => v,
            };
            push_cstr(&mut body, k);
            push_cstr(&mut body, v);
        }
        if let (Some(d), false) = (database, seen_db) {
            push_cstr(&mut body, b"database");
            push_cstr(&mut body, d);
        }
        if let (Some(u), false) = (user, seen_user) {
            push_cstr(&mut body, b"user");
            push_cstr(&mut body, u);
        }
        body.push(0);
        let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
        let mut out = len.to_be_bytes().to_vec();
        out.extend(body);
        out
    }
}

fn push_cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

/// A CancelRequest: the backend's process id and secret key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancel {
    pub pid: u32,
    pub key: Vec<u8>,
}

/// What the first message of a session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum First {
    /// Read until the buffer holds `min_len` bytes, then call again.
    NeedMore {
        min_len: usize,
    },
    SslRequest,
    GssEncRequest,
    /// A StartupMessage of `len` bytes (more bytes may follow it).
    Startup {
        startup: Startup,
        len: usize,
    },
    /// A CancelRequest of `len` bytes.
    Cancel {
        cancel: Cancel,
        len: usize,
    },
    /// Not a message a client may open with: the reason, for the ErrorResponse.
    Malformed(&'static str),
}

/// Decodes the first message a client sends (after any SSLRequest/GSSENC
/// round). Incremental: a decision taken on a prefix stands.
pub fn decode_first(buf: &[u8]) -> First {
    let Some(len) = buf.get(..4) else {
        return First::NeedMore { min_len: 4 };
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len < 8 {
        return First::Malformed("startup packet length is below 8");
    }
    if len > MAX_STARTUP_LEN {
        return First::Malformed("startup packet is longer than 10000 bytes");
    }
    let Some(code) = buf.get(4..8) else {
        return First::NeedMore { min_len: 8 };
    };
    let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
    match code {
        c if c == CANCEL_CODE => {
            if !(12 + 4..=12 + MAX_CANCEL_KEY).contains(&len) {
                return First::Malformed("CancelRequest has a bad length");
            }
        }
        80_877_103 | 80_877_104 if len != REQUEST_LEN => {
            return First::Malformed("SSLRequest/GSSENCRequest has a bad length")
        }
        80_877_103 => return First::SslRequest,
        80_877_104 => return First::GssEncRequest,
        c if c >> 16 == 3 => {}
        c if c >> 16 == 1234 => return First::Malformed("unknown request code"),
        _ => return First::Malformed("unsupported frontend protocol (only 3.x is spoken)"),
    }
    let Some(msg) = buf.get(..len) else {
        return First::NeedMore { min_len: len };
    };
    if code == CANCEL_CODE {
        let pid = u32::from_be_bytes([msg[8], msg[9], msg[10], msg[11]]);
        return First::Cancel {
            cancel: Cancel {
                pid,
                key: msg[12..].to_vec(),
            },
            len,
        };
    }
    match parse_params(&msg[8..]) {
        Ok(params) => First::Startup {
            startup: Startup {
                version: code,
                params,
            },
            len,
        },
        Err(why) => First::Malformed(why),
    }
}

/// `name\0value\0 ... \0`: pairs of NUL-terminated strings and a final NUL.
fn parse_params(mut body: &[u8]) -> Result<Vec<Param>, &'static str> {
    let mut params = Vec::new();
    loop {
        let Some(end) = body.iter().position(|&b| b == 0) else {
            return Err("startup packet is not terminated by a NUL byte");
        };
        if end == 0 {
            return if body.len() == 1 {
                Ok(params)
            } else {
                Err("bytes after the end of the startup parameters")
            };
        }
        let name = &body[..end];
        body = &body[end + 1..];
        let Some(vend) = body.iter().position(|&b| b == 0) else {
            return Err("startup parameter has no value");
        };
        if params.iter().any(|(k, _): &Param| k == name) {
            return Err("startup parameter given twice");
        }
        params.push((name.to_vec(), body[..vend].to_vec()));
        body = &body[vend + 1..];
    }
}

/// An ErrorResponse (severity FATAL) with `sqlstate` and `message`, as a
/// server sends it before closing: libpq prints the message.
pub fn error_response(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(32 + message.len());
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', sqlstate),
        (b'M', message),
    ] {
        body.push(field);
        push_cstr(&mut body, value.as_bytes());
    }
    body.push(0);
    let mut out = vec![ERROR_RESPONSE];
    out.extend(
        u32::try_from(body.len() + 4)
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend(body);
    out
}

/// A CancelRequest for `pid` and `key` (to send to the server that issued them).
pub fn encode_cancel(pid: u32, key: &[u8]) -> Vec<u8> {
    let len = u32::try_from(12 + key.len()).unwrap_or(u32::MAX);
    let mut out = len.to_be_bytes().to_vec();
    out.extend(CANCEL_CODE.to_be_bytes());
    out.extend(pid.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// What the backend's messages up to ReadyForQuery say, read as a stream
/// that passes through unchanged. Only headers (5 bytes) and BackendKeyData
/// bodies are held; every other body is skipped.
#[derive(Debug, Default)]
pub struct BackendScan {
    head: Vec<u8>,
    /// Bytes of the current body still to skip or collect.
    left: usize,
    tag: u8,
    body: Vec<u8>,
    /// BackendKeyData seen: (process id, secret key).
    pub key: Option<(u32, Vec<u8>)>,
    /// The startup is over: ReadyForQuery, an ErrorResponse, or bytes that
    /// are not PostgreSQL messages (then nothing more is learnt).
    pub done: bool,
}

/// Longest message body the scanner follows before ReadyForQuery: those
/// messages (authentication, parameters, notices) are small; a larger
/// length is not PostgreSQL, and the scan stops.
const MAX_STARTUP_MESSAGE: usize = 1 << 20;

/// Longest BackendKeyData body: pid and the longest key.
const MAX_KEY_BODY: usize = 4 + MAX_CANCEL_KEY;

impl BackendScan {
    /// Looks at the next bytes of the backend's stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.done {
            if self.left == 0 && self.head.len() < 5 {
                let take = (5 - self.head.len()).min(data.len());
                self.head.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.head.len() < 5 {
                    return;
                }
                self.tag = self.head[0];
                let len =
                    u32::from_be_bytes([self.head[1], self.head[2], self.head[3], self.head[4]]);
                let Some(body) = (len as usize).checked_sub(4) else {
                    self.done = true;
                    return;
                };
                self.left = body;
                self.body.clear();
                let known = matches!(self.tag, b'R' | b'S' | b'v' | b'N' | b'K' | b'Z' | b'E');
                if !known
                    || body > MAX_STARTUP_MESSAGE
                    || (self.tag == b'K' && !(8..=MAX_KEY_BODY).contains(&body))
                {
                    self.done = true;
                    return;
                }
                if body == 0 {
                    self.end_message();
                }
                continue;
            }
            let take = self.left.min(data.len());
            if self.tag == b'K' {
                self.body.extend_from_slice(&data[..take]);
            }
            self.left -= take;
            data = &data[take..];
            if self.left == 0 {
                self.end_message();
            }
        }
    }

    fn end_message(&mut self) {
        self.head.clear();
        match self.tag {
            b'K' => {
                if let Some(pid) = self.body.get(..4) {
                    let pid = u32::from_be_bytes([pid[0], pid[1], pid[2], pid[3]]);
                    self.key = Some((pid, self.body[4..].to_vec()));
                }
            }
            b'Z' | b'E' => self.done = true,
            // Authentication, ParameterStatus, NegotiateProtocolVersion, Notice.
            _ => {}
        }
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

    fn startup_of(buf: &[u8]) -> Startup {
        match decode_first(buf) {
            First::Startup { startup, len } => {
                assert_eq!(len, buf.len());
                startup
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn startup_and_cancel_decode() {
        let s = startup_of(&startup_message());
        assert_eq!(s.version, 3 << 16);
        assert_eq!(s.param(b"user"), Some(&b"app"[..]));
        assert_eq!(s.database(), Some(&b"orders"[..]));
        let cancel = [
            0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0x10, 0x92, 1, 2, 3, 4,
        ];
        assert_eq!(
            decode_first(&cancel),
            First::Cancel {
                cancel: Cancel {
                    pid: 4242,
                    key: vec![1, 2, 3, 4]
                },
                len: 16
            }
        );
        assert_eq!(encode_cancel(4242, &[1, 2, 3, 4]), cancel);
        // Without `database`, PostgreSQL uses the user name.
        let mut only_user = 0u32.to_be_bytes().to_vec();
        only_user.extend([0, 3, 0, 0]);
        only_user.extend(b"user\0bob\0\0");
        only_user[3] = only_user.len() as u8;
        assert_eq!(startup_of(&only_user).database(), Some(&b"bob"[..]));
    }

    #[test]
    fn every_prefix_of_a_startup_needs_more() {
        let msg = startup_message();
        for k in 0..msg.len() {
            match decode_first(&msg[..k]) {
                First::NeedMore { min_len } => assert!(min_len > k && min_len <= msg.len()),
                other => panic!("{k}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_first_messages_say_why() {
        let table: &[(&[u8], &str)] = &[
            (&[0, 0, 0, 4], "startup packet length is below 8"),
            (&[0, 1, 0, 0], "startup packet is longer than 10000 bytes"),
            (
                &[0, 0, 0, 8, 0, 2, 0, 0],
                "unsupported frontend protocol (only 3.x is spoken)",
            ),
            (
                &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x31],
                "unknown request code",
            ),
            (
                &[0, 0, 0, 9, 0x04, 0xd2, 0x16, 0x2f],
                "SSLRequest/GSSENCRequest has a bad length",
            ),
            (
                &[0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2e],
                "CancelRequest has a bad length",
            ),
            (
                b"\0\0\0\x0d\0\x03\0\0user\0",
                "startup parameter has no value",
            ),
            (
                b"\0\0\0\x0b\0\x03\0\0ab\0",
                "startup parameter has no value",
            ),
            (
                b"\0\0\0\x0a\0\x03\0\0\0x",
                "bytes after the end of the startup parameters",
            ),
            (
                b"\0\0\0\x11\0\x03\0\0a\0b\0a\0c\0\0",
                "startup parameter given twice",
            ),
        ];
        for (bytes, why) in table {
            assert_eq!(decode_first(bytes), First::Malformed(why), "{bytes:?}");
        }
    }

    #[test]
    fn rewrite_replaces_or_appends_names_and_keeps_the_rest() {
        let s = startup_of(&startup_message());
        let out = s.encode_with(Some(b"ledger"), None);
        let r = startup_of(&out);
        assert_eq!(r.database(), Some(&b"ledger"[..]));
        assert_eq!(r.param(b"user"), Some(&b"app"[..]));
        assert_eq!(r.params.len(), 2);
        assert_eq!(s.encode_with(None, None), startup_message());
        let mut only_user = vec![0, 0, 0, 0, 0, 3, 0, 0];
        only_user.extend(b"user\0bob\0\0");
        only_user[3] = only_user.len() as u8;
        let r = startup_of(&startup_of(&only_user).encode_with(Some(b"d"), Some(b"u")));
        assert_eq!(
            r.params,
            vec![
                (b"user".to_vec(), b"u".to_vec()),
                (b"database".to_vec(), b"d".to_vec())
            ]
        );
    }

    #[test]
    fn error_response_bytes() {
        let e = error_response("08P01", "bad");
        let mut want = vec![b'E', 0, 0, 0, 31];
        want.extend(b"SFATAL\0VFATAL\0C08P01\0Mbad\0\0");
        assert_eq!(e, want);
    }

    fn scan_all(bytes: &[u8], chunk: usize) -> BackendScan {
        let mut s = BackendScan::default();
        for c in bytes.chunks(chunk.max(1)) {
            s.feed(c);
        }
        s
    }

    #[test]
    fn backend_corpus_gives_keys_and_ends() {
        let files = corpus("pg_backend");
        type Want<'a> = (&'a str, Option<(u32, &'a [u8])>, bool);
        let expected: &[Want] = &[
            ("trust_login.bin", Some((4242, &[1, 2, 3, 4])), true),
            ("sasl_login.bin", Some((4242, &[1, 2, 3, 4])), true),
            ("notice_then_key.bin", Some((4242, &[1, 2, 3, 4])), true),
            ("error.bin", None, true),
            ("bad_key_len.bin", None, true),
            ("not_postgres.bin", None, true),
        ];
        for (name, key, done) in expected {
            let (_, bytes) = files.iter().find(|(n, _)| n == name).expect(name);
            for chunk in [1, 3, 7, bytes.len()] {
                let s = scan_all(bytes, chunk);
                assert_eq!(
                    s.key.as_ref().map(|(p, k)| (*p, k.as_slice())),
                    *key,
                    "{name}"
                );
                assert_eq!(s.done, *done, "{name}");
            }
        }
        let (_, long) = files.iter().find(|(n, _)| n == "long_key_3_2.bin").unwrap();
        let s = scan_all(long, 5);
        let want: Vec<u8> = (0..32).collect();
        assert_eq!(s.key, Some((7, want)));
    }

    #[test]
    fn startup_corpus_and_mutations_never_panic_and_prefixes_agree() {
        let seeds = corpus("pg_startup");
        let mut rng = XorShift(0x5eed_0000_0000_0517);
        let mut startups = 0;
        for _ in 0..MUTATIONS {
            let (_, seed) = &seeds[rng.below(seeds.len())];
            let input = mutate(&mut rng, seed);
            let whole = decode_first(&input);
            let cut = rng.below(input.len() + 1);
            let part = decode_first(&input[..cut]);
            // A decision on a prefix stands for the whole buffer.
            match (&part, &whole) {
                (First::NeedMore { min_len }, _) => assert!(*min_len > cut),
                (p, w) => assert_eq!(p, w, "{input:?}"),
            }
            if let First::Startup { startup, len } = &whole {
                assert!(*len <= MAX_STARTUP_LEN);
                // Re-encoding what was decoded gives the same packet.
                assert_eq!(startup.encode_with(None, None), input[..*len]);
                startups += 1;
            }
            // The backend scanner takes any bytes too.
            let a = scan_all(&input, 1);
            let b = scan_all(&input, input.len());
            assert_eq!((a.key, a.done), (b.key, b.done));
        }
        assert!(startups > 100, "{startups}");
    }
}
