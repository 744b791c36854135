//! Entrypoint and server addresses as Traefik writes them, and whether two
//! listen addresses would take each other's connections.
//!
//! Parsing is pure. Host names are looked up through the `Resolve` function
//! the caller passes (the loader passes the system resolver; tests pass a
//! table), so this module never does IO itself.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Looks a host name up: `(host, port)` → addresses, or why it failed.
pub type Resolve<'a> = &'a dyn Fn(&str, u16) -> Result<Vec<SocketAddr>, String>;

/// The system resolver (`getaddrinfo` through std), used at load time only.
pub fn system_resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .map(Iterator::collect)
        .map_err(|e| e.to_string())
}

/// A parsed entrypoint address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub v6only: bool,
}

/// `host:port`, `[v6]:port` or `:port` (host is `None`).
fn split_host_port(s: &str) -> Result<(Option<&str>, &str), String> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{s}`: missing `]` after the IPv6 address"))?;
        // An IPv6 zone (`fe80::1%eth0`) is refused rather than dropped: the
        // system resolver accepts it, but the address kept was the bare IP,
        // so a link-local listener or server silently lost its interface.
        if let Some((_, zone)) = host.split_once('%') {
            return Err(format!(
                "`{s}`: IPv6 zones (`%{zone}`) are not supported; use an address that needs no interface (a global or unique-local one)"
            ));
        }
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| format!("`{s}`: missing `:port` after `]`"))?;
        return Ok((Some(host), port));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}`: missing port (expected host:port, [v6]:port or :port)"))?;
    if host.contains(':') {
        return Err(format!(
            "`{s}`: an IPv6 address needs brackets, e.g. [::1]:5432"
        ));
    }
    Ok(((!host.is_empty()).then_some(host), port))
}

fn parse_port(s: &str, whole: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .map_err(|_| format!("`{whole}`: invalid port `{s}` (0 to 65535)"))
}

/// Parses an entrypoint address. `":5432"` listens on every address of both
/// families (`[::]:5432`, v6only off); port 0 asks the kernel for a port.
pub fn parse_listen(text: &str, v6only: bool, resolve: Resolve<'_>) -> Result<Listen, String> {
    let mut s = text.trim();
    if let Some((addr, proto)) = s.rsplit_once('/') {
        match proto.to_ascii_lowercase().as_str() {
            "tcp" => s = addr,
            "udp" => {
                return Err(format!(
                    "`{text}`: UDP entrypoints are not supported (sluicegate proxies TCP only)"
                ))
            }
            _ => return Err(format!("`{text}`: unknown protocol `/{proto}` (only /tcp)")),
        }
    }
    let (host, port) = split_host_port(s)?;
    let port = parse_port(port, text)?;
    let ip = match host {
        None => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        Some(h) => match h.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => first(h, port, resolve, text)?.ip(),
        },
    };
    if v6only && ip.is_ipv4() {
        return Err(format!("`{text}`: ipv6Only = true needs an IPv6 address"));
    }
    Ok(Listen {
        addr: SocketAddr::new(ip, port),
        v6only,
    })
}

/// Parses a server address: a host (IP or name, resolved now) and a port.
pub fn parse_server(text: &str, resolve: Resolve<'_>) -> Result<SocketAddr, String> {
    let s = text.trim();
    let (host, port) = split_host_port(s)?;
    let host = host.ok_or_else(|| format!("`{text}`: a server address needs a host"))?;
    let port = parse_port(port, text)?;
    if port == 0 {
        return Err(format!("`{text}`: a server port cannot be 0"));
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, port)),
        Err(_) => first(host, port, resolve, text),
    }
}

fn first(host: &str, port: u16, resolve: Resolve<'_>, text: &str) -> Result<SocketAddr, String> {
    match resolve(host, port) {
        Ok(addrs) => addrs
            .into_iter()
            .next()
            .ok_or_else(|| format!("`{text}`: host `{host}` has no address")),
        Err(e) => Err(format!("`{text}`: cannot resolve `{host}`: {e}")),
    }
}

/// Whether binding both would make them share connections (or fail): same
/// port (not 0) and the same address, or an unspecified address covering the
/// other's family. `SO_REUSEPORT` would let both bind and silently split
/// traffic, hence the check.
pub fn overlaps(a: Listen, b: Listen) -> bool {
    if a.addr.port() == 0 || a.addr.port() != b.addr.port() {
        return false;
    }
    let (ia, ib) = (canonical(a.addr.ip()), canonical(b.addr.ip()));
    ia == ib || covers(a, ib) || covers(b, ia)
}

/// Whether listener `l`, if unspecified, receives connections for `ip`.
fn covers(l: Listen, ip: IpAddr) -> bool {
    match l.addr.ip() {
        IpAddr::V4(v4) => v4.is_unspecified() && ip.is_ipv4(),
        IpAddr::V6(v6) => v6.is_unspecified() && (ip.is_ipv6() || !l.v6only),
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        match host {
            "db.internal" => Ok(vec![SocketAddr::from(([10, 0, 0, 5], port))]),
            _ => Err("no such host".to_string()),
        }
    }

    fn listen(s: &str) -> Listen {
        parse_listen(s, false, &table).expect(s)
    }

    #[test]
    fn entrypoint_addresses() {
        let any = listen(":5432");
        assert_eq!(any.addr.to_string(), "[::]:5432");
        assert!(!any.v6only);
        assert_eq!(listen("0.0.0.0:5432").addr.to_string(), "0.0.0.0:5432");
        assert_eq!(listen("127.0.0.1:0").addr.port(), 0);
        assert_eq!(listen("[::1]:5432").addr.to_string(), "[::1]:5432");
        assert_eq!(listen(":5432/tcp").addr.port(), 5432);
        assert_eq!(listen("db.internal:1").addr.to_string(), "10.0.0.5:1");
        assert!(parse_listen(":53/udp", false, &table)
            .unwrap_err()
            .contains("UDP"));
        assert!(parse_listen("5432", false, &table).is_err());
        assert!(parse_listen("::1:5432", false, &table)
            .unwrap_err()
            .contains("brackets"));
        assert!(parse_listen(":70000", false, &table).is_err());
        assert!(parse_listen("nowhere:1", false, &table)
            .unwrap_err()
            .contains("cannot resolve"));
        assert!(parse_listen("0.0.0.0:1", true, &table).is_err());
        // A zone is refused, not dropped (the system resolver accepts it and
        // the interface was lost).
        for zoned in ["[fe80::1%eth0]:5432", "[fe80::1%2]:0", "[::1%lo]:1"] {
            let e = parse_listen(zoned, false, &table).unwrap_err();
            assert!(e.contains("IPv6 zones"), "{e}");
            let e = parse_server(zoned, &table).unwrap_err();
            assert!(e.contains("IPv6 zones"), "{e}");
        }
    }

    #[test]
    fn server_addresses() {
        assert_eq!(
            parse_server("10.0.0.6:5432", &table).unwrap().to_string(),
            "10.0.0.6:5432"
        );
        assert_eq!(
            parse_server("[::1]:6379", &table).unwrap().to_string(),
            "[::1]:6379"
        );
        assert_eq!(
            parse_server("db.internal:5432", &table)
                .unwrap()
                .to_string(),
            "10.0.0.5:5432"
        );
        assert!(parse_server(":5432", &table).is_err());
        assert!(parse_server("10.0.0.6", &table).is_err());
        assert!(parse_server("10.0.0.6:0", &table).is_err());
    }

    #[test]
    fn overlapping_listeners() {
        assert!(overlaps(listen(":5432"), listen("127.0.0.1:5432")));
        assert!(overlaps(listen("0.0.0.0:5432"), listen("127.0.0.1:5432")));
        assert!(overlaps(listen("127.0.0.1:5432"), listen("127.0.0.1:5432")));
        assert!(!overlaps(
            listen("127.0.0.1:5432"),
            listen("127.0.0.2:5432")
        ));
        assert!(!overlaps(
            listen("127.0.0.1:5432"),
            listen("127.0.0.1:5433")
        ));
        assert!(!overlaps(listen("127.0.0.1:0"), listen("127.0.0.1:0")));
        let v6only = parse_listen("[::]:5432", true, &table).unwrap();
        assert!(!overlaps(v6only, listen("0.0.0.0:5432")));
        assert!(overlaps(v6only, listen("[::1]:5432")));
    }
}
