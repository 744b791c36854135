//! A Rust TLS client (rustls, buffered API over std sockets) for byte-exact
//! tests through a terminating proxy, and rcgen certificates made at test
//! time. The client can write and read at once (one thread each, sharing the
//! rustls connection behind a mutex), so 64 MiB each way never deadlocks.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// A rustls client config trusting `ca`, optionally presenting a client
/// certificate, limited to `versions` (empty: rustls' defaults).
pub fn client_config(
    ca: &Path,
    client_cert: Option<(&Path, &Path)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let b = ClientConfig::builder_with_provider(provider);
    let b = if versions.is_empty() {
        b.with_safe_default_protocol_versions().unwrap()
    } else {
        b.with_protocol_versions(versions).unwrap()
    };
    let b = b.with_root_certificates(roots);
    let cfg = match client_cert {
        Some((cert, key)) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    Arc::new(cfg)
}

/// One TLS connection; `write_all`/`close_write` and `read_to_end` may run on
/// different threads (`split`).
#[derive(Clone)]
pub struct TlsStream {
    conn: Arc<Mutex<ClientConnection>>,
    sock: Arc<TcpStream>,
}

impl TlsStream {
    /// Connect and complete the handshake (as the client sees it: with TLS
    /// 1.3 the server may still refuse a client certificate afterwards).
    pub fn connect(
        addr: SocketAddr,
        name: &str,
        config: Arc<ClientConfig>,
    ) -> io::Result<TlsStream> {
        let sock = TcpStream::connect(addr)?;
        Self::over(sock, name, config)
    }

    /// The handshake on a socket already connected (and perhaps already
    /// used in the clear, as after a PostgreSQL SSLRequest).
    pub fn over(
        mut sock: TcpStream,
        name: &str,
        config: Arc<ClientConfig>,
    ) -> io::Result<TlsStream> {
        sock.set_read_timeout(Some(Duration::from_secs(60)))?;
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        Ok(TlsStream {
            conn: Arc::new(Mutex::new(conn)),
            sock: Arc::new(sock),
        })
    }

    /// The DNS names (SANs) of the certificate the server presented.
    pub fn peer_names(&self) -> Vec<String> {
        let c = self.conn.lock().unwrap();
        let certs = c.peer_certificates().expect("server certificate");
        let ee = webpki::EndEntityCert::try_from(&certs[0]).unwrap();
        ee.valid_dns_names().map(String::from).collect()
    }

    /// The certificates the server sent (leaf first), as DER.
    pub fn peer_certificates(&self) -> Vec<CertificateDer<'static>> {
        let c = self.conn.lock().unwrap();
        c.peer_certificates()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default()
    }

    /// The negotiated protocol version.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.lock().unwrap().protocol_version()
    }

    /// One read as a Go client does it: whatever plaintext the next
    /// record(s) carry, at least one byte (or the error / EOF).
    pub fn read_some(&self) -> io::Result<Vec<u8>> {
        let mut got = Vec::new();
        self.read_until(&mut got, 1)?;
        Ok(got)
    }

    /// The TCP socket (to reset it, or read raw).
    pub fn tcp(&self) -> &TcpStream {
        &self.sock
    }

    pub fn write_all(&self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(16 * 1024) {
            let mut out = Vec::with_capacity(chunk.len() + 64);
            {
                let mut c = self.conn.lock().unwrap();
                c.writer().write_all(chunk)?;
                while c.wants_write() {
                    c.write_tls(&mut out)?;
                }
            }
            (&*self.sock).write_all(&out)?;
        }
        Ok(())
    }

    /// Send close_notify, then FIN.
    pub fn close_write(&self) -> io::Result<()> {
        let mut out = Vec::new();
        {
            let mut c = self.conn.lock().unwrap();
            c.send_close_notify();
            while c.wants_write() {
                c.write_tls(&mut out)?;
            }
        }
        (&*self.sock).write_all(&out)?;
        self.sock.shutdown(Shutdown::Write)
    }

    /// Read plaintext until close_notify (or a bare EOF, reported as
    /// `UnexpectedEof`), or an error such as a reset.
    pub fn read_to_end(&self) -> (Vec<u8>, Option<io::Error>) {
        let mut got = Vec::new();
        match self.read_until(&mut got, usize::MAX) {
            Ok(()) => (got, None),
            Err(e) => (got, Some(e)),
        }
    }

    /// Read exactly `len` plaintext bytes (or fail).
    pub fn read_exact_len(&self, len: usize) -> io::Result<Vec<u8>> {
        let mut got = Vec::new();
        self.read_until(&mut got, len)?;
        if got.len() < len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(got)
    }

    /// Append plaintext to `got` until it holds `want` bytes or the peer
    /// sent close_notify (`Ok`); a bare EOF is `UnexpectedEof`.
    fn read_until(&self, got: &mut Vec<u8>, want: usize) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut plain = vec![0u8; 64 * 1024];
        loop {
            let n = (&*self.sock).read(&mut buf)?;
            let mut c = self.conn.lock().unwrap();
            let mut rd = &buf[..n];
            loop {
                // read_tls(empty) tells rustls about the EOF.
                c.read_tls(&mut rd)?;
                c.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                // Drain plaintext before feeding more (rustls bounds it).
                loop {
                    match c.reader().read(&mut plain) {
                        Ok(0) => return Ok(()),
                        Ok(k) => {
                            got.extend_from_slice(&plain[..k]);
                            if got.len() >= want {
                                return Ok(());
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    }
                }
                if rd.is_empty() {
                    break;
                }
            }
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Send `data` then close_notify + FIN on one thread while reading to the
    /// end on this one; returns what came back.
    pub fn exchange(&self, data: Vec<u8>) -> (Vec<u8>, Option<io::Error>) {
        let w = self.clone();
        let writer = thread::spawn(move || {
            w.write_all(&data)?;
            w.close_write()
        });
        let got = self.read_to_end();
        let wrote = writer.join().unwrap();
        assert!(wrote.is_ok(), "writing failed: {wrote:?}");
        got
    }
}

/// A test certificate authority made with rcgen (in process).
pub struct Ca {
    key: rcgen::KeyPair,
    params: rcgen::CertificateParams,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        let pem = cert.pem();
        Ca {
            key,
            params: p,
            pem,
        }
    }

    /// A leaf for `names` (SANs; the first is also the CN), ECDSA P-256,
    /// valid for two days (or expired when `expired`). Returns (cert, key)
    /// PEM.
    pub fn leaf(&self, names: &[&str], expired: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Write the CA and a leaf for `names` into `dir`; returns (ca, cert, key).
    pub fn write_leaf(&self, dir: &Path, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
        let base = names[0].replace('*', "star");
        let (cert, key) = self.leaf(names, false);
        let ca = dir.join(format!("{base}-ca.crt"));
        let c = dir.join(format!("{base}.crt"));
        let k = dir.join(format!("{base}.key"));
        std::fs::write(&ca, &self.pem).unwrap();
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (ca, c, k)
    }
}

/// A client that accepts any server certificate without looking at it, as
/// Go's `InsecureSkipVerify` (it also takes X.509 v1 certificates, which
/// webpki cannot parse): for checks that only read the peer certificate.
pub fn insecure_client_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let schemes = provider
        .signature_verification_algorithms
        .supported_schemes();
    let b = ClientConfig::builder_with_provider(provider);
    let b = if versions.is_empty() {
        b.with_safe_default_protocol_versions().unwrap()
    } else {
        b.with_protocol_versions(versions).unwrap()
    };
    let cfg = b
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(schemes)))
        .with_no_client_auth();
    Arc::new(cfg)
}

#[derive(Debug)]
struct AcceptAny(Vec<rustls::SignatureScheme>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.clone()
    }
}

/// The subject commonName of a DER certificate (any X.509 version), by a
/// small DER walk: Certificate -> tbsCertificate -> [version] serial
/// signature issuer validity subject -> RDN sets -> (OID 2.5.4.3, value).
pub fn subject_cn(der: &[u8]) -> Option<String> {
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&l0, b) = b.split_first()?;
        let (len, b) = if l0 < 0x80 {
            (usize::from(l0), b)
        } else {
            let n = usize::from(l0 & 0x7f);
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let len = b[..n]
                .iter()
                .fold(0usize, |a, &x| (a << 8) | usize::from(x));
            (len, &b[n..])
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }
    let (_, cert, _) = tlv(der)?;
    let (_, tbs, _) = tlv(cert)?;
    let (tag, _, after) = tlv(tbs)?;
    let mut rest = if tag == 0xa0 { after } else { tbs };
    // serial, signature, issuer, validity
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (_, mut rdns, _) = tlv(rest)?;
    while !rdns.is_empty() {
        let (_, set, next) = tlv(rdns)?;
        rdns = next;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (_, atv, next) = tlv(attrs)?;
            attrs = next;
            let (_, oid, value) = tlv(atv)?;
            if oid == [0x55, 0x04, 0x03] {
                let (_, v, _) = tlv(value)?;
                return String::from_utf8(v.to_vec()).ok();
            }
        }
    }
    None
}
