//! A `traefik/whoamitcp` equivalent, the backend of Traefik's TCP
//! integration tests, so their scenarios run here with the same replies.
//!
//! Per connection (one thread each, via `Backend`): with `proxy_protocol` a
//! PROXY v1/v2 header is read first (a bad one closes the connection); with
//! `banner` `Welcome\n` is written at once (the server speaks first); then
//! each read of up to 256 bytes, trimmed, is answered: `WHO` -> `Name:
//! <name>\nHostname: <host>\nIP: <local ip>\n` (preceded by `Proxy Protocol
//! Version/Source/Destination` lines when a header came), `STOP` -> close,
//! anything else -> `Received: <bytes as read>`. With a certificate and key
//! the listener is TLS (rustls; X.509 v1 certificates such as Traefik's
//! `whoami-*.crt` are served as they are).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::Backend;

/// What `whoamitcp` takes on its command line.
#[derive(Clone, Default)]
pub struct Opts {
    /// `-name`
    pub name: String,
    /// `-certFile` / `-keyFile`
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `--banner`
    pub banner: bool,
    /// `-proxyprotocol`
    pub proxy_protocol: bool,
}

impl Opts {
    pub fn named(name: &str) -> Opts {
        Opts {
            name: name.to_string(),
            ..Opts::default()
        }
    }

    pub fn with_tls(mut self, cert: PathBuf, key: PathBuf) -> Opts {
        self.tls = Some((cert, key));
        self
    }
}

/// A running whoamitcp; stopped (listener closed, open connections shut
/// down) by `stop` or on drop.
pub struct Whoami {
    pub addr: SocketAddr,
    backend: Option<Backend>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accepted: Arc<AtomicUsize>,
}

impl Whoami {
    /// Listen on `bind` (`127.0.0.1:0` for an ephemeral port).
    pub fn try_start(bind: &str, opts: Opts) -> io::Result<Whoami> {
        let tls = opts.tls.as_ref().map(|(c, k)| server_config(c, k));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let seen = conns.clone();
        let opts = Arc::new(opts);
        let backend = Backend::try_start_on(bind, move |s| {
            let local = s
                .local_addr()
                .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip());
            if let Ok(c) = s.try_clone() {
                seen.lock().unwrap().push(c);
            }
            let _ = match &tls {
                Some(cfg) => match ServerConnection::new(cfg.clone()) {
                    Ok(conn) => {
                        let mut t = StreamOwned::new(conn, s);
                        let r = serve(&mut t, &opts, local);
                        t.conn.send_close_notify();
                        let _ = t.flush();
                        r
                    }
                    Err(_) => Ok(()),
                },
                None => {
                    let mut s = s;
                    serve(&mut s, &opts, local)
                }
            };
        })?;
        Ok(Whoami {
            addr: backend.addr,
            accepted: backend.accepted.clone(),
            backend: Some(backend),
            conns,
        })
    }

    pub fn start(bind: &str, opts: Opts) -> Whoami {
        Self::try_start(bind, opts).unwrap_or_else(|e| panic!("whoami on {bind}: {e}"))
    }

    /// On an ephemeral port of 127.0.0.1 (for templates taking `IP:port`).
    pub fn local(opts: Opts) -> Whoami {
        Self::start("127.0.0.1:0", opts)
    }

    /// On port 8080 of the first free address 127.0.0.`x` for `x` in `xs`
    /// (templates that append `:8080` themselves). Each test passes its own
    /// range so tests running in parallel do not collide.
    pub fn on_8080(xs: std::ops::RangeInclusive<u8>, opts: Opts) -> Whoami {
        for x in xs.clone() {
            if let Ok(w) = Self::try_start(&format!("127.0.0.{x}:8080"), opts.clone()) {
                return w;
            }
        }
        panic!("no free 127.0.0.x:8080 for x in {xs:?}");
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    /// As `docker compose stop`: the listener closes (new connections are
    /// refused) and every open connection is shut down.
    pub fn stop(&mut self) {
        if let Some(b) = self.backend.take() {
            drop(b);
            for c in self.conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Drop for Whoami {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server config serving `cert`/`key` for every name. The key is not
/// matched against the certificate here: rustls' check parses the
/// certificate with webpki, which refuses X.509 v1 (Go does not).
fn server_config(cert: &std::path::Path, key: &std::path::Path) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap_or_else(|e| panic!("{}: {e:?}", cert.display()))
        .map(Result::unwrap)
        .collect();
    let key =
        PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| panic!("{}: {e:?}", key.display()));
    let signing = provider.key_provider.load_private_key(key).unwrap();
    let ck = Arc::new(CertifiedKey::new(chain, signing));
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(One(ck)));
    Arc::new(cfg)
}

#[derive(Debug)]
struct One(Arc<CertifiedKey>);

impl ResolvesServerCert for One {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A PROXY header as whoamitcp reports it.
struct Header {
    version: u8,
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
}

fn serve<S: Read + Write>(s: &mut S, opts: &Opts, local: IpAddr) -> io::Result<()> {
    let header = if opts.proxy_protocol {
        Some(read_header(s)?)
    } else {
        None
    };
    if opts.banner {
        s.write_all(b"Welcome\n")?;
        s.flush()?;
    }
    let mut buf = [0u8; 256];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&buf[..n]);
        match text.trim() {
            "STOP" => return Ok(()),
            "WHO" => s.write_all(who(opts, header.as_ref(), local).as_bytes())?,
            _ => {
                let mut out = b"Received: ".to_vec();
                out.extend_from_slice(&buf[..n]);
                s.write_all(&out)?;
            }
        }
        s.flush()?;
    }
}

fn who(opts: &Opts, h: Option<&Header>, local: IpAddr) -> String {
    let mut out = String::new();
    if let Some(h) = h {
        let show = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        out += &format!("Proxy Protocol Version: {}\n", h.version);
        out += &format!("Proxy Protocol Source: {}\n", show(h.source));
        out += &format!("Proxy Protocol Destination: {}\n", show(h.destination));
    }
    if !opts.name.is_empty() {
        out += &format!("Name: {}\n", opts.name);
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    out += &format!("Hostname: {}\n", host.trim());
    out += &format!("IP: {local}\n");
    out
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Read exactly one PROXY header (v1 text or v2 binary), nothing after it.
fn read_header<S: Read>(s: &mut S) -> io::Result<Header> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
    let mut first = [0u8; 1];
    s.read_exact(&mut first)?;
    if first[0] == b'P' {
        // v1: "PROXY TCP4 src dst sport dport\r\n", at most 107 bytes.
        let mut line = vec![b'P'];
        while !line.ends_with(b"\r\n") {
            if line.len() >= 107 {
                return Err(bad("PROXY v1 line too long"));
            }
            s.read_exact(&mut first)?;
            line.push(first[0]);
        }
        let text = std::str::from_utf8(&line[..line.len() - 2]).map_err(|_| bad("not text"))?;
        let f: Vec<&str> = text.split(' ').collect();
        return match f.as_slice() {
            ["PROXY", "UNKNOWN", ..] => Ok(Header {
                version: 1,
                source: None,
                destination: None,
            }),
            ["PROXY", "TCP4" | "TCP6", src, dst, sp, dp] => {
                let addr = |ip: &str, port: &str| -> io::Result<SocketAddr> {
                    Ok(SocketAddr::new(
                        ip.parse().map_err(|_| bad("bad address"))?,
                        port.parse().map_err(|_| bad("bad port"))?,
                    ))
                };
                Ok(Header {
                    version: 1,
                    source: Some(addr(src, sp)?),
                    destination: Some(addr(dst, dp)?),
                })
            }
            _ => Err(bad("bad PROXY v1 line")),
        };
    }
    let mut fixed = [0u8; 16];
    fixed[0] = first[0];
    s.read_exact(&mut fixed[1..])?;
    if &fixed[..12] != V2_SIGNATURE || fixed[12] >> 4 != 2 {
        return Err(bad("no PROXY header"));
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    let local = fixed[12] & 0x0f == 0;
    let (source, destination) = match (local, fixed[13] >> 4) {
        (false, 1) if len >= 12 => {
            let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            (
                Some(SocketAddr::new(ip(&body[0..4]), port(&body[8..10]))),
                Some(SocketAddr::new(ip(&body[4..8]), port(&body[10..12]))),
            )
        }
        (false, 2) if len >= 36 => {
            let ip = |b: &[u8]| {
                let a: [u8; 16] = b.try_into().unwrap();
                IpAddr::V6(Ipv6Addr::from(a))
            };
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            (
                Some(SocketAddr::new(ip(&body[0..16]), port(&body[32..34]))),
                Some(SocketAddr::new(ip(&body[16..32]), port(&body[34..36]))),
            )
        }
        _ => (None, None),
    };
    Ok(Header {
        version: 2,
        source,
        destination,
    })
}
