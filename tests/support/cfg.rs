//! The one way tests write a sluicegate configuration: a builder that renders
//! TOML. It adds nothing a test did not ask for (no hidden transport, timeout
//! or runtime default), so every test states what it relies on.
//!
//! ```ignore
//! let toml = Cfg::new()
//!     .entrypoint("main")
//!     .router("all", "HostSNI(`*`)", "svc").and("entryPoints", ["main"])
//!     .service("svc", &[echo.addr])
//!     .termination_delay("30s")
//!     .runtime("io_uring", "auto")
//!     .to_toml();
//! ```
//!
//! Tables are rendered in the order they were first touched; setting a key on
//! a table already written adds it there. `and` sets a key on the table (or
//! array-of-tables entry) touched last.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A TOML value as the config file spells it.
pub trait Val {
    fn toml(&self) -> String;
}

fn quote(s: &str) -> String {
    // A TOML basic string: Rust's Debug escaping of `"` and `\` matches it
    // for the printable ASCII the tests use.
    format!("{s:?}")
}

impl Val for &str {
    fn toml(&self) -> String {
        quote(self)
    }
}
impl Val for String {
    fn toml(&self) -> String {
        quote(self)
    }
}
impl Val for bool {
    fn toml(&self) -> String {
        self.to_string()
    }
}
macro_rules! int_val {
    ($($t:ty),*) => {$(
        impl Val for $t {
            fn toml(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
int_val!(i32, i64, u16, u32, u64, usize);
impl Val for SocketAddr {
    fn toml(&self) -> String {
        quote(&self.to_string())
    }
}
impl Val for &Path {
    fn toml(&self) -> String {
        quote(&self.display().to_string())
    }
}
impl Val for PathBuf {
    fn toml(&self) -> String {
        self.as_path().toml()
    }
}
impl Val for &PathBuf {
    fn toml(&self) -> String {
        self.as_path().toml()
    }
}
impl<T: Val, const N: usize> Val for [T; N] {
    fn toml(&self) -> String {
        array(self.iter())
    }
}
impl<T: Val> Val for &[T] {
    fn toml(&self) -> String {
        array(self.iter())
    }
}
impl<T: Val> Val for Vec<T> {
    fn toml(&self) -> String {
        array(self.iter())
    }
}

fn array<'a, T: Val + 'a>(items: impl Iterator<Item = &'a T>) -> String {
    let items: Vec<String> = items.map(Val::toml).collect();
    format!("[{}]", items.join(", "))
}

/// A value written as it is (an inline table, a float, a deliberate typo).
pub struct Raw<'a>(pub &'a str);
impl Val for Raw<'_> {
    fn toml(&self) -> String {
        self.0.to_string()
    }
}

struct Section {
    header: String,
    /// `[[header]]`: every push is a new entry.
    array: bool,
    keys: Vec<(String, String)>,
}

/// A configuration under construction; see the module comment.
#[derive(Default)]
pub struct Cfg {
    sections: Vec<Section>,
    /// Index of the section `and` writes to.
    last: Option<usize>,
    /// Text appended verbatim (for what a test wants to spell itself).
    raw: String,
}

impl Cfg {
    /// An empty configuration: nothing is added that the test does not ask for.
    pub fn new() -> Cfg {
        Cfg::default()
    }

    fn table_index(&mut self, header: &str) -> usize {
        if let Some(i) = self
            .sections
            .iter()
            .position(|s| !s.array && s.header == header)
        {
            return i;
        }
        self.sections.push(Section {
            header: header.to_string(),
            array: false,
            keys: Vec::new(),
        });
        self.sections.len() - 1
    }

    fn put(&mut self, i: usize, key: &str, v: String) {
        let keys = &mut self.sections[i].keys;
        match keys.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = v,
            None => keys.push((key.to_string(), v)),
        }
        self.last = Some(i);
    }

    /// `[table]` with `key = v` (replacing an earlier value of that key).
    pub fn set(mut self, table: &str, key: &str, v: impl Val) -> Cfg {
        let i = self.table_index(table);
        self.put(i, key, v.toml());
        self
    }

    /// `[table]`, empty unless keys follow (`[metrics.prometheus]`,
    /// `[tcp.routers.r.tls]`).
    pub fn table(mut self, table: &str) -> Cfg {
        self.last = Some(self.table_index(table));
        self
    }

    /// A new `[[array]]` entry; its keys follow with `and`.
    pub fn push(mut self, array: &str) -> Cfg {
        self.sections.push(Section {
            header: array.to_string(),
            array: true,
            keys: Vec::new(),
        });
        self.last = Some(self.sections.len() - 1);
        self
    }

    /// `key = v` in the table or array entry touched last.
    pub fn and(mut self, key: &str, v: impl Val) -> Cfg {
        let i = self.last.expect("Cfg::and before any table");
        self.put(i, key, v.toml());
        self
    }

    /// TOML text appended after the tables, as it is.
    pub fn raw(mut self, text: &str) -> Cfg {
        self.raw.push_str(text);
        self.raw.push('\n');
        self
    }

    /// Entry point `name` on an ephemeral loopback port.
    pub fn entrypoint(self, name: &str) -> Cfg {
        self.entrypoint_at(name, "127.0.0.1:0")
    }

    /// Entry point `name` on `address`.
    pub fn entrypoint_at(self, name: &str, address: impl std::fmt::Display) -> Cfg {
        self.set(
            &format!("entryPoints.{name}"),
            "address",
            address.to_string(),
        )
    }

    /// TCP router `name`: `rule` towards `service`, on every entry point
    /// unless `entryPoints` follows with `and`.
    pub fn router(self, name: &str, rule: &str, service: &str) -> Cfg {
        self.set(&format!("tcp.routers.{name}"), "rule", rule)
            .and("service", service)
    }

    /// TCP router `name` on entry point `ep` only.
    pub fn router_on(self, name: &str, ep: &str, rule: &str, service: &str) -> Cfg {
        self.router(name, rule, service).and("entryPoints", [ep])
    }

    /// `[tcp.routers.name.tls]` (termination; `.and("passthrough", true)`
    /// for passthrough).
    pub fn router_tls(self, name: &str) -> Cfg {
        self.table(&format!("tcp.routers.{name}.tls"))
    }

    /// Load-balanced service `name` over `servers` (no other key).
    pub fn service(mut self, name: &str, servers: &[SocketAddr]) -> Cfg {
        self = self.table(&format!("tcp.services.{name}.loadBalancer"));
        for a in servers {
            self = self.server(name, *a);
        }
        self
    }

    /// `key = v` in the loadBalancer table of service `name`.
    pub fn lb(self, service: &str, key: &str, v: impl Val) -> Cfg {
        self.set(&format!("tcp.services.{service}.loadBalancer"), key, v)
    }

    /// One more server of service `name` (keys of that server follow with
    /// `and`).
    pub fn server(self, service: &str, address: impl std::fmt::Display) -> Cfg {
        self.push(&format!("tcp.services.{service}.loadBalancer.servers"))
            .and("address", address.to_string())
    }

    /// `key = v` on server `index` (0-based, in the order added) of service
    /// `service`.
    pub fn server_set(mut self, service: &str, index: usize, key: &str, v: impl Val) -> Cfg {
        let header = format!("tcp.services.{service}.loadBalancer.servers");
        let i = self
            .sections
            .iter()
            .enumerate()
            .filter(|(_, s)| s.array && s.header == header)
            .map(|(i, _)| i)
            .nth(index)
            .unwrap_or_else(|| panic!("no server {index} of service {service}"));
        self.put(i, key, v.toml());
        self
    }

    /// Weighted service `name` over `(service, weight)` pairs.
    pub fn weighted(mut self, name: &str, services: &[(&str, u32)]) -> Cfg {
        self = self.table(&format!("tcp.services.{name}.weighted"));
        for (s, w) in services {
            self = self
                .push(&format!("tcp.services.{name}.weighted.services"))
                .and("name", *s)
                .and("weight", *w);
        }
        self
    }

    /// `key = v` in `[tcp.serversTransports.name]`.
    pub fn transport(self, name: &str, key: &str, v: impl Val) -> Cfg {
        self.set(&format!("tcp.serversTransports.{name}"), key, v)
    }

    /// The default transport's terminationDelay (`[tcpServersTransport]`):
    /// how long the other direction may still flow after one side's FIN.
    /// Tests whose replies can arrive late on a loaded machine state a
    /// generous one; Traefik's own default is 100 ms.
    pub fn termination_delay(self, d: &str) -> Cfg {
        self.set("tcpServersTransport", "terminationDelay", d)
    }

    /// `[runtime]` driver (`io_uring`, `epoll`, `auto`) and forwarding
    /// (`auto`, `copy`, `splice`, `completion`).
    pub fn runtime(self, driver: &str, forwarding: &str) -> Cfg {
        self.set("runtime", "driver", driver)
            .and("forwarding", forwarding)
    }

    /// `[runtime] workers = n`.
    pub fn workers(self, n: usize) -> Cfg {
        self.set("runtime", "workers", n)
    }

    /// Entry point `traefik` (the admin one) with `[ping]`, `[api]` and
    /// `[metrics.prometheus]`.
    pub fn admin(self) -> Cfg {
        self.entrypoint("traefik")
            .table("ping")
            .table("api")
            .table("metrics.prometheus")
    }

    /// One `[[tls.certificates]]` entry.
    pub fn cert(self, cert: &Path, key: &Path) -> Cfg {
        self.push("tls.certificates")
            .and("certFile", cert)
            .and("keyFile", key)
    }

    /// The default store's default certificate.
    pub fn default_cert(self, cert: &Path, key: &Path) -> Cfg {
        self.set("tls.stores.default.defaultCertificate", "certFile", cert)
            .and("keyFile", key)
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        for s in &self.sections {
            if s.array {
                let _ = writeln!(out, "[[{}]]", s.header);
            } else {
                let _ = writeln!(out, "[{}]", s.header);
            }
            for (k, v) in &s.keys {
                let _ = writeln!(out, "{k} = {v}");
            }
            out.push('\n');
        }
        out.push_str(&self.raw);
        out
    }

    /// Write it to a scratch file and start the proxy with it.
    pub fn start(&self) -> super::Proxy {
        super::Proxy::start(&self.to_toml())
    }
}

impl std::fmt::Display for Cfg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_toml())
    }
}
