//! `[certificatesResolvers.<name>.acme]` (static configuration) and the
//! `certResolver` / `domains` keys of a TCP router's `tls` table, read as
//! Traefik reads them. Pure: no IO (the storage file is opened by the ACME
//! thread, not here).

use std::time::Duration;

use super::diag::{Diags, Sp};
use super::file::{FileModel, Named, ResolverF};
use super::reader::{Node, Tbl};
use super::values::{self, FileCtx};
use crate::model::acme::{Challenge, Domain, KeyType, ResolverCfg};

/// Traefik's default `caServer`: Let's Encrypt's production directory.
pub const DEFAULT_CA_SERVER: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Traefik's default `storage`.
pub const DEFAULT_STORAGE: &str = "acme.json";
/// Traefik's default `certificatesDuration`, in hours (90 days).
pub const DEFAULT_CERTIFICATES_DURATION_HOURS: i64 = 2160;

/// `[certificatesResolvers]`: one entry per resolver.
pub fn read_resolvers(t: Tbl<'_>, ctx: FileCtx<'_>, m: &mut FileModel, d: &mut Diags) {
    for (name, node) in t.entries() {
        let Some(mut rt) = node.table(d) else {
            continue;
        };
        let acme = rt.table("acme", d);
        rt.unsupported(
            "tailscale",
            "only ACME resolvers are supported ([certificatesResolvers.<name>.acme])",
            d,
        );
        rt.finish(d);
        let Some(acme) = acme else {
            d.error(
                name.at,
                format!(
                    "certificate resolver `{}` needs an [certificatesResolvers.{}.acme] table",
                    name.v, name.v
                ),
            );
            continue;
        };
        let v = resolver(&name, acme, ctx, d);
        m.acme_resolvers.push(Named { name, v });
    }
}

/// A resolver whose keys are wrong is still returned (its errors are
/// reported), so routers naming it get no second, misleading error.
fn resolver(name: &Sp<String>, mut t: Tbl<'_>, ctx: FileCtx<'_>, d: &mut Diags) -> ResolverF {
    let email = t.str("email", d).map(|s| s.v).filter(|s| !s.is_empty());
    let ca_server = match t.str("caServer", d) {
        Some(s) if s.v.starts_with("https://") || s.v.starts_with("http://") => s.v,
        Some(s) => {
            d.error(
                s.at,
                format!(
                    "`{}.caServer` must be an https:// URL of an ACME directory, not {:?}",
                    t.path, s.v
                ),
            );
            s.v
        }
        None => DEFAULT_CA_SERVER.to_string(),
    };
    let storage = t
        .get("storage", d)
        .and_then(|n| values::file_path(&n, ctx, d))
        .map_or_else(|| values::path(ctx, DEFAULT_STORAGE), |p| p.v);
    let key_type = match t.str("keyType", d).filter(|s| !s.v.is_empty()) {
        Some(s) => match KeyType::parse(&s.v) {
            Some(k) => k,
            None => {
                d.error(
                    s.at,
                    format!(
                        "`{}.keyType` must be one of EC256, EC384, RSA2048, RSA4096, RSA8192, not {:?}",
                        t.path, s.v
                    ),
                );
                KeyType::Rsa4096
            }
        },
        None => KeyType::Rsa4096,
    };
    let hours = match t.int("certificatesDuration", d) {
        Some(h) if h.v > 0 => h.v,
        Some(h) => {
            d.error(
                h.at,
                format!(
                    "`{}.certificatesDuration` is in hours and must be positive",
                    t.path
                ),
            );
            DEFAULT_CERTIFICATES_DURATION_HOURS
        }
        None => DEFAULT_CERTIFICATES_DURATION_HOURS,
    };
    t.ignored(
        "preferredChain",
        "the CA's default chain is served (alternate chains are not fetched)",
        d,
    );
    let ca_certificates = t
        .get("caCertificates", d)
        .and_then(|n| values::path_list(&n, ctx, d))
        .unwrap_or_default();
    let ca_system_cert_pool = t.bool("caSystemCertPool", d).is_none_or(|b| b.v);
    let mut challenges = Vec::new();
    let mut http_entrypoint_at = None;
    if t.section("tlsChallenge", d)
        .map(|tt| tt.finish(d))
        .is_some()
    {
        challenges.push(Challenge::TlsAlpn);
    }
    if let Some(mut ht) = t.section("httpChallenge", d) {
        match ht.str("entryPoint", d) {
            Some(ep) => {
                http_entrypoint_at = Some(ep.at);
                challenges.push(Challenge::Http { entrypoint: ep.v });
            }
            None => d.error(ht.at, format!("`{}` needs an `entryPoint`", ht.path)),
        }
        ht.ignored(
            "delay",
            "the challenge is answered as soon as the order is placed",
            d,
        );
        ht.finish(d);
    }
    if let Some(n) = t.get("dnsChallenge", d) {
        d.error(
            n.key_at,
            format!(
                "`{}` is not supported: sluicegate has no DNS provider; use tlsChallenge or httpChallenge",
                n.path
            ),
        );
    }
    t.unsupported("eab", "external account binding is not supported yet", d);
    for key in ["clientTimeout", "clientResponseHeaderTimeout"] {
        t.ignored(key, "ACME requests use fixed timeouts (30s)", d);
    }
    t.ignored(
        "caServerName",
        "the ACME server's certificate is verified for the caServer host",
        d,
    );
    t.ignored("profile", "ACME profiles are not requested", d);
    t.ignored("emailAddresses", "`email` is the account's contact", d);
    t.ignored(
        "disableCommonName",
        "the CSR names the domains as subject alternative names",
        d,
    );
    let at = t.at;
    t.finish(d);
    if challenges.is_empty() {
        d.error(
            at,
            format!(
                "certificate resolver `{}` has no challenge: add tlsChallenge or httpChallenge",
                name.v
            ),
        );
    }
    let cfg = ResolverCfg {
        name: name.v.clone(),
        email,
        ca_server,
        storage,
        key_type,
        challenges,
        certificates_duration: Duration::from_secs(hours.unsigned_abs().saturating_mul(3600)),
        ca_certificates,
        ca_system_cert_pool,
    };
    ResolverF {
        cfg,
        http_entrypoint_at,
    }
}

/// A router's `tls.domains`: `[{ main = "...", sans = ["..."] }]`.
pub fn read_domains(n: &Node<'_>, d: &mut Diags) -> Vec<Sp<Domain>> {
    let mut out = Vec::new();
    for mut dt in n.tables(d) {
        let main = dt.str("main", d);
        let sans = dt.str_list("sans", d).unwrap_or_default();
        let at = dt.at;
        let path = dt.path.clone();
        dt.finish(d);
        let Some(main) = main else {
            d.error(at, format!("`{path}` needs a `main` domain"));
            continue;
        };
        let mut ok = true;
        for name in std::iter::once(&main).chain(sans.iter()) {
            if name.v.starts_with("*.") {
                d.error(
                    name.at,
                    "a wildcard domain needs the DNS-01 challenge, which sluicegate does not support",
                );
                ok = false;
            } else if !crate::model::acme::valid_domain(&name.v) {
                d.error(name.at, format!("{:?} is not a domain name", name.v));
                ok = false;
            }
        }
        if ok {
            out.push(Sp::new(
                Domain {
                    main: main.v.to_ascii_lowercase(),
                    sans: sans.into_iter().map(|s| s.v.to_ascii_lowercase()).collect(),
                },
                at,
            ));
        }
    }
    out
}

/// The ACME part of a configuration: the resolvers, and one wanted
/// certificate per router domain set (`tls.domains`, else the names of the
/// router's HostSNI rule, as Traefik does), checked against the resolvers
/// and entrypoints.
pub fn settings(
    m: &FileModel,
    ep_index: &std::collections::HashMap<String, usize>,
    admin_entrypoint: Option<&str>,
    d: &mut Diags,
) -> crate::model::acme::Settings {
    let mut out = crate::model::acme::Settings::default();
    let mut index = std::collections::HashMap::new();
    for r in &m.acme_resolvers {
        if index.contains_key(&r.name.v) {
            d.error(
                r.name.at,
                format!("certificate resolver `{}` is defined twice", r.name.v),
            );
            continue;
        }
        let at = &r.v.http_entrypoint_at.unwrap_or(r.name.at);
        for c in &r.v.cfg.challenges {
            if let Challenge::Http { entrypoint } = c {
                if admin_entrypoint == Some(entrypoint.as_str()) {
                    d.error(
                        *at,
                        format!(
                            "entrypoint `{entrypoint}` serves the admin endpoints and cannot answer the HTTP-01 challenge of resolver `{}`",
                            r.name.v
                        ),
                    );
                } else if !ep_index.contains_key(entrypoint) {
                    d.error(
                        *at,
                        format!(
                            "unknown entrypoint `{entrypoint}` for the HTTP-01 challenge of resolver `{}`",
                            r.name.v
                        ),
                    );
                }
            }
        }
        if r.v.cfg.key_type == KeyType::Rsa8192 {
            d.warn(
                r.name.at,
                format!(
                    "resolver `{}`: keyType RSA8192 is not supported (RSA keys are generated up to 4096 bits); RSA4096 is used",
                    r.name.v
                ),
            );
        }
        index.insert(r.name.v.clone(), out.resolvers.len());
        let mut v = r.v.cfg.clone();
        if v.key_type == KeyType::Rsa8192 {
            v.key_type = KeyType::Rsa4096;
        }
        out.resolvers.push(v);
    }
    for r in &m.routers {
        let Some(t) = &r.tls else { continue };
        let Some(name) = &t.cert_resolver else {
            if let Some(dm) = t.domains.first() {
                d.warn(
                    dm.at,
                    format!(
                        "router `{}`: `tls.domains` is ignored without a `certResolver`",
                        r.name.v
                    ),
                );
            }
            continue;
        };
        if t.passthrough {
            d.warn(
                name.at,
                format!(
                    "router `{}` passes TLS through: its certResolver is not used",
                    r.name.v
                ),
            );
            continue;
        }
        let Some(ri) = index
            .get(&name.v)
            .map(|&i| crate::model::ResolverId::from_index(i))
        else {
            let known: Vec<&str> = index.keys().map(String::as_str).collect();
            d.error(
                name.at,
                if known.is_empty() {
                    format!(
                        "unknown certificate resolver `{}`: no [certificatesResolvers] is defined in the main file",
                        name.v
                    )
                } else {
                    format!(
                        "unknown certificate resolver `{}` (defined: {})",
                        name.v,
                        known.join(", ")
                    )
                },
            );
            continue;
        };
        let mut domains: Vec<Domain> = t.domains.iter().map(|s| s.v.clone()).collect();
        if domains.is_empty() {
            let rule_names: Vec<String> = r
                .rule
                .as_ref()
                .and_then(|rule| rule.v.1.as_ref())
                .map(|rule| {
                    rule.host_snis()
                        .into_iter()
                        .map(str::to_ascii_lowercase)
                        .filter(|n| crate::model::acme::valid_domain(n))
                        .collect()
                })
                .unwrap_or_default();
            // Traefik asks for one certificate per HostSNI name.
            domains = rule_names
                .into_iter()
                .map(|main| Domain {
                    main,
                    sans: Vec::new(),
                })
                .collect();
            if domains.is_empty() {
                d.warn(
                    name.at,
                    format!(
                        "router `{}` has a certResolver but no domain to obtain: its rule names no host (HostSNI) and it has no `tls.domains`",
                        r.name.v
                    ),
                );
            }
        }
        for dom in domains {
            match out
                .wants
                .iter_mut()
                .find(|w| w.resolver == ri && w.domain.same_names(&dom))
            {
                Some(w) => w.routers.push(r.name.v.clone()),
                None => out.wants.push(crate::model::acme::Want {
                    resolver: ri,
                    domain: dom,
                    routers: vec![r.name.v.clone()],
                }),
            }
        }
    }
    out
}
