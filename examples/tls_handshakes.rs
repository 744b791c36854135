//! The TLS handshake-rate client of the benchmark scripts: THREADS loops of
//! connect → full handshake (no resumption) → one redis PING/PONG through the
//! proxy → close, for SECONDS. Prints `{"value": conns_per_s, "extra": {...}}`.
//!
//! `--sni NAME` sends NAME as the server name (default `bench.test`);
//! `--no-ping` replaces the PING/PONG by close_notify and a read to EOF, for a
//! backend that is not redis (`scripts/bench-passthrough.sh`: a TLS server
//! behind an SNI-routing proxy). The rate counts only the measured window: a
//! connection still in flight at the stop does not stretch it.
//!
//! rustls as the client because OpenSSL 3.0's `s_time` spends about 0.6 ms of
//! CPU per handshake on the client side, so on a 2-core machine it measured
//! the client, not the proxy. The server certificate's signature over the
//! handshake is still checked; its chain is not (the client's cost is not
//! what is being measured).
//!
//!   cargo run --release --example tls_handshakes -- 127.0.0.1:18402 5 4 13
//!   cargo run --release --example tls_handshakes -- 127.0.0.1:19401 5 4 13 --sni pt.bench.test --no-ping

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

/// What one connection does after the handshake.
#[derive(Clone, Copy)]
enum After {
    /// One redis PING, expecting +PONG.
    Ping,
    /// close_notify, then read to EOF, so the server has processed the
    /// whole handshake (TLS 1.3: it sends its tickets after the Finished).
    Close,
}

fn one(
    addr: &str,
    name: &ServerName<'static>,
    after: After,
    config: &Arc<ClientConfig>,
) -> Result<(), String> {
    let mut sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_nodelay(true).ok();
    sock.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut conn =
        ClientConnection::new(config.clone(), name.clone()).map_err(|e| e.to_string())?;
    match after {
        After::Ping => {
            let mut tls = rustls::Stream::new(&mut conn, &mut sock);
            tls.write_all(b"PING\r\n").map_err(|e| e.to_string())?;
            let mut b = [0u8; 7];
            tls.read_exact(&mut b).map_err(|e| e.to_string())?;
            if &b != b"+PONG\r\n" {
                return Err(format!("unexpected reply {b:?}"));
            }
        }
        After::Close => {
            while conn.is_handshaking() {
                conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
            }
            conn.send_close_notify();
            while conn.wants_write() {
                conn.write_tls(&mut sock).map_err(|e| e.to_string())?;
            }
            sock.flush().ok();
            let mut b = [0u8; 4096];
            while let Ok(n) = sock.read(&mut b) {
                if n == 0 {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut sni = "bench.test".to_string();
    let mut after = After::Ping;
    if let Some(i) = args.iter().position(|a| a == "--no-ping") {
        args.remove(i);
        after = After::Close;
    }
    if let Some(i) = args.iter().position(|a| a == "--sni") {
        args.remove(i);
        if i < args.len() {
            sni = args.remove(i);
        } else {
            args.clear();
        }
    }
    if args.len() != 4 {
        eprintln!("usage: tls_handshakes ADDR SECONDS THREADS 12|13 [--sni NAME] [--no-ping]");
        std::process::exit(2);
    }
    let addr = args[0].clone();
    let name = ServerName::try_from(sni).expect("--sni: a DNS name");
    let secs: f64 = args[1].parse().expect("SECONDS");
    let threads: usize = args[2].parse().expect("THREADS");
    let version = if args[3] == "12" {
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
            let (addr, name, config, done, failed, stop) = (
                addr.clone(),
                name.clone(),
                config.clone(),
                done.clone(),
                failed.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut first_error = None;
                while !stop.load(Ordering::Relaxed) {
                    match one(&addr, &name, after, &config) {
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
    // The rate over the measured window only (see the module comment).
    let elapsed = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    let errors: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().unwrap())
        .collect();
    let tail = start.elapsed().as_secs_f64() - elapsed;
    println!(
        "{{\"value\": {:.1}, \"extra\": {{\"requests\": {n}, \"failed\": {}, \"join_tail_s\": {:.2}, \"first_error\": {:?}}}}}",
        n as f64 / elapsed,
        failed.load(Ordering::Relaxed),
        tail,
        errors.first().cloned().unwrap_or_default()
    );
}
