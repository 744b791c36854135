//! The certificate store: `[[tls.certificates]]` and the default store's
//! `defaultCertificate`, loaded from PEM files and indexed by name for SNI.
//!
//! Names come from each certificate's SAN DNS names and subject common name
//! (as Traefik does); `*.example.com` matches exactly one label. A client whose
//! SNI matches nothing (or that sends none) gets the default certificate (the
//! configured `defaultCertificate`, else Traefik's generated self-signed
//! one), or nothing when the TLS options say `sniStrict`. Built once per snapshot and
//! shared read-only by every worker (`Arc`); loading touches files, lookups
//! never do.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config;
use crate::log;
use crate::model::{CertPair, ConfigPath};
use crate::wire::x509;

/// Certificates by name.
#[derive(Default)]
pub struct CertStore {
    /// Exact names (lowercase, no trailing dot).
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` certificates, keyed by `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// `[tls.stores.default.defaultCertificate]`, else the generated
    /// self-signed one (`generated_default`), as Traefik. Always set in a
    /// loaded store.
    fallback: Option<Arc<CertifiedKey>>,
    /// The fallback is the generated certificate.
    generated: bool,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("names", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcards", &self.wildcard.keys().collect::<Vec<_>>())
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl CertStore {
    /// Load every certificate; errors are `FILE:LINE:COL: message` lines
    /// (the position of the key naming the file).
    pub fn load(
        certificates: &[CertPair],
        default: Option<&CertPair>,
        provider: &CryptoProvider,
    ) -> Result<CertStore, Vec<String>> {
        let mut store = CertStore::default();
        let mut errors = Vec::new();
        for pair in certificates {
            match load_pair(pair, provider) {
                Ok((ck, names)) => {
                    let ck = Arc::new(ck);
                    for name in names {
                        store.insert(&name, &ck);
                    }
                }
                Err(e) => errors.extend(e),
            }
        }
        match default {
            Some(pair) => match load_pair(pair, provider) {
                Ok((ck, _)) => store.fallback = Some(Arc::new(ck)),
                Err(e) => errors.extend(e),
            },
            None => match generated_default(provider) {
                Ok(ck) => {
                    store.fallback = Some(ck);
                    store.generated = true;
                }
                Err(e) => errors.push(e),
            },
        }
        if errors.is_empty() {
            Ok(store)
        } else {
            Err(errors)
        }
    }

    fn insert(&mut self, name: &str, ck: &Arc<CertifiedKey>) {
        let name = normalise(name);
        let (map, key) = match name.strip_prefix("*.") {
            Some(parent) => (&mut self.wildcard, parent.to_string()),
            None => (&mut self.exact, name),
        };
        // The first certificate listed for a name wins, like Traefik's store.
        map.entry(key).or_insert_with(|| ck.clone());
    }

    /// Whether any certificate serves `sni` by name.
    pub fn by_name(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let sni = normalise(sni);
        if let Some(ck) = self.exact.get(&sni) {
            return Some(ck);
        }
        let (_, parent) = sni.split_once('.')?;
        self.wildcard.get(parent)
    }

    /// The certificate for a client: by name, else (unless `strict`) the
    /// default one.
    pub fn resolve(&self, sni: Option<&str>, strict: bool) -> Option<Arc<CertifiedKey>> {
        if let Some(ck) = sni.and_then(|s| self.by_name(s)) {
            return Some(ck.clone());
        }
        // Certificates from ACME resolvers, swapped in as they are obtained.
        if let Some(ck) = sni.and_then(crate::acme::certificate) {
            return Some(ck);
        }
        if strict {
            return None;
        }
        self.fallback.clone()
    }

    /// How many names the configured certificates serve.
    pub fn names(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// The certificate served when no name matches: the configured default,
    /// else the generated one.
    pub fn default_certificate(&self) -> Option<&Arc<CertifiedKey>> {
        self.fallback.as_ref()
    }

    /// Whether the default certificate is the generated self-signed one.
    pub fn default_is_generated(&self) -> bool {
        self.generated
    }
}

/// The common name of the generated default certificate (Traefik's).
pub const GENERATED_CN: &str = "TRAEFIK DEFAULT CERT";

/// Validity of the generated certificate, as Traefik's: one year from start.
const GENERATED_DAYS: i64 = 365;

/// The self-signed default certificate, made once per process: a reload
/// serves the same one, so clients that pinned it keep working. Like
/// Traefik's: CN "TRAEFIK DEFAULT CERT", one random DNS name under
/// `traefik.default`, server authentication, one year. An ECDSA P-256 key
/// instead of Traefik's RSA 2048: generated in a millisecond, and every
/// client that verifies refuses the certificate alike.
pub fn generated_default(provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, String> {
    static GENERATED: std::sync::OnceLock<Arc<CertifiedKey>> = std::sync::OnceLock::new();
    if let Some(ck) = GENERATED.get() {
        return Ok(ck.clone());
    }
    let ck = Arc::new(
        generate(provider)
            .map_err(|e| format!("cannot generate the default self-signed certificate: {e}"))?,
    );
    // Two threads racing here both generated one; the first stored wins and
    // both return it.
    Ok(GENERATED.get_or_init(|| ck).clone())
}

fn generate(provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let mut random = [0u8; 32];
    provider
        .secure_random
        .fill(&mut random)
        .map_err(|_| "no random bytes".to_string())?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let name = format!("{}.{}.traefik.default", &hex[..32], &hex[32..]);
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(vec![name]).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, GENERATED_CN);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (y, m, d) = x509::civil_from_days(now.div_euclid(86_400));
    params.not_before = rcgen::date_time_ymd(y as i32, m as u8, d as u8);
    let (y, m, d) = x509::civil_from_days(now.div_euclid(86_400) + GENERATED_DAYS);
    params.not_after = rcgen::date_time_ymd(y as i32, m as u8, d as u8);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    CertifiedKey::from_der(vec![cert.der().clone()], der.into(), provider)
        .map_err(|e| e.to_string())
}

/// SNI is compared like rustls and the peek code normalise it: lowercase, one
/// trailing dot removed.
fn normalise(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

/// The resolver one TLS options set hands rustls.
#[derive(Debug)]
pub struct Resolver {
    pub store: Arc<CertStore>,
    pub strict: bool,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.resolve(hello.server_name(), self.strict)
    }
}

/// The PEM bytes of a configured value: its inline content, or at most `cap`
/// bytes of the regular file it names (`config::read_regular`).
fn pem_bytes(file: &ConfigPath, cap: u64) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
    match &file.inline {
        Some(text) => Ok(std::borrow::Cow::Borrowed(text.as_bytes())),
        None => config::read_regular(&file.path, cap).map(std::borrow::Cow::Owned),
    }
}

/// Read a PEM certificate chain (leaf first) from a file the configuration
/// names (or its inline content), at most `cap` bytes of a regular file.
/// Errors start with the position of the key that named the file.
pub fn read_chain(file: &ConfigPath, cap: u64) -> Result<Vec<CertificateDer<'static>>, String> {
    let at = &file.at;
    let path = file.path.display();
    let bytes = pem_bytes(file, cap)
        .map_err(|e| format!("{at}: cannot read certificates from `{path}`: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{at}: `{path}`: bad PEM certificate: {}", pem_error(e)))?;
    if chain.is_empty() {
        return Err(format!(
            "{at}: `{path}`: no PEM certificate (-----BEGIN CERTIFICATE-----) found"
        ));
    }
    Ok(chain)
}

/// Read a PEM private key: PKCS#8, SEC1 (EC) or PKCS#1 (RSA); bounded and
/// positioned like `read_chain`.
pub fn read_key(file: &ConfigPath) -> Result<PrivateKeyDer<'static>, String> {
    let at = &file.at;
    let path = file.path.display();
    let bytes = pem_bytes(file, config::MAX_PEM_FILE_SIZE)
        .map_err(|e| format!("{at}: cannot read private key from `{path}`: {e}"))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{at}: `{path}`: no PEM private key (PKCS#8, EC or RSA) found")
        }
        e => format!("{at}: `{path}`: bad PEM private key: {}", pem_error(e)),
    })
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("{other:?}"),
    }
}

/// Load a chain and its key, check they belong together, and return the
/// names the leaf serves. An expired leaf is a warning: Traefik serves it too.
/// A problem with the certificate and one with the key are both reported.
pub fn load_pair(
    pair: &CertPair,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Vec<String>), Vec<String>> {
    let (chain, key) = match (
        read_chain(&pair.cert_file, config::MAX_PEM_FILE_SIZE),
        read_key(&pair.key_file),
    ) {
        (Ok(chain), Ok(key)) => (chain, key),
        (chain, key) => {
            return Err([chain.err(), key.err()].into_iter().flatten().collect());
        }
    };
    let v1 = chain.first().is_some_and(|c| x509::is_v1(c));
    let ck = if v1 {
        v1_pair(pair, chain, key, provider)?
    } else {
        CertifiedKey::from_der(chain, key, provider)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "{}: the private key `{}` does not match the certificate `{}`",
                    pair.key_file.at,
                    pair.key_file.path.display(),
                    pair.cert_file.path.display()
                ),
                e => format!(
                    "{}: `{}`: unusable private key: {e}",
                    pair.key_file.at,
                    pair.key_file.path.display()
                ),
            })
            .map_err(|e| vec![e])?
    };
    let leaf = &ck.cert[0];
    let mut names: Vec<String> = match webpki::EndEntityCert::try_from(leaf) {
        Ok(ee) => ee.valid_dns_names().map(str::to_string).collect(),
        // v1 has no extensions, so no SANs: its names are its CN (below).
        Err(_) if v1 => Vec::new(),
        Err(e) => {
            return Err(vec![format!(
                "{}: `{}`: not a valid X.509 certificate: {e}",
                pair.cert_file.at,
                pair.cert_file.path.display()
            )])
        }
    };
    if let Some(cn) = x509::common_name(leaf) {
        if !cn.is_empty() && !names.iter().any(|n| n.eq_ignore_ascii_case(&cn)) {
            names.push(cn);
        }
    }
    if let Some(not_after) = x509::not_after(leaf) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if not_after < now {
            log!(
                Warn,
                "certificate has expired; it is served anyway",
                file = pair.cert_file.path.display(),
                expired_days_ago = (now - not_after) / 86_400
            );
        }
    }
    Ok((ck, names))
}

/// An X.509 v1 leaf: rustls' key check (`CertifiedKey::from_der`) parses
/// the certificate with webpki, which refuses v1, and says "unusable private
/// key". Go and Traefik serve v1 certificates, so the key is loaded alone and
/// its public half compared with the certificate's subjectPublicKeyInfo here.
fn v1_pair(
    pair: &CertPair,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, Vec<String>> {
    let signer = provider.key_provider.load_private_key(key).map_err(|e| {
        vec![format!(
            "{}: `{}`: unusable private key: {e}",
            pair.key_file.at,
            pair.key_file.path.display()
        )]
    })?;
    // A key type that cannot give its public half is accepted, as rustls
    // does (`InconsistentKeys::Unknown`).
    if let Some(public) = signer.public_key() {
        if x509::spki(&chain[0]) != Some(public.as_ref()) {
            return Err(vec![format!(
                "{}: the private key `{}` does not match the certificate `{}`",
                pair.key_file.at,
                pair.key_file.path.display(),
                pair.cert_file.path.display()
            )]);
        }
    }
    Ok(CertifiedKey::new(chain, signer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_default_is_traefiks_and_made_once() {
        let p = super::super::options::provider();
        let a = generated_default(&p).unwrap();
        let b = generated_default(&p).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "one certificate per process");
        assert_eq!(x509::common_name(&a.cert[0]).as_deref(), Some(GENERATED_CN));
        let ee = webpki::EndEntityCert::try_from(&a.cert[0]).unwrap();
        let names: Vec<&str> = ee.valid_dns_names().collect();
        assert_eq!(names.len(), 1);
        assert!(names[0].ends_with(".traefik.default"), "{names:?}");
        assert_eq!(names[0].len(), 32 + 1 + 32 + ".traefik.default".len());
        // Valid now, for a year.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let left = x509::not_after(&a.cert[0]).unwrap() - now;
        assert!((363 * 86_400..=366 * 86_400).contains(&left), "{left}");
        // A store without a defaultCertificate serves it.
        let store = CertStore::load(&[], None, &p).unwrap();
        assert!(store.default_is_generated());
        assert!(Arc::ptr_eq(store.default_certificate().unwrap(), &a));
        assert!(Arc::ptr_eq(
            &store.resolve(Some("x.test"), false).unwrap(),
            &a
        ));
        assert!(store.resolve(Some("x.test"), true).is_none());
    }

    /// A store with certificates inserted under `names` in order (a fresh key
    /// each), and a fallback; the keys are returned in the same order.
    fn store_of(names: &[&str]) -> (CertStore, Vec<Arc<CertifiedKey>>, Arc<CertifiedKey>) {
        let p = super::super::options::provider();
        let mut store = CertStore::default();
        let mut keys = Vec::new();
        for name in names {
            let ck = Arc::new(generate(&p).unwrap());
            store.insert(name, &ck);
            keys.push(ck);
        }
        let fallback = Arc::new(generate(&p).unwrap());
        store.fallback = Some(fallback.clone());
        (store, keys, fallback)
    }

    fn is(got: Option<&Arc<CertifiedKey>>, want: &Arc<CertifiedKey>) -> bool {
        got.is_some_and(|g| Arc::ptr_eq(g, want))
    }

    #[test]
    fn a_wildcard_matches_exactly_one_label() {
        let (store, keys, _) = store_of(&["*.wild.test"]);
        let w = &keys[0];
        assert!(is(store.by_name("x.wild.test"), w));
        assert!(is(store.by_name("a-b.wild.test"), w));
        assert!(store.by_name("wild.test").is_none(), "the parent itself");
        assert!(store.by_name("a.b.wild.test").is_none(), "two labels");
        assert!(store.by_name("x.other.test").is_none());
        assert!(store.by_name("xwild.test").is_none());
        assert_eq!(store.names(), 1);
    }

    #[test]
    fn names_compare_without_case_and_one_trailing_dot() {
        let (store, keys, _) = store_of(&["A.Test", "*.Wild.TEST."]);
        assert!(is(store.by_name("a.test"), &keys[0]));
        assert!(is(store.by_name("A.TEST."), &keys[0]));
        assert!(is(store.by_name("X.wild.test."), &keys[1]));
        assert!(
            store.by_name("a.test..").is_none(),
            "only one dot is removed"
        );
    }

    #[test]
    fn an_exact_name_beats_a_wildcard_and_the_first_listed_wins() {
        let (store, keys, _) =
            store_of(&["*.wild.test", "a.wild.test", "*.wild.test", "a.wild.test"]);
        assert!(is(store.by_name("a.wild.test"), &keys[1]));
        assert!(is(store.by_name("b.wild.test"), &keys[0]));
        assert_eq!(store.names(), 2);
    }

    #[test]
    fn no_match_gets_the_default_unless_sni_strict() {
        let (store, keys, fallback) = store_of(&["a.test", "*.wild.test"]);
        let resolve = |sni: Option<&str>, strict: bool| store.resolve(sni, strict);
        assert!(is(resolve(Some("a.test"), true).as_ref(), &keys[0]));
        assert!(is(resolve(Some("x.wild.test"), true).as_ref(), &keys[1]));
        for sni in [Some("b.test"), Some("a.b.wild.test"), None] {
            assert!(is(resolve(sni, false).as_ref(), &fallback), "{sni:?}");
            assert!(resolve(sni, true).is_none(), "{sni:?} under sniStrict");
        }
    }
}
