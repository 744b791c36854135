//! TLS ClientHello bytes for tests: the committed captures, a live hello from
//! Python's `ssl.MemoryBIO`, synthetic hellos of an exact size (padding
//! extension), re-framing into small records, and byte-at-a-time sending.

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::process::run;

/// TLS record header length: type, version, 16-bit length.
pub const RECORD_HEADER: usize = 5;

/// A committed capture from `fuzz/corpus/client_hello/`.
pub fn capture(name: &str) -> Vec<u8> {
    let p: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "fuzz",
        "corpus",
        "client_hello",
        name,
    ]
    .iter()
    .collect();
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(!bytes.is_empty(), "{} is empty", p.display());
    bytes
}

/// A live ClientHello from Python's ssl module (OpenSSL underneath), with SNI
/// `server_name` and ALPN `postgresql`. Python is a real TLS client here: the
/// hello is exactly what `ssl.wrap_socket` would send.
pub fn python_hello(server_name: &str) -> Vec<u8> {
    const SCRIPT: &str = r#"
import ssl, sys
ctx = ssl.create_default_context()
ctx.set_alpn_protocols(["postgresql"])
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
conn = ctx.wrap_bio(incoming, outgoing, server_hostname=sys.argv[1])
try:
    conn.do_handshake()
except ssl.SSLWantReadError:
    pass
sys.stdout.write(outgoing.read().hex())
"#;
    let ran = run(
        Command::new("python3").args(["-c", SCRIPT, server_name]),
        b"",
        Duration::from_secs(20),
    )
    .expect_ok("python3 MemoryBIO hello");
    let hex = ran.stdout.trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// A live ClientHello from rustls (the crate's own TLS library) that offers
/// the post-quantum hybrid X25519MLKEM768 first, so its key share alone is
/// 1,216 + 32 bytes and the hello is larger than one Ethernet segment (what a
/// PQ-enabled client such as a current browser or rustls with
/// `prefer-post-quantum` sends). SNI `server_name`, ALPN `postgresql`.
pub fn rustls_pq_hello(server_name: &str) -> Vec<u8> {
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    use rustls::pki_types::ServerName;
    use std::sync::Arc;

    let mut provider = default_provider();
    provider.kx_groups = vec![kx_group::X25519MLKEM768, kx_group::X25519];
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// The handshake bytes carried by the records of `raw` (record headers
/// removed). Panics unless `raw` is a sequence of complete handshake records.
pub fn handshake_bytes(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        assert_eq!(raw[pos], 22, "record at {pos} is not a handshake record");
        let len = usize::from(u16::from_be_bytes([raw[pos + 3], raw[pos + 4]]));
        out.extend_from_slice(&raw[pos + RECORD_HEADER..pos + RECORD_HEADER + len]);
        pos += RECORD_HEADER + len;
    }
    out
}

/// The same handshake re-framed into records of at most `size` body bytes
/// (TLS allows a handshake message to span any number of records).
pub fn reframe(raw: &[u8], size: usize) -> Vec<u8> {
    let version = [raw[1], raw[2]];
    let mut out = Vec::new();
    for chunk in handshake_bytes(raw).chunks(size) {
        out.push(22);
        out.extend_from_slice(&version);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// A well-formed TLS 1.2/1.3-style ClientHello for `server_name` in ONE
/// record of exactly `record_len` bytes (its 5-byte header included), sized
/// with a padding extension (RFC 7685). `record_len` may exceed what the proxy
/// accepts; the body must fit one record (≤ 2^14 + 5 bytes in all).
pub fn padded_hello(server_name: &str, record_len: usize) -> Vec<u8> {
    let name = server_name.as_bytes();
    let mut ext = Vec::new();
    // server_name: list length, host_name entry.
    ext.extend_from_slice(&0u16.to_be_bytes());
    ext.extend_from_slice(&((name.len() + 5) as u16).to_be_bytes());
    ext.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    ext.extend_from_slice(name);

    let mut body = Vec::new();
    body.extend_from_slice(&[3, 3]); // legacy_version
    body.extend_from_slice(&[0x5a; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 4, 0x13, 0x01, 0xc0, 0x2f]); // two suites
    body.extend_from_slice(&[1, 0]); // compression: null

    // Everything but the padding's data: record header, handshake header,
    // body so far, extensions length, server_name, padding extension header.
    let fixed = RECORD_HEADER + 4 + body.len() + 2 + ext.len() + 4;
    let pad = record_len
        .checked_sub(fixed)
        .unwrap_or_else(|| panic!("record_len {record_len} below the minimum {fixed}"));
    ext.extend_from_slice(&21u16.to_be_bytes());
    ext.extend_from_slice(&(pad as u16).to_be_bytes());
    ext.resize(ext.len() + pad, 0);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);

    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    let mut rec = vec![22, 3, 1];
    rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    rec.extend_from_slice(&msg);
    assert_eq!(rec.len(), record_len);
    rec
}

/// Write `data` one byte per `write` call (TCP_NODELAY, so each byte leaves
/// as its own segment unless the receiver is slower than the pause).
pub fn write_bytewise(s: &mut TcpStream, data: &[u8], pause: Duration) {
    s.set_nodelay(true).unwrap();
    for b in data {
        s.write_all(std::slice::from_ref(b)).unwrap();
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}
