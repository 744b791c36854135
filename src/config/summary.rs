//! What `sluicegate check` prints: a readable overview of a validated
//! configuration (not a debug dump). Pure formatting.

use std::fmt::Write;
use std::time::Duration;

use crate::model::{Config, Driver, Forwarding, MiddlewareKind, ServiceKind};

impl Config {
    /// A human-readable summary: entrypoints, routers (by entrypoint, highest
    /// priority first), services, middlewares, transports, warnings count.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail; the results are ignored on purpose.
        let _ = self.write_summary(&mut s);
        s
    }

    fn write_summary(&self, s: &mut String) -> std::fmt::Result {
        writeln!(s, "config {}", self.source.display())?;

        let listed = self.entrypoints.len() + usize::from(self.admin.is_some());
        writeln!(s, "\nentrypoints ({listed}):")?;
        for ep in &self.entrypoints {
            let pp = match &ep.proxy_protocol {
                Some(p) if p.insecure => "  proxyProtocol from anyone".to_string(),
                Some(p) => format!("  proxyProtocol from {}", join(p.trusted_ips.iter())),
                None => String::new(),
            };
            let mut life = format!("  graceTimeOut {}", dur(ep.grace_timeout));
            if !ep.accept_grace.is_zero() {
                life += &format!(" requestAcceptGraceTimeout {}", dur(ep.accept_grace));
            }
            if ep.reuse_port {
                life += "  reusePort";
            }
            writeln!(
                s,
                "  {:<16} {:<24} readTimeout {}{}{}",
                ep.name,
                ep.address.to_string() + if ep.v6only { " v6only" } else { "" },
                dur(ep.read_timeout),
                life,
                pp
            )?;
        }
        if let Some(a) = &self.admin {
            let mut what = Vec::new();
            if a.metrics {
                what.push("/metrics");
            }
            if a.ping {
                what.push("/ping");
            }
            if a.api {
                what.push("/api");
            }
            writeln!(
                s,
                "  {:<16} {:<24} admin: {}",
                a.entrypoint,
                a.address,
                what.join(" ")
            )?;
        }

        writeln!(s, "\nrouters ({}):", self.routers.len())?;
        for (ep_index, ep) in self.enumerate_entrypoints() {
            let mut routers: Vec<_> = self
                .routers
                .iter()
                .filter(|r| r.entrypoints.contains(&ep_index))
                .collect();
            if routers.is_empty() {
                continue;
            }
            routers.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
            writeln!(s, "  on {}:", ep.name)?;
            for r in routers {
                let tls = match &r.tls {
                    None => "plain".to_string(),
                    Some(t) if t.passthrough => "tls passthrough".to_string(),
                    Some(t) => format!(
                        "tls terminate (options {})",
                        self.get_tls_options(t.options)
                            .map_or("?", |o| o.name.as_str())
                    ),
                };
                let mws: Vec<&str> = r
                    .middlewares
                    .iter()
                    .filter_map(|&i| self.get_middleware(i).map(|m| m.name.as_str()))
                    .collect();
                let service = self.get_service(r.service).map_or("?", |s| s.name.as_str());
                write!(
                    s,
                    "    {:<20} prio {:<5} {} -> {} [{}]",
                    r.name, r.priority, r.rule_text, service, tls
                )?;
                if !mws.is_empty() {
                    write!(s, " via {}", mws.join(", "))?;
                }
                if r.rule.is_v2() {
                    // What to write to migrate: the same rule in v3 syntax.
                    write!(s, "\n      ruleSyntax v2; in v3: {}", r.rule)?;
                }
                writeln!(s)?;
            }
        }

        writeln!(s, "\nservices ({}):", self.services.len())?;
        for svc in &self.services {
            match &svc.kind {
                ServiceKind::LoadBalancer(lb) => {
                    let transport = self
                        .get_transport(lb.transport)
                        .map_or("?", |t| t.name.as_str());
                    let mut extra = format!("transport {transport}");
                    if let Some(v) = lb.proxy_protocol {
                        let _ = write!(extra, ", proxyProtocol v{v}");
                    }
                    if let Some(h) = &lb.health_check {
                        let _ = write!(extra, ", health check every {}", dur(h.interval));
                        let kind = match h.probe {
                            crate::model::Probe::Tcp => "",
                            crate::model::Probe::Postgres { .. } => " (postgres)",
                            crate::model::Probe::Redis { .. } => " (redis)",
                            crate::model::Probe::Http { .. } => " (http)",
                        };
                        extra.push_str(kind);
                        if h.role != crate::model::Role::Any {
                            let _ = write!(extra, ", role {}", h.role.as_str());
                        }
                    }
                    if svc.on_server_down == crate::model::OnServerDown::Close {
                        extra.push_str(", sessions closed when their server goes");
                    }
                    if let Some(h) = svc.hold {
                        let _ = write!(extra, ", hold {}", dur(h));
                    }
                    // Balancing extensions, when not the defaults.
                    if lb.strategy != crate::model::Strategy::Wrr {
                        let _ = write!(extra, ", strategy {}", lb.strategy.as_str());
                    }
                    if lb.servers.iter().any(|s| s.max_conn.is_some()) {
                        let q = match (lb.queue_timeout, self.get_transport(lb.transport)) {
                            (Some(q), _) => dur(q),
                            (None, Some(t)) => format!("{} (dialTimeout)", dur(t.dial_timeout)),
                            (None, None) => "?".into(),
                        };
                        let _ = write!(extra, ", queueTimeout {q}");
                    }
                    writeln!(s, "  {} (load balancer, {extra}):", svc.name)?;
                    if lb.servers.is_empty() {
                        writeln!(s, "    (no servers)")?;
                    }
                    for srv in &lb.servers {
                        let resolved = if srv.address_text == srv.address.to_string() {
                            String::new()
                        } else {
                            format!(" ({})", srv.address)
                        };
                        let tls = if srv.tls { " tls" } else { "" };
                        let max = srv
                            .max_conn
                            .map_or(String::new(), |m| format!(" maxConn {m}"));
                        writeln!(
                            s,
                            "    {}{resolved} weight {}{tls}{max}",
                            srv.address_text, srv.weight
                        )?;
                    }
                }
                ServiceKind::Weighted(children) if svc.failover && children.len() == 2 => {
                    let name = |i: usize| {
                        self.get_service(children[i].service)
                            .map_or("?", |s| s.name.as_str())
                    };
                    writeln!(
                        s,
                        "  {} (failover): {}, else {}",
                        svc.name,
                        name(0),
                        name(1)
                    )?;
                }
                ServiceKind::Weighted(children) => {
                    let hc = if svc.weighted_health_check {
                        ", healthCheck: down children skipped"
                    } else {
                        ""
                    };
                    writeln!(s, "  {} (weighted{hc}):", svc.name)?;
                    let total: u64 = children.iter().map(|c| u64::from(c.weight)).sum();
                    for c in children {
                        let name = self.get_service(c.service).map_or("?", |s| s.name.as_str());
                        let pct = if total == 0 {
                            0.0
                        } else {
                            100.0 * f64::from(c.weight) / total as f64
                        };
                        writeln!(s, "    {name} weight {} ({pct:.1}%)", c.weight)?;
                    }
                }
            }
        }

        if !self.middlewares.is_empty() {
            writeln!(s, "\nmiddlewares ({}):", self.middlewares.len())?;
            for m in &self.middlewares {
                match &m.kind {
                    MiddlewareKind::IpAllowList(nets) => {
                        writeln!(s, "  {} ipAllowList {}", m.name, join(nets.iter()))?
                    }
                    MiddlewareKind::InFlightConn(n) => {
                        writeln!(s, "  {} inFlightConn {n} per client IP", m.name)?
                    }
                }
            }
        }

        writeln!(s, "\ntransports ({}):", self.transports.len())?;
        for t in &self.transports {
            write!(
                s,
                "  {} dialTimeout {} terminationDelay {}",
                t.name,
                dur(t.dial_timeout),
                t.termination_delay
                    .duration()
                    .map_or("never".to_string(), dur)
            )?;
            if let Some(v) = t.proxy_protocol {
                write!(s, " proxyProtocol v{v}")?;
            }
            if let Some(i) = t.idle_timeout {
                write!(s, " idleTimeout {}", dur(i))?;
            }
            if let Some(tls) = &t.tls {
                write!(
                    s,
                    " tls{}{}",
                    tls.server_name
                        .as_ref()
                        .map_or(String::new(), |n| format!(" serverName {n}")),
                    if tls.insecure_skip_verify {
                        " insecureSkipVerify"
                    } else {
                        ""
                    }
                )?;
                if !tls.peer_cert_sans.is_empty() {
                    write!(s, " peerCertSANs {}", tls.peer_cert_sans.len())?;
                }
            }
            writeln!(s)?;
        }

        let certs =
            self.tls.certificates.len() + usize::from(self.tls.default_certificate.is_some());
        if certs > 0 || self.tls.options.len() > 1 {
            let names: Vec<&str> = self.tls.options.iter().map(|o| o.name.as_str()).collect();
            writeln!(
                s,
                "\ntls: {certs} certificate(s), options {}",
                names.join(", ")
            )?;
        }

        if !self.acme.resolvers.is_empty() {
            writeln!(
                s,
                "\ncertificate resolvers ({}):",
                self.acme.resolvers.len()
            )?;
            for (ri, r) in self.acme.enumerate_resolvers() {
                let challenges: Vec<String> = r
                    .challenges
                    .iter()
                    .map(|c| match c {
                        crate::model::acme::Challenge::TlsAlpn => "tls-alpn-01".to_string(),
                        crate::model::acme::Challenge::Http { entrypoint, .. } => {
                            format!("http-01 on {entrypoint}")
                        }
                    })
                    .collect();
                writeln!(
                    s,
                    "  {} {} ({}), keyType {}, storage {}",
                    r.name,
                    r.ca_server,
                    challenges.join(", "),
                    r.key_type.as_str(),
                    r.storage.display()
                )?;
                for w in self.acme.wants.iter().filter(|w| w.resolver == ri) {
                    writeln!(
                        s,
                        "    {} (routers {})",
                        w.domain.names().join(", "),
                        w.routers.join(", ")
                    )?;
                }
            }
        }

        let workers = self
            .runtime
            .workers
            .map_or("auto".to_string(), |n| n.to_string());
        let driver = match self.runtime.driver {
            Driver::Auto => "auto",
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        };
        let forwarding = match self.runtime.forwarding {
            Forwarding::Auto => "auto",
            Forwarding::Splice => "splice",
            Forwarding::Copy => "copy",
            Forwarding::Completion => "completion",
        };
        writeln!(
            s,
            "\nruntime: workers {workers}{}, driver {driver}, forwarding {forwarding}, buffer {} bytes",
            if self.runtime.pin_cores { " (pinned)" } else { "" },
            self.runtime.buffer_size
        )?;
        if !self.watch.is_empty() {
            writeln!(
                s,
                "watching: {}",
                join(self.watch.iter().map(|p| p.display()))
            )?;
        }
        writeln!(s, "{} warning(s)", self.warnings.len())?;
        Ok(())
    }
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

/// Durations the way they are written in the config (`100ms`, `10s`, `1m30s`).
pub fn dur(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 && !d.is_zero() {
        return format!("{}µs", d.as_micros());
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    match (secs / 3600, secs / 60 % 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::dur;
    use std::time::Duration;

    #[test]
    fn durations_print_like_config() {
        assert_eq!(dur(Duration::from_millis(100)), "100ms");
        assert_eq!(dur(Duration::from_secs(10)), "10s");
        assert_eq!(dur(Duration::from_secs(90)), "1m30s");
        assert_eq!(dur(Duration::from_secs(3600)), "1h");
        assert_eq!(dur(Duration::ZERO), "0s");
    }
}
