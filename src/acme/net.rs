//! The HTTPS client the ACME client talks through: HTTP/1.1 over rustls
//! on a blocking socket, one connection per request, on the ACME thread
//! only (never a worker). The ACME server is trusted through the system
//! roots (`SSL_CERT_FILE`, else the system bundle; off with
//! `caSystemCertPool = false`), plus the files of lego's
//! `LEGO_CA_CERTIFICATES` (comma or colon separated) and the resolver's
//! `caCertificates`, so a private ACME server (pebble, step-ca) works as it
//! does with Traefik.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;

/// Connect, read and write deadline of one ACME request.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response accepted (a certificate chain is a few KiB).
const MAX_RESPONSE: usize = 4 * 1024 * 1024;
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

pub struct Client {
    config: Arc<rustls::ClientConfig>,
}

/// Root files from the environment and the system, in the order read.
fn root_files(system: bool, extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    if system {
        match std::env::var_os("SSL_CERT_FILE") {
            Some(f) if !f.is_empty() => files.push(f.into()),
            _ => {
                if let Some(f) = SYSTEM_CA_FILES.iter().map(Path::new).find(|p| p.exists()) {
                    files.push(f.to_path_buf());
                }
            }
        }
    }
    if let Ok(list) = std::env::var("LEGO_CA_CERTIFICATES") {
        files.extend(
            list.split([',', ':'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
        );
    }
    files.extend(extra.iter().cloned());
    files
}

impl Client {
    /// A client trusting the system roots (unless `system` is false),
    /// `LEGO_CA_CERTIFICATES` and `extra` (PEM bundles).
    pub fn new(system: bool, extra: &[PathBuf]) -> Result<Client, String> {
        let mut roots = RootCertStore::empty();
        for f in root_files(system, extra) {
            let bytes = crate::config::read_regular(&f, crate::config::MAX_CA_FILE_SIZE)
                .map_err(|e| format!("cannot read CA certificates `{}`: {e}", f.display()))?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
                .filter_map(Result::ok)
                .collect();
            if certs.is_empty() {
                return Err(format!("`{}` holds no PEM certificate", f.display()));
            }
            roots.add_parsable_certificates(certs);
        }
        if roots.is_empty() {
            return Err(
                "no CA certificate to verify the ACME server with (no system bundle, LEGO_CA_CERTIFICATES nor caCertificates)"
                    .into(),
            );
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            config: Arc::new(config),
        })
    }

    /// One request, blocking.
    fn send(&self, req: Request<BodyWrapper<Bytes>>) -> io::Result<BytesResponse> {
        let (parts, body) = req.into_parts();
        let body = body_bytes(body);
        let uri = &parts.uri;
        if uri.scheme_str() != Some("https") {
            return Err(io::Error::other(format!("not an https URL: {uri}")));
        }
        let host = uri
            .host()
            .ok_or_else(|| io::Error::other("URL without host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let addr = (host.as_str(), port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::other(format!("{host}: no address")))?;
        let tcp = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        tcp.set_read_timeout(Some(TIMEOUT))?;
        tcp.set_write_timeout(Some(TIMEOUT))?;
        let name = ServerName::try_from(host.clone()).map_err(io::Error::other)?;
        let conn =
            rustls::ClientConnection::new(self.config.clone(), name).map_err(io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut head = format!(
            "{} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            parts.method,
            if port == 443 {
                host.clone()
            } else {
                format!("{}:{port}", uri.host().unwrap_or(&host))
            },
            body.len()
        );
        for (k, v) in &parts.headers {
            if k == http::header::HOST || k == http::header::CONTENT_LENGTH {
                continue;
            }
            if let Ok(v) = v.to_str() {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes())?;
        tls.write_all(&body)?;
        tls.flush()?;
        let raw = read_response(&mut tls)?;
        parse_response(&raw)
    }
}

/// The request body (instant-acme's body type is ready at once).
fn body_bytes(body: BodyWrapper<Bytes>) -> Bytes {
    use http_body::Body;
    let mut body = std::pin::pin!(body);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut out = Vec::new();
    while let std::task::Poll::Ready(Some(Ok(frame))) = body.as_mut().poll_frame(&mut cx) {
        if let Ok(data) = frame.into_data() {
            out.extend_from_slice(&data);
        }
    }
    Bytes::from(out)
}

/// Reads to the end of the response: Content-Length, chunked, or close.
fn read_response<R: Read>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(done) = complete(&buf) {
            if done {
                return Ok(buf);
            }
        }
        let n = match r.read(&mut chunk) {
            Ok(n) => n,
            // A server that closes without close_notify after a complete
            // response is common (and harmless here: lengths are checked).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err(io::Error::other("ACME response too large"));
        }
    }
}

/// Whether `buf` holds a whole response (`None`: headers incomplete).
fn complete(buf: &[u8]) -> Option<bool> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = &buf[end..];
    if head.contains("transfer-encoding: chunked") {
        return Some(dechunk(body).is_some());
    }
    for line in head.lines() {
        if let Some(v) = line.strip_prefix("content-length:") {
            let len: usize = v.trim().parse().ok()?;
            return Some(body.len() >= len);
        }
    }
    Some(false)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The body of a complete chunked encoding, or `None` when incomplete.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if body.len().saturating_sub(2) < size {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

fn parse_response(raw: &[u8]) -> io::Result<BytesResponse> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| bad("truncated HTTP response"))? + 4;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("non-UTF-8 HTTP headers"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad HTTP status line"))?;
    let mut builder = Response::builder().status(status);
    let mut chunked = false;
    let mut length = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
            continue;
        }
        if k.eq_ignore_ascii_case("content-length") {
            length = v.parse::<usize>().ok();
        }
        builder = builder.header(k.trim(), v);
    }
    let rest = &raw[end..];
    let body = if chunked {
        dechunk(rest).ok_or_else(|| bad("truncated chunked body"))?
    } else {
        match length {
            Some(n) if rest.len() >= n => rest[..n].to_vec(),
            Some(_) => return Err(bad("truncated HTTP body")),
            None => rest.to_vec(),
        }
    };
    let (parts, ()) = builder
        .body(())
        .map_err(|e| bad(&e.to_string()))?
        .into_parts();
    Ok(BytesResponse {
        parts,
        body: Box::new(Bytes::from(body)),
    })
}

impl HttpClient for Client {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        // Blocking on the ACME thread's own runtime, which runs nothing else.
        let result = self
            .send(req)
            .map_err(|e| instant_acme::Error::Other(Box::new(e)));
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_and_sized_responses() {
        let raw = b"HTTP/1.1 201 Created\r\nReplay-Nonce: abc\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
        assert_eq!(complete(raw), Some(true));
        assert_eq!(complete(&raw[..raw.len() - 3]), Some(false));
        let r = parse_response(raw).unwrap();
        assert_eq!(r.parts.status, 201);
        assert_eq!(r.parts.headers["replay-nonce"], "abc");
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(complete(raw), Some(true));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").is_err());
        assert!(parse_response(b"garbage").is_err());
        // A chunk size no body can hold is incomplete, never an overflow.
        assert_eq!(dechunk(b"ffffffffffffffff\r\nab"), None);
    }
}
