//! Tests for the PROXY protocol codec: the spec's examples, round trips,
//! split headers, malformed tables, and corpus replay and mutation. The seeds
//! in `fuzz/corpus/proxy_protocol/` are written by `write_seeds` (ignored).

use super::*;
use crate::wire::testutil::{corpus, mutate, XorShift, MUTATIONS};

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn proxied(buf: &[u8]) -> (SocketAddr, SocketAddr, usize) {
    match checked(buf) {
        Decoded::Header(Header {
            addresses: Addresses::Proxied { src, dst },
            consumed_len,
            ..
        }) => (src, dst, consumed_len),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

fn summary(d: &Decoded) -> String {
    match d {
        Decoded::NeedMore { .. } => "need_more".into(),
        Decoded::Invalid(e) => format!("invalid:{}", e.as_str()),
        Decoded::Header(h) => {
            let v = match h.version {
                Version::V1 => "v1",
                Version::V2 => "v2",
            };
            match h.addresses {
                Addresses::Proxied { src, dst } => format!("{v} {src} {dst} +{}", h.consumed_len),
                Addresses::Local => format!("{v} local +{}", h.consumed_len),
                Addresses::Unknown => format!("{v} unknown +{}", h.consumed_len),
            }
        }
    }
}

/// Calls `decode` and asserts what must hold for any input.
fn checked(buf: &[u8]) -> Decoded {
    let d = decode(buf);
    match &d {
        Decoded::NeedMore { min_len } => {
            let cap = if buf.first() == Some(&b'P') {
                V1_MAX_LEN
            } else {
                V2_MAX_LEN
            };
            assert!(
                *min_len > buf.len() && *min_len <= cap,
                "{d:?} for {} bytes",
                buf.len()
            );
        }
        Decoded::Invalid(_) => {}
        Decoded::Header(h) => {
            assert!(h.consumed_len <= buf.len());
            if let Addresses::Proxied { src, dst } = h.addresses {
                // Canonical, and re-encoding gives the same addresses back.
                for a in [src, dst] {
                    assert_eq!(a.ip(), a.ip().to_canonical());
                }
                let again = match h.version {
                    Version::V1 => encode_v1(src, dst),
                    Version::V2 => encode_v2(src, dst),
                };
                let Decoded::Header(h2) = decode(&again) else {
                    panic!("re-encode {h:?}")
                };
                assert_eq!(h2.addresses, h.addresses);
                assert_eq!(h2.consumed_len, again.len());
            }
        }
    }
    d
}

/// A decision on a prefix is the decision on the whole buffer.
fn assert_prefix_consistent(buf: &[u8], k: usize) {
    let part = checked(&buf[..k]);
    match part {
        Decoded::NeedMore { min_len } if buf.len() >= min_len => {}
        _ => assert_eq!(
            part,
            decode(buf),
            "prefix {k} of {:?}",
            String::from_utf8_lossy(buf)
        ),
    }
}

/// A v2 PROXY header with TLVs appended after the address block.
fn v2_with_tlvs(src: SocketAddr, dst: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut out = encode_v2(src, dst);
    out.extend(tlvs);
    let len = u16::from_be_bytes([out[14], out[15]]) as usize + tlvs.len();
    out[14..16].copy_from_slice(&(len as u16).to_be_bytes());
    out
}

/// AWS-style TLV (0xEA, VPC endpoint id) and a NOOP padding TLV.
const SAMPLE_TLVS: &[u8] = b"\xea\x00\x15\x01vpce-08d2bf15fef6da5\x04\x00\x03\x00\x00\x00";

// ------------------------------------------------------------------- v1

#[test]
fn v1_spec_examples() {
    let mut buf = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec();
    let header_len = buf.len();
    buf.extend(b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n");
    assert_eq!(
        proxied(&buf),
        (
            addr("192.168.0.1:56324"),
            addr("192.168.0.11:443"),
            header_len
        )
    );

    let f = "ffff:".repeat(7) + "ffff";
    let tcp6 = format!("PROXY TCP6 {f} {f} 65535 65535\r\n");
    assert_eq!(tcp6.len(), 104);
    let (src, _, len) = proxied(tcp6.as_bytes());
    assert_eq!((src.port(), len), (65535, 104));

    // The worst case in the spec is exactly the 107-byte maximum.
    let unknown = format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n");
    assert_eq!(unknown.len(), V1_MAX_LEN);
    assert_eq!(summary(&checked(unknown.as_bytes())), "v1 unknown +107");
    assert_eq!(
        summary(&checked(b"PROXY UNKNOWN\r\nDATA")),
        "v1 unknown +15"
    );
}

#[test]
fn v1_round_trips_and_canonicalises() {
    let cases = [
        (
            "10.0.0.1:5432",
            "10.0.0.2:6432",
            "PROXY TCP4 10.0.0.1 10.0.0.2 5432 6432\r\n",
        ),
        (
            "[2001:db8::1]:1",
            "[::1]:0",
            "PROXY TCP6 2001:db8::1 ::1 1 0\r\n",
        ),
        // A `[::]` listener reports IPv4 clients as mapped: sent as TCP4.
        (
            "[::ffff:127.0.0.2]:40000",
            "127.0.0.1:80",
            "PROXY TCP4 127.0.0.2 127.0.0.1 40000 80\r\n",
        ),
        // Mixed families: the IPv4 side is mapped into IPv6.
        (
            "192.0.2.1:1234",
            "[2001:db8::2]:443",
            "PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 1234 443\r\n",
        ),
    ];
    for (src, dst, line) in cases {
        let encoded = encode_v1(addr(src), addr(dst));
        assert_eq!(String::from_utf8(encoded.clone()).unwrap(), line);
        let (s, d, len) = proxied(&encoded);
        assert_eq!((s.ip(), d), (addr(src).ip().to_canonical(), addr(dst)));
        assert_eq!(len, line.len());
    }
    // Decoding canonicalises a mapped source sent as TCP6.
    let (src, _, _) = proxied(b"PROXY TCP6 ::ffff:10.1.2.3 ::1 1 2\r\n");
    assert_eq!(src, addr("10.1.2.3:1"));
}

#[test]
fn v1_malformed_table() {
    let long = format!("PROXY UNKNOWN {}", "x".repeat(V1_MAX_LEN - 14));
    let cr_at_last = format!("PROXY UNKNOWN {}\r\n", "x".repeat(V1_MAX_LEN - 15));
    let table: &[(&[u8], &str)] = &[
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\n", "invalid:v1_syntax"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\rX", "invalid:v1_syntax"),
        (
            b"PROXY TCP4 1.2.3.4  5.6.7.8 80 443\r\n",
            "invalid:v1_syntax",
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 \r\n",
            "invalid:v1_syntax",
        ),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n", "invalid:v1_syntax"),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 9\r\n",
            "invalid:v1_syntax",
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.\xff 80 443\r\n",
            "invalid:v1_syntax",
        ),
        (
            b"PROXY  TCP4 1.2.3.4 5.6.7.8 80 443\r\n",
            "invalid:v1_protocol",
        ),
        (
            b"PROXY TCP5 1.2.3.4 5.6.7.8 80 443\r\n",
            "invalid:v1_protocol",
        ),
        (
            b"PROXY tcp4 1.2.3.4 5.6.7.8 80 443\r\n",
            "invalid:v1_protocol",
        ),
        (
            b"PROXY UDP4 1.2.3.4 5.6.7.8 80 443\r\n",
            "invalid:v1_protocol",
        ),
        (
            b"PROXY TCP4\t1.2.3.4 5.6.7.8 80 443\r\n",
            "invalid:v1_protocol",
        ),
        (b"PROXY UNKNOWNX\r\n", "invalid:v1_protocol"),
        (b"PROXY \r\n", "invalid:v1_protocol"),
        (b"PROXY TCP4 ::1 ::1 80 443\r\n", "invalid:v1_address"),
        (
            b"PROXY TCP6 1.2.3.4 5.6.7.8 80 443\r\n",
            "invalid:v1_address",
        ),
        (
            b"PROXY TCP4 1.2.3.256 5.6.7.8 80 443\r\n",
            "invalid:v1_address",
        ),
        (
            b"PROXY TCP4 01.2.3.4 5.6.7.8 80 443\r\n",
            "invalid:v1_address",
        ),
        (b"PROXY TCP4 1.2.3 5.6.7.8 80 443\r\n", "invalid:v1_address"),
        (
            b"PROXY TCP6 fe80::1%eth0 ::1 80 443\r\n",
            "invalid:v1_address",
        ),
        (b"PROXY TCP6 [::1] ::1 80 443\r\n", "invalid:v1_address"),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 443\r\n",
            "invalid:v1_port",
        ),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 080 443\r\n", "invalid:v1_port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 443\r\n", "invalid:v1_port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 443\r\n", "invalid:v1_port"),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\0\r\n",
            "invalid:v1_port",
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 000080 443\r\n",
            "invalid:v1_port",
        ),
        (long.as_bytes(), "invalid:v1_too_long"),
        (cr_at_last.as_bytes(), "invalid:v1_too_long"),
        (b"proxy TCP4", "invalid:no_signature"),
        (b"PROXX", "invalid:no_signature"),
        (b"GET / HTTP/1.1\r\n", "invalid:no_signature"),
        (b"\x16\x03\x01\x02\x00", "invalid:no_signature"),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 0 0\r\n",
            "v1 1.2.3.4:0 5.6.7.8:0 +32",
        ),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\r", "need_more"),
        (b"PROX", "need_more"),
        (b"", "need_more"),
    ];
    for (bytes, expected) in table {
        assert_eq!(
            summary(&checked(bytes)),
            *expected,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // The line limit is decided at 107 bytes, without waiting for more.
    assert_eq!(
        decode(&long.as_bytes()[..V1_MAX_LEN - 1]),
        Decoded::NeedMore {
            min_len: V1_MAX_LEN
        }
    );
}

// ------------------------------------------------------------------- v2

#[test]
fn v2_round_trips() {
    let cases = [
        ("10.0.0.1:5432", "10.0.0.2:6432", 0x11, 28),
        ("[2001:db8::1]:1", "[::1]:65535", 0x21, 52),
        ("[::ffff:127.0.0.2]:40000", "127.0.0.1:80", 0x11, 28),
        ("192.0.2.1:1234", "[2001:db8::2]:443", 0x21, 52),
    ];
    for (src, dst, family_byte, len) in cases {
        let encoded = encode_v2(addr(src), addr(dst));
        assert_eq!(encoded[..12], V2_SIGNATURE);
        assert_eq!(
            (encoded[12], encoded[13], encoded.len()),
            (0x21, family_byte, len)
        );
        let (s, d, consumed) = proxied(&encoded);
        assert_eq!(consumed, len);
        assert_eq!(s.ip().to_canonical(), addr(src).ip().to_canonical());
        assert_eq!(d.ip().to_canonical(), addr(dst).ip().to_canonical());
        assert_eq!((s.port(), d.port()), (addr(src).port(), addr(dst).port()));
    }
}

#[test]
fn v2_local_tlvs_and_payload() {
    let mut local = encode_v2_local();
    local.extend(b"payload");
    assert_eq!(summary(&checked(&local)), "v2 local +16");
    // LOCAL ignores the family and the block, whatever they hold.
    let mut local_inet = encode_v2(addr("1.1.1.1:1"), addr("2.2.2.2:2"));
    local_inet[12] = 0x20;
    assert_eq!(summary(&checked(&local_inet)), "v2 local +28");

    let mut buf = v2_with_tlvs(
        addr("198.51.100.7:50000"),
        addr("10.0.0.5:5432"),
        SAMPLE_TLVS,
    );
    let header_len = buf.len();
    buf.extend(b"\x00\x00\x00\x08\x04\xd2\x16\x2f");
    assert_eq!(
        proxied(&buf),
        (
            addr("198.51.100.7:50000"),
            addr("10.0.0.5:5432"),
            header_len
        )
    );

    // The largest accepted header, and one byte more.
    let at_cap = v2_with_tlvs(
        addr("1.1.1.1:1"),
        addr("2.2.2.2:2"),
        &tlv_of_total(V2_MAX_LEN),
    );
    assert_eq!(proxied(&at_cap).2, V2_MAX_LEN);
    let over = v2_with_tlvs(
        addr("1.1.1.1:1"),
        addr("2.2.2.2:2"),
        &tlv_of_total(V2_MAX_LEN + 1),
    );
    assert_eq!(decode(&over[..16]), Decoded::Invalid(Invalid::V2TooLong));
}

/// One NOOP TLV that brings an IPv4 header to `total` bytes.
fn tlv_of_total(total: usize) -> Vec<u8> {
    let value = total - 28 - 3;
    let mut tlv = vec![0x04];
    tlv.extend((value as u16).to_be_bytes());
    tlv.extend(vec![0; value]);
    tlv
}

#[test]
fn v2_malformed_table() {
    let good = encode_v2(addr("1.2.3.4:1"), addr("5.6.7.8:2"));
    let with = |at: usize, byte: u8| {
        let mut b = good.clone();
        b[at] = byte;
        b
    };
    let with_len = |len: u16| {
        let mut b = good.clone();
        b[14..16].copy_from_slice(&len.to_be_bytes());
        b
    };
    let table: Vec<(&str, Vec<u8>, &str)> = vec![
        ("version 1", with(12, 0x11), "invalid:v2_version"),
        ("version 3", with(12, 0x31), "invalid:v2_version"),
        ("command 2", with(12, 0x22), "invalid:v2_command"),
        ("PROXY with UNSPEC", with(13, 0x00), "invalid:v2_family"),
        ("PROXY with AF_UNIX", with(13, 0x31), "invalid:v2_family"),
        ("undefined family", with(13, 0x41), "invalid:v2_family"),
        (
            "LOCAL with undefined family",
            [&with(12, 0x20)[..13], &[0x51, 0, 0]].concat(),
            "invalid:v2_family",
        ),
        ("PROXY over DGRAM", with(13, 0x12), "invalid:v2_transport"),
        (
            "PROXY with UNSPEC transport",
            with(13, 0x10),
            "invalid:v2_transport",
        ),
        (
            "LOCAL with undefined transport",
            [&with(12, 0x20)[..13], &[0x03, 0, 0]].concat(),
            "invalid:v2_transport",
        ),
        ("INET block too short", with_len(11), "invalid:v2_truncated"),
        (
            "INET6 length for INET",
            with(13, 0x21),
            "invalid:v2_truncated",
        ),
        (
            "length above the cap",
            with_len(0xffff),
            "invalid:v2_too_long",
        ),
        (
            "TLV overruns",
            v2_with_tlvs(addr("1.1.1.1:1"), addr("2.2.2.2:2"), &[4, 0, 5, 1, 2]),
            "invalid:v2_tlv",
        ),
        (
            "TLV header cut",
            v2_with_tlvs(addr("1.1.1.1:1"), addr("2.2.2.2:2"), &[4, 0]),
            "invalid:v2_tlv",
        ),
        (
            "signature wrong at the end",
            with(11, b'\r'),
            "invalid:no_signature",
        ),
        (
            "signature wrong early",
            with(4, b'X'),
            "invalid:no_signature",
        ),
        (
            "empty TLV is fine",
            v2_with_tlvs(addr("1.1.1.1:1"), addr("2.2.2.2:2"), &[4, 0, 0]),
            "v2 1.1.1.1:1 2.2.2.2:2 +31",
        ),
    ];
    for (what, bytes, expected) in table {
        assert_eq!(summary(&checked(&bytes)), expected, "{what}");
    }
    // Decided from the fixed part alone, before the block arrives.
    assert_eq!(
        decode(&with_len(11)[..16]),
        Decoded::Invalid(Invalid::V2Truncated)
    );
    assert_eq!(
        decode(&with(13, 0x12)[..14]),
        Decoded::Invalid(Invalid::V2Transport)
    );
}

// ----------------------------------------------------------- incremental

#[test]
fn split_headers_need_more_until_complete() {
    let headers = [
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
        encode_v1(addr("[2001:db8::1]:1"), addr("[2001:db8::2]:2")),
        v2_with_tlvs(
            addr("198.51.100.7:50000"),
            addr("10.0.0.5:5432"),
            SAMPLE_TLVS,
        ),
        encode_v2(addr("[2001:db8::1]:1"), addr("[2001:db8::2]:2")),
        encode_v2_local(),
    ];
    for header in headers {
        for k in 0..header.len() {
            match checked(&header[..k]) {
                Decoded::NeedMore { min_len } => assert!(min_len <= header.len()),
                other => panic!("prefix {k}: {other:?}"),
            }
        }
        let Decoded::Header(h) = checked(&header) else {
            panic!()
        };
        assert_eq!(h.consumed_len, header.len());
    }
    // For v2 the length field lets a caller skip straight to the end.
    let v2 = v2_with_tlvs(addr("1.1.1.1:1"), addr("2.2.2.2:2"), SAMPLE_TLVS);
    assert_eq!(decode(&v2[..16]), Decoded::NeedMore { min_len: v2.len() });
}

// ----------------------------------------------------- corpus and fuzzing

#[test]
fn corpus_replays_with_expected_outcomes() {
    let expected: &[(&str, &str)] = &[
        (
            "v1_tcp4_with_payload.bin",
            "v1 192.168.0.1:56324 192.168.0.11:443 +47",
        ),
        (
            "v1_tcp6.bin",
            "v1 [2001:db8::1]:40000 [2001:db8::2]:5432 +47",
        ),
        ("v1_unknown_max.bin", "v1 unknown +107"),
        ("v1_mapped_tcp6.bin", "v1 10.1.2.3:1 [::1]:2 +36"),
        ("v2_tcp4.bin", "v2 198.51.100.7:50000 10.0.0.5:5432 +28"),
        (
            "v2_tcp6_tlvs.bin",
            "v2 [2001:db8::7]:50000 [2001:db8::5]:5432 +82",
        ),
        ("v2_local.bin", "v2 local +16"),
        ("v1_double_space.bin", "invalid:v1_syntax"),
        ("v2_unspec_proxy.bin", "invalid:v2_family"),
        ("v2_partial.bin", "need_more"),
    ];
    let files = corpus("proxy_protocol");
    for (name, outcome) in expected {
        let (_, bytes) = files
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("missing seed {name}"));
        assert_eq!(summary(&checked(bytes)), *outcome, "{name}");
    }
    for (_, bytes) in &files {
        checked(bytes);
    }
}

#[test]
fn mutated_corpus_never_panics_and_keeps_invariants() {
    let seeds = corpus("proxy_protocol");
    let mut rng = XorShift(0x5eed_0000_0000_9702);
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..MUTATIONS {
        let (_, seed) = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed);
        let kind = summary(&checked(&input));
        *seen
            .entry(kind.split(' ').next().unwrap().to_string())
            .or_default() += 1;
        assert_prefix_consistent(&input, rng.below(input.len() + 1));
    }
    for kind in [
        "v1",
        "v2",
        "need_more",
        "invalid:no_signature",
        "invalid:v1_address",
    ] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) > 50,
            "{kind}: {seen:?}"
        );
    }
}

/// Writes the seeds. Ignored: run by hand after changing them.
#[test]
#[ignore]
fn write_seeds() {
    let mut v1 = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec();
    v1.extend(b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n");
    let f = "ffff:".repeat(7) + "ffff";
    let mut local = encode_v2_local();
    local.extend(b"\x00\x00\x00\x08\x04\xd2\x16\x2f");
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("v1_tcp4_with_payload.bin", v1),
        (
            "v1_tcp6.bin",
            encode_v1(addr("[2001:db8::1]:40000"), addr("[2001:db8::2]:5432")),
        ),
        (
            "v1_unknown_max.bin",
            format!("PROXY UNKNOWN {f} {f} 65535 65535\r\n").into_bytes(),
        ),
        (
            "v1_mapped_tcp6.bin",
            b"PROXY TCP6 ::ffff:10.1.2.3 ::1 1 2\r\n".to_vec(),
        ),
        (
            "v2_tcp4.bin",
            encode_v2(addr("198.51.100.7:50000"), addr("10.0.0.5:5432")),
        ),
        (
            "v2_tcp6_tlvs.bin",
            v2_with_tlvs(
                addr("[2001:db8::7]:50000"),
                addr("[2001:db8::5]:5432"),
                SAMPLE_TLVS,
            ),
        ),
        ("v2_local.bin", local),
        (
            "v1_double_space.bin",
            b"PROXY TCP4 1.2.3.4  5.6.7.8 80 443\r\n".to_vec(),
        ),
        (
            "v2_unspec_proxy.bin",
            [&V2_SIGNATURE[..], &[0x21, 0x00, 0, 0]].concat(),
        ),
        (
            "v2_partial.bin",
            encode_v2(addr("1.2.3.4:1"), addr("5.6.7.8:2"))[..20].to_vec(),
        ),
    ];
    let dir: std::path::PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "fuzz",
        "corpus",
        "proxy_protocol",
    ]
    .iter()
    .collect();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
