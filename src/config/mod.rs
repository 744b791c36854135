//! Configuration: Traefik TCP TOML file model → validation → `model::Config`.

pub mod rule;
