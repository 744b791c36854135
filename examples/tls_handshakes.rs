//! TLS connection-rate load for `scripts/bench-tls.sh`: THREADS loops of
//! connect → full handshake (no resumption) → one redis PING/PONG through the
//! proxy → close, for SECONDS. Prints `{"value": conns_per_s, "extra": {...}}`.
//!
//! rustls as the client because OpenSSL 3.0's `s_time` spends about 0.6 ms of
//! CPU per handshake on the client side, so on a 2-core machine it measured
//! the client, not the proxy. The server certificate's signature over the
//! handshake is still checked; its chain is not (the client's cost is not
//! what is being measured).
//!
//!   cargo run --release --example tls_handshakes -- 127.0.0.1:18402 5 4 13

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{aws_lc_rs, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

#[derive(Debug)]
struct SignatureOnly(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for SignatureOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

fn one(addr: &str, config: &Arc<ClientConfig>) -> Result<(), String> {
    let mut sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_nodelay(true).ok();
    sock.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let name = ServerName::try_from("bench.test").unwrap();
    let mut conn = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    tls.write_all(b"PING\r\n").map_err(|e| e.to_string())?;
    let mut b = [0u8; 7];
    tls.read_exact(&mut b).map_err(|e| e.to_string())?;
    if &b != b"+PONG\r\n" {
        return Err(format!("unexpected reply {b:?}"));
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: tls_handshakes ADDR SECONDS THREADS 12|13");
        std::process::exit(2);
    }
    let addr = args[1].clone();
    let secs: f64 = args[2].parse().expect("SECONDS");
    let threads: usize = args[3].parse().expect("THREADS");
    let version = if args[4] == "12" {
        &rustls::version::TLS12
    } else {
        &rustls::version::TLS13
    };
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SignatureOnly(
            provider.signature_verification_algorithms,
        )))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (addr, config, done, failed, stop) = (
                addr.clone(),
                config.clone(),
                done.clone(),
                failed.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut first_error = None;
                while !stop.load(Ordering::Relaxed) {
                    match one(&addr, &config) {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            first_error.get_or_insert(e);
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                first_error
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let errors: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().unwrap())
        .collect();
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"value\": {:.1}, \"extra\": {{\"requests\": {n}, \"failed\": {}, \"first_error\": {:?}}}}}",
        n as f64 / elapsed,
        failed.load(Ordering::Relaxed),
        errors.first().cloned().unwrap_or_default()
    );
}
