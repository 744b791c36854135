//! Traefik v3 TCP rule language: parses rules such as
//! ``HostSNI(`a.example.com`) && !ClientIP(`10.0.0.0/8`)`` into a [`Rule`]
//! and matches them against what is known about a connection ([`MatchCtx`]).
//!
//! Pure code: this module never does IO. It must not panic on any input, since
//! rule text comes straight from user config (and from the fuzzer).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use regex::Regex;

/// Nesting limit for `(` and `!`: the parser, matcher, `Display` and `Drop`
/// all recurse, so unbounded nesting would be a stack overflow waiting to happen.
const MAX_DEPTH: usize = 64;

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
    /// The PostgreSQL StartupMessage, on an entrypoint with PostgreSQL
    /// routers once it was read (plain TCP, or inside terminated TLS).
    pub pg: Option<&'a crate::wire::postgres::Startup>,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    expr: Expr,
    /// Written in Traefik's v2 syntax (`Display` prints the v3 equivalent).
    v2: bool,
}

/// Which of Traefik's two rule languages a rule is written in
/// (`ruleSyntax` on a router, `core.defaultRuleSyntax`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Syntax {
    /// Traefik v2: a matcher takes several arguments (any may match);
    /// `HostSNIRegexp` takes gorilla/mux templates (`{sub:[a-z]+}.a.com`),
    /// anchored and case-insensitive.
    V2,
    /// Traefik v3: one argument per matcher; `HostSNIRegexp` takes a Go
    /// regular expression as is.
    #[default]
    V3,
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

impl std::error::Error for RuleError {}

fn err(offset: usize, message: impl Into<String>) -> RuleError {
    RuleError {
        offset,
        message: message.into(),
    }
}

/// `&&` and `||` chains are flat vectors rather than binary trees, so a long
/// `a || b || c ...` rule does not deepen the recursion.
#[derive(Debug, Clone)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Matcher(Matcher),
}

#[derive(Debug, Clone)]
enum Matcher {
    /// `HostSNI(`*`)`: every connection, TLS or not, with or without SNI.
    AnySni,
    /// A name, lowercase without trailing dot (the form `MatchCtx::sni` has).
    Sni(String),
    /// `*.example.com`, stored whole so `host_snis` can hand it out as is.
    WildcardSni(String),
    SniRegexp(Regex),
    /// Canonical: IPv4-mapped networks are IPv4, host bits cleared.
    ClientIp(IpNet),
    Alpn(String),
    /// Extension `PgDatabase(`glob`)`: the database of the StartupMessage
    /// (the user name when none is sent, as PostgreSQL reads it).
    PgDatabase(String),
    /// Extension `PgUser(`glob`)`.
    PgUser(String),
    /// Extension `PgParam(`name`, `glob`)`: any startup parameter.
    PgParam(String, String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Name {
    HostSni,
    HostSniRegexp,
    ClientIp,
    Alpn,
    PgDatabase,
    PgUser,
    PgParam,
}

const NAMES: [(&str, Name); 7] = [
    ("HostSNI", Name::HostSni),
    ("HostSNIRegexp", Name::HostSniRegexp),
    ("ClientIP", Name::ClientIp),
    ("ALPN", Name::Alpn),
    ("PgDatabase", Name::PgDatabase),
    ("PgUser", Name::PgUser),
    ("PgParam", Name::PgParam),
];

/// `*` matches any run of bytes (also none); every other byte itself.
/// Iterative with one backtrack point, so no pattern is slow.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// Parses and validates a rule in Traefik v3 syntax.
pub fn parse(src: &str) -> Result<Rule, RuleError> {
    parse_with(src, Syntax::V3)
}

/// Parses and validates a rule in the given syntax. Both compile to the
/// same matchers; a v2 rule's `Display` is its v3 equivalent.
pub fn parse_with(src: &str, syntax: Syntax) -> Result<Rule, RuleError> {
    let v2 = syntax == Syntax::V2;
    let mut p = Parser {
        src,
        pos: 0,
        peeked: None,
        depth: 0,
        v2,
    };
    if matches!(p.peek()?.kind, Kind::End) {
        return Err(err(0, "empty rule"));
    }
    let expr = p.chain(true)?;
    let t = p.next()?;
    match t.kind {
        Kind::End => Ok(Rule { expr, v2 }),
        Kind::RParen => fail(t.at, "unexpected `)` without a matching `(`"),
        _ => Err(p.expected(&t, "`&&`, `||` or end of rule")),
    }
}

impl Rule {
    /// Whether the rule was written in v2 syntax.
    pub fn is_v2(&self) -> bool {
        self.v2
    }

    pub fn matches(&self, ctx: &MatchCtx<'_>) -> bool {
        eval(&self.expr, ctx)
    }

    /// Whether the rule may match once the StartupMessage is known (it
    /// matches now, or its PostgreSQL matchers decide): the first pass of
    /// routing a terminated TLS connection, which picks the TLS options to
    /// handshake with before the startup packet can be read.
    pub fn may_match(&self, ctx: &MatchCtx<'_>) -> bool {
        eval_pending(&self.expr, ctx) != Some(false)
    }

    /// True when the rule is Traefik's catch-all: a single `HostSNI(`*`)`,
    /// whatever the parentheses and spacing around it. Such a router's
    /// default priority is -1 rather than the rule's length, so it is tried
    /// after every router with a computed priority. Traefik looks only at the
    /// matcher and its argument, not at a `!` in front of it, so neither does
    /// this (`!HostSNI(`*`)` matches nothing, whatever its priority).
    pub fn is_catch_all(&self) -> bool {
        let mut e = &self.expr;
        while let Expr::Not(inner) = e {
            e = inner;
        }
        matches!(e, Expr::Matcher(Matcher::AnySni))
    }

    /// True when the rule names a host with HostSNI (anything but `*`), which
    /// Traefik only accepts on a router with `tls`. HostSNIRegexp and ALPN
    /// are allowed without `tls`: a plain connection has no server name (a
    /// regexp is matched against "") and offers no protocol (ALPN never
    /// matches), as in Traefik.
    pub fn needs_tls(&self) -> bool {
        let mut found = false;
        visit(&self.expr, &mut |m| {
            found |= matches!(m, Matcher::Sni(_) | Matcher::WildcardSni(_));
        });
        found
    }

    /// Whether the rule looks at the PostgreSQL StartupMessage (PgDatabase,
    /// PgUser, PgParam): its router must see the startup packet.
    pub fn uses_pg(&self) -> bool {
        let mut found = false;
        visit(&self.expr, &mut |m| {
            found |= matches!(
                m,
                Matcher::PgDatabase(_) | Matcher::PgUser(_) | Matcher::PgParam(..)
            );
        });
        found
    }

    /// The literal HostSNI names (including `*.example.com` wildcards, but not
    /// the catch-all `*`), in rule order without duplicates. Names under `!`
    /// are listed too, as Traefik does when it collects a rule's domains.
    pub fn host_snis(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        visit(&self.expr, &mut |m| {
            if let Matcher::Sni(n) | Matcher::WildcardSni(n) = m {
                if !out.contains(&n.as_str()) {
                    out.push(n);
                }
            }
        });
        out
    }
}

/// Three-valued match for a TLS connection whose StartupMessage is still
/// inside TLS: PostgreSQL matchers are unknown (`None`), the rest decide.
/// `!unknown` is unknown; `&&` is false when one part is, `||` true when
/// one part is (Kleene logic).
fn eval_pending(e: &Expr, ctx: &MatchCtx<'_>) -> Option<bool> {
    match e {
        Expr::Or(v) => {
            let mut unknown = false;
            for e in v {
                match eval_pending(e, ctx) {
                    Some(true) => return Some(true),
                    None => unknown = true,
                    Some(false) => {}
                }
            }
            (!unknown).then_some(false)
        }
        Expr::And(v) => {
            let mut unknown = false;
            for e in v {
                match eval_pending(e, ctx) {
                    Some(false) => return Some(false),
                    None => unknown = true,
                    Some(true) => {}
                }
            }
            (!unknown).then_some(true)
        }
        Expr::Not(e) => eval_pending(e, ctx).map(|b| !b),
        Expr::Matcher(Matcher::PgDatabase(_) | Matcher::PgUser(_) | Matcher::PgParam(..)) => None,
        Expr::Matcher(m) => Some(m.matches(ctx)),
    }
}

fn eval(e: &Expr, ctx: &MatchCtx<'_>) -> bool {
    match e {
        Expr::Or(v) => v.iter().any(|e| eval(e, ctx)),
        Expr::And(v) => v.iter().all(|e| eval(e, ctx)),
        Expr::Not(e) => !eval(e, ctx),
        Expr::Matcher(m) => m.matches(ctx),
    }
}

fn visit<'a>(e: &'a Expr, f: &mut dyn FnMut(&'a Matcher)) {
    match e {
        Expr::Or(v) | Expr::And(v) => v.iter().for_each(|e| visit(e, f)),
        Expr::Not(e) => visit(e, f),
        Expr::Matcher(m) => f(m),
    }
}

impl Matcher {
    fn matches(&self, ctx: &MatchCtx<'_>) -> bool {
        match self {
            Matcher::AnySni => true,
            Matcher::Sni(name) => ctx.sni == Some(name.as_str()),
            // `*.example.com` matches exactly one extra label.
            Matcher::WildcardSni(pat) => match (ctx.sni, pat.strip_prefix('*')) {
                (Some(sni), Some(suffix)) => sni
                    .strip_suffix(suffix)
                    .is_some_and(|label| !label.is_empty() && !label.contains('.')),
                _ => false,
            },
            // Traefik matches the regexp against the server name, "" when
            // there is none (a plain connection, or a hello without SNI), so
            // `.*` or `^$` match those too.
            Matcher::SniRegexp(re) => re.is_match(ctx.sni.unwrap_or("")),
            Matcher::ClientIp(net) => net.contains(&ctx.client_ip),
            Matcher::Alpn(proto) => ctx.alpn.contains(&proto.as_bytes()),
            Matcher::PgDatabase(g) => ctx
                .pg
                .and_then(|s| s.database())
                .is_some_and(|d| glob(g.as_bytes(), d)),
            Matcher::PgUser(g) => ctx
                .pg
                .and_then(|s| s.param(b"user"))
                .is_some_and(|u| glob(g.as_bytes(), u)),
            Matcher::PgParam(name, g) => ctx
                .pg
                .and_then(|s| s.param(name.as_bytes()))
                .is_some_and(|v| glob(g.as_bytes(), v)),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Matcher::AnySni | Matcher::Sni(_) | Matcher::WildcardSni(_) => "HostSNI",
            Matcher::SniRegexp(_) => "HostSNIRegexp",
            Matcher::ClientIp(_) => "ClientIP",
            Matcher::Alpn(_) => "ALPN",
            Matcher::PgDatabase(_) => "PgDatabase",
            Matcher::PgUser(_) => "PgUser",
            Matcher::PgParam(..) => "PgParam",
        }
    }

    fn arg(&self) -> Cow<'_, str> {
        match self {
            Matcher::AnySni => "*".into(),
            Matcher::Sni(s)
            | Matcher::WildcardSni(s)
            | Matcher::Alpn(s)
            | Matcher::PgDatabase(s)
            | Matcher::PgUser(s) => s.as_str().into(),
            // `write_expr` writes the parameter name before this.
            Matcher::PgParam(_, v) => v.as_str().into(),
            Matcher::SniRegexp(re) => re.as_str().into(),
            // A single address reads better without its /32 or /128.
            Matcher::ClientIp(net) if net.prefix_len() == net.max_prefix_len() => {
                net.addr().to_string().into()
            }
            Matcher::ClientIp(net) => net.to_string().into(),
        }
    }
}

fn build(name: Name, arg: &str) -> Result<Matcher, String> {
    match name {
        Name::PgDatabase | Name::PgUser if arg.is_empty() => {
            Err("the pattern is empty (use `*` to match every name)".into())
        }
        Name::PgDatabase | Name::PgUser if arg.contains('\0') => {
            Err("the pattern contains a NUL byte, which a startup packet cannot carry".into())
        }
        Name::PgDatabase => Ok(Matcher::PgDatabase(arg.to_string())),
        Name::PgUser => Ok(Matcher::PgUser(arg.to_string())),
        Name::PgParam => {
            Err("`PgParam` takes two arguments: a parameter name and a pattern".into())
        }
        Name::HostSni => host_sni(arg),
        Name::HostSniRegexp => Regex::new(arg)
            .map(Matcher::SniRegexp)
            .map_err(|e| format!("invalid HostSNIRegexp: {e}")),
        Name::ClientIp => client_ip(arg),
        Name::Alpn => {
            if arg.is_empty() {
                Err("ALPN protocol is empty".into())
            } else if arg == "acme-tls/1" {
                Err(
                    "ALPN `acme-tls/1` is reserved for ACME TLS-ALPN-01 (Traefik forbids it)"
                        .into(),
                )
            } else if arg.len() > 255 {
                // RFC 7301 protocol names are at most 255 bytes: it could never match.
                Err(format!(
                    "ALPN protocol is {} bytes, over the limit of 255",
                    arg.len()
                ))
            } else {
                Ok(Matcher::Alpn(arg.to_string()))
            }
        }
    }
}

/// One argument of a v2 matcher, as Traefik's v2 matchers read it.
/// `first`: the argument is the matcher's first (v2 `HostSNI` treats a `*`
/// there as "everything", elsewhere as "any server name").
fn build_v2(name: Name, arg: &str, first: bool) -> Result<Matcher, String> {
    match name {
        Name::HostSni => {
            if arg == "*" {
                return Ok(if first {
                    Matcher::AnySni
                } else {
                    // Only connections that sent a name, as Traefik v2.
                    Matcher::SniRegexp(Regex::new("^.+$").map_err(|e| e.to_string())?)
                });
            }
            // v2 accepts word characters, `.`, `-` and `:` (IP literals), so
            // no `*.a.com` wildcards; names compare lowercase, trailing dot
            // trimmed.
            if arg.is_empty()
                || !arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | ':'))
            {
                return Err(format!(
                    "invalid value for HostSNI: `{arg}` is not a valid hostname or IP (Traefik v2 has no `*.` wildcards: use HostSNIRegexp(`{{sub:[^.]+}}.example.com`))"
                ));
            }
            // Beyond v2's characters, the name must be one v3 accepts too:
            // `check` prints the v3 form to migrate to, and a name such as
            // `.`, `a..b` or `a:b` can never be a TLS server name anyway.
            host_sni(arg).map_err(|e| format!("{e} (the rule would have no v3 equivalent)"))
        }
        Name::HostSniRegexp => {
            let pattern = mux_template(arg)?;
            Regex::new(&pattern)
                .map(Matcher::SniRegexp)
                .map_err(|e| format!("invalid HostSNIRegexp `{arg}`: {e}"))
        }
        _ => build(name, arg),
    }
}

/// A v2 `HostSNIRegexp` template (gorilla/mux host syntax) as a regular
/// expression: literal text is quoted, `{name}` is one label (`[^.]+`),
/// `{name:pattern}` is `pattern`; anchored and case-insensitive, as Traefik
/// v2 builds it.
fn mux_template(template: &str) -> Result<String, String> {
    let mut out = String::from("(?i)^");
    let mut level = 0usize;
    let mut literal_from = 0;
    let mut open = 0;
    for (i, c) in template.char_indices() {
        match c {
            '{' => {
                level += 1;
                if level == 1 {
                    out.push_str(&regex::escape(&template[literal_from..i]));
                    open = i;
                }
            }
            '}' => {
                if level == 0 {
                    return Err(format!("unbalanced braces in HostSNIRegexp `{template}`"));
                }
                level -= 1;
                if level == 0 {
                    let inner = &template[open + 1..i];
                    let (name, pattern) = match inner.split_once(':') {
                        Some((n, p)) => (n, p),
                        None => (inner, "[^.]+"),
                    };
                    if name.is_empty() || pattern.is_empty() {
                        return Err(format!(
                            "missing name or pattern in `{{{inner}}}` of HostSNIRegexp `{template}`"
                        ));
                    }
                    let _ = write!(out, "({pattern})");
                    literal_from = i + 1;
                }
            }
            _ => {}
        }
    }
    if level != 0 {
        return Err(format!("unbalanced braces in HostSNIRegexp `{template}`"));
    }
    out.push_str(&regex::escape(&template[literal_from..]));
    out.push('$');
    Ok(out)
}

fn host_sni(arg: &str) -> Result<Matcher, String> {
    if arg == "*" {
        return Ok(Matcher::AnySni);
    }
    // Traefik accepts IP literals; an SNI is never an IP (RFC 6066), so this
    // matches nothing from a conforming client, but it is not an error.
    if arg.parse::<IpAddr>().is_ok() {
        return Ok(Matcher::Sni(arg.to_ascii_lowercase()));
    }
    let name = arg.strip_suffix('.').unwrap_or(arg).to_ascii_lowercase();
    if name.is_empty() {
        return Err("HostSNI name is empty (use `*` to match everything)".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "HostSNI name is {} bytes, the limit is 253",
            name.len()
        ));
    }
    let (wildcard, base) = match name.strip_prefix("*.") {
        Some(base) => (true, base),
        None => (false, name.as_str()),
    };
    let bad = base
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')));
    if bad == Some('*') {
        return Err("`*` is only allowed alone or as a whole first label (`*.a.com`)".into());
    }
    if let Some(c) = bad {
        let hint = if c.is_ascii() {
            "allowed: letters, digits, `-`, `.`, `_`"
        } else {
            "use the punycode form `xn--...` for internationalised names"
        };
        return Err(format!(
            "invalid character {c:?} in HostSNI name `{arg}` ({hint})"
        ));
    }
    if base.split('.').any(str::is_empty) {
        return Err(format!("empty label in HostSNI name `{arg}`"));
    }
    Ok(if wildcard {
        Matcher::WildcardSni(name)
    } else {
        Matcher::Sni(name)
    })
}

fn client_ip(arg: &str) -> Result<Matcher, String> {
    let parsed = if arg.contains('/') {
        arg.parse::<IpNet>().ok()
    } else {
        arg.parse::<IpAddr>().ok().map(IpNet::from)
    };
    let Some(net) = parsed else {
        return Err(format!(
            "invalid ClientIP `{arg}`: expected an IP address (10.0.0.1, ::1) or a \
             CIDR (10.0.0.0/8, 2001:db8::/32)"
        ));
    };
    // Client addresses arrive canonical (mapped → IPv4), so the rule must be too
    // or `::ffff:10.0.0.1` would silently never match.
    let net = match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => n
            .addr()
            .to_ipv4_mapped()
            .and_then(|v4| Ipv4Net::new(v4, n.prefix_len() - 96).ok())
            .map_or(net, IpNet::V4),
        _ => net,
    };
    Ok(Matcher::ClientIp(net.trunc()))
}

#[derive(Debug)]
enum Kind<'a> {
    Ident(&'a str),
    Str(String),
    LParen,
    RParen,
    Comma,
    And,
    Or,
    Not,
    End,
}

struct Tok<'a> {
    kind: Kind<'a>,
    at: usize,
    len: usize,
}

fn fail<T>(offset: usize, message: impl Into<String>) -> Result<T, RuleError> {
    Err(err(offset, message))
}

/// Recursive descent over a lazy lexer, so the first error reported is the
/// first one in the text. Grammar (`!` > `&&` > `||`):
/// `or := and ("||" and)*`, `and := unary ("&&" unary)*`,
/// `unary := "!" unary | "(" or ")" | Name "(" args ")"`.
struct Parser<'a> {
    src: &'a str,
    pos: usize,
    peeked: Option<Tok<'a>>,
    depth: usize,
    /// Traefik v2 syntax: several arguments per matcher.
    v2: bool,
}

impl<'a> Parser<'a> {
    fn peek(&mut self) -> Result<&Tok<'a>, RuleError> {
        let t = match self.peeked.take() {
            Some(t) => t,
            None => self.lex()?,
        };
        Ok(self.peeked.insert(t))
    }

    fn next(&mut self) -> Result<Tok<'a>, RuleError> {
        match self.peeked.take() {
            Some(t) => Ok(t),
            None => self.lex(),
        }
    }

    /// The error for finding `t` where `what` should be.
    fn expected(&self, t: &Tok<'_>, what: &str) -> RuleError {
        let found = match t.kind {
            Kind::End => return err(t.at, format!("unexpected end of rule, expected {what}")),
            Kind::Str(_) => "a string".into(),
            _ => format!("`{}`", self.src.get(t.at..t.at + t.len).unwrap_or("?")),
        };
        err(t.at, format!("expected {what}, found {found}"))
    }

    fn lex(&mut self) -> Result<Tok<'a>, RuleError> {
        let rest = self.src.get(self.pos..).unwrap_or("");
        // ASCII whitespace only, like Go: a pasted NBSP gets a clear error.
        let s = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let at = self.pos + (rest.len() - s.len());
        let mut chars = s.chars();
        let (kind, len) = match chars.next() {
            None => (Kind::End, 0),
            Some('(') => (Kind::LParen, 1),
            Some(')') => (Kind::RParen, 1),
            Some(',') => (Kind::Comma, 1),
            Some('!') => (Kind::Not, 1),
            Some('&') if chars.next() == Some('&') => (Kind::And, 2),
            Some('|') if chars.next() == Some('|') => (Kind::Or, 2),
            Some(c @ ('&' | '|')) => {
                return fail(at, format!("expected `{c}{c}`, found a single `{c}`"))
            }
            Some(q @ ('`' | '"')) => {
                let (value, len) = lex_string(s, at, q)?;
                (Kind::Str(value), len)
            }
            Some('\'') => {
                return fail(
                    at,
                    "single quotes do not delimit strings; use `...` or \"...\"",
                )
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let len = s
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(s.len());
                (Kind::Ident(s.get(..len).unwrap_or(s)), len)
            }
            Some(c) => return fail(at, format!("unexpected character {c:?}")),
        };
        self.pos = at + len;
        Ok(Tok { kind, at, len })
    }

    /// `or` when `or`, else `and`: the two precedence levels differ only in
    /// their operator and what they are made of.
    fn chain(&mut self, or: bool) -> Result<Expr, RuleError> {
        let operand = |p: &mut Self| if or { p.chain(false) } else { p.unary() };
        let mut items = vec![operand(self)?];
        while matches!(
            (&self.peek()?.kind, or),
            (Kind::Or, true) | (Kind::And, false)
        ) {
            self.next()?;
            items.push(operand(self)?);
        }
        Ok(join(items, or))
    }

    fn unary(&mut self) -> Result<Expr, RuleError> {
        let t = self.next()?;
        if matches!(t.kind, Kind::Not | Kind::LParen) {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                let msg = format!("rule nests too deeply (over {MAX_DEPTH} levels of `(` and `!`)");
                return fail(t.at, msg);
            }
        }
        let e = match t.kind {
            Kind::Not => Expr::Not(Box::new(self.unary()?)),
            Kind::LParen => {
                let e = self.chain(true)?;
                let close = self.next()?;
                if !matches!(close.kind, Kind::RParen) {
                    let what = format!("`)` to close the `(` at byte {}", t.at);
                    return Err(self.expected(&close, &what));
                }
                e
            }
            Kind::Ident(name) => return self.matcher(name, t.at),
            _ => return Err(self.expected(&t, "a matcher")),
        };
        self.depth -= 1;
        Ok(e)
    }

    fn matcher(&mut self, name: &str, at: usize) -> Result<Expr, RuleError> {
        let Some(&(_, which)) = NAMES.iter().find(|(n, _)| accepted_casing(n, name)) else {
            return Err(unknown_matcher(name, at));
        };
        let open = self.next()?;
        if !matches!(open.kind, Kind::LParen) {
            return Err(self.expected(&open, &format!("`(` after `{name}`")));
        }
        // Collect every argument first so the arity error can say how many.
        let mut args: Vec<(String, usize)> = Vec::new();
        loop {
            let t = self.next()?;
            match t.kind {
                // Also after a `,`: Go (hence Traefik) accepts a trailing comma.
                Kind::RParen => break,
                Kind::Str(s) => args.push((s, t.at)),
                _ => return Err(self.expected(&t, "a quoted argument (`...` or \"...\")")),
            }
            let t = self.next()?;
            match t.kind {
                Kind::Comma => {}
                Kind::RParen => break,
                _ => return Err(self.expected(&t, "`)` after argument")),
            }
        }
        if which == Name::PgParam {
            return match <[(String, usize); 2]>::try_from(args) {
                Ok([(n, n_at), (v, v_at)]) => {
                    if n.is_empty() || n.contains('\0') {
                        return fail(
                            n_at,
                            "PgParam needs a parameter name (e.g. `application_name`)",
                        );
                    }
                    if v.contains('\0') {
                        return fail(
                            v_at,
                            "the pattern contains a NUL byte, which a startup packet cannot carry",
                        );
                    }
                    Ok(Expr::Matcher(Matcher::PgParam(n, v)))
                }
                Err(a) => fail(
                    at,
                    format!(
                        "`PgParam` takes two arguments (a parameter name and a pattern), got {}",
                        a.len()
                    ),
                ),
            };
        }
        if self.v2 && !matches!(which, Name::PgDatabase | Name::PgUser) {
            if args.is_empty() {
                return fail(at, format!("`{name}` needs at least one argument"));
            }
            let mut any = Vec::with_capacity(args.len());
            for (i, (arg, arg_at)) in args.into_iter().enumerate() {
                let m = build_v2(which, &arg, i == 0).map_err(|m| err(arg_at, m))?;
                any.push(Expr::Matcher(m));
            }
            return Ok(join(any, true));
        }
        let count = args.len();
        let mut args = args.into_iter();
        let (arg, arg_at) = match (args.next(), args.next()) {
            (Some(only), None) => only,
            (None, _) => return fail(at, format!("`{name}` takes exactly one argument, got none")),
            (Some(_), Some((_, second_at))) => {
                let msg = format!(
                    "`{name}` takes exactly one argument, got {count} (Traefik v3 matchers \
                     take one argument each; combine them with `||`)"
                );
                return fail(second_at, msg);
            }
        };
        build(which, &arg)
            .map(Expr::Matcher)
            .map_err(|m| err(arg_at, m))
    }
}

/// Whether `name` spells matcher `canonical` in one of the four casings
/// Traefik's rule parser registers for each matcher: as documented
/// (`HostSNI`), all lower (`hostsni`), all upper (`HOSTSNI`), and the first
/// letter upper with the rest lower (`Hostsni`). Any other mix is unknown.
fn accepted_casing(canonical: &str, name: &str) -> bool {
    if name == canonical {
        return true;
    }
    if !name.eq_ignore_ascii_case(canonical) {
        return false;
    }
    let rest = name.get(1..).unwrap_or("");
    let first_upper = name.starts_with(|c: char| c.is_ascii_uppercase());
    let all = |upper: bool| {
        name.chars()
            .filter(char::is_ascii_alphabetic)
            .all(|c| c.is_ascii_uppercase() == upper)
    };
    let rest_lower = !rest.chars().any(|c| c.is_ascii_uppercase());
    all(false) || all(true) || (first_upper && rest_lower)
}

fn unknown_matcher(name: &str, at: usize) -> RuleError {
    let msg = match NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        Some((known, _)) => {
            let lower = known.to_ascii_lowercase();
            let title =
                lower.get(..1).unwrap_or("").to_ascii_uppercase() + lower.get(1..).unwrap_or("");
            format!(
                "unknown matcher `{name}` (a matcher name is written `{known}`, `{lower}`, `{}` or `{title}`)",
                known.to_ascii_uppercase()
            )
        }
        None => format!(
            "unknown matcher `{name}` (TCP rules know HostSNI, HostSNIRegexp, ClientIP, ALPN, and the PostgreSQL extensions PgDatabase, PgUser, PgParam)"
        ),
    };
    err(at, msg)
}

/// Builds an `||` (or `&&`) node, flattening nested nodes of the same kind
/// (from parentheses) so `Display` is canonical.
fn join(items: Vec<Expr>, or: bool) -> Expr {
    let items = match <[Expr; 1]>::try_from(items) {
        Ok([single]) => return single,
        Err(items) => items,
    };
    let mut out = Vec::with_capacity(items.len());
    for e in items {
        match e {
            Expr::Or(v) if or => out.extend(v),
            Expr::And(v) if !or => out.extend(v),
            e => out.push(e),
        }
    }
    if or {
        Expr::Or(out)
    } else {
        Expr::And(out)
    }
}

/// Go's single-character escapes, as Traefik parses rules as Go expressions.
#[rustfmt::skip]
const ESCAPES: [(char, char); 9] = [
    ('a', '\x07'), ('b', '\x08'), ('f', '\x0c'), ('n', '\n'), ('r', '\r'),
    ('t', '\t'), ('v', '\x0b'), ('\\', '\\'), ('"', '"'),
];

/// Lexes a `` `raw` `` or `"interpreted"` string starting at `s` (which
/// begins with the quote); returns the value and the byte length consumed.
fn lex_string(s: &str, at: usize, quote: char) -> Result<(String, usize), RuleError> {
    if quote == '`' {
        let body = s.get(1..).unwrap_or("");
        return match body.find('`') {
            Some(end) => Ok((body.get(..end).unwrap_or("").to_string(), end + 2)),
            None => fail(at, "unterminated string"),
        };
    }
    let mut out = String::new();
    let mut it = s.char_indices().skip(1);
    while let Some((i, c)) = it.next() {
        match c {
            '"' => return Ok((out, i + 1)),
            '\n' => {
                return fail(
                    at,
                    "unterminated string (a \"...\" string cannot hold a newline)",
                )
            }
            '\\' => out.push(escape(&mut it, at + i)?),
            c => out.push(c),
        }
    }
    fail(at, "unterminated string")
}

/// Decodes the escape after a backslash at byte `esc_at`.
fn escape(it: &mut impl Iterator<Item = (usize, char)>, esc_at: usize) -> Result<char, RuleError> {
    let Some((_, e)) = it.next() else {
        return fail(esc_at, "unterminated escape sequence");
    };
    if let Some(&(_, c)) = ESCAPES.iter().find(|(k, _)| *k == e) {
        return Ok(c);
    }
    let (radix, digits, first) = match e {
        'x' => (16, 2, 0),
        'u' => (16, 4, 0),
        'U' => (16, 8, 0),
        '0'..='7' => (8, 2, e.to_digit(8).unwrap_or(0)),
        _ => return fail(esc_at, format!("unknown escape sequence `\\{e}`")),
    };
    let mut value = first;
    for _ in 0..digits {
        match it.next().and_then(|(_, d)| d.to_digit(radix)) {
            Some(d) => value = value * radix + d,
            None => return fail(esc_at, format!("malformed escape `\\{e}`")),
        }
    }
    // Go would allow any byte here, but our arguments are UTF-8 strings.
    if matches!(e, 'x' | '0'..='7') && value > 0x7f {
        return fail(
            esc_at,
            "byte escapes above \\x7f are not supported; use \\u for non-ASCII",
        );
    }
    char::from_u32(value).map_or_else(
        || fail(esc_at, "escape is not a valid Unicode character"),
        Ok,
    )
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_expr(&self.expr, f, 0)
    }
}

/// `prec` is the binding strength of the context: 0 top/`||`, 1 `&&`, 2 `!`.
fn write_expr(e: &Expr, f: &mut fmt::Formatter<'_>, prec: u8) -> fmt::Result {
    let (items, sep, own) = match e {
        Expr::Or(v) => (v, " || ", 0),
        Expr::And(v) => (v, " && ", 1),
        Expr::Not(e) => {
            f.write_char('!')?;
            return write_expr(e, f, 2);
        }
        Expr::Matcher(m) => {
            write!(f, "{}(", m.name())?;
            if let Matcher::PgParam(name, _) = m {
                write_quoted(f, name)?;
                f.write_str(", ")?;
            }
            write_quoted(f, &m.arg())?;
            return f.write_char(')');
        }
    };
    let parens = prec > own;
    if parens {
        f.write_char('(')?;
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        write_expr(item, f, own + 1)?;
    }
    if parens {
        f.write_char(')')?;
    }
    Ok(())
}

/// Backticks when possible (what Traefik's docs use); double quotes with Go
/// escapes when the value holds a backtick or a control character.
fn write_quoted(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    if !s.contains('`') && !s.chars().any(char::is_control) {
        return write!(f, "`{s}`");
    }
    f.write_char('"')?;
    for c in s.chars() {
        match ESCAPES.iter().find(|(_, v)| *v == c) {
            Some((k, _)) => write!(f, "\\{k}")?,
            None if c.is_control() && (c as u32) < 0x80 => write!(f, "\\x{:02x}", c as u32)?,
            None if c.is_control() => write!(f, "\\u{:04x}", c as u32)?,
            None => f.write_char(c)?,
        }
    }
    f.write_char('"')
}

#[cfg(test)]
mod tests;
