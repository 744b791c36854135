//! The command line (the contract in README.md): `sluicegate [-c FILE]` runs,
//! `sluicegate check [-c FILE]` validates and prints a summary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_CONFIG: &str = "config/sluicegate.toml";

#[derive(Parser)]
#[command(
    name = "sluicegate",
    version,
    about = "Thread-per-core io_uring TCP/TLS gateway that reads Traefik's TCP configuration"
)]
struct Cli {
    /// Configuration file (Traefik TCP TOML).
    #[arg(short, long, global = true, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration, print a summary, exit 0 (1 on error).
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => match sluicegate::config::load(&cli.config) {
            Ok(cfg) => {
                for w in &cfg.warnings {
                    eprintln!("warning: {w}");
                }
                let summary = cfg.summary();
                // Load certificates too, as a start would: a config that
                // passes `check` starts.
                match sluicegate::worker::Snapshot::new(cfg) {
                    Ok(_) => {
                        print!("{summary}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::FAILURE
                    }
                }
            }
            Err(errs) => {
                eprintln!("{errs}");
                ExitCode::FAILURE
            }
        },
        None => match sluicegate::engine::run(&cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    }
}
