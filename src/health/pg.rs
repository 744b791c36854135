//! The PostgreSQL health probe: a startup message as `user` on `database`,
//! the authentication the server asks for (trust, cleartext, md5,
//! SCRAM-SHA-256), then `select pg_is_in_recovery()`:
//! `f` is a primary, `t` a replica (hot standby). A server that refuses the
//! login, is starting up or shutting down (57P03), or answers anything else
//! is down, with the server's message as the reason. The password is sent
//! only inside the protocol, never logged.

use aws_lc_rs::{digest, hmac, pbkdf2, rand};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::{ProbeError, Timed, Verdict};
use crate::model::Secret;

/// Protocol 3.0.
const PROTOCOL: u32 = 196_608;
/// Longest message the probe reads (a row description or an error is
/// far smaller); a larger length is a broken peer, not a reason to allocate.
const MAX_MESSAGE: usize = 64 * 1024;
const QUERY: &[u8] = b"select pg_is_in_recovery()\0";

pub fn probe(
    c: &mut Timed,
    user: &str,
    database: &str,
    password: Option<&Secret>,
) -> Result<Verdict, ProbeError> {
    let mut body = Vec::new();
    body.extend_from_slice(&PROTOCOL.to_be_bytes());
    for (k, v) in [
        ("user", user),
        ("database", database),
        ("application_name", "sluicegate-health"),
    ] {
        cstr(&mut body, k.as_bytes());
        cstr(&mut body, v.as_bytes());
    }
    body.push(0);
    let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    c.send(&startup)?;
    authenticate(c, user, password)?;
    // ParameterStatus, BackendKeyData, notices until ReadyForQuery.
    loop {
        let (t, m) = read_message(c)?;
        match t {
            b'Z' => break,
            b'E' => return Err(server_error(&m)),
            _ => {}
        }
    }
    c.send(&message(b'Q', QUERY))?;
    let mut value = None;
    loop {
        let (t, m) = read_message(c)?;
        match t {
            b'D' => value = first_column(&m),
            b'E' => return Err(server_error(&m)),
            b'Z' => break,
            _ => {}
        }
    }
    // Terminate; the server closes. Best effort: the verdict is known.
    let _ = c.send(&[b'X', 0, 0, 0, 4]);
    match value.as_deref() {
        Some(b"f") => Ok(Verdict::Primary),
        Some(b"t") => Ok(Verdict::Replica),
        _ => Err(ProbeError::Refused(
            "postgres: no answer to select pg_is_in_recovery()".into(),
        )),
    }
}

fn authenticate(c: &mut Timed, user: &str, password: Option<&Secret>) -> Result<(), ProbeError> {
    let need = |what: &str| {
        ProbeError::Refused(format!(
            "postgres: the server asks for {what} and no password is configured (passwordFile or passwordEnv)"
        ))
    };
    loop {
        let (t, m) = read_message(c)?;
        match t {
            b'E' => return Err(server_error(&m)),
            b'R' => {}
            _ => {
                return Err(ProbeError::Refused(format!(
                    "postgres: unexpected message {:?} during authentication",
                    char::from(t)
                )))
            }
        }
        match code(&m)? {
            0 => return Ok(()),
            3 => {
                let pw = password.ok_or_else(|| need("a cleartext password"))?;
                let mut b = pw.0.as_bytes().to_vec();
                b.push(0);
                c.send(&message(b'p', &b))?;
            }
            5 => {
                let pw = password.ok_or_else(|| need("an md5 password"))?;
                let salt = m.get(4..8).ok_or_else(|| {
                    ProbeError::Refused("postgres: md5 request without a salt".into())
                })?;
                // "md5" + md5(md5(password + user) in hex + salt) in hex.
                let inner = hex(&md5(&[pw.0.as_bytes(), user.as_bytes()].concat()));
                let outer = hex(&md5(&[inner.as_bytes(), salt].concat()));
                let mut b = format!("md5{outer}").into_bytes();
                b.push(0);
                c.send(&message(b'p', &b))?;
            }
            10 => {
                let pw = password.ok_or_else(|| need("SCRAM-SHA-256"))?;
                let mechanisms = &m[4..];
                if !mechanisms.split(|&b| b == 0).any(|x| x == b"SCRAM-SHA-256") {
                    return Err(ProbeError::Refused(
                        "postgres: no SASL mechanism the check speaks (SCRAM-SHA-256)".into(),
                    ));
                }
                return scram(c, pw);
            }
            other => {
                return Err(ProbeError::Refused(format!(
                    "postgres: unsupported authentication request {other}"
                )))
            }
        }
    }
}

/// SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding, as libpq
/// does over a plain connection. PostgreSQL takes the user from the
/// startup message, so the SCRAM user name is empty.
fn scram(c: &mut Timed, pw: &Secret) -> Result<(), ProbeError> {
    let mut raw = [0u8; 18];
    rand::fill(&mut raw).map_err(|_| ProbeError::Refused("postgres: no random nonce".into()))?;
    let nonce = B64.encode(raw);
    let first_bare = format!("n=,r={nonce}");
    let first = format!("n,,{first_bare}");
    let mut b = Vec::new();
    cstr(&mut b, b"SCRAM-SHA-256");
    b.extend_from_slice(&(first.len() as u32).to_be_bytes());
    b.extend_from_slice(first.as_bytes());
    c.send(&message(b'p', &b))?;

    let server_first = sasl_step(c, 11)?;
    let bad = || ProbeError::Refused("postgres: malformed SCRAM server-first message".into());
    let mut r = None;
    let mut salt = None;
    let mut iterations = None;
    for attr in server_first.split(',') {
        match attr.split_at_checked(2) {
            Some(("r=", v)) => r = Some(v),
            Some(("s=", v)) => salt = B64.decode(v).ok(),
            Some(("i=", v)) => iterations = v.parse::<u32>().ok(),
            _ => {}
        }
    }
    let (Some(r), Some(salt), Some(iterations)) = (r, salt, iterations) else {
        return Err(bad());
    };
    // The server's nonce extends ours; a short iteration count is a sign of
    // a downgrade, not of a PostgreSQL server (it uses 4096).
    if !r.starts_with(&nonce) || r.len() == nonce.len() {
        return Err(bad());
    }
    let iterations = std::num::NonZeroU32::new(iterations)
        .filter(|i| i.get() >= 1024)
        .ok_or_else(bad)?;
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        &salt,
        pw.0.as_bytes(),
        &mut salted,
    );
    let salted_key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&salted_key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let without_proof = format!("c=biws,r={r}");
    let auth_message = format!("{first_bare},{server_first},{without_proof}");
    let signature = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, stored_key.as_ref()),
        auth_message.as_bytes(),
    );
    let proof: Vec<u8> = client_key
        .as_ref()
        .iter()
        .zip(signature.as_ref())
        .map(|(a, b)| a ^ b)
        .collect();
    let final_msg = format!("{without_proof},p={}", B64.encode(proof));
    c.send(&message(b'p', final_msg.as_bytes()))?;

    let server_final = sasl_step(c, 12)?;
    let server_key = hmac::sign(&salted_key, b"Server Key");
    let expected = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, server_key.as_ref()),
        auth_message.as_bytes(),
    );
    let verified = server_final
        .strip_prefix("v=")
        .and_then(|v| B64.decode(v).ok())
        .is_some_and(|v| v == expected.as_ref());
    if !verified {
        return Err(ProbeError::Refused(
            "postgres: the server's SCRAM signature does not verify".into(),
        ));
    }
    let (t, m) = read_message(c)?;
    match (t, code(&m)) {
        (b'R', Ok(0)) => Ok(()),
        (b'E', _) => Err(server_error(&m)),
        _ => Err(ProbeError::Refused(
            "postgres: no AuthenticationOk after SCRAM".into(),
        )),
    }
}

/// Read the SASL message `want` (11 continue, 12 final) as text.
fn sasl_step(c: &mut Timed, want: u32) -> Result<String, ProbeError> {
    let (t, m) = read_message(c)?;
    if t == b'E' {
        return Err(server_error(&m));
    }
    if t != b'R' || code(&m)? != want {
        return Err(ProbeError::Refused(
            "postgres: unexpected reply during SCRAM".into(),
        ));
    }
    String::from_utf8(m[4..].to_vec())
        .map_err(|_| ProbeError::Refused("postgres: SCRAM message is not UTF-8".into()))
}

fn code(m: &[u8]) -> Result<u32, ProbeError> {
    m.get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| ProbeError::Refused("postgres: short authentication message".into()))
}

fn cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

fn message(t: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![t];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// One backend message: its type and body.
fn read_message(c: &mut Timed) -> Result<(u8, Vec<u8>), ProbeError> {
    let mut head = [0u8; 5];
    c.recv_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if !(4..=MAX_MESSAGE).contains(&len) {
        return Err(ProbeError::Refused(format!(
            "postgres: message of {len} bytes is not a PostgreSQL reply"
        )));
    }
    let mut body = vec![0u8; len - 4];
    c.recv_exact(&mut body)?;
    Ok((head[0], body))
}

/// The first column of a DataRow; `None` for NULL or a short row.
fn first_column(m: &[u8]) -> Option<Vec<u8>> {
    let n = i32::from_be_bytes(m.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(n).ok()?;
    m.get(6..6 + len).map(<[u8]>::to_vec)
}

/// An ErrorResponse as "postgres: SQLSTATE message".
fn server_error(m: &[u8]) -> ProbeError {
    let (mut code, mut text) = (String::new(), String::new());
    for field in m.split(|&b| b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            Some((b'M', v)) => text = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    ProbeError::Refused(format!("postgres: {code} {text}"))
}

/// Lower-case hex.
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// MD5 (RFC 1321), only for PostgreSQL's legacy `md5` password exchange:
/// the crypto library rustls links offers no MD5, and this is a few lines.
fn md5(data: &[u8]) -> [u8; 16] {
    const S: [u32; 16] = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
    // K[i] = floor(|sin(i + 1)| * 2^32), exact in f64 for these i.
    let k: Vec<u32> = (0..64)
        .map(|i| ((f64::from(i + 1)).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_le_bytes());
    let mut h: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    for chunk in msg.chunks_exact(64) {
        let m: Vec<u32> = chunk
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let [mut a, mut b, mut c, mut d] = h;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[(i / 16) * 4 + i % 4]));
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_the_rfc_1321_test_suite() {
        for (input, want) in [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ] {
            assert_eq!(hex(&md5(input.as_bytes())), want, "{input:?}");
        }
    }

    #[test]
    fn data_row_first_column() {
        // 1 column, 1 byte "t".
        assert_eq!(
            first_column(&[0, 1, 0, 0, 0, 1, b't']).as_deref(),
            Some(&b"t"[..])
        );
        // NULL (-1) and a truncated row.
        assert_eq!(first_column(&[0, 1, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(first_column(&[0, 1, 0, 0, 0, 5, b't']), None);
    }

    #[test]
    fn error_response_gives_code_and_message() {
        let m = b"SFATAL\0C57P03\0Mthe database system is starting up\0\0";
        let e = server_error(m).to_string();
        assert_eq!(e, "postgres: 57P03 the database system is starting up");
    }
}
