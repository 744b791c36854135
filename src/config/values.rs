//! Reading typed values that several sections share: durations, paths,
//! certificate pairs, PROXY protocol versions, IP ranges.
//!
//! Each helper reads one `Node`, reports a problem at the value's position and
//! returns `None` on error, so the caller simply carries on. Pure: paths are
//! only joined, never opened.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use super::diag::{Diags, Sources, Sp};
use super::duration::{parse_duration, seconds};
use super::reader::{Node, StrOrInt, Tbl};
use crate::model;

/// The file being read: the directory its relative paths are relative to,
/// and the loaded files (to render where a path is named).
#[derive(Debug, Clone, Copy)]
pub struct FileCtx<'p> {
    pub base: &'p Path,
    pub sources: &'p Sources,
}

/// A duration as signed nanoseconds (Traefik: integers are seconds).
fn signed_nanos(n: &Node<'_>, d: &mut Diags) -> Option<Sp<i64>> {
    let v = n.str_or_int(d)?;
    let parsed = match &v.v {
        StrOrInt::Str(s) => parse_duration(s),
        StrOrInt::Int(i) => seconds(*i),
    };
    match parsed {
        Ok(ns) => Some(Sp::new(ns, v.at)),
        Err(e) => {
            d.error(v.at, format!("`{}`: {e}", n.path));
            None
        }
    }
}

fn from_nanos(ns: i64) -> Duration {
    Duration::from_nanos(ns.unsigned_abs())
}

/// A duration that must not be negative.
pub fn duration(n: &Node<'_>, d: &mut Diags) -> Option<Duration> {
    let ns = signed_nanos(n, d)?;
    if ns.v < 0 {
        d.error(ns.at, format!("`{}` must not be negative", n.path));
        return None;
    }
    Some(from_nanos(ns.v))
}

/// A duration that must be greater than zero (intervals, timeouts that cannot
/// mean "none").
pub fn positive_duration(n: &Node<'_>, d: &mut Diags) -> Option<Duration> {
    let ns = signed_nanos(n, d)?;
    if ns.v <= 0 {
        d.error(ns.at, format!("`{}` must be greater than zero", n.path));
        return None;
    }
    Some(from_nanos(ns.v))
}

/// A duration where a negative value means "never" (`None`), as Traefik's
/// `terminationDelay`.
pub fn duration_or_never(n: &Node<'_>, d: &mut Diags) -> Option<Option<Duration>> {
    let ns = signed_nanos(n, d)?;
    Some((ns.v >= 0).then(|| from_nanos(ns.v)))
}

/// `terminationDelay` as a duration: negative means never.
pub fn termination_delay(n: &Node<'_>, d: &mut Diags) -> Option<model::TerminationDelay> {
    duration_or_never(n, d).map(|v| {
        v.map_or(
            model::TerminationDelay::Never,
            model::TerminationDelay::After,
        )
    })
}

/// `terminationDelay` as the deprecated integer of milliseconds: negative
/// means never.
pub fn termination_delay_ms(n: &Node<'_>, d: &mut Diags) -> Option<model::TerminationDelay> {
    let ms = n.int(d)?;
    Some(match u64::try_from(ms.v) {
        Ok(ms) => model::TerminationDelay::After(Duration::from_millis(ms)),
        Err(_) => model::TerminationDelay::Never,
    })
}

/// Reads `key` from `t` with `read`, or gives `default`.
pub fn or_default<T>(
    t: &mut Tbl<'_>,
    key: &'static str,
    d: &mut Diags,
    default: T,
    read: impl FnOnce(&Node<'_>, &mut Diags) -> Option<T>,
) -> T {
    t.get(key, d).and_then(|n| read(&n, d)).unwrap_or(default)
}

/// Resolves a path relative to the file that names it.
pub fn path(ctx: FileCtx<'_>, s: &str) -> PathBuf {
    let p = Path::new(s);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        ctx.base.join(p)
    }
}

/// A file path value (a configuration file or directory: never PEM).
pub fn file_path(n: &Node<'_>, ctx: FileCtx<'_>, d: &mut Diags) -> Option<Sp<PathBuf>> {
    let s = n.str(d)?;
    if s.v.contains("-----BEGIN") {
        d.error(
            s.at,
            format!("`{}`: expected a path, found PEM content", n.path),
        );
        return None;
    }
    if s.v.trim().is_empty() {
        d.error(s.at, format!("`{}` must not be empty", n.path));
        return None;
    }
    Some(Sp::new(path(ctx, &s.v), s.at))
}

/// A certificate, key or CA value: a path, or (as Traefik's FileOrContent)
/// the PEM content itself. Traefik takes a value as a path when a file of
/// that name exists; here a value holding a PEM armour line is content and
/// anything else a path, so a mistyped path is reported as a missing file
/// rather than as bad PEM.
pub fn pem_value(n: &Node<'_>, ctx: FileCtx<'_>, d: &mut Diags) -> Option<model::ConfigPath> {
    let s = n.str(d)?;
    pem_source(ctx, s, &n.path, d)
}

fn pem_source(
    ctx: FileCtx<'_>,
    s: Sp<String>,
    what: &str,
    d: &mut Diags,
) -> Option<model::ConfigPath> {
    if s.v.contains("-----BEGIN") {
        return Some(model::ConfigPath {
            path: PathBuf::from(model::INLINE_PEM_LABEL),
            at: ctx.sources.locate(s.at),
            inline: Some(s.v),
        });
    }
    if s.v.trim().is_empty() {
        d.error(s.at, format!("`{what}` must not be empty"));
        return None;
    }
    Some(config_path(ctx, Sp::new(path(ctx, &s.v), s.at)))
}

/// A list of CA bundles (paths or PEM content), each with where it is named.
pub fn path_list(n: &Node<'_>, ctx: FileCtx<'_>, d: &mut Diags) -> Option<Vec<model::ConfigPath>> {
    let list = n.str_list(d)?;
    Some(
        list.into_iter()
            .filter_map(|s| pem_source(ctx, s, &n.path, d))
            .collect(),
    )
}

/// A path with its position rendered (`FILE:LINE:COL`), for the model.
pub fn config_path(ctx: FileCtx<'_>, p: Sp<PathBuf>) -> model::ConfigPath {
    model::ConfigPath {
        path: p.v,
        at: ctx.sources.locate(p.at),
        inline: None,
    }
}

/// `{ certFile, keyFile }`, both required, each a path or PEM content. `extra` lets the caller read more
/// keys of the same table (e.g. `stores`) before unknown keys are reported.
pub fn cert_pair(
    mut t: Tbl<'_>,
    ctx: FileCtx<'_>,
    d: &mut Diags,
    extra: impl FnOnce(&mut Tbl<'_>, &mut Diags),
) -> Option<Sp<model::CertPair>> {
    let cert = t.get("certFile", d).and_then(|n| pem_value(&n, ctx, d));
    let key = t.get("keyFile", d).and_then(|n| pem_value(&n, ctx, d));
    extra(&mut t, d);
    let at = t.at;
    let table = t.name();
    t.finish(d);
    match (cert, key) {
        (Some(c), Some(k)) => Some(Sp::new(
            model::CertPair {
                cert_file: c,
                key_file: k,
            },
            at,
        )),
        (c, k) => {
            let missing = match (c.is_none(), k.is_none()) {
                (true, true) => "`certFile` and `keyFile`",
                (true, false) => "`certFile`",
                _ => "`keyFile`",
            };
            d.error(at, format!("{table} needs {missing}"));
            None
        }
    }
}

/// `proxyProtocol.version`: 1 or 2.
pub fn proxy_version(n: &Node<'_>, d: &mut Diags) -> Option<model::ProxyVersion> {
    let v = n.int(d)?;
    match model::ProxyVersion::NUMBERS.iter().find(|e| e.0 == v.v) {
        Some(e) => Some(e.1),
        None => {
            d.error(v.at, format!("`{}` must be 1 or 2, not {}", n.path, v.v));
            None
        }
    }
}

/// A non-negative weight that fits `u32`.
pub fn weight(n: &Node<'_>, d: &mut Diags) -> Option<u32> {
    let v = n.int(d)?;
    if v.v < 0 {
        d.error(
            v.at,
            format!("`{}` must not be negative, got {}", n.path, v.v),
        );
        return None;
    }
    match u32::try_from(v.v) {
        Ok(w) => Some(w),
        Err(_) => {
            d.error(
                v.at,
                format!("`{}` is too large (at most {})", n.path, u32::MAX),
            );
            None
        }
    }
}

/// An IP range as Traefik writes them: `10.0.0.0/8`, `2001:db8::/32` or a single
/// address. Host bits are cleared and IPv4-mapped IPv6 ranges become IPv4,
/// because the engine compares canonical client addresses.
pub fn ip_range(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    let net = match t.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match t.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(format!(
                    "invalid IP range `{s}` (expected e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or an address)"
                ))
            }
        },
    };
    Ok(canonical_net(net.trunc()))
}

/// `::ffff:a.b.c.d/n` with `n >= 96` is the IPv4 range `a.b.c.d/(n-96)`.
pub fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            if v6.prefix_len() >= 96 {
                if let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96) {
                    return IpNet::V4(n.trunc());
                }
            }
        }
    }
    net
}

/// A list of IP ranges; every bad entry is reported at its own position.
pub fn ip_ranges(n: &Node<'_>, d: &mut Diags) -> Option<Vec<IpNet>> {
    let list = n.str_list(d)?;
    let mut out = Vec::with_capacity(list.len());
    for s in &list {
        match ip_range(&s.v) {
            Ok(net) => out.push(net),
            Err(e) => d.error(s.at, format!("`{}`: {e}", n.path)),
        }
    }
    Some(out)
}

/// A reference to another definition: Traefik allows a provider suffix, and
/// only `@file` names something sluicegate loaded.
pub fn reference(s: &Sp<String>, what: &str, d: &mut Diags) -> Option<Sp<String>> {
    match s.v.rsplit_once('@') {
        None => Some(s.clone()),
        Some((name, "file")) => Some(Sp::new(name.to_string(), s.at)),
        Some((_, provider)) => {
            d.error(
                s.at,
                format!(
                    "{what} `{}` names provider `{provider}`: only the file provider (`@file`) is supported",
                    s.v
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_ranges_are_canonical() {
        assert_eq!(ip_range("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            ip_range("192.168.1.7").unwrap().to_string(),
            "192.168.1.7/32"
        );
        assert_eq!(
            ip_range("::ffff:10.0.0.0/104").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            ip_range("::ffff:10.1.2.3").unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            ip_range("2001:db8::1/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        // A range wider than the mapped block stays IPv6.
        assert_eq!(ip_range("::ffff:0.0.0.0/80").unwrap().to_string(), "::/80");
        assert!(ip_range("10.0.0.0/33").is_err());
        assert!(ip_range("ten").is_err());
    }
}
