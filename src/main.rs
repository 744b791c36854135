//! The command line (the contract in README.md): `sluicegate [-c FILE]` runs,
//! `sluicegate check [-c FILE]` validates and prints a summary.
//! `sluicegate generate-assets DIR` (for packaging) writes the man pages
//! and shell completions made from this very definition; it is kept out of
//! the definition itself, because clap's completion scripts would offer it
//! even as a hidden subcommand.

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

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
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "generate-assets") {
        let (Some(dir), None) = (args.next(), args.next()) else {
            eprintln!("usage: sluicegate generate-assets DIR");
            return ExitCode::FAILURE;
        };
        let dir = PathBuf::from(dir);
        return match generate_assets(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{}: {e}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
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
                match sluicegate::state::Snapshot::new(cfg) {
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

/// Sections of the man page that clap does not know about: how the process
/// is driven (signals), what it reads from its environment, and its files.
const MAN_EXTRA: &[(&str, &[(&str, &str)])] = &[
    (
        "SIGNALS",
        &[
            ("SIGHUP", "Reload the configuration in place. Listeners and open connections stay; a configuration that fails to load, or that changes entrypoints, is logged and the running one is kept."),
            ("SIGTERM, SIGINT", "Drain: stop accepting, let open connections finish for up to their entrypoint's graceTimeOut, then reset the rest and exit 0. A repeated signal within two seconds is ignored; a later SIGINT ends the drain at once."),
            ("SIGQUIT", "Stop now: reset every open connection and exit."),
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            ("NOTIFY_SOCKET", "Set by systemd for Type=notify services: READY=1 once every listener is bound and the first health verdicts are in, RELOADING=1 and READY=1 around each reload, STOPPING=1 when the drain starts, STATUS= lines with connection counts."),
            ("WATCHDOG_USEC, WATCHDOG_PID", "Set by systemd's WatchdogSec=: WATCHDOG=1 every half period, withheld while a worker thread is not running its loop."),
            ("JOURNAL_STREAM", "When it names the stream standard error is connected to, log lines carry no timestamp of their own and start with a syslog priority (<3> error, <4> warn, <6> info). Otherwise lines are logfmt with ts=."),
        ],
    ),
    (
        "FILES",
        &[
            ("/etc/sluicegate/sluicegate.toml", "The configuration the packaged service runs with (Traefik's TCP configuration, TOML). Paths in it are relative to its directory."),
            ("/usr/lib/systemd/system/sluicegate.service", "The service unit: systemctl start, reload (checks first, then SIGHUP) and stop (drain)."),
        ],
    ),
];

/// The man pages (DIR/man/sluicegate.1, sluicegate-check.1) and the bash,
/// zsh and fish completions (DIR/completions/).
fn generate_assets(dir: &std::path::Path) -> std::io::Result<()> {
    use clap_complete::Shell;
    use clap_mangen::roff::{bold, roman, Roff};
    let cmd = Cli::command();
    let man_dir = dir.join("man");
    std::fs::create_dir_all(&man_dir)?;
    // One page per visible command (sluicegate.1, sluicegate-check.1; not
    // the help subcommand, which needs no page), then our own sections.
    clap_mangen::generate_to(cmd.clone(), &man_dir)?;
    let mut page = std::fs::read(man_dir.join("sluicegate.1"))?;
    let mut extra = Roff::default();
    for (section, entries) in MAN_EXTRA {
        extra.control("SH", [*section]);
        for (term, text) in *entries {
            extra.control("TP", []);
            extra.text([bold(*term)]);
            extra.text([roman(*text)]);
        }
    }
    extra.to_writer(&mut page)?;
    std::fs::write(man_dir.join("sluicegate.1"), page)?;
    let comp_dir = dir.join("completions");
    std::fs::create_dir_all(&comp_dir)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        clap_complete::generate_to(shell, &mut cmd, "sluicegate", &comp_dir)?;
    }
    Ok(())
}
