//! The two facts about a certificate that rustls and webpki do not expose and
//! the store needs: its expiry (`notAfter`, to warn at load) and its subject
//! common name (a name Traefik also serves the certificate for, besides the
//! SAN DNS names webpki gives us).
//!
//! A pure, bounded DER walk over `&[u8]`: no allocation except the returned
//! name, never panics on malformed input (it returns `None`).

/// DER tags used here.
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const INTEGER: u8 = 0x02;
const CONTEXT_0: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// OID 2.5.4.3 (commonName), DER-encoded content.
const CN_OID: &[u8] = &[0x55, 0x04, 0x03];

/// One TLV: `(tag, content, rest after it)`.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l0, mut b) = b.split_first()?;
    let len = if l0 < 0x80 {
        usize::from(l0)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[..n] {
            len = (len << 8) | usize::from(x);
        }
        b = &b[n..];
        len
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

/// Expect `tag` and return its content and the rest.
fn expect(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, content, rest) = tlv(b)?;
    (t == tag).then_some((content, rest))
}

/// The tbsCertificate fields after the version: serial, signature,
/// issuer, validity, subject, ...
fn tbs_fields(cert: &[u8]) -> Option<&[u8]> {
    let (cert, _) = expect(cert, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    // Optional explicit version [0].
    let tbs = match tlv(tbs)? {
        (CONTEXT_0, _, rest) => rest,
        _ => tbs,
    };
    Some(tbs)
}

/// `(validity content, subject content)`.
fn validity_and_subject(cert: &[u8]) -> Option<(&[u8], &[u8])> {
    let tbs = tbs_fields(cert)?;
    let (_, _, rest) = tlv(tbs)?; // serialNumber
    let (_, rest) = expect(rest, SEQUENCE)?; // signature algorithm
    let (_, rest) = expect(rest, SEQUENCE)?; // issuer
    let (validity, rest) = expect(rest, SEQUENCE)?;
    let (subject, _) = expect(rest, SEQUENCE)?;
    Some((validity, subject))
}

/// `notBefore` as seconds since the Unix epoch.
/// A certificate's validity (`notBefore`, `notAfter`) as Unix seconds.
pub fn validity(cert_der: &[u8]) -> Option<(i64, i64)> {
    Some((not_before(cert_der)?, not_after(cert_der)?))
}

pub fn not_before(cert: &[u8]) -> Option<i64> {
    let (validity, _) = validity_and_subject(cert)?;
    let (tag, t, _) = tlv(validity)?;
    parse_time(tag, t)
}

/// `notAfter` as seconds since the Unix epoch.
pub fn not_after(cert: &[u8]) -> Option<i64> {
    let (validity, _) = validity_and_subject(cert)?;
    let (_, _, rest) = tlv(validity)?; // notBefore
    let (tag, t, _) = tlv(rest)?;
    parse_time(tag, t)
}

/// The subject's first commonName, when it is UTF-8.
pub fn common_name(cert: &[u8]) -> Option<String> {
    let (_, mut rdns) = validity_and_subject(cert)?;
    while !rdns.is_empty() {
        let (set, rest) = expect(rdns, SET)?;
        rdns = rest;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (atv, rest) = expect(attrs, SEQUENCE)?;
            attrs = rest;
            let (oid, value) = expect(atv, OID)?;
            if oid == CN_OID {
                let (_, v, _) = tlv(value)?;
                return std::str::from_utf8(v).ok().map(str::to_string);
            }
        }
    }
    None
}

/// Whether the certificate is X.509 v1: no explicit version field, or
/// version 0. webpki (so rustls' key check) refuses v1; Go, so Traefik,
/// serves it (Traefik's own test certificates `whoami-*.crt` are v1).
pub fn is_v1(cert: &[u8]) -> bool {
    let Some((cert, _)) = expect(cert, SEQUENCE) else {
        return false;
    };
    let Some((tbs, _)) = expect(cert, SEQUENCE) else {
        return false;
    };
    match tlv(tbs) {
        Some((CONTEXT_0, version, _)) => version == [INTEGER, 0x01, 0x00],
        Some((INTEGER, _, _)) => true, // the serial comes first: no version
        _ => false,
    }
}

/// The subjectPublicKeyInfo, whole (tag and length included): what the
/// public half of a private key (`SigningKey::public_key`) is compared with.
pub fn spki(cert: &[u8]) -> Option<&[u8]> {
    let tbs = tbs_fields(cert)?;
    let (_, _, rest) = tlv(tbs)?; // serialNumber
    let (_, rest) = expect(rest, SEQUENCE)?; // signature algorithm
    let (_, rest) = expect(rest, SEQUENCE)?; // issuer
    let (_, rest) = expect(rest, SEQUENCE)?; // validity
    let (_, rest) = expect(rest, SEQUENCE)?; // subject
    let (_, after) = expect(rest, SEQUENCE)?; // subjectPublicKeyInfo
    Some(&rest[..rest.len() - after.len()])
}

/// subjectAltName (2.5.29.17).
const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];
/// Context tag [3] of the TBS certificate: its extensions.
const EXTENSIONS: u8 = 0xa3;
/// GeneralName `uniformResourceIdentifier` ([6] IMPLICIT IA5String).
const URI_NAME: u8 = 0x86;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;

/// The URI subject alternative names of a DER certificate (`peerCertSANs`
/// of type URI; webpki exposes only DNS names). Empty when the certificate
/// has none or cannot be read.
pub fn uri_sans(cert: &[u8]) -> Vec<String> {
    uri_sans_inner(cert).unwrap_or_default()
}

fn uri_sans_inner(cert: &[u8]) -> Option<Vec<String>> {
    let tbs = tbs_fields(cert)?;
    let (_, _, rest) = tlv(tbs)?; // serialNumber
    let (_, rest) = expect(rest, SEQUENCE)?; // signature algorithm
    let (_, rest) = expect(rest, SEQUENCE)?; // issuer
    let (_, rest) = expect(rest, SEQUENCE)?; // validity
    let (_, rest) = expect(rest, SEQUENCE)?; // subject
    let (_, mut rest) = expect(rest, SEQUENCE)?; // subjectPublicKeyInfo
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (tag, content, more) = tlv(rest)?;
        rest = more;
        if tag != EXTENSIONS {
            continue; // issuerUniqueID, subjectUniqueID
        }
        let (mut exts, _) = expect(content, SEQUENCE)?;
        while !exts.is_empty() {
            let (ext, more) = expect(exts, SEQUENCE)?;
            exts = more;
            let (oid, body) = expect(ext, OID)?;
            if oid != SAN_OID {
                continue;
            }
            let body = match tlv(body)? {
                (BOOLEAN, _, after) => after,
                _ => body,
            };
            let (names, _) = expect(body, OCTET_STRING)?;
            let (mut names, _) = expect(names, SEQUENCE)?;
            while !names.is_empty() {
                let (tag, v, more) = tlv(names)?;
                names = more;
                if tag == URI_NAME {
                    if let Ok(s) = std::str::from_utf8(v) {
                        out.push(s.to_string());
                    }
                }
            }
        }
    }
    Some(out)
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

/// UTCTime `YYMMDDHHMMSSZ` (years 1950-2049) or GeneralizedTime
/// `YYYYMMDDHHMMSSZ`, as Unix seconds.
fn parse_time(tag: u8, t: &[u8]) -> Option<i64> {
    let (year, rest) = match tag {
        UTC_TIME if t.len() == 13 => {
            let yy = digits(&t[..2])?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &t[2..])
        }
        GENERALIZED_TIME if t.len() == 15 => (digits(&t[..4])?, &t[4..]),
        _ => return None,
    };
    if rest.last() != Some(&b'Z') {
        return None;
    }
    let f = |i: usize| digits(&rest[i..i + 2]);
    let (month, day, h, m, s) = (f(0)?, f(2)?, f(4)?, f(6)?, f(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of `days_from_civil`: (year, month, day) of a day number
/// counted from 1970-01-01 (same algorithm, run backwards).
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time(UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(
            parse_time(GENERALIZED_TIME, b"20240229123456Z"),
            Some(1_709_210_096)
        );
        assert_eq!(parse_time(UTC_TIME, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(parse_time(UTC_TIME, b"49123123595"), None);
        assert_eq!(parse_time(UTC_TIME, b"4912312359xxZ"), None);
    }

    #[test]
    fn v1_certificate() {
        // Traefik's integration-test certificate (X.509 v1, RSA 2048).
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/traefik/fixtures/tcp/whoami-a.crt"
        );
        let pem = std::fs::read(path).unwrap();
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        assert!(is_v1(&der));
        assert_eq!(common_name(&der).as_deref(), Some("whoami-a.test"));
        let spki = spki(&der).unwrap();
        assert_eq!(spki[0], SEQUENCE);
        assert!(spki.len() > 256, "an RSA 2048 key: {} bytes", spki.len());
    }

    #[test]
    fn generated_certificate() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cn.example");
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("cn.example"));
        assert_eq!(not_after(cert.der()), Some(1_936_742_400));
        assert!(!is_v1(cert.der()), "rcgen makes v3");
        assert_eq!(
            spki(cert.der()),
            Some(&rcgen::PublicKeyData::subject_public_key_info(&key)[..])
        );
    }

    #[test]
    fn civil_dates_round_trip() {
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (2024, 12, 31), (2027, 3, 1)] {
            assert_eq!(civil_from_days(days_from_civil(y, m, d)), (y, m, d));
        }
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn uri_sans_are_read() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".into()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("spiffe://example.org/peer").unwrap(),
        ));
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(uri_sans(cert.der()), vec!["spiffe://example.org/peer"]);
        let plain = rcgen::CertificateParams::new(vec!["a.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(uri_sans(plain.der()).is_empty());
        assert!(uri_sans(b"garbage").is_empty());
    }

    #[test]
    fn garbage_is_none() {
        for b in [
            &[][..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x02, 0x30, 0x05],
        ] {
            assert_eq!(not_after(b), None);
            assert_eq!(common_name(b), None);
        }
    }
}
