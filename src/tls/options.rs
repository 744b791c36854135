//! rustls configurations built from the model: one `ServerConfig` per
//! `[tls.options.<name>]` (versions, cipher suites, curves, ALPN, client
//! authentication, SNI strictness) and one `ClientConfig` per servers
//! transport that speaks TLS to its backends (roots, `insecureSkipVerify`,
//! client certificate).
//!
//! The config loader already refused names rustls cannot honour
//! (`config/tls.rs` gives the canonical spellings matched here); what is left
//! to fail is file IO and PEM contents. Pure apart from reading files.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{aws_lc_rs, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme, SupportedCipherSuite, SupportedProtocolVersion,
};

use super::store::{self, CertStore, Resolver};
use crate::config;
use crate::model::{
    CipherSuite, ClientAuth, ConfigPath, Curve, PeerSan, TlsOptions, TlsVersion, TransportTls,
};

/// Where Debian (and most distributions) keep the system CA bundle, used for
/// backends with `tls = true` and no `rootCAs` (Go's default: system roots).
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The crypto provider (see Cargo.toml for why aws-lc-rs).
pub fn provider() -> CryptoProvider {
    aws_lc_rs::default_provider()
}

/// The rustls suite of a configured cipher suite.
fn suite(c: CipherSuite) -> SupportedCipherSuite {
    use aws_lc_rs::cipher_suite::*;
    match c {
        CipherSuite::Tls13Aes128GcmSha256 => TLS13_AES_128_GCM_SHA256,
        CipherSuite::Tls13Aes256GcmSha384 => TLS13_AES_256_GCM_SHA384,
        CipherSuite::Tls13Chacha20Poly1305Sha256 => TLS13_CHACHA20_POLY1305_SHA256,
        CipherSuite::EcdheEcdsaAes128GcmSha256 => TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::EcdheEcdsaAes256GcmSha384 => TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::EcdheRsaAes128GcmSha256 => TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::EcdheRsaAes256GcmSha384 => TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::EcdheEcdsaChacha20Poly1305Sha256 => {
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        CipherSuite::EcdheRsaChacha20Poly1305Sha256 => TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    }
}

/// The rustls key exchange group of a configured curve.
fn group(c: Curve) -> &'static dyn rustls::crypto::SupportedKxGroup {
    use aws_lc_rs::kx_group::*;
    match c {
        Curve::X25519 => X25519,
        Curve::P256 => SECP256R1,
        Curve::P384 => SECP384R1,
        Curve::X25519Mlkem768 => X25519MLKEM768,
    }
}

/// The provider restricted to an options set's suites and curves.
///
/// Go semantics: `cipherSuites` lists TLS 1.2 suites and TLS 1.3 suites are
/// not configurable; as an extension, naming any TLS 1.3 suite restricts the
/// TLS 1.3 ones too. A version whose suites the list does not mention keeps
/// its defaults.
fn restricted_provider(opts: &TlsOptions) -> CryptoProvider {
    let mut p = provider();
    if !opts.cipher_suites.is_empty() {
        let named: Vec<SupportedCipherSuite> =
            opts.cipher_suites.iter().map(|&c| suite(c)).collect();
        let is13 = |s: &SupportedCipherSuite| s.version() == &rustls::version::TLS13;
        let any13 = named.iter().any(is13);
        let any12 = named.iter().any(|s| !is13(s));
        p.cipher_suites.retain(|s| {
            let listed = named.iter().any(|n| n.suite() == s.suite());
            if is13(s) {
                !any13 || listed
            } else {
                !any12 || listed
            }
        });
    }
    // Go's preference (hence Traefik's, on hardware with AES): AES-128-GCM,
    // then AES-256-GCM, then ChaCha20, ECDSA before RSA in TLS 1.2. Cheaper
    // than rustls' AES-256 first: SHA-256 instead of SHA-384 in the key
    // schedule and a shorter AES key schedule.
    p.cipher_suites.sort_by_key(|s| go_rank(s.suite()));
    if !opts.curve_preferences.is_empty() {
        p.kx_groups = opts.curve_preferences.iter().map(|&c| group(c)).collect();
    }
    p
}

/// Position of a suite in Go's default preference order.
fn go_rank(s: rustls::CipherSuite) -> usize {
    use rustls::CipherSuite as C;
    const ORDER: &[C] = &[
        C::TLS13_AES_128_GCM_SHA256,
        C::TLS13_AES_256_GCM_SHA384,
        C::TLS13_CHACHA20_POLY1305_SHA256,
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    ORDER.iter().position(|c| *c == s).unwrap_or(ORDER.len())
}

fn versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Vec<&'static SupportedProtocolVersion> {
    let lo = min.unwrap_or(TlsVersion::Tls12);
    let hi = max.unwrap_or(TlsVersion::Tls13);
    let mut v = Vec::new();
    if (lo..=hi).contains(&TlsVersion::Tls13) {
        v.push(&rustls::version::TLS13);
    }
    if (lo..=hi).contains(&TlsVersion::Tls12) {
        v.push(&rustls::version::TLS12);
    }
    v
}

/// Certificates from PEM files as a root store; errors are
/// `FILE:LINE:COL: message` at the key naming the file.
/// Every file is tried, so one run reports all of them.
fn roots(files: &[ConfigPath]) -> Result<RootCertStore, Vec<String>> {
    let mut store = RootCertStore::empty();
    let mut errors = Vec::new();
    for f in files {
        let chain = match store::read_chain(f, config::MAX_CA_FILE_SIZE) {
            Ok(c) => c,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for cert in chain {
            if let Err(e) = store.add(cert) {
                errors.push(format!(
                    "{}: `{}`: not a usable CA certificate: {e}",
                    f.at,
                    f.path.display()
                ));
                break;
            }
        }
    }
    if errors.is_empty() {
        Ok(store)
    } else {
        Err(errors)
    }
}

/// The system CA bundle; `what` names the configuration that needs it.
fn system_roots(what: &str) -> Result<RootCertStore, String> {
    let Some(f) = SYSTEM_CA_FILES.iter().map(Path::new).find(|p| p.exists()) else {
        return Err(format!(
            "{what}: no rootCAs given and no system CA bundle found ({}); install ca-certificates or set rootCAs",
            SYSTEM_CA_FILES.join(", ")
        ));
    };
    let mut store = RootCertStore::empty();
    let bundle = ConfigPath {
        path: f.to_path_buf(),
        at: format!("{what} (system CA bundle)"),
        inline: None,
    };
    let (_, _) =
        store.add_parsable_certificates(store::read_chain(&bundle, config::MAX_CA_FILE_SIZE)?);
    Ok(store)
}

/// The `ServerConfig` of one options set; errors are `FILE: message` or
/// `tls.options.NAME: message` lines.
pub fn server_config(
    opts: &TlsOptions,
    certs: &Arc<CertStore>,
    ticketer: Option<&Arc<dyn rustls::server::ProducesTickets>>,
) -> Result<ServerConfig, Vec<String>> {
    let provider = Arc::new(restricted_provider(opts));
    let what = format!("tls.options.{}", opts.name);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(opts.min_version, opts.max_version))
        .map_err(|e| {
            vec![format!(
                "{what}: {e} (no cipher suite left for these versions)"
            )]
        })?;
    let verifier: Arc<dyn ClientCertVerifier> = match opts.client_auth_type {
        None | Some(ClientAuth::NoClientCert) => WebPkiClientVerifier::no_client_auth(),
        Some(kind @ (ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert)) => {
            Arc::new(AnyClientCert {
                mandatory: kind == ClientAuth::RequireAnyClientCert,
                algs: provider.signature_verification_algorithms,
            })
        }
        Some(
            kind @ (ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert),
        ) => {
            let roots = roots(&opts.client_ca_files)?;
            let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let b = if kind == ClientAuth::VerifyClientCertIfGiven {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build()
                .map_err(|e| vec![format!("{what}.clientAuth: {e}")])?
        }
    };
    let mut config = builder
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(Resolver {
            store: certs.clone(),
            strict: opts.sni_strict,
        }));
    // The server picks the suite, as Go (Traefik) does.
    config.ignore_client_order = true;
    config.alpn_protocols = opts
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    // No server-side session cache either way: with tickets, resumption
    // works across workers without a shared, locked cache.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    match ticketer {
        Some(t) if !opts.disable_session_tickets => {
            config.ticketer = t.clone();
            // One TLS 1.3 ticket per handshake, like Go (rustls sends two).
            config.send_tls13_tickets = 1;
        }
        _ => config.send_tls13_tickets = 0,
    }
    Ok(config)
}

/// A transport's TLS towards its backends.
pub struct ClientSide {
    pub config: Arc<ClientConfig>,
    /// `serverName`; `None`: the host of the server's address.
    pub server_name: Option<ServerName<'static>>,
}

/// The `ClientConfig` of one transport (`tls` may be absent: per-server
/// `tls = true` with Traefik's defaults, i.e. system roots).
pub fn client_side(tls: Option<&TransportTls>, what: &str) -> Result<ClientSide, String> {
    let default = TransportTls::default();
    let tls = tls.unwrap_or(&default);
    let provider = Arc::new(provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{what}: {e}"))?;
    let builder = if tls.insecure_skip_verify && tls.peer_cert_sans.is_empty() {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoServerVerification {
                algs: provider.signature_verification_algorithms,
            }))
    } else {
        let roots = Arc::new(if tls.root_cas.is_empty() {
            system_roots(what)?
        } else {
            roots(&tls.root_cas).map_err(|e| e.join("\n"))?
        });
        let v = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("{what}: {e}"))?;
        if tls.peer_cert_sans.is_empty() {
            builder.with_webpki_verifier(v)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PeerSanVerifier {
                    inner: v,
                    roots,
                    sans: tls.peer_cert_sans.clone(),
                    check_name: !tls.insecure_skip_verify,
                    algs: provider.signature_verification_algorithms,
                }))
        }
    };
    let config = match tls.certificates.first() {
        Some(pair) => {
            let (chain, key) = match (
                store::read_chain(&pair.cert_file, config::MAX_PEM_FILE_SIZE),
                store::read_key(&pair.key_file),
            ) {
                (Ok(chain), Ok(key)) => (chain, key),
                (chain, key) => {
                    let errors: Vec<String> =
                        [chain.err(), key.err()].into_iter().flatten().collect();
                    return Err(errors.join("\n"));
                }
            };
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!(
                    "{}: `{}`: unusable client certificate key: {e}",
                    pair.key_file.at,
                    pair.key_file.path.display()
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    let server_name = match &tls.server_name {
        Some(n) => Some(
            ServerName::try_from(n.clone())
                .map_err(|_| format!("{what}.serverName: {n:?} is not a DNS name or IP address"))?,
        ),
        None => None,
    };
    Ok(ClientSide {
        config: Arc::new(config),
        server_name,
    })
}

/// The server name to verify a backend against when `serverName` is not set:
/// the host part of the server's address (Traefik does the same).
pub fn name_from_address(address: &str) -> Option<ServerName<'static>> {
    let host = match address.rsplit_once(':') {
        Some((h, _)) => h,
        None => address,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).ok()
}

/// The handshake-signature half of a certificate verifier, the same for
/// every verifier here: checked with the provider's algorithms (`self.algs`),
/// whatever the verifier decides about the certificate itself.
macro_rules! handshake_signatures_by_algs {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

/// `clientAuthType` RequestClientCert / RequireAnyClientCert: ask for a
/// certificate and accept any, but still check the handshake signature (the
/// client must hold the key of what it presents).
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    handshake_signatures_by_algs!();
}

/// `peerCertSANs`, as Traefik checks them: the chain must verify against
/// the transport's roots (system roots without `rootCAs`), even with
/// `insecureSkipVerify`, and the leaf must carry one of the listed names
/// (DNS names with the usual wildcard rules, URIs ignoring case). Without
/// `insecureSkipVerify` the server name must verify as well: Go runs its
/// own check before Traefik's callback, so the SANs add to it there and
/// replace it only when `insecureSkipVerify` switches Go's check off.
#[derive(Debug)]
struct PeerSanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    roots: Arc<RootCertStore>,
    sans: Vec<PeerSan>,
    check_name: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl PeerSanVerifier {
    /// The chain alone, for any name (URI SANs).
    fn chain_verifies(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> bool {
        let Ok(ee) = webpki::EndEntityCert::try_from(end_entity) else {
            return false;
        };
        ee.verify_for_usage(
            self.algs.all,
            &self.roots.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .is_ok()
    }
}

impl ServerCertVerifier for PeerSanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.check_name {
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        }
        let mut chain = None;
        for san in &self.sans {
            let matched = match san {
                PeerSan::Dns(name) => ServerName::try_from(name.as_str()).is_ok_and(|n| {
                    self.inner
                        .verify_server_cert(end_entity, intermediates, &n, ocsp, now)
                        .is_ok()
                }),
                PeerSan::Uri(uri) => {
                    *chain
                        .get_or_insert_with(|| self.chain_verifies(end_entity, intermediates, now))
                        && crate::wire::x509::uri_sans(end_entity)
                            .iter()
                            .any(|u| u.eq_ignore_ascii_case(uri))
                }
            };
            if matched {
                return Ok(ServerCertVerified::assertion());
            }
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }
    handshake_signatures_by_algs!();
}

/// `insecureSkipVerify = true`: any backend certificate is accepted (the
/// handshake signature is still checked against it).
#[derive(Debug)]
struct NoServerVerification {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    handshake_signatures_by_algs!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_ranges() {
        assert_eq!(versions(None, None).len(), 2);
        assert_eq!(
            versions(Some(TlsVersion::Tls13), None),
            vec![&rustls::version::TLS13]
        );
        assert_eq!(
            versions(None, Some(TlsVersion::Tls12)),
            vec![&rustls::version::TLS12]
        );
    }

    #[test]
    fn suites_restrict_only_the_versions_they_name() {
        let opts = TlsOptions {
            cipher_suites: vec![CipherSuite::EcdheEcdsaAes128GcmSha256],
            ..TlsOptions::default()
        };
        let p = restricted_provider(&opts);
        let n12 = p
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .count();
        let n13 = p.cipher_suites.len() - n12;
        assert_eq!(n12, 1);
        assert!(n13 >= 2, "TLS 1.3 suites are kept (Go semantics)");
    }

    #[test]
    fn aes_128_gcm_is_preferred_like_go() {
        let p = restricted_provider(&TlsOptions::default());
        assert_eq!(
            p.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        let first12 = p
            .cipher_suites
            .iter()
            .find(|s| s.version() == &rustls::version::TLS12)
            .unwrap();
        assert_eq!(
            first12.suite(),
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        );
    }

    /// A CA and a leaf it signed with DNS `dns` and URI `uri` SANs (DER).
    fn ca_and_leaf(dns: &str, uri: &str) -> (CertificateDer<'static>, CertificateDer<'static>) {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut leaf = rcgen::CertificateParams::new(vec![dns.to_string()]).unwrap();
        leaf.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from(uri).unwrap(),
        ));
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf = leaf.signed_by(&key, &issuer).unwrap();
        (ca.der().clone(), leaf.der().clone())
    }

    fn san_verifier(
        ca: &CertificateDer<'static>,
        sans: Vec<PeerSan>,
        check_name: bool,
    ) -> PeerSanVerifier {
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let roots = Arc::new(roots);
        let p = Arc::new(provider());
        PeerSanVerifier {
            inner: WebPkiServerVerifier::builder_with_provider(roots.clone(), p.clone())
                .build()
                .unwrap(),
            roots,
            sans,
            check_name,
            algs: p.signature_verification_algorithms,
        }
    }

    #[test]
    fn peer_cert_sans_match_dns_and_uri_names_over_a_verified_chain() {
        let (ca, leaf) = ca_and_leaf("db.internal", "spiffe://example.org/db");
        let (other_ca, _) = ca_and_leaf("x.test", "spiffe://x");
        let ip = ServerName::try_from("10.0.0.5").unwrap();
        let now = UnixTime::now();
        let verify = |v: &PeerSanVerifier, name: &ServerName<'_>| {
            v.verify_server_cert(&leaf, &[], name, &[], now).is_ok()
        };
        let uri = |u: &str| PeerSan::Uri(u.into());
        let dns = |d: &str| PeerSan::Dns(d.into());
        // insecureSkipVerify: the SANs replace the name (an IP here).
        assert!(verify(
            &san_verifier(&ca, vec![uri("SPIFFE://example.org/db")], false),
            &ip
        ));
        assert!(verify(
            &san_verifier(&ca, vec![dns("x.test"), dns("db.internal")], false),
            &ip
        ));
        assert!(!verify(
            &san_verifier(&ca, vec![uri("spiffe://example.org/other")], false),
            &ip
        ));
        assert!(!verify(
            &san_verifier(&ca, vec![dns("other.internal")], false),
            &ip
        ));
        // The chain must verify, even for URI SANs.
        assert!(!verify(
            &san_verifier(&other_ca, vec![uri("spiffe://example.org/db")], false),
            &ip
        ));
        // Without insecureSkipVerify the name must verify as well.
        assert!(!verify(
            &san_verifier(&ca, vec![uri("spiffe://example.org/db")], true),
            &ip
        ));
        let db = ServerName::try_from("db.internal").unwrap();
        assert!(verify(
            &san_verifier(&ca, vec![uri("spiffe://example.org/db")], true),
            &db
        ));
    }

    #[test]
    fn names_from_addresses() {
        assert!(matches!(
            name_from_address("db.internal:5432"),
            Some(ServerName::DnsName(_))
        ));
        assert!(matches!(
            name_from_address("10.0.0.5:5432"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            name_from_address("[::1]:5432"),
            Some(ServerName::IpAddress(_))
        ));
    }
}
