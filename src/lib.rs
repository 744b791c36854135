//! sluicegate: a thread-per-core io_uring TCP/TLS gateway that reads Traefik's
//! TCP configuration.
//!
//! Data path (per worker thread, no shared mutable state):
//! `worker` (listeners, accept loop, snapshot swap) → `session` (one
//! connection's lifecycle) → `route` (compiled rules) → `balance` (smooth
//! weighted round robin) → `forward` (copy and splice pumps, half-close,
//! resets).
//!
//! Shared state: `state` (the published `Snapshot`, `Shared` and one
//! worker's view; `Shared::reload` replaces a snapshot in one place). The
//! top-level modules form no cycle (tests/architecture.rs): `engine` is the
//! only one that depends on `worker`.
//!
//! Control plane: `engine` (start-up, signals, reload, drain), `config`
//! (Traefik TOML → validated `model::Config`), `health` (active checks on
//! their own threads, publishing up/down flags), `admin` (`/ping`,
//! `/metrics`, `/api`), `metrics` (per-worker counters, summed on scrape) and
//! `notify` (readiness, reload, stop and watchdog messages to systemd).
//!
//! `outcome` names how a connection ended: one typed value, and one name
//! table, for the access log's `outcome=` and the metrics' `outcome` label.
//!
//! `sys` is the only module with `unsafe`: the crate denies it everywhere
//! else, so a new `unsafe` block elsewhere does not compile.

#![deny(unsafe_code)]

pub mod acme;
pub mod admin;
pub mod balance;
pub mod completion;
pub mod config;
pub mod engine;
pub mod forward;
pub mod health;
pub mod kv;
pub mod log;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod outcome;
pub mod peek;
pub mod pg;
pub mod route;
pub mod rule;
pub mod session;
pub mod state;
#[allow(unsafe_code)]
pub mod sys;
pub mod tls;
pub mod wire;
pub mod worker;
