//! KV providers: Traefik's dynamic configuration kept in etcd or Redis, in
//! Traefik's KV layout (`traefik/tcp/routers/<r>/rule`,
//! `traefik/tcp/services/<s>/loadbalancer/servers/0/address`, ...), shared by
//! a fleet of instances.
//!
//! What Traefik's KV providers get wrong and this does not:
//! - every read is one consistent view of the whole tree (an etcd range at
//!   one revision; a Redis script that reads every key atomically), so a
//!   multi-key change is applied whole or not at all;
//! - the tree is read whole each time it changed, so a deleted last router,
//!   an expired Redis key or a change made while the store was down is seen;
//! - a store that goes away is polled until it is back, then read in full;
//!   meanwhile the last good configuration keeps serving.
//!
//! The store is polled (every `POLL_PERIOD`): for etcd a `count_only` range
//! that returns only the store's revision, then a full read when it moved;
//! for Redis the read itself (a configuration is small). Each change
//! triggers an ordinary reload, which reads the cached tree: the KV part of
//! a configuration goes through the same parsing, checks and errors as a
//! file (positions refer to a `key = value` listing of the pairs).
//!
//! Owns: the etcd and Redis clients and the KV-to-configuration layout. May
//! depend on `model` and `log`; `config` reads through it.

mod etcd;
mod http;
mod redis;

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::model::{KvKind, KvProvider};

/// How often a store is asked whether the configuration changed.
pub const POLL_PERIOD: Duration = Duration::from_millis(250);
/// Connect and read deadlines for one request to a store.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of configuration one store may hand over (as for files).
pub const MAX_BYTES: usize = 8 << 20;

/// One consistent read of a provider's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// etcd: the store revision the read was made at; Redis: a hash of the
    /// content (Redis has no revision).
    pub revision: u64,
    /// Keys relative to the root key (`tcp/routers/r/rule`), sorted.
    pub pairs: Vec<(String, String)>,
}

impl KvProvider {
    /// A name for logs, metrics and error positions: `etcd://host:port/root`.
    pub fn id(&self) -> String {
        let scheme = match self.kind {
            KvKind::Etcd => "etcd",
            KvKind::Redis => "redis",
        };
        format!(
            "{scheme}://{}/{}",
            self.endpoints.first().map_or("", String::as_str),
            self.root_key
        )
    }
}

/// The last tree read from each provider (by id): what a reload uses.
fn cache() -> &'static Mutex<HashMap<String, Arc<Tree>>> {
    static CACHE: std::sync::OnceLock<Mutex<HashMap<String, Arc<Tree>>>> =
        std::sync::OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn cached(id: &str) -> Option<Arc<Tree>> {
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(id)
        .cloned()
}

fn store(id: &str, t: Arc<Tree>) {
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.to_string(), t);
}

/// The tree a configuration load uses: the one the watcher last read, else
/// a read now (start-up, or a provider a reload added).
pub fn tree_for_load(p: &KvProvider) -> Result<Arc<Tree>, String> {
    let id = p.id();
    if let Some(t) = cached(&id) {
        return Ok(t);
    }
    let t = Arc::new(read(p).map_err(|e| format!("{id}: {e}"))?);
    store(&id, t.clone());
    Ok(t)
}

/// Reads the whole tree, trying the endpoints in order.
pub fn read(p: &KvProvider) -> io::Result<Tree> {
    each_endpoint(p, |ep| match p.kind {
        KvKind::Etcd => etcd::read(ep, p),
        KvKind::Redis => redis::read(ep, p),
    })
}

/// Whether the store's view may have changed since `revision`: for etcd a
/// cheap revision query; Redis is read in full.
fn changed(p: &KvProvider, known: &Tree) -> io::Result<Option<Tree>> {
    if p.kind == KvKind::Etcd {
        let rev = each_endpoint(p, |ep| etcd::revision(ep, p))?;
        if rev == known.revision {
            return Ok(None);
        }
    }
    let t = read(p)?;
    Ok((t != *known).then_some(t))
}

fn each_endpoint<T>(p: &KvProvider, f: impl Fn(&str) -> io::Result<T>) -> io::Result<T> {
    let mut last = io::Error::other("no endpoints");
    for ep in &p.endpoints {
        match f(ep) {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Watches every provider on its own thread; a change is stored and a
/// reload requested through `trigger`. Runs until `stopping` says so.
/// `trigger` returns false when nobody listens any more (the watcher ends).
pub fn watch(
    providers: Vec<KvProvider>,
    stopping: impl Fn() -> bool + Send + Sync + 'static,
    trigger: impl Fn() -> bool + Send + Sync + 'static,
) -> io::Result<()> {
    let stopping = Arc::new(stopping);
    let trigger = Arc::new(trigger);
    for p in providers {
        let (stopping, trigger) = (stopping.clone(), trigger.clone());
        std::thread::Builder::new()
            .name("sluicegate-kv".into())
            .spawn(move || watch_one(&p, &*stopping, &*trigger))?;
    }
    Ok(())
}

fn watch_one(p: &KvProvider, stopping: &dyn Fn() -> bool, trigger: &dyn Fn() -> bool) {
    let id = p.id();
    let mut down = false;
    while !stopping() {
        std::thread::sleep(POLL_PERIOD);
        let known = cached(&id);
        let result = match &known {
            Some(k) => changed(p, k),
            None => read(p).map(Some),
        };
        match result {
            Ok(new) => {
                if down {
                    down = false;
                    crate::log!(Info, "kv store reachable again", provider = id);
                }
                if let Some(t) = new {
                    crate::log!(
                        Info,
                        "kv change seen",
                        provider = id,
                        revision = t.revision,
                        keys = t.pairs.len()
                    );
                    store(&id, Arc::new(t));
                    if !trigger() {
                        return;
                    }
                }
            }
            Err(e) => {
                if !down {
                    down = true;
                    crate::log!(
                        Warn,
                        "kv store unreachable: serving the last configuration read",
                        provider = id,
                        error = e
                    );
                }
            }
        }
    }
}

/// FNV-1a over the pairs: Redis's stand-in for a revision.
fn content_hash(pairs: &[(String, String)]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in pairs {
        for b in k.bytes().chain([0u8]).chain(v.bytes()).chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Keys relative to `root` (`traefik/tcp/x` -> `tcp/x`), sorted; keys
/// outside the root (or the root itself) are dropped.
fn relative(root: &str, pairs: Vec<(String, String)>) -> Vec<(String, String)> {
    let prefix = format!("{}/", root.trim_end_matches('/'));
    let mut out: Vec<(String, String)> = pairs
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v)))
        .filter(|(k, _)| !k.is_empty())
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_relative_and_sorted() {
        let pairs = vec![
            ("traefik/tcp/b".to_string(), "2".to_string()),
            ("traefik/tcp/a".to_string(), "1".to_string()),
            ("traefikx/tcp/c".to_string(), "3".to_string()),
            ("traefik/".to_string(), "root".to_string()),
        ];
        assert_eq!(
            relative("traefik", pairs),
            vec![
                ("tcp/a".to_string(), "1".to_string()),
                ("tcp/b".to_string(), "2".to_string())
            ]
        );
        let a = [("k".to_string(), "v".to_string())];
        let b = [("k".to_string(), "w".to_string())];
        assert_ne!(content_hash(&a), content_hash(&b));
    }
}
