//! Tests for the ClientHello peek: captured real hellos, hand-built hellos,
//! re-framing, byte-by-byte feeding, the cap, and the garbage and odd-SNI
//! tables of the reliability plan.
//!
//! Where the seeds in `fuzz/corpus/client_hello/` come from:
//! - `openssl_*.bin`: OpenSSL 3.0 `s_client -connect 127.0.0.1:PORT
//!   -servername NAME [-alpn LIST] [-tls1_2|-tls1_3|-noservername]` against a
//!   Python listener that saved the client's first flight.
//! - `python_*.bin`: Python 3.11 `ssl.create_default_context()`,
//!   `wrap_bio(.., server_hostname=NAME)`, `do_handshake()`, outgoing BIO.
//! - all others: written by `write_synthetic_seeds` (ignored; run it with
//!   `cargo test write_synthetic_seeds -- --ignored` to regenerate).

use super::*;
use crate::wire::testutil::{corpus, mutate, XorShift, MUTATIONS};

// ---------------------------------------------------------------- builder

fn u16be(n: usize) -> [u8; 2] {
    u16::try_from(n).expect("fits u16").to_be_bytes()
}

/// One extension: type, u16 length, body.
fn ext(ext_type: u16, body: &[u8]) -> Vec<u8> {
    let mut v = ext_type.to_be_bytes().to_vec();
    v.extend(u16be(body.len()));
    v.extend(body);
    v
}

/// A `server_name` extension with these (name_type, name) entries.
fn sni_ext(entries: &[(u8, &[u8])]) -> Vec<u8> {
    let mut list = Vec::new();
    for (name_type, name) in entries {
        list.push(*name_type);
        list.extend(u16be(name.len()));
        list.extend(*name);
    }
    let mut body = u16be(list.len()).to_vec();
    body.extend(list);
    ext(EXT_SERVER_NAME, &body)
}

fn host(name: &[u8]) -> Vec<u8> {
    sni_ext(&[(NAME_TYPE_HOST_NAME, name)])
}

fn alpn_ext(protocols: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for p in protocols {
        list.push(u8::try_from(p.len()).unwrap());
        list.extend(*p);
    }
    let mut body = u16be(list.len()).to_vec();
    body.extend(list);
    ext(EXT_ALPN, &body)
}

/// The padding extension (RFC 7685), to size hellos exactly.
fn padding_ext(n: usize) -> Vec<u8> {
    ext(21, &vec![0; n])
}

/// A ClientHello handshake message (4-byte header included) carrying these
/// encoded extensions, or no extensions block at all for `None`.
fn hello_msg_opt(exts: Option<&[Vec<u8>]>) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend([0x5a; 32]); // random
    body.push(32);
    body.extend([0x11; 32]); // session id
    body.extend(u16be(4));
    body.extend([0x13, 0x01, 0x13, 0x02]); // cipher suites
    body.extend([1, 0]); // compression: null
    if let Some(exts) = exts {
        let exts = exts.concat();
        body.extend(u16be(exts.len()));
        body.extend(exts);
    }
    let mut msg = vec![HANDSHAKE_TYPE_CLIENT_HELLO];
    msg.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    msg.extend(body);
    msg
}

fn hello_msg(exts: &[Vec<u8>]) -> Vec<u8> {
    hello_msg_opt(Some(exts))
}

/// Frames handshake bytes into records of at most `chunk` bytes, each
/// `16 03 01 len`, as clients do.
fn frame(msg: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for part in msg.chunks(chunk) {
        out.extend([CONTENT_TYPE_HANDSHAKE, 3, 1]);
        out.extend(u16be(part.len()));
        out.extend(part);
    }
    out
}

/// The handshake bytes of a framed hello (test-only, for re-framing captures).
fn unframe(raw: &[u8]) -> Vec<u8> {
    let mut msg = Vec::new();
    let mut rest = raw;
    while let [CONTENT_TYPE_HANDSHAKE, _, _, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        msg.extend(&tail[..len]);
        rest = &tail[len..];
    }
    msg
}

fn seed(name: &str) -> Vec<u8> {
    let path = [
        env!("CARGO_MANIFEST_DIR"),
        "fuzz",
        "corpus",
        "client_hello",
        name,
    ];
    let path: std::path::PathBuf = path.iter().collect();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn hello_of(raw: &[u8]) -> ClientHello {
    match peek(raw, DEFAULT_CAP) {
        Peek::Hello(hello) => hello,
        other => panic!("expected a hello, got {other:?}"),
    }
}

/// One line per outcome, for tables.
fn summary(p: &Peek) -> String {
    match p {
        Peek::NeedMore { .. } => "need_more".into(),
        Peek::NotTls(e) => format!("not_tls:{}", e.as_str()),
        Peek::TooLarge { .. } => "too_large".into(),
        Peek::Hello(h) => {
            let alpn: Vec<String> = h
                .alpn
                .iter()
                .map(|p| String::from_utf8_lossy(p).into())
                .collect();
            let sni = h
                .sni
                .as_deref()
                .unwrap_or(if h.sni_invalid { "!invalid" } else { "-" });
            format!("hello sni={sni} alpn={}", alpn.join(","))
        }
    }
}

// ------------------------------------------------------- invariant checks

/// Calls `peek` and asserts what must hold for any input.
fn checked(buf: &[u8], cap: usize) -> Peek {
    let effective = cap.clamp(MIN_CAP, MAX_CAP);
    let buffered = max_buffered(cap);
    let p = peek(buf, cap);
    match &p {
        Peek::NeedMore { min_len } => {
            assert!(
                *min_len > buf.len() && *min_len <= buffered,
                "{p:?} len {}",
                buf.len()
            )
        }
        // Too many handshake bytes, or too many records for the headers'
        // allowance (then the hello itself may be under the cap).
        Peek::TooLarge { hello_len } => assert!(
            *hello_len > effective
                || buf.len() >= (effective / RECORD_HEADER_LEN + 1) * RECORD_HEADER_LEN,
            "{p:?}"
        ),
        Peek::NotTls(_) => {}
        Peek::Hello(h) => {
            assert!(h.raw_len <= buf.len() && h.raw_len <= buffered);
            assert!(h.hello_len <= effective, "{h:?}");
            assert!(h.records * RECORD_HEADER_LEN <= effective, "{h:?}");
            assert_eq!(h.raw_len, h.hello_len + RECORD_HEADER_LEN * h.records);
            assert!(h.hello_len >= HANDSHAKE_HEADER_LEN && h.hello_len < h.raw_len);
            if let Some(sni) = &h.sni {
                assert!(!h.sni_invalid);
                assert!(is_dns_name(sni) && !sni.ends_with('.'), "{sni:?}");
                assert!(!sni.bytes().any(|b| b.is_ascii_uppercase()), "{sni:?}");
                assert!(sni.parse::<IpAddr>().is_err(), "{sni:?}");
            }
            assert!(h.alpn.iter().all(|p| !p.is_empty()));
        }
    }
    p
}

/// A decision taken on a prefix must be the decision on the whole buffer,
/// and "need more up to min_len" must hold for every shorter buffer.
fn assert_prefix_consistent(buf: &[u8], k: usize, cap: usize) {
    let whole = peek(buf, cap);
    let part = checked(&buf[..k], cap);
    match part {
        Peek::NeedMore { min_len } if buf.len() >= min_len => {}
        _ => assert_eq!(part, whole, "prefix {k} of {} bytes", buf.len()),
    }
}

// ----------------------------------------------------------- real hellos

#[test]
fn openssl_capture_gives_sni_and_alpn() {
    let raw = seed("openssl_sni.bin");
    let hello = hello_of(&raw);
    assert_eq!(hello.sni.as_deref(), Some("db.prod.example.com"));
    assert!(!hello.sni_invalid);
    assert_eq!(hello.alpn, vec![b"postgresql".to_vec()]);
    assert_eq!(hello.record_version, 0x0301);
    assert_eq!(hello.client_version, 0x0303);
    assert_eq!(hello.raw_len, raw.len());
    assert_eq!(hello.hello_len, raw.len() - RECORD_HEADER_LEN);
    assert_eq!(hello.records, 1);
}

#[test]
fn python_memorybio_capture_is_normalised() {
    let hello = hello_of(&seed("python_memorybio.bin"));
    assert_eq!(hello.sni.as_deref(), Some("payments.internal.example.net"));
    assert_eq!(hello.alpn, vec![b"postgresql".to_vec(), b"h2".to_vec()]);
}

#[test]
fn reframed_real_hellos_give_the_same_answer() {
    for name in [
        "openssl_sni.bin",
        "python_memorybio.bin",
        "openssl_tls12_mixed_case.bin",
    ] {
        let raw = seed(name);
        let expected = hello_of(&raw);
        let msg = unframe(&raw);
        assert_eq!(msg.len(), expected.hello_len);
        for chunk in [1, 7, 100, MAX_RECORD_LEN] {
            let framed = frame(&msg, chunk);
            let hello = hello_of(&framed);
            assert_eq!(
                (&hello.sni, &hello.alpn),
                (&expected.sni, &expected.alpn),
                "{name}/{chunk}"
            );
            assert_eq!(hello.hello_len, expected.hello_len);
            assert_eq!(hello.records, msg.len().div_ceil(chunk));
            assert_eq!(hello.raw_len, framed.len());
        }
    }
}

#[test]
fn byte_by_byte_needs_more_until_the_last_byte() {
    let msg = unframe(&seed("openssl_sni.bin"));
    for chunk in [1, 7, 100, MAX_RECORD_LEN] {
        let raw = frame(&msg, chunk);
        for k in 0..raw.len() {
            match checked(&raw[..k], DEFAULT_CAP) {
                Peek::NeedMore { min_len } => assert!(min_len <= raw.len()),
                other => panic!("chunk {chunk}, prefix {k}: {other:?}"),
            }
        }
        assert_eq!(hello_of(&raw).raw_len, raw.len());
    }
}

#[test]
fn min_len_hint_saves_parses() {
    let raw = seed("openssl_sni.bin");
    let (mut len, mut calls) = (0, 0);
    while let Peek::NeedMore { min_len } = peek(&raw[..len], DEFAULT_CAP) {
        assert!(min_len > len);
        len = min_len;
        calls += 1;
    }
    assert_eq!(len, raw.len());
    // 5 record-header bytes and 4 handshake-header bytes are decision points;
    // after them the caller waits for the whole hello.
    assert_eq!(calls, RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + 1);
}

#[test]
fn bytes_after_the_hello_are_left_alone() {
    let raw = seed("openssl_sni.bin");
    let mut more = raw.clone();
    // TLS 1.3 middlebox-compat ChangeCipherSpec, then early data.
    more.extend([20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 2, 0xaa, 0xbb]);
    assert_eq!(hello_of(&more), hello_of(&raw));
}

// -------------------------------------------------------------------- cap

/// A hello of exactly `target` handshake bytes (its 4-byte header
/// included) in records of `chunk` bytes.
fn hello_sized(target: usize, chunk: usize) -> Vec<u8> {
    let base = hello_msg(&[host(b"big.example.com"), padding_ext(0)]).len();
    let msg = hello_msg(&[host(b"big.example.com"), padding_ext(target - base)]);
    assert_eq!(msg.len(), target);
    frame(&msg, chunk)
}

#[test]
fn a_hello_filling_one_full_record_fits_the_default_cap() {
    // Exactly 2^14 handshake bytes in one record: 16,389 bytes on the wire.
    // Counting the 5-byte record header against the cap refused it.
    let raw = hello_sized(MAX_RECORD_LEN, MAX_RECORD_LEN);
    assert_eq!(raw.len(), MAX_RECORD_LEN + RECORD_HEADER_LEN);
    match checked(&raw, DEFAULT_CAP) {
        Peek::Hello(h) => {
            assert_eq!(h.hello_len, DEFAULT_CAP);
            assert_eq!((h.records, h.raw_len), (1, raw.len()));
            assert_eq!(h.sni.as_deref(), Some("big.example.com"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cap_minus_one_and_cap_fit_cap_plus_one_is_too_large_at_once() {
    for (cap, chunk) in [
        (DEFAULT_CAP, MAX_RECORD_LEN),
        // The cap's worth of handshake bytes spread across records.
        (DEFAULT_CAP, 8192),
        (DEFAULT_CAP, 1000),
        (MAX_CAP, MAX_RECORD_LEN),
        (4096, 1000),
        (2048, 64),
    ] {
        for target in [cap - 1, cap] {
            let hello = match checked(&hello_sized(target, chunk), cap) {
                Peek::Hello(hello) => hello,
                other => panic!("cap {cap}, {target} bytes: {other:?}"),
            };
            assert_eq!(hello.sni.as_deref(), Some("big.example.com"));
            assert_eq!(hello.hello_len, target);
        }
        let raw = hello_sized(cap + 1, chunk);
        assert_eq!(
            checked(&raw, cap),
            Peek::TooLarge { hello_len: cap + 1 },
            "cap {cap}"
        );
        // Decided on the headers, without the bytes: the first record
        // header and the handshake header.
        let decided = (0..=raw.len())
            .find(|k| matches!(checked(&raw[..*k], cap), Peek::TooLarge { .. }))
            .unwrap();
        assert_eq!(
            decided,
            RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN.min(chunk),
            "cap {cap}"
        );
    }
}

#[test]
fn record_headers_are_allowed_up_to_the_cap_again() {
    // 1-byte records: six wire bytes per hello byte, legal TLS. A hello of
    // cap/5 bytes has exactly the allowed number of headers.
    let cap = 2048;
    let allowed = cap / RECORD_HEADER_LEN;
    let base = hello_msg(&[host(b"big.example.com"), padding_ext(0)]).len();
    let fits = hello_sized(allowed, 1);
    assert!(allowed >= base);
    assert!(matches!(checked(&fits, cap), Peek::Hello(_)));
    assert!(fits.len() <= max_buffered(cap));
    let over = hello_sized(allowed + 1, 1);
    assert_eq!(
        checked(&over, cap),
        Peek::TooLarge {
            hello_len: allowed + 1
        }
    );
}

#[test]
fn cap_is_clamped() {
    let raw = hello_sized(MIN_CAP + 1, MAX_RECORD_LEN);
    assert!(matches!(peek(&raw, 0), Peek::TooLarge { .. }));
    assert!(matches!(peek(&raw, MIN_CAP + 1), Peek::Hello(_)));
    let raw = hello_sized(MAX_CAP + 1, MAX_RECORD_LEN);
    assert!(matches!(peek(&raw, usize::MAX), Peek::TooLarge { .. }));
}

// ---------------------------------------------------------------- garbage

#[test]
fn garbage_table() {
    let half = frame(&hello_msg(&[host(b"a.example")]), 40);
    let mut interleaved = half[..45].to_vec();
    interleaved.extend([23, 3, 3, 0, 2, 0xde, 0xad]);
    let mut rng = XorShift(0x0123_4567_89ab_cdef);
    let random: Vec<u8> = (0..64).map(|_| rng.next() as u8).collect();
    let mut sslv2 = vec![
        0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
    ];
    sslv2.extend([0x07; 21 + 16]);
    let table: &[(&str, &[u8], Peek)] = &[
        (
            "http request line",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            nt(NotTls::NotHandshake { first_byte: b'G' }),
        ),
        (
            "postgres startup",
            &[0, 0, 0, 8, 4, 210, 22, 47],
            nt(NotTls::NotHandshake { first_byte: 0 }),
        ),
        ("sslv2 hello", &sslv2, nt(NotTls::Sslv2Hello)),
        (
            "application data",
            &[23, 3, 3, 0, 2, 1, 2],
            nt(NotTls::NotHandshake { first_byte: 23 }),
        ),
        (
            "alert",
            &[21, 3, 3, 0, 2, 2, 40],
            nt(NotTls::NotHandshake { first_byte: 21 }),
        ),
        (
            "record major 2",
            &[22, 2, 0, 0, 4],
            nt(NotTls::BadRecordVersion { major: 2 }),
        ),
        (
            "zero-length record",
            &[22, 3, 1, 0, 0],
            nt(NotTls::EmptyRecord),
        ),
        (
            "huge record length, then nothing",
            &[22, 3, 1, 0xff, 0xff],
            nt(NotTls::RecordOverflow { len: 0xffff }),
        ),
        (
            // A full 2^14 record is within the cap: wait for the hello.
            "full record",
            &[22, 3, 1, 0x40, 0x00],
            Peek::NeedMore { min_len: 6 },
        ),
        (
            "hello above the cap in a full record",
            &[22, 3, 1, 0x40, 0x00, 1, 0, 0x40, 0x00],
            Peek::TooLarge {
                hello_len: 4 + 0x4000,
            },
        ),
        (
            "huge handshake length",
            &[22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff],
            Peek::TooLarge {
                hello_len: 4 + 0xff_ffff,
            },
        ),
        (
            "server hello",
            &[22, 3, 3, 0, 4, 2, 0, 0, 0],
            nt(NotTls::NotClientHello { handshake_type: 2 }),
        ),
        (
            "alert inside the hello",
            &interleaved,
            nt(NotTls::InterleavedRecord { content_type: 23 }),
        ),
        ("nothing yet", &[], Peek::NeedMore { min_len: 1 }),
        ("one byte", &[22], Peek::NeedMore { min_len: 2 }),
    ];
    for (what, bytes, expected) in table {
        assert_eq!(&checked(bytes, DEFAULT_CAP), expected, "{what}");
    }
    // Random bytes: rejected at the first byte, whichever reason it is.
    assert!(matches!(checked(&random, DEFAULT_CAP), Peek::NotTls(_)));
    assert!(matches!(
        checked(&random[..1], DEFAULT_CAP),
        Peek::NotTls(_)
    ));
}

fn nt(e: NotTls) -> Peek {
    Peek::NotTls(e)
}

#[test]
fn malformed_hellos() {
    let ok = hello_msg(&[host(b"ok.example"), alpn_ext(&[b"h2"])]);
    assert!(matches!(
        peek(&frame(&ok, 100), DEFAULT_CAP),
        Peek::Hello(_)
    ));
    let mut bad_ext_len = hello_msg(&[host(b"ok.example")]);
    let at = bad_ext_len.len() - 17; // the server_name extension's length field
    bad_ext_len[at] = 0xff;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "extension length past the end",
            bad_ext_len,
            "not_tls:malformed",
        ),
        (
            "server_name list shorter than entries",
            hello_msg(&[ext(0, &[0, 3, 0, 0, 9, b'a'])]),
            "not_tls:malformed",
        ),
        (
            "empty server_name list",
            hello_msg(&[ext(0, &[0, 0])]),
            "not_tls:malformed",
        ),
        (
            "empty server_name extension",
            hello_msg(&[ext(0, &[])]),
            "not_tls:malformed",
        ),
        (
            "empty alpn protocol",
            hello_msg(&[ext(16, &[0, 3, 0, 1, b'x'])]),
            "not_tls:malformed",
        ),
        (
            "empty alpn list",
            hello_msg(&[ext(16, &[0, 0])]),
            "not_tls:malformed",
        ),
        (
            "alpn list overruns",
            hello_msg(&[ext(16, &[0, 9, 2, b'h', b'2'])]),
            "not_tls:malformed",
        ),
        (
            "duplicate extension",
            hello_msg(&[alpn_ext(&[b"a"]), alpn_ext(&[b"b"])]),
            "not_tls:duplicate_extension",
        ),
        (
            "truncated extension header",
            hello_msg(&[vec![0, 16, 0]]),
            "not_tls:malformed",
        ),
        (
            "no extensions block",
            hello_msg_opt(None),
            "hello sni=- alpn=",
        ),
        (
            "empty extensions block",
            hello_msg(&[]),
            "hello sni=- alpn=",
        ),
    ];
    for (what, msg, expected) in cases {
        assert_eq!(
            summary(&checked(&frame(&msg, 7), DEFAULT_CAP)),
            expected,
            "{what}"
        );
    }
    // Hello shorter than its fixed fields, and one with bytes after its extensions.
    let short = [HANDSHAKE_TYPE_CLIENT_HELLO, 0, 0, 3, 3, 3, 0];
    assert_eq!(
        summary(&peek(&frame(&short, 100), DEFAULT_CAP)),
        "not_tls:malformed"
    );
    let mut trailing = hello_msg(&[]);
    trailing.push(0);
    trailing[3] += 1; // the 24-bit handshake length
    assert_eq!(
        summary(&peek(&frame(&trailing, 100), DEFAULT_CAP)),
        "not_tls:malformed"
    );
}

// ---------------------------------------------------------------- odd SNI

#[test]
fn odd_sni_table() {
    let label63 = "a".repeat(63);
    let name253 = format!("{label63}.{label63}.{label63}.{}", "d".repeat(61));
    let name254 = format!("{name253}d");
    let label64 = format!("{}.example", "a".repeat(64));
    let name253_dot = format!("{name253}.");
    let table: Vec<(&[u8], &str)> = vec![
        (b"DB.Prod.Example.COM", "db.prod.example.com"),
        (b"example.com.", "example.com"),
        (b"example.com..", "!invalid"),
        (b"a..b.example", "!invalid"),
        (b".", "!invalid"),
        (b"", "!invalid"),
        (b"127.0.0.1", "-"),
        (b"::1", "-"),
        (b"2001:db8::7", "-"),
        (b"1.2.3.4.", "-"),
        (b"[::1]", "!invalid"),
        (b"exa\0mple.com", "!invalid"),
        ("bücher.example".as_bytes(), "!invalid"),
        (b"\xff\xfe.example", "!invalid"),
        (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
        (
            b"_acme-challenge.Example.com",
            "_acme-challenge.example.com",
        ),
        (b"-lead.example", "!invalid"),
        (b"trail-.example", "!invalid"),
        (b"*.example.com", "!invalid"),
        (b"with space.example", "!invalid"),
        (b"localhost", "localhost"),
        (b"123", "!invalid"),
        (b"example.123", "!invalid"),
        (b"123.example", "123.example"),
        (name253.as_bytes(), &name253),
        (name254.as_bytes(), "!invalid"),
        (name253_dot.as_bytes(), "!invalid"),
        (label64.as_bytes(), "!invalid"),
    ];
    for (raw, expected) in table {
        let hello = hello_of(&frame(&hello_msg(&[host(raw)]), 100));
        let got = hello
            .sni
            .as_deref()
            .unwrap_or(if hello.sni_invalid { "!invalid" } else { "-" });
        assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(raw));
    }
    let two = hello_msg(&[sni_ext(&[(0, b"a.example"), (0, b"b.example")])]);
    assert_eq!(
        peek(&frame(&two, 100), DEFAULT_CAP),
        nt(NotTls::DuplicateServerName)
    );
    // Unknown name types are skipped; without a host_name there is no name.
    let other_type = hello_msg(&[sni_ext(&[(7, b"x"), (0, b"Real.example")])]);
    assert_eq!(
        hello_of(&frame(&other_type, 100)).sni.as_deref(),
        Some("real.example")
    );
    let only_other = hello_of(&frame(&hello_msg(&[sni_ext(&[(7, b"x")])]), 100));
    assert_eq!((only_other.sni, only_other.sni_invalid), (None, true));
}

// ----------------------------------------------------- corpus and fuzzing

#[test]
fn corpus_replays_with_expected_outcomes() {
    let expected: &[(&str, &str)] = &[
        (
            "openssl_sni.bin",
            "hello sni=db.prod.example.com alpn=postgresql",
        ),
        (
            "openssl_tls12_mixed_case.bin",
            "hello sni=mixed.case.example.org alpn=h2,http/1.1",
        ),
        (
            "openssl_tls13_trailing_dot.bin",
            "hello sni=api.example.com alpn=",
        ),
        ("openssl_nosni.bin", "hello sni=- alpn="),
        ("openssl_ip_literal.bin", "hello sni=- alpn=postgresql"),
        (
            "python_memorybio.bin",
            "hello sni=payments.internal.example.net alpn=postgresql,h2",
        ),
        ("python_ip_literal.bin", "hello sni=- alpn="),
        (
            "reframed_1_byte_records.bin",
            "hello sni=db.prod.example.com alpn=postgresql",
        ),
        (
            "reframed_7_byte_records.bin",
            "hello sni=db.prod.example.com alpn=postgresql",
        ),
        (
            "pq_sized_key_share.bin",
            "hello sni=pq.example.com alpn=h2,http/1.1",
        ),
        ("truncated_hello.bin", "need_more"),
        ("http_request.bin", "not_tls:not_handshake"),
        ("sslv2_hello.bin", "not_tls:sslv2_hello"),
        ("zero_length_record.bin", "not_tls:empty_record"),
        ("huge_handshake_length.bin", "too_large"),
        ("duplicate_server_name.bin", "not_tls:duplicate_server_name"),
        ("full_record_hello.bin", "hello sni=big.example.com alpn="),
    ];
    let files = corpus("client_hello");
    for (name, outcome) in expected {
        let (_, bytes) = files
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("missing seed {name}"));
        assert_eq!(summary(&checked(bytes, DEFAULT_CAP)), *outcome, "{name}");
    }
    // Seeds the fuzzer added: invariants only.
    for (_, bytes) in &files {
        checked(bytes, DEFAULT_CAP);
    }
}

#[test]
fn mutated_corpus_never_panics_and_keeps_invariants() {
    let seeds = corpus("client_hello");
    let mut rng = XorShift(0x5eed_0000_c11e_4e11);
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..MUTATIONS {
        let (_, seed) = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed);
        let cap = [DEFAULT_CAP, MIN_CAP, MAX_CAP][i % 3];
        let outcome = checked(&input, cap);
        let kind = summary(&outcome);
        *seen
            .entry(kind.split(' ').next().unwrap().to_string())
            .or_default() += 1;
        assert_prefix_consistent(&input, rng.below(input.len() + 1), cap);
    }
    // The mutations must reach both accepting and rejecting paths.
    for kind in [
        "hello",
        "need_more",
        "not_tls:malformed",
        "not_tls:not_handshake",
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) > 50,
            "{kind}: {seen:?}"
        );
    }
}

/// Writes the synthetic seeds. Ignored: run by hand after changing them.
#[test]
#[ignore]
fn write_synthetic_seeds() {
    let real = unframe(&seed("openssl_sni.bin"));
    let pq = hello_msg(&[
        host(b"pq.example.com"),
        alpn_ext(&[b"h2", b"http/1.1"]),
        // key_share with one X25519MLKEM768 entry (group 0x11ec, 1216 bytes),
        // the size that pushes real hellos past one TCP segment.
        ext(
            51,
            &[&u16be(1220)[..], &[0x11, 0xec], &u16be(1216), &[0x42; 1216]].concat(),
        ),
    ]);
    let mut sslv2 = vec![
        0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
    ];
    sslv2.extend([0x07; 21 + 16]);
    let raw = seed("openssl_sni.bin");
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("reframed_1_byte_records.bin", frame(&real, 1)),
        ("reframed_7_byte_records.bin", frame(&real, 7)),
        ("pq_sized_key_share.bin", frame(&pq, MAX_RECORD_LEN)),
        ("truncated_hello.bin", raw[..raw.len() / 2].to_vec()),
        (
            "http_request.bin",
            b"GET / HTTP/1.1\r\nHost: db.prod.example.com\r\n\r\n".to_vec(),
        ),
        ("sslv2_hello.bin", sslv2),
        ("zero_length_record.bin", vec![22, 3, 1, 0, 0]),
        (
            "huge_handshake_length.bin",
            vec![22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff],
        ),
        (
            "duplicate_server_name.bin",
            frame(
                &hello_msg(&[sni_ext(&[(0, b"a.example"), (0, b"b.example")])]),
                100,
            ),
        ),
        // One full 2^14-byte record: exactly the default cap.
        (
            "full_record_hello.bin",
            hello_sized(MAX_RECORD_LEN, MAX_RECORD_LEN),
        ),
    ];
    let dir: std::path::PathBuf = [env!("CARGO_MANIFEST_DIR"), "fuzz", "corpus", "client_hello"]
        .iter()
        .collect();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
