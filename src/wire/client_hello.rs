//! TLS ClientHello peek: is this connection TLS, and which name and protocols
//! does the client ask for?
//!
//! Role: the router's view of the first bytes of a TLS connection, used in both
//! passthrough and termination before any backend is chosen. `peek` reads the
//! bytes buffered so far and returns a decision or "need more".
//!
//! Pure: never does IO, never copies or modifies the caller's buffer. The
//! handshake message may be split across several TLS records; it is parsed in
//! place across the record bodies (a list of borrowed slices), so the raw bytes
//! the caller later replays to the backend are exactly what the client sent.
//!
//! Cost: `peek` re-parses from the start of the buffer on each call, which is
//! O(buffer) and bounded by `max_buffered(cap)`. `Peek::NeedMore { min_len }` tells the
//! caller how long the buffer must be before a new call can answer anything
//! else, so a byte-at-a-time client does not cost one parse per byte.
//!
//! The SNI is normalised the way rustls does it, so passthrough and
//! termination route the same client to the same place. SNI is for routing
//! only, never for authorisation: the client chooses it freely.

use std::fmt;
use std::net::IpAddr;

/// Default cap on the ClientHello: the bytes of the handshake records that
/// carry it (their payload: the hello message, its 4-byte header included),
/// not counting the 5-byte record headers. Typical hellos are 250–600
/// bytes, about 1.8 KiB with a post-quantum key share (X25519MLKEM768 adds
/// 1,216 bytes); 16 KiB is one full TLS record (2^14 bytes of payload), which
/// leaves room for large PSK identities and padding. Counting the record
/// header against the cap refused a hello that fills exactly one record.
pub const DEFAULT_CAP: usize = 16 * 1024;

/// Largest configurable cap: four full records, more than any client sends;
/// above it one peer could pin too much memory per connection.
pub const MAX_CAP: usize = 64 * 1024;

/// Smallest cap honoured; smaller values are raised to it. A realistic hello
/// never fits below it, and it keeps `NeedMore { min_len }` ≤ cap for the
/// first record header.
pub const MIN_CAP: usize = 256;

/// TLS record header: content type (1), legacy version (2), length (2).
const RECORD_HEADER_LEN: usize = 5;

/// Most bytes buffered for a hello under `cap`: the cap of handshake bytes,
/// plus record headers worth as many bytes again. TLS lets a client split
/// its hello into records as small as one byte (six bytes on the wire per
/// byte of hello); allowing `cap / 5` records keeps that legal for every
/// real hello (a 1.8 KiB post-quantum hello in 1-byte records is 10.8 KiB)
/// while bounding the buffer at twice the cap.
pub fn max_buffered(cap: usize) -> usize {
    2 * cap.clamp(MIN_CAP, MAX_CAP)
}
/// Handshake message header: type (1), 24-bit length (3).
const HANDSHAKE_HEADER_LEN: usize = 4;
/// RFC 8446 §5.1: a plaintext record carries at most 2^14 bytes; more is
/// `record_overflow`, never a real client.
const MAX_RECORD_LEN: usize = 1 << 14;
/// Record content type `handshake`.
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
/// Handshake type `client_hello`.
const HANDSHAKE_TYPE_CLIENT_HELLO: u8 = 1;
/// Every SSL 3.0 / TLS 1.x record version has major version 3.
const RECORD_VERSION_MAJOR: u8 = 3;
/// An SSLv2 record header has the high bit of its first byte set.
const SSLV2_HEADER_BIT: u8 = 0x80;
/// ClientHello `random` field length.
const RANDOM_LEN: usize = 32;
/// RFC 8446 §4.1.2: `legacy_session_id<0..32>`.
const MAX_SESSION_ID_LEN: usize = 32;
/// Extension `server_name` (RFC 6066 §3).
const EXT_SERVER_NAME: u16 = 0;
/// Extension `application_layer_protocol_negotiation` (RFC 7301).
const EXT_ALPN: u16 = 16;
/// `server_name` entry type `host_name`, the only one ever defined.
const NAME_TYPE_HOST_NAME: u8 = 0;
/// Longest DNS name in text form without the trailing dot (RFC 1035: 255
/// octets on the wire), the limit rustls (pki-types) applies.
const MAX_DNS_NAME_LEN: usize = 253;
/// Longest DNS label (RFC 1035 §2.3.4).
const MAX_DNS_LABEL_LEN: usize = 63;

/// What the buffered bytes are, as far as they can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peek {
    /// Undecided: read more. Every extension of this buffer shorter than
    /// `min_len` gets this same answer; `min_len` never exceeds
    /// `max_buffered(cap)`.
    NeedMore { min_len: usize },
    /// The bytes are not a TLS ClientHello (route as non-TLS or close).
    NotTls(NotTls),
    /// A complete, well-formed ClientHello.
    Hello(ClientHello),
    /// The hello is larger than the cap allows, decided without waiting for
    /// its bytes: its length field announces `hello_len` handshake bytes,
    /// more than the cap, or it is split into more records than the cap
    /// allows headers for (`hello_len` is then what it announced).
    TooLarge { hello_len: usize },
}

/// The routing-relevant content of a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// Normalised host name from `server_name`: lowercase ASCII, one trailing
    /// dot removed. `None` when absent, an IP literal, or invalid.
    pub sni: Option<String>,
    /// A `server_name` extension was sent but held no usable DNS name (not
    /// counting IP literals, which are legal and simply not names).
    pub sni_invalid: bool,
    /// Protocol names from the ALPN extension, in the client's order.
    pub alpn: Vec<Vec<u8>>,
    /// Legacy version field of the first record (e.g. 0x0301).
    pub record_version: u16,
    /// `legacy_version` inside the ClientHello (0x0303 for TLS 1.2 and 1.3).
    pub client_version: u16,
    /// Length of the ClientHello handshake message, its 4-byte header included.
    pub hello_len: usize,
    /// Offset in the buffer just past the hello's last byte: record headers
    /// included, anything the client sent after the hello excluded.
    pub raw_len: usize,
    /// Number of TLS records the hello was spread over.
    pub records: usize,
}

/// Why the bytes are not a TLS ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotTls {
    /// The first byte is not the handshake content type 22 (e.g. an HTTP request line).
    NotHandshake { first_byte: u8 },
    /// The first byte has the high bit set: an SSLv2-format hello, unsupported by every TLS stack.
    Sslv2Hello,
    /// A record's major version is not 3.
    BadRecordVersion { major: u8 },
    /// A record announces zero bytes (RFC 8446 §5.1 forbids empty handshake fragments).
    EmptyRecord,
    /// A record announces more than 2^14 bytes (RFC 8446 §5.1 `record_overflow`).
    RecordOverflow { len: usize },
    /// A record of another content type arrived before the hello was complete.
    InterleavedRecord { content_type: u8 },
    /// The first handshake message is not a ClientHello.
    NotClientHello { handshake_type: u8 },
    /// A length field of the hello points outside its container; names the field.
    Malformed(&'static str),
    /// An extension type appears twice (RFC 8446 §4.2; rustls rejects it).
    DuplicateExtension { ext_type: u16 },
    /// `server_name` holds two `host_name` entries (RFC 6066 §3; rustls rejects it).
    DuplicateServerName,
}

impl NotTls {
    /// Short stable name, for metric labels and the access log.
    pub fn as_str(&self) -> &'static str {
        match self {
            NotTls::NotHandshake { .. } => "not_handshake",
            NotTls::Sslv2Hello => "sslv2_hello",
            NotTls::BadRecordVersion { .. } => "bad_record_version",
            NotTls::EmptyRecord => "empty_record",
            NotTls::RecordOverflow { .. } => "record_overflow",
            NotTls::InterleavedRecord { .. } => "interleaved_record",
            NotTls::NotClientHello { .. } => "not_client_hello",
            NotTls::Malformed(_) => "malformed",
            NotTls::DuplicateExtension { .. } => "duplicate_extension",
            NotTls::DuplicateServerName => "duplicate_server_name",
        }
    }
}

impl fmt::Display for NotTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotTls::NotHandshake { first_byte } => {
                write!(
                    f,
                    "first byte {first_byte:#04x} is not a TLS handshake record"
                )
            }
            NotTls::Sslv2Hello => f.write_str("SSLv2-format hello"),
            NotTls::BadRecordVersion { major } => write!(f, "record major version {major}"),
            NotTls::EmptyRecord => f.write_str("zero-length record"),
            NotTls::RecordOverflow { len } => write!(f, "record length {len} above 2^14"),
            NotTls::InterleavedRecord { content_type } => {
                write!(f, "record type {content_type} inside the ClientHello")
            }
            NotTls::NotClientHello { handshake_type } => {
                write!(f, "handshake type {handshake_type} is not a ClientHello")
            }
            NotTls::Malformed(field) => write!(f, "malformed ClientHello: {field}"),
            NotTls::DuplicateExtension { ext_type } => write!(f, "duplicate extension {ext_type}"),
            NotTls::DuplicateServerName => f.write_str("duplicate server_name host_name"),
        }
    }
}

impl std::error::Error for NotTls {}

/// Peeks at the bytes buffered so far (from the first byte of the
/// connection). `cap` is the largest hello accepted, in handshake bytes
/// (record headers not counted); it is clamped to `MIN_CAP..=MAX_CAP`, and
/// the caller never needs to buffer more than `max_buffered(cap)` bytes. See
/// the module doc for the cost model.
///
/// Every decision depends only on bytes already in `buf` and is final: a
/// longer buffer that starts with the same bytes gets the same answer.
pub fn peek(buf: &[u8], cap: usize) -> Peek {
    match peek_inner(buf, cap.clamp(MIN_CAP, MAX_CAP)) {
        Ok(peek) => peek,
        Err(not_tls) => Peek::NotTls(not_tls),
    }
}

fn peek_inner(buf: &[u8], cap: usize) -> Result<Peek, NotTls> {
    // Bodies of the records that carry the handshake message so far, trimmed
    // to the handshake bytes: parsed in place, never copied.
    let mut frags: Vec<&[u8]> = Vec::new();
    // The handshake header (type + 24-bit length) may itself be split.
    let mut hs_header = [0u8; HANDSHAKE_HEADER_LEN];
    // Handshake bytes carried by the records before the current one.
    let mut have = 0usize;
    // Total handshake bytes (header included), once the header is complete.
    let mut need: Option<usize> = None;
    let mut record_version = 0u16;
    // Start of the current record.
    let mut pos = 0usize;

    loop {
        // Record header, checked byte by byte so garbage is rejected early.
        let rest = buf.get(pos..).unwrap_or_default();
        let header = rest.get(..RECORD_HEADER_LEN).unwrap_or(rest);
        if let Some(&content_type) = header.first() {
            if pos > 0 && content_type != CONTENT_TYPE_HANDSHAKE {
                return Err(NotTls::InterleavedRecord { content_type });
            }
            if content_type & SSLV2_HEADER_BIT != 0 {
                return Err(NotTls::Sslv2Hello);
            }
            if content_type != CONTENT_TYPE_HANDSHAKE {
                return Err(NotTls::NotHandshake {
                    first_byte: content_type,
                });
            }
        }
        if let Some(&major) = header.get(1) {
            if major != RECORD_VERSION_MAJOR {
                return Err(NotTls::BadRecordVersion { major });
            }
        }
        let &[_, major, minor, len_hi, len_lo] = header else {
            return Ok(Peek::NeedMore {
                min_len: buf.len() + 1,
            });
        };
        let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        if len == 0 {
            return Err(NotTls::EmptyRecord);
        }
        if len > MAX_RECORD_LEN {
            return Err(NotTls::RecordOverflow { len });
        }
        let body_start = pos + RECORD_HEADER_LEN;
        let rec_end = body_start + len;
        // This is record number `frags.len() + 1`; its header must fit the
        // header allowance (see `max_buffered`). The handshake header is
        // known by now (at most 4 records carry it, and a cap allows at
        // least `MIN_CAP / 5` records), so `need` is what it announced.
        if (frags.len() + 1) * RECORD_HEADER_LEN > cap {
            return Ok(Peek::TooLarge {
                hello_len: need.unwrap_or(have),
            });
        }
        if pos == 0 {
            record_version = u16::from_be_bytes([major, minor]);
        }

        let available = buf
            .get(body_start..rec_end.min(buf.len()))
            .unwrap_or_default();
        // Complete the handshake header from this record's first bytes.
        let mut used = 0;
        while need.is_none() {
            let Some(&byte) = available.get(used) else {
                // The body ended (or is not here yet) mid-header.
                if available.len() == len {
                    break;
                }
                return Ok(Peek::NeedMore {
                    min_len: buf.len() + 1,
                });
            };
            let index = have + used;
            if index == 0 && byte != HANDSHAKE_TYPE_CLIENT_HELLO {
                return Err(NotTls::NotClientHello {
                    handshake_type: byte,
                });
            }
            if let Some(slot) = hs_header.get_mut(index) {
                *slot = byte;
            }
            used += 1;
            if index + 1 == HANDSHAKE_HEADER_LEN {
                let [_, a, b, c] = hs_header;
                let body_len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                let total = HANDSHAKE_HEADER_LEN + body_len;
                // The cap counts handshake bytes: a hello of exactly `cap`
                // bytes fits, in one full record or spread over several.
                if total > cap {
                    return Ok(Peek::TooLarge { hello_len: total });
                }
                need = Some(total);
            }
        }

        match need {
            // The hello ends inside this record.
            Some(total) if total - have <= len => {
                let hello_end = body_start + (total - have);
                let Some(last) = buf.get(body_start..hello_end) else {
                    return Ok(Peek::NeedMore { min_len: hello_end });
                };
                frags.push(last);
                let hello = parse_hello(&frags, total)?;
                return Ok(Peek::Hello(ClientHello {
                    record_version,
                    hello_len: total,
                    raw_len: hello_end,
                    records: frags.len(),
                    ..hello
                }));
            }
            // The hello continues in a later record: take all of this one.
            _ => {
                if available.len() < len {
                    // The next decision is the next record's content type.
                    let min_len = if need.is_some() {
                        rec_end + 1
                    } else {
                        buf.len() + 1
                    };
                    return Ok(Peek::NeedMore { min_len });
                }
                frags.push(available);
                have += len;
                pos = rec_end;
            }
        }
    }
}

/// Parses a complete ClientHello handshake message of `total` bytes spread
/// over `frags`. Returns the hello with the record-level fields left zero.
fn parse_hello(frags: &[&[u8]], total: usize) -> Result<ClientHello, NotTls> {
    let mut msg = Cursor::new(frags, total);
    msg.skip(HANDSHAKE_HEADER_LEN)
        .ok_or(NotTls::Malformed("handshake header"))?;
    let mut hello = ClientHello {
        sni: None,
        sni_invalid: false,
        alpn: Vec::new(),
        record_version: 0,
        client_version: msg.u16().ok_or(NotTls::Malformed("legacy_version"))?,
        hello_len: 0,
        raw_len: 0,
        records: 0,
    };
    msg.skip(RANDOM_LEN).ok_or(NotTls::Malformed("random"))?;
    let session_id_len = usize::from(msg.u8().ok_or(NotTls::Malformed("session_id"))?);
    if session_id_len > MAX_SESSION_ID_LEN {
        return Err(NotTls::Malformed("session_id longer than 32"));
    }
    msg.skip(session_id_len)
        .ok_or(NotTls::Malformed("session_id"))?;
    let suites_len = usize::from(msg.u16().ok_or(NotTls::Malformed("cipher_suites"))?);
    if suites_len == 0 || suites_len % 2 != 0 {
        return Err(NotTls::Malformed("cipher_suites length"));
    }
    msg.skip(suites_len)
        .ok_or(NotTls::Malformed("cipher_suites"))?;
    let compression_len = usize::from(msg.u8().ok_or(NotTls::Malformed("compression"))?);
    if compression_len == 0 {
        return Err(NotTls::Malformed("empty compression_methods"));
    }
    msg.skip(compression_len)
        .ok_or(NotTls::Malformed("compression"))?;
    if msg.is_empty() {
        // Pre-TLS 1.2 clients may omit the extensions block entirely.
        return Ok(hello);
    }
    let ext_len = usize::from(msg.u16().ok_or(NotTls::Malformed("extensions length"))?);
    let mut exts = msg
        .take(ext_len)
        .ok_or(NotTls::Malformed("extensions length"))?;
    if !msg.is_empty() {
        return Err(NotTls::Malformed("bytes after extensions"));
    }

    let mut seen = Vec::new();
    while !exts.is_empty() {
        let ext_type = exts.u16().ok_or(NotTls::Malformed("extension header"))?;
        let len = usize::from(exts.u16().ok_or(NotTls::Malformed("extension header"))?);
        let data = exts
            .take(len)
            .ok_or(NotTls::Malformed("extension length"))?;
        seen.push(ext_type);
        match ext_type {
            EXT_SERVER_NAME => match server_name(data)? {
                Sni::Name(name) => hello.sni = Some(name),
                Sni::IpLiteral => {}
                Sni::Invalid => hello.sni_invalid = true,
            },
            EXT_ALPN => hello.alpn = alpn(data)?,
            _ => {}
        }
    }
    seen.sort_unstable();
    let duplicate = seen.windows(2).find_map(|pair| match pair {
        [a, b] if a == b => Some(*a),
        _ => None,
    });
    if let Some(ext_type) = duplicate {
        return Err(NotTls::DuplicateExtension { ext_type });
    }
    Ok(hello)
}

/// What a `server_name` extension yields for routing.
#[derive(Debug, PartialEq, Eq)]
enum Sni {
    /// A valid DNS name, normalised.
    Name(String),
    /// An IPv4 or IPv6 literal: legal, but not a name (rustls: no SNI).
    IpLiteral,
    /// No usable name: not a DNS name, or no `host_name` entry at all.
    Invalid,
}

/// Parses the `server_name` extension body (RFC 6066 §3).
fn server_name(mut data: Cursor<'_>) -> Result<Sni, NotTls> {
    let list_len = usize::from(data.u16().ok_or(NotTls::Malformed("server_name list"))?);
    let mut list = data
        .take(list_len)
        .ok_or(NotTls::Malformed("server_name list length"))?;
    if !data.is_empty() || list_len == 0 {
        return Err(NotTls::Malformed("server_name list length"));
    }
    let mut host_name = None;
    while !list.is_empty() {
        let name_type = list.u8().ok_or(NotTls::Malformed("server_name entry"))?;
        let len = usize::from(list.u16().ok_or(NotTls::Malformed("server_name entry"))?);
        let name = list
            .bytes(len)
            .ok_or(NotTls::Malformed("server_name entry length"))?;
        // Other name types were never defined; skip them as rustls does.
        if name_type == NAME_TYPE_HOST_NAME {
            if host_name.is_some() {
                return Err(NotTls::DuplicateServerName);
            }
            host_name = Some(name);
        }
    }
    Ok(host_name.map_or(Sni::Invalid, |name| normalise_sni(&name)))
}

/// Normalises a `host_name` like rustls: an IP literal is no name; otherwise
/// a valid DNS name (pki-types rules), lowercased, one trailing dot removed.
///
/// One deliberate difference: the IP check runs after trimming the dot, so
/// `1.2.3.4.` is an IP literal here (rustls would keep it as a DNS name). A
/// router must never match a host rule against an address.
fn normalise_sni(raw: &[u8]) -> Sni {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Sni::Invalid;
    };
    if raw.len() > MAX_DNS_NAME_LEN {
        return Sni::Invalid;
    }
    let trimmed = text.strip_suffix('.').unwrap_or(text);
    if trimmed.parse::<IpAddr>().is_ok() {
        return Sni::IpLiteral;
    }
    if !is_dns_name(trimmed) {
        return Sni::Invalid;
    }
    Sni::Name(trimmed.to_ascii_lowercase())
}

/// DNS name rules of rustls-pki-types: labels of 1..=63 characters from
/// `[A-Za-z0-9_-]`, not starting or ending with `-`, and a last label that is
/// not all digits (so it cannot be mistaken for an address).
fn is_dns_name(name: &str) -> bool {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= MAX_DNS_LABEL_LEN
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let last_is_numeric = name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()));
    !name.is_empty() && name.split('.').all(label_ok) && !last_is_numeric
}

/// Parses the ALPN extension body (RFC 7301 §3.1).
fn alpn(mut data: Cursor<'_>) -> Result<Vec<Vec<u8>>, NotTls> {
    let list_len = usize::from(data.u16().ok_or(NotTls::Malformed("alpn list"))?);
    let mut list = data
        .take(list_len)
        .ok_or(NotTls::Malformed("alpn list length"))?;
    if !data.is_empty() || list_len == 0 {
        return Err(NotTls::Malformed("alpn list length"));
    }
    let mut protocols = Vec::new();
    while !list.is_empty() {
        let len = usize::from(list.u8().ok_or(NotTls::Malformed("alpn entry"))?);
        if len == 0 {
            return Err(NotTls::Malformed("empty alpn protocol"));
        }
        protocols.push(
            list.bytes(len)
                .ok_or(NotTls::Malformed("alpn entry length"))?,
        );
    }
    Ok(protocols)
}

/// A read cursor over a message split into fragments (record bodies): reads
/// cross fragment boundaries transparently, and a sub-cursor (`take`) is
/// limited to one length-prefixed field, so no length can read past its
/// container. Every read is checked; none panics.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    frags: &'a [&'a [u8]],
    /// Fragment holding the next byte.
    idx: usize,
    /// Offset of the next byte in that fragment.
    off: usize,
    /// Bytes this cursor may still read.
    left: usize,
}

impl<'a> Cursor<'a> {
    fn new(frags: &'a [&'a [u8]], len: usize) -> Self {
        Cursor {
            frags,
            idx: 0,
            off: 0,
            left: len,
        }
    }

    fn is_empty(&self) -> bool {
        self.left == 0
    }

    fn u8(&mut self) -> Option<u8> {
        if self.left == 0 {
            return None;
        }
        loop {
            let frag = self.frags.get(self.idx)?;
            if let Some(&byte) = frag.get(self.off) {
                self.off += 1;
                self.left -= 1;
                return Some(byte);
            }
            self.idx += 1;
            self.off = 0;
        }
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn skip(&mut self, mut n: usize) -> Option<()> {
        if n > self.left {
            return None;
        }
        while n > 0 {
            let in_frag = self.frags.get(self.idx)?.len().saturating_sub(self.off);
            if n < in_frag {
                self.off += n;
                self.left -= n;
                return Some(());
            }
            n -= in_frag;
            self.left -= in_frag;
            self.idx += 1;
            self.off = 0;
        }
        Some(())
    }

    /// Splits off the next `n` bytes as their own cursor and skips them here.
    fn take(&mut self, n: usize) -> Option<Cursor<'a>> {
        let sub = Cursor { left: n, ..*self };
        self.skip(n)?;
        Some(sub)
    }

    /// Copies the next `n` bytes (small fields only: names, protocols).
    fn bytes(&mut self, n: usize) -> Option<Vec<u8>> {
        if n > self.left {
            return None;
        }
        (0..n).map(|_| self.u8()).collect()
    }
}

#[cfg(test)]
mod tests;
