//! sluicegate: a thread-per-core io_uring TCP/TLS gateway that reads Traefik's
//! TCP configuration.

pub mod config;
pub mod model;
