//! Traefik v3 TCP rule language (STUB: being written; API is fixed).

use std::net::IpAddr;

/// What a rule is matched against: known after accept (client IP) and, for
/// TLS connections, after the ClientHello was peeked.
#[derive(Debug, Clone, Copy)]
pub struct MatchCtx<'a> {
    /// Normalised SNI (lowercase, no trailing dot); `None` for non-TLS or no SNI.
    pub sni: Option<&'a str>,
    /// ALPN protocols offered by the client (empty for non-TLS).
    pub alpn: &'a [&'a [u8]],
    /// Canonical client address (IPv4-mapped IPv6 already converted).
    pub client_ip: IpAddr,
    /// Whether the connection is TLS (a ClientHello was seen).
    pub tls: bool,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    _private: (),
}

/// A rule syntax or validation error. `offset` is a byte offset into the rule
/// text, so the config loader can point at the exact column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub offset: usize,
    pub message: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

pub fn parse(_src: &str) -> Result<Rule, RuleError> {
    Ok(Rule { _private: () })
}

impl Rule {
    pub fn matches(&self, _ctx: &MatchCtx<'_>) -> bool {
        true
    }
    /// True when the rule can be decided without peeking at client bytes (no
    /// HostSNI other than `*`, no HostSNIRegexp, no ALPN).
    pub fn is_catch_all(&self) -> bool {
        true
    }
    /// True when the rule names a host (non-`*` HostSNI or HostSNIRegexp) or
    /// ALPN, which is only possible on a router with `tls`.
    pub fn needs_tls(&self) -> bool {
        false
    }
}
