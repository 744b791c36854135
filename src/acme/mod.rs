//! ACME certificate resolvers (`[certificatesResolvers.<name>.acme]`), as
//! Traefik runs them for TCP routers with `tls.certResolver`.
//!
//! The ACME client runs on its own thread (`manager`), never on a worker:
//! it loads the storage file (Traefik's `acme.json`), obtains a certificate
//! for each router's domains (its `tls.domains`, else the names of its
//! `HostSNI` rule), renews it when a third of its lifetime is left, retries
//! failures with backoff, and publishes the result here. Workers read this
//! module's shared state per handshake (a read lock), so a new certificate
//! serves new connections at once, without a configuration reload, and open
//! connections keep the one they were accepted with.
//!
//! Challenges: TLS-ALPN-01 is answered on every entrypoint to a ClientHello
//! that offers only `acme-tls/1` for a name being validated
//! (`tls_alpn_config`); HTTP-01 on the resolver's `httpChallenge.entryPoint`
//! (`http01`).

pub mod http01;
mod manager;
mod net;
mod order;
pub mod storage;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub use crate::model::acme::{
    valid_domain, Challenge, Domain, KeyType, ResolverCfg, Settings, Want,
};

pub use manager::apply;

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// State shared by the ACME thread (writer) and the workers (readers).
#[derive(Default)]
struct Shared {
    /// Any resolver configured: workers skip every lock while false.
    active: AtomicBool,
    /// Obtained certificates by (lowercase) name.
    certs: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// TLS-ALPN-01 challenge certificates by name, while validated.
    tls_alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01: token -> key authorization, while validated.
    http01: RwLock<HashMap<String, String>>,
    /// Entrypoint names that answer HTTP-01.
    http_entrypoints: RwLock<Vec<String>>,
    /// Counters for `/metrics`, per resolver.
    stats: Mutex<Vec<ResolverStats>>,
}

/// One resolver's figures for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ResolverStats {
    pub resolver: String,
    pub orders_ok: u64,
    pub orders_failed: u64,
    /// (domain main name, notAfter as Unix seconds) of the certificates served.
    pub not_after: Vec<(String, i64)>,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(Shared::default)
}

fn active() -> bool {
    shared().active.load(Ordering::Acquire)
}

/// The obtained certificate for `sni`, if any (exact names only: ACME
/// certificates here never hold wildcards).
pub fn certificate(sni: &str) -> Option<Arc<CertifiedKey>> {
    if !active() {
        return None;
    }
    let name = sni.strip_suffix('.').unwrap_or(sni).to_ascii_lowercase();
    let certs = shared().certs.read().ok()?;
    certs.get(&name).cloned()
}

/// Whether this ClientHello is a TLS-ALPN-01 validation of a name being
/// validated now: it offers `acme-tls/1` and no other protocol (RFC 8737),
/// and a challenge is pending for its SNI.
pub fn is_tls_alpn_challenge(sni: Option<&str>, alpn: &[Vec<u8>]) -> bool {
    if !active() || alpn.is_empty() || alpn.iter().any(|p| p != ACME_TLS_ALPN) {
        return false;
    }
    let Some(sni) = sni else { return false };
    let name = sni.strip_suffix('.').unwrap_or(sni).to_ascii_lowercase();
    shared()
        .tls_alpn
        .read()
        .is_ok_and(|m| m.contains_key(&name))
}

/// Serves the challenge certificate of the ClientHello's name, negotiating
/// `acme-tls/1`.
#[derive(Debug)]
struct ChallengeResolver;

impl ResolvesServerCert for ChallengeResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name()?.to_ascii_lowercase();
        shared().tls_alpn.read().ok()?.get(&sni).cloned()
    }
}

/// The rustls config that answers TLS-ALPN-01 validations (built once).
pub fn tls_alpn_config() -> Option<Arc<rustls::ServerConfig>> {
    static CONFIG: OnceLock<Option<Arc<rustls::ServerConfig>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut c = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .ok()?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(ChallengeResolver));
            c.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
            Some(Arc::new(c))
        })
        .clone()
}

/// Whether entrypoint `name` answers HTTP-01 requests.
pub fn is_http01_entrypoint(name: &str) -> bool {
    active()
        && shared()
            .http_entrypoints
            .read()
            .is_ok_and(|v| v.iter().any(|e| e == name))
}

/// The key authorization for an HTTP-01 token being validated.
pub fn http01_answer(token: &str) -> Option<String> {
    shared().http01.read().ok()?.get(token).cloned()
}

/// Every resolver's figures, for `/metrics`.
pub fn stats() -> Vec<ResolverStats> {
    shared().stats.lock().map(|s| s.clone()).unwrap_or_default()
}

/// Appends the ACME metric families to a Prometheus text page (nothing
/// when no resolver is configured).
pub fn render_metrics(out: &mut String) {
    render_stats(out, &stats());
}

fn render_stats(out: &mut String, stats: &[ResolverStats]) {
    use std::fmt::Write;
    if stats.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP sluicegate_acme_orders_total ACME certificate orders by resolver and result (ok, error)."
    );
    let _ = writeln!(out, "# TYPE sluicegate_acme_orders_total counter");
    for s in stats {
        let r = &s.resolver;
        let _ = writeln!(
            out,
            "sluicegate_acme_orders_total{{resolver=\"{r}\",result=\"ok\"}} {}",
            s.orders_ok
        );
        let _ = writeln!(
            out,
            "sluicegate_acme_orders_total{{resolver=\"{r}\",result=\"error\"}} {}",
            s.orders_failed
        );
    }
    let _ = writeln!(
        out,
        "# HELP sluicegate_acme_certificate_not_after_seconds Expiry (Unix time) of each ACME certificate served, by resolver and main domain."
    );
    let _ = writeln!(
        out,
        "# TYPE sluicegate_acme_certificate_not_after_seconds gauge"
    );
    for s in stats {
        for (domain, t) in &s.not_after {
            let _ = writeln!(
                out,
                "sluicegate_acme_certificate_not_after_seconds{{resolver=\"{}\",domain=\"{domain}\"}} {t}",
                s.resolver
            );
        }
    }
}

// Writers, for the ACME thread.

fn set_tls_alpn(name: &str, ck: CertifiedKey) {
    if let Ok(mut m) = shared().tls_alpn.write() {
        m.insert(name.to_string(), Arc::new(ck));
    }
}

fn remove_tls_alpn(name: &str) {
    if let Ok(mut m) = shared().tls_alpn.write() {
        m.remove(name);
    }
}

fn set_http01(token: &str, key_authorization: &str) {
    if let Ok(mut m) = shared().http01.write() {
        m.insert(token.to_string(), key_authorization.to_string());
    }
}

fn remove_http01(token: &str) {
    if let Ok(mut m) = shared().http01.write() {
        m.remove(token);
    }
}

/// Replaces the served certificates at once (new connections only).
fn publish(certs: HashMap<String, Arc<CertifiedKey>>) {
    if let Ok(mut m) = shared().certs.write() {
        *m = certs;
    }
}

fn set_active(on: bool, http_entrypoints: Vec<String>) {
    if let Ok(mut v) = shared().http_entrypoints.write() {
        *v = http_entrypoints;
    }
    shared().active.store(on, Ordering::Release);
}

fn set_stats(stats: Vec<ResolverStats>) {
    if let Ok(mut s) = shared().stats.lock() {
        *s = stats;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names_and_validity() {
        let d = Domain {
            main: "a.example.com".into(),
            sans: vec!["b.example.com".into(), "a.example.com".into()],
        };
        assert_eq!(d.names(), vec!["a.example.com", "b.example.com"]);
        let e = Domain {
            main: "b.example.com".into(),
            sans: vec!["a.example.com".into()],
        };
        assert!(d.same_names(&e));
        assert!(valid_domain("a-b.example.com"));
        assert!(!valid_domain("localhost"));
        assert!(!valid_domain("bad_name.example.com"));
        assert!(!valid_domain("-a.example.com"));
        assert!(!valid_domain("*.example.com"));
    }

    /// Nothing without a resolver; with one, two families with HELP and
    /// TYPE lines and a sample per result and certificate.
    #[test]
    fn metrics_families() {
        let mut out = String::new();
        render_stats(&mut out, &[]);
        assert!(out.is_empty());
        let stats = [ResolverStats {
            resolver: "le".into(),
            orders_ok: 2,
            orders_failed: 1,
            not_after: vec![("a.example.com".into(), 1_900_000_000)],
        }];
        render_stats(&mut out, &stats);
        assert_eq!(out.matches("# TYPE ").count(), 2);
        assert_eq!(out.matches("# HELP ").count(), 2);
        for line in [
            "sluicegate_acme_orders_total{resolver=\"le\",result=\"ok\"} 2",
            "sluicegate_acme_orders_total{resolver=\"le\",result=\"error\"} 1",
            "sluicegate_acme_certificate_not_after_seconds{resolver=\"le\",domain=\"a.example.com\"} 1900000000",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line} in:\n{out}");
        }
    }
}
