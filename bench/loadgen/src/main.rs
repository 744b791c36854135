//! sluicegate-loadgen: load generator (pingpong, churn, idle, bulk) and test
//! backends (echo-server, sink-server) for the sluicegate benchmarks.
//!
//! Every client run prints one readable line and one JSON line per result on
//! stdout (`--json-only`: only the JSON line). Runs are bounded in time
//! (`--duration`/`--hold`) and in connections (`MAX_CONNS`).

mod client;
mod ev;
mod server;

use clap::{Parser, Subcommand, ValueEnum};
use client::Direction;
use serde_json::{json, Map, Value};
use std::process::ExitCode;
use std::time::Duration;

/// Upper bound on connections any mode opens at once (the per-process open-file
/// limit on the bench machines is 20000).
const MAX_CONNS: usize = 10_000;
const MAX_DURATION_S: f64 = 3600.0;

#[derive(Parser)]
#[command(
    name = "sluicegate-loadgen",
    version,
    about = "Load generator and test backends for sluicegate benchmarks"
)]
struct Cli {
    /// Print only the JSON result line.
    #[arg(long, global = true)]
    json_only: bool,
    /// Free-form label copied into the JSON ("label" key), e.g. the proxy's name.
    #[arg(long, global = true)]
    label: Option<String>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Request/response against an echo backend: send SIZE bytes, read them back.
    Pingpong {
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 50)]
        conns: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Seconds.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Open loop at this many requests/s in total (latency from the scheduled send time).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Connection churn: connect, send SIZE, read SIZE, close; N loops in parallel.
    Churn {
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 50)]
        conns: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// For a 127.x target: spread connections over this many source addresses
        /// 127.0.0.2.. (0 = let the kernel pick 127.0.0.1).
        #[arg(long, default_value_t = 16)]
        sources: usize,
    },
    /// Hold N connections (one exchange each) and report the proxy's memory per connection.
    Idle {
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// Seconds to hold the connections after they are set up.
        #[arg(long, default_value_t = 2.0)]
        hold: f64,
        /// Process(es) whose memory to measure: PID or PID,PID,... (summed).
        #[arg(long, value_delimiter = ',')]
        pid: Vec<u32>,
        #[arg(long, default_value_t = 16)]
        size: usize,
        /// Seconds to wait after setup before reading memory.
        #[arg(long, default_value_t = 0.5)]
        settle: f64,
        /// Give up opening connections after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
    },
    /// Bulk throughput: N streams up (to a sink), down (from a sink-server) or both.
    Bulk {
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 1)]
        streams: usize,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        #[arg(long, value_enum, default_value_t = Dir::Up)]
        direction: Dir,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Bytes per read/write call.
        #[arg(long, default_value_t = 128 * 1024)]
        chunk: usize,
    },
    /// Echo backend: writes back every byte it reads. Prints `listening ADDR` first.
    EchoServer {
        /// Address(es) to listen on: H:P or H:P,H:P,...
        #[arg(long, default_value = "127.0.0.1:0", value_delimiter = ',')]
        listen: Vec<String>,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Exit after this many seconds (0 = run until killed).
        #[arg(long, default_value_t = 0.0)]
        duration: f64,
    },
    /// Sink/source backend: first byte `D` = stream data to the client, `B` = both,
    /// anything else = discard. Prints `listening ADDR` first.
    SinkServer {
        /// Address(es) to listen on: H:P or H:P,H:P,...
        #[arg(long, default_value = "127.0.0.1:0", value_delimiter = ',')]
        listen: Vec<String>,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 0.0)]
        duration: f64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Dir {
    Up,
    Down,
    Both,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluicegate-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_conns(n: usize) -> Result<(), String> {
    if n == 0 || n > MAX_CONNS {
        return Err(format!("connection count must be 1..={MAX_CONNS}, got {n}"));
    }
    Ok(())
}

fn check_secs(what: &str, s: f64) -> Result<Duration, String> {
    if s.is_nan() || s <= 0.0 || s > MAX_DURATION_S {
        return Err(format!(
            "--{what} must be in (0, {MAX_DURATION_S}] seconds, got {s}"
        ));
    }
    Ok(Duration::from_secs_f64(s))
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 1000.0 * 10.0).round() / 10.0
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

fn latency_fields(m: &mut Map<String, Value>, st: &client::Stats, prefix: &str) {
    let Some(h) = st.hist.as_ref().filter(|h| !h.is_empty()) else {
        for k in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us"] {
            m.insert(format!("{prefix}{k}"), Value::Null);
        }
        return;
    };
    m.insert(
        format!("{prefix}p50_us"),
        json!(us(h.value_at_quantile(0.50))),
    );
    m.insert(
        format!("{prefix}p90_us"),
        json!(us(h.value_at_quantile(0.90))),
    );
    m.insert(
        format!("{prefix}p99_us"),
        json!(us(h.value_at_quantile(0.99))),
    );
    m.insert(
        format!("{prefix}p999_us"),
        json!(us(h.value_at_quantile(0.999))),
    );
    m.insert(format!("{prefix}max_us"), json!(us(h.max())));
    m.insert(
        format!("{prefix}mean_us"),
        json!(round(h.mean() / 1000.0, 1)),
    );
}

fn common(m: &mut Map<String, Value>, st: &client::Stats) {
    m.insert("errors".into(), json!(st.errors));
    m.insert("connect_errors".into(), json!(st.connect_errors));
    m.insert("verify_failures".into(), json!(st.verify_failures));
    if let Some(e) = &st.first_error {
        m.insert("first_error".into(), json!(e));
    }
    m.insert(
        "loadgen_cpu_s".into(),
        json!(round(ev::self_cpu_seconds(), 3)),
    );
}

fn run(cli: &Cli) -> Result<(), String> {
    let mut m = Map::new();
    match &cli.mode {
        Mode::EchoServer {
            listen,
            threads,
            duration,
        } => {
            return server::run(server::Kind::Echo, listen, *threads, *duration)
                .map_err(|e| e.to_string());
        }
        Mode::SinkServer {
            listen,
            threads,
            duration,
        } => {
            return server::run(server::Kind::Sink, listen, *threads, *duration)
                .map_err(|e| e.to_string());
        }
        Mode::Pingpong {
            target,
            conns,
            size,
            duration,
            rate,
            threads,
        } => {
            check_conns(*conns)?;
            if *size == 0 {
                return Err("--size must be at least 1".into());
            }
            if let Some(r) = rate {
                if r.is_nan() || *r <= 0.0 {
                    return Err("--rate must be > 0".into());
                }
            }
            let o = client::PingpongOpts {
                target: ev::resolve(target).map_err(|e| e.to_string())?,
                conns: *conns,
                size: *size,
                duration: check_secs("duration", *duration)?,
                rate: *rate,
                threads: *threads,
            };
            let st = client::pingpong(&o).map_err(|e| format!("pingpong {target}: {e}"))?;
            let secs = st.elapsed.as_secs_f64().max(1e-9);
            m.insert("mode".into(), json!("pingpong"));
            m.insert("target".into(), json!(target));
            m.insert(
                "loop".into(),
                json!(if rate.is_some() { "open" } else { "closed" }),
            );
            m.insert("conns".into(), json!(conns));
            m.insert("size".into(), json!(size));
            m.insert("duration_s".into(), json!(round(secs, 3)));
            m.insert("offered_rps".into(), rate.map_or(Value::Null, |r| json!(r)));
            m.insert("requests".into(), json!(st.completed));
            m.insert("rps".into(), json!(round(st.completed as f64 / secs, 1)));
            m.insert("bytes_echoed".into(), json!(st.bytes_down));
            latency_fields(&mut m, &st, "");
            m.insert("backlog_at_end".into(), json!(st.backlog_at_end));
            common(&mut m, &st);
        }
        Mode::Churn {
            target,
            conns,
            size,
            duration,
            threads,
            sources,
        } => {
            check_conns(*conns)?;
            if *size == 0 {
                return Err("--size must be at least 1".into());
            }
            let addr = ev::resolve(target).map_err(|e| e.to_string())?;
            let o = client::ChurnOpts {
                target: addr,
                sources: ev::loopback_sources(&addr, *sources),
                conns: *conns,
                size: *size,
                duration: check_secs("duration", *duration)?,
                threads: *threads,
            };
            let st = client::churn(&o).map_err(|e| format!("churn {target}: {e}"))?;
            let secs = st.elapsed.as_secs_f64().max(1e-9);
            m.insert("mode".into(), json!("churn"));
            m.insert("target".into(), json!(target));
            m.insert("conns".into(), json!(conns));
            m.insert("size".into(), json!(size));
            m.insert("duration_s".into(), json!(round(secs, 3)));
            m.insert("connections".into(), json!(st.completed));
            m.insert("cps".into(), json!(round(st.completed as f64 / secs, 1)));
            m.insert("bytes_echoed".into(), json!(st.bytes_down));
            // Latency: connect() start to the first byte of the reply.
            latency_fields(&mut m, &st, "");
            common(&mut m, &st);
        }
        Mode::Idle {
            target,
            conns,
            hold,
            pid,
            size,
            settle,
            duration,
        } => {
            check_conns(*conns)?;
            let o = client::IdleOpts {
                target: ev::resolve(target).map_err(|e| e.to_string())?,
                conns: *conns,
                size: (*size).max(1),
                hold: if *hold > 0.0 {
                    check_secs("hold", *hold)?
                } else {
                    Duration::ZERO
                },
                settle: Duration::from_secs_f64(settle.clamp(0.0, 60.0)),
                pids: pid.clone(),
                deadline: check_secs("duration", *duration)?,
            };
            let r = client::idle(&o).map_err(|e| format!("idle {target}: {e}"))?;
            m.insert("mode".into(), json!("idle"));
            m.insert("target".into(), json!(target));
            m.insert("conns".into(), json!(conns));
            m.insert("opened".into(), json!(r.opened));
            m.insert("setup_s".into(), json!(round(r.setup.as_secs_f64(), 3)));
            m.insert("pids".into(), json!(pid));
            let kib = |v: Option<u64>| v.map_or(Value::Null, |x| json!(x));
            m.insert("rss_before_kib".into(), kib(r.before.map(|x| x.rss_kib)));
            m.insert("rss_after_kib".into(), kib(r.after.map(|x| x.rss_kib)));
            m.insert(
                "rss_after_hold_kib".into(),
                kib(r.after_hold.map(|x| x.rss_kib)),
            );
            let per = |a: Option<u64>, b: Option<u64>| match (a, b) {
                (Some(a), Some(b)) if r.opened > 0 => {
                    json!(round((b as f64 - a as f64) / r.opened as f64, 2))
                }
                _ => Value::Null,
            };
            m.insert(
                "rss_per_conn_kib".into(),
                per(r.before.map(|x| x.rss_kib), r.after.map(|x| x.rss_kib)),
            );
            m.insert(
                "pss_per_conn_kib".into(),
                per(
                    r.before.and_then(|x| x.pss_kib),
                    r.after.and_then(|x| x.pss_kib),
                ),
            );
            latency_fields(&mut m, &r.stats, "exchange_");
            common(&mut m, &r.stats);
        }
        Mode::Bulk {
            target,
            streams,
            duration,
            direction,
            threads,
            chunk,
        } => {
            check_conns(*streams)?;
            let o = client::BulkOpts {
                target: ev::resolve(target).map_err(|e| e.to_string())?,
                streams: *streams,
                duration: check_secs("duration", *duration)?,
                direction: match direction {
                    Dir::Up => Direction::Up,
                    Dir::Down => Direction::Down,
                    Dir::Both => Direction::Both,
                },
                threads: *threads,
                chunk: (*chunk).clamp(1024, 16 << 20),
            };
            let st = client::bulk(&o).map_err(|e| format!("bulk {target}: {e}"))?;
            let secs = st.elapsed.as_secs_f64().max(1e-9);
            let gbps = |b: u64| round(b as f64 * 8.0 / secs / 1e9, 3);
            m.insert("mode".into(), json!("bulk"));
            m.insert("target".into(), json!(target));
            m.insert(
                "direction".into(),
                json!(format!("{:?}", o.direction).to_lowercase()),
            );
            m.insert("streams".into(), json!(streams));
            m.insert("streams_alive".into(), json!(st.completed));
            m.insert("duration_s".into(), json!(round(secs, 3)));
            m.insert("bytes_up".into(), json!(st.bytes_up));
            m.insert("bytes_down".into(), json!(st.bytes_down));
            m.insert("gbps_up".into(), json!(gbps(st.bytes_up)));
            m.insert("gbps_down".into(), json!(gbps(st.bytes_down)));
            m.insert("gbps".into(), json!(gbps(st.bytes_up + st.bytes_down)));
            common(&mut m, &st);
        }
    }
    if let Some(l) = &cli.label {
        m.insert("label".into(), json!(l));
    }
    let line = Value::Object(m.clone()).to_string();
    if !cli.json_only {
        println!("{}", table_line(&m));
    }
    println!("{line}");
    Ok(())
}

fn table_line(m: &Map<String, Value>) -> String {
    let mut s = String::new();
    for (k, v) in m {
        if k == "first_error" || v.is_null() {
            continue;
        }
        let v = match v {
            Value::String(x) => x.clone(),
            other => other.to_string(),
        };
        if !s.is_empty() {
            s.push_str("  ");
        }
        s.push_str(&format!("{k}={v}"));
    }
    if let Some(Value::String(e)) = m.get("first_error") {
        s.push_str(&format!("  first_error=\"{e}\""));
    }
    s
}
