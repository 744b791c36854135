//! What the configuration asks of the ACME client (`certificatesResolvers`
//! and the routers' `tls.certResolver` / `tls.domains`), as `config` builds
//! it and `acme` runs it. Plain values: no IO.

use std::path::PathBuf;

use super::{ConfigPath, ResolverId};

/// Traefik's `keyType` values (the certificates' key; the account key is
/// always ECDSA P-256 here, see `acme::storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Ec256,
    Ec384,
    Rsa2048,
    Rsa4096,
    Rsa8192,
}

impl KeyType {
    pub fn parse(s: &str) -> Option<KeyType> {
        Some(match s {
            "EC256" => KeyType::Ec256,
            "EC384" => KeyType::Ec384,
            "RSA2048" => KeyType::Rsa2048,
            "RSA4096" => KeyType::Rsa4096,
            "RSA8192" => KeyType::Rsa8192,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ec256 => "EC256",
            KeyType::Ec384 => "EC384",
            KeyType::Rsa2048 => "RSA2048",
            KeyType::Rsa4096 => "RSA4096",
            KeyType::Rsa8192 => "RSA8192",
        }
    }
}

/// How a resolver proves control of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `tlsChallenge`: TLS-ALPN-01 on the router's own entrypoint.
    TlsAlpn,
    /// `httpChallenge.entryPoint`: HTTP-01 served on that entrypoint.
    Http { entrypoint: String },
}

/// One `[certificatesResolvers.<name>.acme]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolverCfg {
    pub name: String,
    pub email: Option<String>,
    /// The ACME directory URL.
    pub ca_server: String,
    /// The `acme.json` file (shared by resolvers naming the same file).
    pub storage: PathBuf,
    pub key_type: KeyType,
    pub challenges: Vec<Challenge>,
    /// `certificatesDuration` (hours in the file): the lifetime the CA is
    /// expected to give; only used until a certificate says its own.
    pub certificates_duration: std::time::Duration,
    /// `caCertificates`: more roots for the ACME server's HTTPS endpoint.
    pub ca_certificates: Vec<ConfigPath>,
    /// `caSystemCertPool` (default true): also trust the system roots.
    pub ca_system_cert_pool: bool,
}

/// `tls.domains` entry: the certificate's first name and the others.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Domain {
    pub main: String,
    pub sans: Vec<String>,
}

impl Domain {
    /// Every name, main first, without repeats.
    pub fn names(&self) -> Vec<String> {
        let mut out = vec![self.main.clone()];
        for s in &self.sans {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        out
    }

    /// Same set of names (order aside).
    pub fn same_names(&self, other: &Domain) -> bool {
        let mut a = self.names();
        let mut b = other.names();
        a.sort();
        b.sort();
        a == b
    }
}

/// A certificate some router asks a resolver for.
#[derive(Debug, Clone, PartialEq)]
pub struct Want {
    pub resolver: ResolverId,
    pub domain: Domain,
    /// The routers asking (for messages).
    pub routers: Vec<String>,
}

/// What the configuration asks of the ACME client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub resolvers: Vec<ResolverCfg>,
    pub wants: Vec<Want>,
}

impl Settings {
    /// The resolver `id`; `None` for an id past these settings (one kept
    /// from another configuration).
    pub fn resolver(&self, id: ResolverId) -> Option<&ResolverCfg> {
        self.resolvers.get(id.index())
    }

    pub fn enumerate_resolvers(&self) -> impl Iterator<Item = (ResolverId, &ResolverCfg)> {
        self.resolvers
            .iter()
            .enumerate()
            .map(|(i, r)| (ResolverId::from_index(i), r))
    }
}

/// A DNS name ACME can validate without DNS-01: labels of letters, digits
/// and hyphens, at least two of them.
pub fn valid_domain(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
