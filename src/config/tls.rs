//! Traefik's dynamic `[tls]` section: certificates, the default store and TLS
//! options, checked against what rustls can do.
//!
//! Certificate and key files are only resolved relative to the file naming
//! them; whether they exist and parse is the TLS code's business (it reloads
//! them). Pure: no IO.

use super::diag::{Diags, Sp};
use super::file::{FileModel, Named};
use super::reader::{Node, Tbl};
use super::values::{self, FileCtx};
use crate::model::{self, CipherSuite, ClientAuth, Curve, TlsVersion};

/// The only TLS store Traefik uses.
pub const DEFAULT_STORE: &str = "default";

/// `[tls]`.
pub fn read_tls(mut t: Tbl<'_>, ctx: FileCtx<'_>, m: &mut FileModel, d: &mut Diags) {
    if let Some(n) = t.get("certificates", d) {
        for ct in n.tables(d) {
            let mut in_default = true;
            let pair = values::cert_pair(ct, ctx, d, |ct, d| {
                if let Some(stores) = ct.str_list("stores", d) {
                    // Traefik uses the default store only; certificates put
                    // elsewhere are never served.
                    in_default = stores.is_empty() || stores.iter().any(|s| s.v == DEFAULT_STORE);
                    if !in_default {
                        if let Some(first) = stores.first() {
                            d.warn(
                                first.at,
                                format!(
                                    "certificate ignored: it is not in the `{DEFAULT_STORE}` store, the only one Traefik uses"
                                ),
                            );
                        }
                    }
                }
            });
            if let Some(pair) = pair.filter(|_| in_default) {
                m.certificates.push(pair);
            }
        }
    }
    if let Some(stores) = t.table("stores", d) {
        for (name, node) in stores.entries() {
            let Some(mut st) = node.table(d) else {
                continue;
            };
            if name.v != DEFAULT_STORE {
                d.warn(
                    name.at,
                    format!(
                        "TLS store `{}` is ignored: Traefik uses the `{DEFAULT_STORE}` store only",
                        name.v
                    ),
                );
            }
            let cert = st
                .table("defaultCertificate", d)
                .and_then(|ct| values::cert_pair(ct, ctx, d, |_, _| {}));
            st.unsupported(
                "defaultGeneratedCert",
                "a default certificate from a certResolver is not supported; give a defaultCertificate instead",
                d,
            );
            st.finish(d);
            if name.v != DEFAULT_STORE {
                continue;
            }
            if let Some(cert) = cert {
                if m.default_certificate.is_some() {
                    d.error(
                        cert.at,
                        "the default store's defaultCertificate is defined more than once",
                    );
                } else {
                    m.default_certificate = Some(cert);
                }
            }
        }
    }
    if let Some(opts) = t.table("options", d) {
        for (name, node) in opts.entries() {
            if let Some(ot) = node.table(d) {
                let v = options(&name.v, ot, d, "caFiles", |ca, d| {
                    ca.get("caFiles", d)
                        .and_then(|n| values::path_list(&n, ctx, d))
                        .unwrap_or_default()
                });
                m.tls_options.push(Named { name, v });
            }
        }
    }
    t.finish(d);
}

/// One TLS options table; `read_cas` reads the client CAs of its
/// `clientAuth` (`caFiles` here, Secrets named by `ca_key` for Kubernetes'
/// TLSOption).
pub(super) fn options(
    name: &str,
    mut t: Tbl<'_>,
    d: &mut Diags,
    ca_key: &str,
    read_cas: impl FnOnce(&mut Tbl<'_>, &mut Diags) -> Vec<model::ConfigPath>,
) -> model::TlsOptions {
    let min = t.get("minVersion", d).and_then(|n| version(&n, d));
    let max = t.get("maxVersion", d).and_then(|n| version(&n, d));
    if let (Some(lo), Some(hi)) = (&min, &max) {
        if lo.v > hi.v {
            d.error(
                hi.at,
                format!(
                    "`{}.maxVersion` {} is below minVersion {}",
                    t.path,
                    hi.v.name(),
                    lo.v.name()
                ),
            );
        }
    }
    let cipher_suites = t
        .get("cipherSuites", d)
        .map(|n| names(&n, d, cipher_suite))
        .unwrap_or_default();
    let curve_preferences = t
        .get("curvePreferences", d)
        .map(|n| names(&n, d, curve))
        .unwrap_or_default();
    let sni_strict = t.bool("sniStrict", d).is_some_and(|b| b.v);
    let alpn_protocols = t
        .get("alpnProtocols", d)
        .map(|n| names(&n, d, alpn))
        .unwrap_or_default();
    let mut client_ca_files = Vec::new();
    let mut client_auth_type = None;
    if let Some(mut ca) = t.table("clientAuth", d) {
        client_ca_files = read_cas(&mut ca, d);
        let kind = ca.str("clientAuthType", d);
        if let Some(k) = &kind {
            match ClientAuth::NAMES.iter().find(|e| e.0 == k.v) {
                Some(e) => client_auth_type = Some(e.1),
                None => {
                    let names: Vec<&str> = ClientAuth::NAMES.iter().map(|e| e.0).collect();
                    d.error(
                        k.at,
                        format!(
                            "`{}.clientAuthType` {:?} is not one of {}",
                            ca.path,
                            k.v,
                            names.join(", ")
                        ),
                    );
                }
            }
        } else if !client_ca_files.is_empty() {
            // Traefik: CA files without a type mean "require and verify".
            client_auth_type = Some(ClientAuth::RequireAndVerifyClientCert);
        }
        let verifies = client_auth_type.is_some_and(ClientAuth::verifies);
        if verifies && client_ca_files.is_empty() {
            d.error(
                kind.as_ref().map_or(ca.at, |k| k.at),
                format!(
                    "`{}.clientAuthType` verifies client certificates but no `{ca_key}` are given",
                    ca.path
                ),
            );
        }
        ca.finish(d);
    }
    t.ignored(
        "preferServerCipherSuites",
        "deprecated in Traefik; rustls always uses the server's order",
        d,
    );
    let disable_session_tickets = t.bool("disableSessionTickets", d).is_some_and(|b| b.v);
    t.finish(d);
    model::TlsOptions {
        name: name.to_string(),
        min_version: min.map(|v| v.v),
        max_version: max.map(|v| v.v),
        cipher_suites,
        curve_preferences,
        alpn_protocols,
        sni_strict,
        client_ca_files,
        client_auth_type,
        disable_session_tickets,
    }
}

fn version(n: &Node<'_>, d: &mut Diags) -> Option<Sp<TlsVersion>> {
    let s = n.str(d)?;
    if let Some(e) = TlsVersion::NAMES.iter().find(|e| e.0 == s.v) {
        return Some(Sp::new(e.1, s.at));
    }
    match s.v.as_str() {
        "VersionTLS10" | "VersionTLS11" => {
            d.error(
                s.at,
                format!(
                    "`{}` {}: rustls supports TLS 1.2 and 1.3 only (VersionTLS12, VersionTLS13)",
                    n.path, s.v
                ),
            );
            None
        }
        other => {
            d.error(
                s.at,
                format!(
                    "`{}` must be \"VersionTLS12\" or \"VersionTLS13\", not {other:?}",
                    n.path
                ),
            );
            None
        }
    }
}

/// Checks every name of a list with `check` (which returns the canonical
/// spelling or why it is refused), reporting each bad one at its position.
fn names<T>(n: &Node<'_>, d: &mut Diags, check: fn(&str) -> Result<T, String>) -> Vec<T> {
    let mut out = Vec::new();
    for s in n.str_list(d).unwrap_or_default() {
        match check(&s.v) {
            Ok(v) => out.push(v),
            Err(e) => d.error(s.at, format!("`{}`: {e}", n.path)),
        }
    }
    out
}

fn cipher_suite(s: &str) -> Result<CipherSuite, String> {
    if let Some(c) = CipherSuite::by_name(s) {
        return Ok(c);
    }
    if s.contains("_CBC_") {
        return Err(format!(
            "{s}: rustls cannot do CBC cipher suites (use an AES-GCM or CHACHA20 suite)"
        ));
    }
    if s.contains("_RC4_") {
        return Err(format!(
            "{s}: RC4 is broken and rustls does not implement it"
        ));
    }
    if s.starts_with("TLS_RSA_WITH_") {
        return Err(format!(
            "{s}: rustls supports only ECDHE key exchange (forward secrecy), not static RSA"
        ));
    }
    let known: Vec<&str> = CipherSuite::NAMES.iter().map(|e| e.0).collect();
    Err(format!(
        "unknown cipher suite {s:?} (supported: {})",
        known.join(", ")
    ))
}

fn curve(s: &str) -> Result<Curve, String> {
    if let Some(c) = Curve::by_name(s) {
        return Ok(c);
    }
    if s == "CurveP521" || s == "secp521r1" {
        return Err(format!("{s}: rustls does not implement P-521"));
    }
    let known: Vec<&str> = Curve::NAMES.iter().map(|e| e.0).collect();
    Err(format!(
        "unknown curve {s:?} (supported: {})",
        known.join(", ")
    ))
}

/// RFC 7301: a protocol name is 1 to 255 bytes.
const MAX_ALPN_LEN: usize = 255;

fn alpn(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_ALPN_LEN {
        return Err(format!(
            "ALPN protocol names are 1 to {MAX_ALPN_LEN} bytes, got {}",
            s.len()
        ));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_suites_are_checked_against_rustls() {
        assert_eq!(
            cipher_suite("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305").map(CipherSuite::name),
            Ok("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256")
        );
        assert!(cipher_suite("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA")
            .unwrap_err()
            .contains("rustls cannot do CBC"));
        assert!(cipher_suite("TLS_RSA_WITH_AES_128_GCM_SHA256")
            .unwrap_err()
            .contains("ECDHE"));
        assert!(cipher_suite("TLS_FOO").unwrap_err().contains("unknown"));
    }

    #[test]
    fn curves_are_canonical() {
        assert_eq!(curve("secp256r1"), Ok(Curve::P256));
        assert_eq!(curve("X25519"), Ok(Curve::X25519));
        assert!(curve("CurveP521").unwrap_err().contains("P-521"));
    }
}
