//! The README's quick start, run as written: a throwaway redis-server, the
//! example config, `redis-cli` through the proxy, a look at /metrics, stop.
//!
//! `QUICK_START` is the text proposed for the README, verbatim (keep the two
//! equal). Each line is run as a person at a shell would: `cmd &` starts a
//! background job (the test then waits until the job's port accepts
//! connections, as a person waits for the log line), `kill %N ...` sends
//! SIGTERM to those jobs and expects them to exit 0, any other line runs to
//! completion and must succeed; a `# prints: X` comment (on the line or on a
//! line of its own below it) is the exact output. Two departures, both
//! about the build: `cargo build --release` is skipped, and
//! `target/release/sluicegate` is the binary under test. The ports are the
//! fixed ones of config/sluicegate.toml, so nothing else may hold them.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::process::{self, wait_listening, ChildGuard};
use support::*;

/// The quick start, verbatim.
const QUICK_START: &str = r#"
cargo build --release                                    # once; a few minutes
redis-server --port 6379 --save '' --appendonly no &     # a throwaway Redis on 127.0.0.1:6379
target/release/sluicegate -c config/sluicegate.toml &    # 127.0.0.1:16379 -> Redis; admin on 127.0.0.1:18080
redis-cli -p 16379 ping                                  # prints: PONG
curl -s http://127.0.0.1:18080/metrics | grep 'accepted_total{entrypoint="redis"}'
# prints: sluicegate_entrypoint_connections_accepted_total{entrypoint="redis"} 1
kill %2 %1                                               # sluicegate drains and exits, then Redis
"#;

/// The port that says each background job is up, in job order (`%1`,
/// `%2`): sluicegate's admin port, bound after every entrypoint (a probe of
/// 16379 itself would be an accepted connection in the metrics).
const JOB_PORTS: &[u16] = &[6379, 18080];

/// Every port config/sluicegate.toml listens on, and Redis's.
const PORTS: &[u16] = &[6379, 16379, 15432, 18443, 18080];

/// One command of the quick start and the output it must print, if given.
struct Step {
    cmd: String,
    prints: Option<String>,
}

fn steps(text: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (cmd, comment) = match line.split_once('#') {
            Some((c, r)) => (c.trim(), Some(r.trim())),
            None => (line, None),
        };
        if !cmd.is_empty() {
            steps.push(Step {
                cmd: cmd.to_string(),
                prints: None,
            });
        }
        if let Some(out) = comment.and_then(|c| c.strip_prefix("prints: ")) {
            steps.last_mut().expect("a command first").prints = Some(out.to_string());
        }
    }
    steps
}

#[test]
fn quick_start_works_as_written() {
    if !(require_tool("redis-server", "redis-server")
        && require_tool("redis-cli", "redis-tools")
        && require_tool("curl", "curl"))
    {
        return;
    }
    for &port in PORTS {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is taken: the quick start needs it free (a Redis service on 6379?)"
        );
    }
    let shell = |cmd: &str| {
        let mut c = Command::new("sh");
        c.arg("-c").arg(cmd).current_dir(env!("CARGO_MANIFEST_DIR"));
        c
    };

    let mut jobs: Vec<ChildGuard> = Vec::new();
    let steps = steps(QUICK_START);
    assert_eq!(steps.len(), 6, "the quick start has six commands");
    for step in &steps {
        if step.cmd == "cargo build --release" {
            continue;
        }
        let cmd = step.cmd.replace("target/release/sluicegate", BIN);
        if let Some(bg) = cmd.strip_suffix(" &") {
            let port = JOB_PORTS[jobs.len()];
            jobs.push(ChildGuard::spawn(
                shell(&format!("exec {bg}"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            ));
            wait_listening(port, Duration::from_secs(20));
        } else if let Some(specs) = cmd.strip_prefix("kill ") {
            for spec in specs.split_whitespace() {
                let n: usize = spec.strip_prefix('%').unwrap().parse().unwrap();
                let job = &mut jobs[n - 1];
                let st = Command::new("kill")
                    .arg(job.pid().to_string())
                    .status()
                    .unwrap();
                assert!(st.success());
                let deadline = Instant::now() + Duration::from_secs(20);
                let status = loop {
                    if let Some(st) = job.0.try_wait().unwrap() {
                        break st;
                    }
                    assert!(Instant::now() < deadline, "job %{n} did not stop");
                    std::thread::sleep(Duration::from_millis(10));
                };
                // sluicegate drains and exits 0 on SIGTERM (redis too).
                assert_eq!(status.code(), Some(0), "job %{n}: {status}");
            }
        } else {
            let out = process::run(&mut shell(&cmd), b"", Duration::from_secs(20));
            let out = out.expect_ok(&cmd);
            if let Some(want) = &step.prints {
                assert_eq!(out.stdout.trim_end(), want, "output of `{cmd}`");
            }
        }
    }
    assert_eq!(jobs.len(), 2);
}
