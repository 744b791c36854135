//! The ACME thread: keeps every wanted certificate obtained and fresh.
//!
//! `apply` hands it each new configuration (at start and on every reload);
//! the thread wakes on that, or when the next renewal or retry is due. One
//! order runs at a time, on a current-thread tokio runtime owned by this
//! thread (the ACME client's timers), so a slow or absent CA delays only
//! other orders, never a connection. Failures are logged, counted and
//! retried with exponential backoff (10 s doubling to 1 h); the default
//! certificate (or the stored one) is served meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::sign::CertifiedKey;

use super::order::{self, Issued};
use super::storage::{CertData, ResolverData, StorageFile};
use super::{Challenge, Domain, ResolverCfg, ResolverStats, Settings};

const FIRST_RETRY: Duration = Duration::from_secs(10);
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// The longest the thread sleeps with nothing due (it rechecks then).
const IDLE: Duration = Duration::from_secs(3600);
/// One whole order (account, challenges, issuance) may take this long.
const ORDER_DEADLINE: Duration = Duration::from_secs(240);

#[derive(Default)]
struct Control {
    /// (generation, settings): the generation changes with the settings.
    settings: Mutex<(u64, Settings)>,
    wake: Condvar,
}

fn control() -> &'static Control {
    static CONTROL: OnceLock<Control> = OnceLock::new();
    CONTROL.get_or_init(Control::default)
}

/// Hands a configuration's resolvers and wanted certificates to the ACME
/// thread (started on the first configuration that has a resolver).
pub fn apply(s: &Settings) {
    let http_eps = s
        .resolvers
        .iter()
        .flat_map(|r| r.challenges.iter())
        .filter_map(|c| match c {
            Challenge::Http { entrypoint, .. } => Some(entrypoint.clone()),
            Challenge::TlsAlpn => None,
        })
        .collect();
    super::set_active(!s.resolvers.is_empty(), http_eps);
    static STARTED: OnceLock<()> = OnceLock::new();
    if s.resolvers.is_empty() && STARTED.get().is_none() {
        return;
    }
    let c = control();
    if let Ok(mut g) = c.settings.lock() {
        if g.1 != *s {
            g.0 += 1;
            g.1 = s.clone();
            c.wake.notify_all();
        }
    }
    STARTED.get_or_init(|| {
        if let Err(e) = std::thread::Builder::new().name("acme".into()).spawn(run) {
            crate::log!(Error, "acme: cannot start the ACME thread", error = e);
        }
    });
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// One stored certificate, parsed for serving.
struct Served {
    ck: Arc<CertifiedKey>,
    not_before: i64,
    not_after: i64,
}

#[derive(Default)]
struct ResolverState {
    /// The storage path this state was loaded from.
    storage: std::path::PathBuf,
    data: ResolverData,
    /// The storage file could not be read: it is not rewritten (that would
    /// lose what it holds).
    storage_broken: bool,
    account: Option<instant_acme::Account>,
    orders_ok: u64,
    orders_failed: u64,
}

#[derive(Default)]
struct State {
    resolvers: HashMap<String, ResolverState>,
    /// Parsed certificates by their stored base64 PEM.
    parsed: HashMap<String, Option<Arc<Served>>>,
    /// (resolver, main domain) -> (next try, current delay).
    backoff: HashMap<(String, String), (Instant, Duration)>,
}

fn run() {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::log!(Error, "acme: cannot start the ACME runtime", error = e);
            return;
        }
    };
    let c = control();
    let mut st = State::default();
    loop {
        let (generation, settings) = match c.settings.lock() {
            Ok(g) => (g.0, g.1.clone()),
            Err(_) => return,
        };
        let next = st.work(&rt, &settings, generation);
        let Ok(g) = c.settings.lock() else { return };
        let left = next.saturating_duration_since(Instant::now());
        if g.0 == generation && !left.is_zero() {
            let _ = c.wake.wait_timeout_while(g, left, |g| g.0 == generation);
        }
    }
}

impl State {
    fn load(&mut self, r: &ResolverCfg) {
        if self
            .resolvers
            .get(&r.name)
            .is_some_and(|s| s.storage == r.storage)
        {
            return;
        }
        let mut rs = ResolverState {
            storage: r.storage.clone(),
            ..ResolverState::default()
        };
        match StorageFile::load(&r.storage).and_then(|f| f.resolver(&r.name)) {
            Ok(data) => {
                crate::log!(
                    Info,
                    "acme: storage loaded",
                    resolver = r.name,
                    storage = r.storage.display(),
                    certificates = data.certificates.len()
                );
                rs.data = data;
            }
            Err(e) => {
                crate::log!(
                    Error,
                    "acme: cannot use the storage file; it is left untouched and certificates are kept in memory only",
                    resolver = r.name,
                    error = e
                );
                rs.storage_broken = true;
            }
        }
        self.resolvers.insert(r.name.clone(), rs);
    }

    fn served(&mut self, c: &CertData) -> Option<Arc<Served>> {
        self.parsed
            .entry(c.certificate.clone())
            .or_insert_with(|| {
                let (chain, key) = c.pem()?;
                match order::certified_key(&chain, &key) {
                    Ok(ck) => {
                        let (nb, na) = crate::wire::x509::validity(ck.cert.first()?.as_ref())?;
                        Some(Arc::new(Served {
                            ck: Arc::new(ck),
                            not_before: nb,
                            not_after: na,
                        }))
                    }
                    Err(e) => {
                        crate::log!(
                            Warn,
                            "acme: a stored certificate is unusable and is not served",
                            domain = c.domain.main,
                            error = e
                        );
                        None
                    }
                }
            })
            .clone()
    }

    /// Publishes every unexpired stored certificate of the configured
    /// resolvers (the latest expiry wins a shared name) and the figures.
    fn publish(&mut self, settings: &Settings) {
        let now = now_unix();
        let mut by_name: HashMap<String, Arc<Served>> = HashMap::new();
        let mut stats = Vec::new();
        for r in &settings.resolvers {
            let certs: Vec<CertData> = self
                .resolvers
                .get(&r.name)
                .map(|s| s.data.certificates.clone())
                .unwrap_or_default();
            let mut not_after = Vec::new();
            for c in &certs {
                let Some(s) = self.served(c) else { continue };
                if s.not_after <= now {
                    continue;
                }
                not_after.push((c.domain.main.clone(), s.not_after));
                for name in c.domain().names() {
                    match by_name.get(&name) {
                        Some(old) if old.not_after >= s.not_after => {}
                        _ => {
                            by_name.insert(name, s.clone());
                        }
                    }
                }
            }
            let rs = self.resolvers.get(&r.name);
            stats.push(ResolverStats {
                resolver: r.name.clone(),
                orders_ok: rs.map_or(0, |s| s.orders_ok),
                orders_failed: rs.map_or(0, |s| s.orders_failed),
                not_after,
            });
        }
        // Forget parsed certificates no resolver stores any more (renewed).
        let stored: std::collections::HashSet<&str> = self
            .resolvers
            .values()
            .flat_map(|s| s.data.certificates.iter().map(|c| c.certificate.as_str()))
            .collect();
        self.parsed.retain(|k, _| stored.contains(k.as_str()));
        super::publish(
            by_name
                .into_iter()
                .map(|(k, v)| (k, v.ck.clone()))
                .collect(),
        );
        super::set_stats(stats);
    }

    /// When the stored certificate for `domain` is due for renewal (now
    /// when there is none): when a third of its lifetime is left.
    fn due(&mut self, r: &ResolverCfg, domain: &Domain) -> i64 {
        let stored: Option<CertData> = self.resolvers.get(&r.name).and_then(|s| {
            s.data
                .certificates
                .iter()
                .rev()
                .find(|c| c.domain().same_names(domain))
                .cloned()
        });
        let Some(c) = stored else { return 0 };
        let Some(s) = self.served(&c) else { return 0 };
        let lifetime = (s.not_after - s.not_before).max(0);
        let lifetime = if lifetime == 0 {
            r.certificates_duration.as_secs() as i64
        } else {
            lifetime
        };
        s.not_after - lifetime / 3
    }

    fn work(
        &mut self,
        rt: &tokio::runtime::Runtime,
        settings: &Settings,
        generation: u64,
    ) -> Instant {
        for r in &settings.resolvers {
            self.load(r);
        }
        self.publish(settings);
        let mut next = Instant::now() + IDLE;
        for want in &settings.wants {
            if control().settings.lock().is_ok_and(|g| g.0 != generation) {
                // A new configuration: start over with it.
                return Instant::now();
            }
            let Some(r) = settings.resolver(want.resolver) else {
                continue;
            };
            let now = now_unix();
            let due = self.due(r, &want.domain);
            if due > now {
                let wait = Duration::from_secs(due.saturating_sub(now).unsigned_abs());
                next = next.min(Instant::now() + wait);
                continue;
            }
            let key = (r.name.clone(), want.domain.main.clone());
            if let Some((at, _)) = self.backoff.get(&key) {
                if *at > Instant::now() {
                    next = next.min(*at);
                    continue;
                }
            }
            let renewing = due > 0;
            match self.order(rt, r, &want.domain) {
                Ok(issued) => {
                    self.backoff.remove(&key);
                    self.store(r, &want.domain, &issued);
                    self.publish(settings);
                    let na = self
                        .resolvers
                        .get(&r.name)
                        .and_then(|s| s.data.certificates.last().cloned())
                        .and_then(|c| self.served(&c))
                        .map_or(0, |s| s.not_after);
                    crate::log!(
                        Info,
                        if renewing {
                            "acme: certificate renewed"
                        } else {
                            "acme: certificate obtained"
                        },
                        resolver = r.name,
                        domains = want.domain.names().join(","),
                        not_after = na
                    );
                    // Its renewal time is computed on the next pass.
                    next = Instant::now();
                }
                Err(e) => {
                    let delay = self
                        .backoff
                        .get(&key)
                        .map_or(FIRST_RETRY, |(_, d)| (*d * 2).min(MAX_RETRY));
                    self.backoff.insert(key, (Instant::now() + delay, delay));
                    next = next.min(Instant::now() + delay);
                    if let Some(s) = self.resolvers.get_mut(&r.name) {
                        s.orders_failed += 1;
                        // The next try starts from the directory again.
                        s.account = None;
                    }
                    self.publish(settings);
                    crate::log!(
                        Error,
                        "acme: cannot obtain a certificate; serving the stored or default certificate meanwhile",
                        resolver = r.name,
                        domains = want.domain.names().join(","),
                        routers = want.routers.join(","),
                        retry_in = format!("{}s", delay.as_secs()),
                        error = e
                    );
                }
            }
        }
        next
    }

    fn order(
        &mut self,
        rt: &tokio::runtime::Runtime,
        r: &ResolverCfg,
        domain: &Domain,
    ) -> Result<Issued, String> {
        let rs = self.resolvers.entry(r.name.clone()).or_default();
        let stored_account = rs.data.account.clone();
        let cached = rs.account.clone();
        let result = rt.block_on(async {
            tokio::time::timeout(ORDER_DEADLINE, async {
                let (acct, new_data) = match cached {
                    Some(a) => (a, None),
                    None => order::account(r, stored_account.as_ref()).await?,
                };
                let issued = order::obtain(&acct, r, domain).await;
                Ok::<_, String>((acct, new_data, issued))
            })
            .await
            .map_err(|_| format!("the order took longer than {}s", ORDER_DEADLINE.as_secs()))?
        });
        let (acct, new_data, issued) = result?;
        let rs = self.resolvers.entry(r.name.clone()).or_default();
        rs.account = Some(acct);
        if let Some(d) = new_data {
            rs.data.account = Some(d);
            self.save(r);
        }
        issued
    }

    fn store(&mut self, r: &ResolverCfg, domain: &Domain, issued: &Issued) {
        let rs = self.resolvers.entry(r.name.clone()).or_default();
        rs.orders_ok += 1;
        rs.data
            .certificates
            .retain(|c| !c.domain().same_names(domain));
        rs.data
            .certificates
            .push(CertData::new(domain, &issued.chain_pem, &issued.key_pem));
        self.save(r);
    }

    /// Rewrites this resolver's entry in its storage file (other entries
    /// as they are on disk now).
    fn save(&mut self, r: &ResolverCfg) {
        let Some(rs) = self.resolvers.get(&r.name) else {
            return;
        };
        if rs.storage_broken {
            return;
        }
        let result = StorageFile::load(&r.storage).and_then(|mut f| {
            f.set_resolver(&r.name, &rs.data);
            f.save(&r.storage)
        });
        if let Err(e) = result {
            crate::log!(
                Error,
                "acme: cannot save the storage file",
                resolver = r.name,
                error = e
            );
        }
    }
}
