//! One ACME exchange: the account (stored or new), an order for one
//! domain set, its challenges answered through the shared state, the CSR
//! and the certificate chain. Runs on the ACME thread's runtime.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::net::Client;
use super::storage::{self, AccountData};
use super::{Challenge, Domain, KeyType, ResolverCfg};

/// How long an order may take to become ready, then to be issued.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);

/// A certificate as the CA issued it.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

fn http(r: &ResolverCfg) -> Result<Box<Client>, String> {
    let extra: Vec<_> = r.ca_certificates.iter().map(|c| c.path.clone()).collect();
    Client::new(r.ca_system_cert_pool, &extra).map(Box::new)
}

/// Traefik's `KeyType` spelling in the stored account (lego's names).
fn lego_key_type(k: KeyType) -> &'static str {
    match k {
        KeyType::Ec256 => "P256",
        KeyType::Ec384 => "P384",
        KeyType::Rsa2048 => "2048",
        KeyType::Rsa4096 => "4096",
        KeyType::Rsa8192 => "8192",
    }
}

fn same_host(a: &str, b: &str) -> bool {
    let host = |u: &str| {
        u.split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .map(str::to_ascii_lowercase)
    };
    host(a).is_some() && host(a) == host(b)
}

/// The stored account when its key is one this client can sign with and
/// it belongs to this CA; else a new account, to be stored.
pub async fn account(
    r: &ResolverCfg,
    stored: Option<&AccountData>,
) -> Result<(Account, Option<AccountData>), String> {
    if let Some(a) = stored {
        if let (Some(uri), Some(der)) = (a.uri(), a.key_der()) {
            if same_host(uri, &r.ca_server)
                && instant_acme::Key::from_pkcs8_der(PrivatePkcs8KeyDer::from(der.as_slice()))
                    .is_ok()
            {
                let acct = Account::builder_with_http(http(r)?)
                    .from_parts(
                        uri.to_string(),
                        PrivatePkcs8KeyDer::from(der.as_slice()),
                        r.ca_server.clone(),
                    )
                    .await
                    .map_err(|e| err("ACME directory", e))?;
                return Ok((acct, None));
            }
        }
        crate::log!(
            Info,
            "acme: the stored account is for another CA or has a key this client cannot sign with (Traefik's RSA account key); registering a new account",
            resolver = r.name
        );
    }
    let contact = r.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (acct, creds) = Account::builder_with_http(http(r)?)
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            r.ca_server.clone(),
            None,
        )
        .await
        .map_err(|e| err("ACME account registration", e))?;
    let data = AccountData {
        email: r.email.clone().unwrap_or_default(),
        registration: Some(serde_json::json!({
            "body": { "status": "valid", "contact": contacts },
            "uri": acct.id(),
        })),
        private_key: storage::encode_key(creds.private_key().secret_pkcs8_der()),
        key_type: lego_key_type(r.key_type).to_string(),
    };
    Ok((acct, Some(data)))
}

/// Challenges answered for one order; removed from the shared state when
/// dropped, whatever the outcome.
#[derive(Default)]
struct Answers {
    tls_alpn: Vec<String>,
    http01: Vec<String>,
}

impl Drop for Answers {
    fn drop(&mut self) {
        for name in &self.tls_alpn {
            super::remove_tls_alpn(name);
        }
        for token in &self.http01 {
            super::remove_http01(token);
        }
    }
}

/// The self-signed certificate of a TLS-ALPN-01 answer: the name, and the
/// acmeIdentifier extension holding SHA-256 of the key authorization.
fn tls_alpn_cert(name: &str, digest: &[u8]) -> Result<rustls::sign::CertifiedKey, String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| err("challenge key", e))?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| err(name, e))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params
        .self_signed(&key)
        .map_err(|e| err("challenge certificate", e))?;
    let der = PrivatePkcs8KeyDer::from(key.serialize_der());
    // Not `from_der`: its key/certificate consistency check parses the
    // certificate with webpki, which refuses the critical acmeIdentifier
    // extension. The key is the one just used to sign it.
    let signing = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(der.into())
        .map_err(|e| err("challenge key", e))?;
    Ok(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    ))
}

fn certificate_key(k: KeyType) -> Result<rcgen::KeyPair, String> {
    use rcgen::{KeyPair, RsaKeySize};
    let r = match k {
        KeyType::Ec256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::Ec384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
        KeyType::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096),
        KeyType::Rsa8192 => {
            // aws-lc-rs generates RSA keys up to 4096 bits through rcgen.
            return Err("keyType RSA8192 is not supported; use RSA4096 or EC384".into());
        }
    };
    r.map_err(|e| err("certificate key", e))
}

/// Places an order for `domain` and answers its challenges; the
/// certificate and its new private key.
pub async fn obtain(account: &Account, r: &ResolverCfg, domain: &Domain) -> Result<Issued, String> {
    let names = domain.names();
    let ids: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| err("new order", e))?;
    let mut answers = Answers::default();
    let tls_ok = r.challenges.contains(&Challenge::TlsAlpn);
    let http_ok = r
        .challenges
        .iter()
        .any(|c| matches!(c, Challenge::Http { .. }));
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a.map_err(|e| err("authorization", e))?;
        match a.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            s => return Err(format!("authorization is {s:?}")),
        }
        let name = a.identifier().to_string().to_ascii_lowercase();
        let offered = |t: &ChallengeType| a.challenges.iter().any(|c| &c.r#type == t);
        let kind = if tls_ok && offered(&ChallengeType::TlsAlpn01) {
            ChallengeType::TlsAlpn01
        } else if http_ok && offered(&ChallengeType::Http01) {
            ChallengeType::Http01
        } else {
            return Err(format!(
                "the CA offers no challenge this resolver answers for {name}"
            ));
        };
        let mut ch = a
            .challenge(kind.clone())
            .ok_or_else(|| format!("no challenge for {name}"))?;
        let ka = ch.key_authorization();
        if kind == ChallengeType::TlsAlpn01 {
            let ck = tls_alpn_cert(&name, ka.digest().as_ref())?;
            super::set_tls_alpn(&name, ck);
            answers.tls_alpn.push(name.clone());
        } else {
            let token = ch.token.clone();
            super::set_http01(&token, ka.as_str());
            answers.http01.push(token);
        }
        ch.set_ready()
            .await
            .map_err(|e| err(&format!("challenge for {name}"), e))?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(ORDER_TIMEOUT);
    let status = order
        .poll_ready(&retry)
        .await
        .map_err(|e| err("validation", e))?;
    if status != OrderStatus::Ready {
        return Err(format!("the order is {status:?} after validation"));
    }
    drop(answers);
    let key = certificate_key(r.key_type)?;
    let mut params = rcgen::CertificateParams::new(names.clone()).map_err(|e| err("CSR", e))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, domain.main.clone());
    let csr = params.serialize_request(&key).map_err(|e| err("CSR", e))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| err("finalize", e))?;
    let chain_pem = order
        .poll_certificate(&retry)
        .await
        .map_err(|e| err("certificate", e))?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// The served form of a stored certificate (PEM chain and key).
pub fn certified_key(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<rustls::sign::CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate PEM: {e:?}"))?;
    if chain.is_empty() {
        return Err("no certificate in the chain".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("bad key PEM: {e:?}"))?;
    rustls::sign::CertifiedKey::from_der(chain, key, &rustls::crypto::aws_lc_rs::default_provider())
        .map_err(|e| format!("unusable certificate: {e}"))
}
