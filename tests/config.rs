//! Config loader tests: every shipped config loads, every invalid one fails
//! with its stated message and position, and the Traefik behaviours the
//! loader implements (providers, defaults, canonical forms) hold.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sluicegate::config::{self, Errors};
use sluicegate::model::{self, MiddlewareKind, ServiceKind};
use support::process::{run, Ran};

/// Entrypoint ids by slot.
fn eps(slots: &[usize]) -> Vec<model::EntryPointId> {
    slots
        .iter()
        .map(|&i| model::EntryPointId::from_index(i))
        .collect()
}

/// `*.toml` files directly in `dir`, sorted.
fn toml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn load_ok(path: &Path) -> model::Config {
    config::load(path).unwrap_or_else(|e| panic!("{} should load:\n{e}", path.display()))
}

#[test]
fn shipped_configs_load() {
    let files = toml_files("config");
    assert!(!files.is_empty(), "config/ has no *.toml");
    for f in &files {
        let c = load_ok(f);
        assert!(!c.entrypoints.is_empty(), "{}: no entrypoints", f.display());
        assert!(
            c.warnings.is_empty(),
            "{}: warnings {:?}",
            f.display(),
            c.warnings
        );
        let summary = c.summary();
        assert!(summary.contains("entrypoints ("), "{summary}");
    }
}

#[test]
fn examples_load() {
    let files = toml_files("config/examples");
    assert!(
        files.len() >= 9,
        "expected the guide's examples, found {files:?}"
    );
    for f in &files {
        let c = load_ok(f);
        assert!(!c.routers.is_empty(), "{}: no routers", f.display());
        assert!(
            c.warnings.is_empty(),
            "{}: warnings {:?}",
            f.display(),
            c.warnings
        );
    }
}

/// Each invalid config starts with `# expect: <substring>` lines; every one
/// must be in the errors (of loading, or else of building the TLS state),
/// which must name the file.
#[test]
fn invalid_configs_fail_with_their_message() {
    let files = toml_files("config/invalid");
    assert!(
        files.len() >= 15,
        "expected at least 15 invalid configs, found {}",
        files.len()
    );
    for f in &files {
        let text = fs::read_to_string(f).expect("read");
        let expects: Vec<&str> = text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(!expects.is_empty(), "{}: no `# expect:` line", f.display());
        // Certificate problems are found when the TLS state is built, as
        // `check` and a start do.
        let errors = match config::load(f) {
            Ok(c) => match sluicegate::state::Snapshot::new(c) {
                Ok(_) => panic!("{} should fail to load", f.display()),
                Err(e) => e.lines().map(str::to_string).collect(),
            },
            Err(Errors(errors)) => errors,
        };
        let file_name = f.file_name().and_then(|n| n.to_str()).expect("name");
        for e in &errors {
            assert!(
                e.contains(file_name),
                "{}: error without its file: {e}",
                f.display()
            );
        }
        for want in expects {
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "{}: expected an error containing {want:?}, got:\n{}",
                f.display(),
                errors.join("\n")
            );
        }
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A scratch directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "sluicegate-config-{}-{n}-{name}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("create dir");
        }
        fs::write(&p, text).expect("write");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Loads a one-file config from text.
fn load_text(name: &str, text: &str) -> (TempDir, Result<model::Config, Errors>) {
    let dir = TempDir::new(name);
    let path = dir.write("main.toml", text);
    let r = config::load(&path);
    (dir, r)
}

fn errors_of(r: Result<model::Config, Errors>) -> Vec<String> {
    match r {
        Ok(_) => panic!("expected errors"),
        Err(Errors(e)) => e,
    }
}

const PG: &str = r#"
[entryPoints.pg]
address = "127.0.0.1:0"
[tcp.services.pg.loadBalancer]
servers = [{ address = "127.0.0.1:5432" }]
"#;

/// A router for `PG`, where a test wants no "nothing is routed" warning.
const PG_ROUTER: &str = r#"
[tcp.routers.pg]
rule = "HostSNI(`*`)"
service = "pg"
"#;

#[test]
fn all_errors_are_reported_at_once_in_order() {
    let (_d, r) = load_text(
        "multi",
        r#"[entryPoints.pg]
adress = ":1"
[tcp.routers.a]
rule = "HostSNI(`*`)"
service = "nope"
[tcp.middlewares.m.inFlightConn]
amount = 0
[runtime]
workers = 0
"#,
    );
    let errors = errors_of(r);
    let lines: Vec<&str> = errors
        .iter()
        .map(|e| e.split(':').nth(1).expect("line"))
        .collect();
    assert!(errors.len() >= 4, "{errors:#?}");
    for want in [
        ":2:1: unknown key `adress`",
        ":5:11: unknown service `nope`",
        ":7:10:",
        ":9:11:",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{want} not in {errors:#?}"
        );
    }
    let mut sorted = lines.clone();
    sorted.sort_by_key(|l| l.parse::<u32>().unwrap_or(0));
    assert_eq!(lines, sorted, "errors are sorted by position");
    // Display: one per line.
    assert_eq!(
        Errors(errors.clone()).to_string().lines().count(),
        errors.len()
    );
}

#[test]
fn toml_syntax_error_is_reported_alone() {
    let (_d, r) = load_text("syntax", "[entryPoints.pg\naddress = 1\nbogus = 2\n");
    let errors = errors_of(r);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("main.toml:1:"), "{}", errors[0]);
    assert!(errors[0].contains("TOML syntax error"), "{}", errors[0]);
}

#[test]
fn provider_filename_is_relative_to_the_main_file_and_watched() {
    let dir = TempDir::new("provider-file");
    dir.write(
        "dynamic/routes.toml",
        r#"
[tcp.routers.pg]
rule = "HostSNI(`*`)"
service = "pg"
[tcp.services.pg.loadBalancer]
servers = [{ address = "127.0.0.1:5432" }]
[[tls.certificates]]
certFile = "certs/a.crt"
keyFile = "/abs/a.key"
"#,
    );
    let main = dir.write(
        "static.toml",
        r#"
[entryPoints.pg]
address = "127.0.0.1:0"
[providers.file]
filename = "dynamic/routes.toml"
watch = true
"#,
    );
    let c = load_ok(&main);
    assert_eq!(c.routers.len(), 1);
    assert_eq!(c.routers[0].entrypoints, eps(&[0]));
    assert_eq!(c.watch, vec![dir.0.join("dynamic/routes.toml")]);
    // Certificate paths are relative to the file that names them.
    assert_eq!(
        c.tls.certificates[0].cert_file.path,
        dir.0.join("dynamic/certs/a.crt")
    );
    assert_eq!(
        c.tls.certificates[0].key_file.path,
        PathBuf::from("/abs/a.key")
    );
    // ... and remember where they are named, for errors found when read.
    assert!(
        c.tls.certificates[0]
            .key_file
            .at
            .starts_with(&format!("{}:", dir.0.join("dynamic/routes.toml").display())),
        "{:?}",
        c.tls.certificates[0].key_file
    );
}

#[test]
fn provider_directory_reads_every_toml_sorted_and_rejects_redefinitions() {
    let dir = TempDir::new("provider-dir");
    dir.write(
        "conf.d/b.toml",
        r#"
[tcp.routers.r2]
rule = "HostSNI(`*`)"
service = "s1"
"#,
    );
    dir.write(
        "conf.d/a.toml",
        r#"
[tcp.services.s1.loadBalancer]
servers = [{ address = "127.0.0.1:1" }]
"#,
    );
    dir.write(
        "conf.d/sub/c.toml",
        "[tcp.middlewares.m.inFlightConn]\namount = 1\n",
    );
    dir.write("conf.d/notes.txt", "not config");
    let main = dir.write(
        "main.toml",
        "[entryPoints.ep]\naddress = \"127.0.0.1:0\"\n[providers.file]\ndirectory = \"conf.d\"\nwatch = true\n",
    );
    let c = load_ok(&main);
    assert_eq!(c.routers.len(), 1);
    assert_eq!(c.services[0].name, "s1");
    assert_eq!(c.middlewares.len(), 1);
    assert_eq!(c.watch, vec![dir.0.join("conf.d")]);

    // The same service defined again in a later file: error at the second place.
    dir.write(
        "conf.d/z.toml",
        "\n[tcp.services.s1.loadBalancer]\nservers = [{ address = \"127.0.0.1:2\" }]\n",
    );
    let errors = errors_of(config::load(&main));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("z.toml:2:15: service `s1` is already defined at "),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("a.toml:2:15"), "{}", errors[0]);
}

#[test]
fn static_keys_in_a_dynamic_file_are_errors() {
    let dir = TempDir::new("static-in-dynamic");
    dir.write("dyn.toml", "[entryPoints.x]\naddress = \":1\"\n");
    let main = dir.write(
        "main.toml",
        "[entryPoints.ep]\naddress = \"127.0.0.1:0\"\n[providers.file]\nfilename = \"dyn.toml\"\n",
    );
    let errors = errors_of(config::load(&main));
    assert!(
        errors[0].contains("dyn.toml:1:2: `entryPoints` is static configuration"),
        "{errors:?}"
    );
}

#[test]
fn ipv4_mapped_ranges_become_ipv4() {
    let text = format!(
        "{PG}[tcp.middlewares.allow.ipAllowList]\nsourceRange = [\"::ffff:10.0.0.0/104\", \"::ffff:192.168.1.7\", \"10.1.2.3/8\", \"2001:db8::1/32\"]\n"
    );
    let (_d, r) = load_text("mapped", &text);
    let c = r.expect("loads");
    let MiddlewareKind::IpAllowList(nets) = &c.middlewares[0].kind else {
        panic!("not an allow list")
    };
    let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
    assert_eq!(
        nets,
        [
            "10.0.0.0/8",
            "192.168.1.7/32",
            "10.0.0.0/8",
            "2001:db8::/32"
        ]
    );
}

#[test]
fn default_priority_is_the_rule_length_and_minus_one_for_the_catch_all() {
    let text = format!(
        "{PG}[tcp.routers.a]\nrule = \"HostSNI(`*`)\"\nservice = \"pg\"\n[tcp.routers.b]\nrule = \"HostSNI(`*`) && ClientIP(`10.0.0.0/8`)\"\nservice = \"pg\"\npriority = 0\n[tcp.routers.c]\nrule = \"HostSNI(`*`)\"\nservice = \"pg\"\npriority = 7\n"
    );
    let (_d, r) = load_text("priority", &text);
    let c = r.expect("loads");
    let prio: Vec<i64> = c.routers.iter().map(|r| r.priority).collect();
    assert_eq!(prio, [-1, 38, 7]);
}

#[test]
fn empty_entrypoints_mean_all_tcp_entrypoints() {
    let text = r#"
[entryPoints.a]
address = "127.0.0.1:0"
[entryPoints.b]
address = "127.0.0.1:0"
[entryPoints.traefik]
address = "127.0.0.1:0"
[ping]
[tcp.routers.r]
rule = "HostSNI(`*`)"
service = "s"
[tcp.routers.r2]
entryPoints = []
rule = "HostSNI(`*`)"
service = "s"
[tcp.services.s.loadBalancer]
servers = [{ address = "127.0.0.1:1" }]
"#;
    let (_d, r) = load_text("all-eps", text);
    let c = r.expect("loads");
    // The admin entrypoint is not a TCP entrypoint.
    let names: Vec<&str> = c.entrypoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(c.routers[0].entrypoints, eps(&[0, 1]));
    assert_eq!(c.routers[1].entrypoints, eps(&[0, 1]));
    let admin = c.admin.expect("admin");
    assert!(admin.ping && !admin.metrics && !admin.api);

    // Traefik v3 asDefault: only those.
    let (_d, r) = load_text(
        "as-default",
        &text.replace("[entryPoints.b]\n", "[entryPoints.b]\nasDefault = true\n"),
    );
    assert_eq!(r.expect("loads").routers[0].entrypoints, eps(&[1]));
}

#[test]
fn weighted_cycles_are_reported_with_their_path() {
    let text = r#"
[[tcp.services.a.weighted.services]]
name = "b"
[[tcp.services.b.weighted.services]]
name = "c"
[[tcp.services.c.weighted.services]]
name = "a"
[[tcp.services.self.weighted.services]]
name = "self"
"#;
    let errors = errors_of(load_text("cycle", text).1);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("main.toml:7:8: weighted services form a cycle: a -> b -> c -> a"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("weighted services form a cycle: self -> self"),
        "{}",
        errors[1]
    );
}

#[test]
fn traefik_sections_without_tcp_effect_warn() {
    let text =
        format!("[log]\nlevel = \"DEBUG\"\n[global]\ncheckNewVersion = false\n{PG}{PG_ROUTER}");
    let (_d, r) = load_text("log", &text);
    let c = r.expect("loads");
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(
        c.warnings[0].contains("main.toml:1:2: `log` is ignored"),
        "{:?}",
        c.warnings
    );
    assert!(
        c.warnings[1].contains("main.toml:3:2: `global` is ignored"),
        "{:?}",
        c.warnings
    );
    assert!(c.summary().contains("2 warning(s)"));
}

#[test]
fn durations_follow_traefik() {
    let text = format!(
        r#"{PG}
[tcp.serversTransports.t]
dialTimeout = 30
dialKeepAlive = "-1s"
terminationDelay = "-1s"
[tcp.services.old.loadBalancer]
terminationDelay = 250
servers = [{{ address = "127.0.0.1:5432" }}]
[entryPoints.pg.transport.lifeCycle]
graceTimeOut = "1m30s"
"#
    );
    let (_d, r) = load_text("durations", &text);
    let c = r.expect("loads");
    let t = &c.transports[1];
    assert_eq!(t.dial_timeout, Duration::from_secs(30));
    assert_eq!(t.dial_keep_alive, None);
    assert_eq!(t.termination_delay, model::TerminationDelay::Never);
    assert_eq!(c.entrypoints[0].grace_timeout, Duration::from_secs(90));
    let ServiceKind::LoadBalancer(lb) = &c.services[1].kind else {
        panic!("lb")
    };
    assert_eq!(
        lb.termination_delay,
        Some(model::TerminationDelay::After(Duration::from_millis(250)))
    );
    // The deprecated key warns.
    assert!(
        c.warnings.iter().any(|w| w.contains("deprecated")),
        "{:?}",
        c.warnings
    );
    // The default transport keeps Traefik's defaults.
    assert_eq!(c.transports[0].dial_timeout, model::DEFAULT_DIAL_TIMEOUT);
}

/// Traefik reads the deprecated `loadBalancer.terminationDelay` only for a
/// service that names no serversTransport; a named transport's own value
/// (here its 100 ms default) wins even when the service sets the old key.
#[test]
fn deprecated_termination_delay_yields_to_a_named_transport() {
    let text = format!(
        r#"{PG}
[tcp.serversTransports.t]
dialTimeout = "5s"
[tcp.services.named.loadBalancer]
serversTransport = "t"
terminationDelay = 250
servers = [{{ address = "127.0.0.1:5432" }}]
[tcp.services.bare.loadBalancer]
terminationDelay = 250
servers = [{{ address = "127.0.0.1:5432" }}]
"#
    );
    let (_d, r) = load_text("termination-precedence", &text);
    let c = r.expect("loads");
    let lb = |name: &str| {
        let s = c.services.iter().find(|s| s.name == name).expect(name);
        let ServiceKind::LoadBalancer(lb) = &s.kind else {
            panic!("{name}: lb")
        };
        lb.clone()
    };
    let named = lb("named");
    assert_eq!(named.termination_delay, None, "the named transport decides");
    assert_eq!(
        c.transport(named.transport).termination_delay,
        model::TerminationDelay::After(model::DEFAULT_TERMINATION_DELAY)
    );
    assert_eq!(
        lb("bare").termination_delay,
        Some(model::TerminationDelay::After(Duration::from_millis(250))),
        "no transport named: the deprecated key counts"
    );
}

#[test]
fn static_tcp_servers_transport_sets_the_default_transport() {
    let text = format!("[tcpServersTransport]\ndialTimeout = \"2s\"\nterminationDelay = 0\n{PG}");
    let (_d, r) = load_text("static-transport", &text);
    let c = r.expect("loads");
    assert_eq!(c.transports[0].name, "default");
    assert_eq!(c.transports[0].dial_timeout, Duration::from_secs(2));
    assert_eq!(
        c.transports[0].termination_delay,
        model::TerminationDelay::After(Duration::ZERO)
    );
}

#[test]
fn rule_errors_point_inside_the_string() {
    let text =
        format!("{PG}[tcp.routers.r]\nrule = \"HostSNI(`*`) || Bogus(`x`)\"\nservice = \"pg\"\n");
    let errors = errors_of(load_text("rule", &text).1);
    // `Bogus` starts at byte 16 of the rule, column 8 + 1 + 16.
    assert!(
        errors[0].contains("main.toml:7:25: invalid rule"),
        "{errors:?}"
    );
}

#[test]
fn keys_are_case_insensitive_like_traefik() {
    let text = "[entrypoints.pg]\nADDRESS = \"127.0.0.1:0\"\n[TCP.Routers.r]\nRule = \"HostSNI(`*`)\"\nService = \"s\"\n[TCP.services.s.LoadBalancer]\nServers = [{ Address = \"127.0.0.1:1\" }]\n";
    let (_d, r) = load_text("case", text);
    let c = r.expect("loads");
    assert_eq!(c.routers[0].name, "r");
    // Two spellings of one table are two TOML tables: refused, not half-read.
    let errors = errors_of(load_text("case2", &text.replace("[TCP.services", "[tcp.services")).1);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("main.toml:6:2: duplicate key `tcp` in the top level")),
        "{errors:?}"
    );
}

#[test]
fn sections_can_be_switched_on_with_true() {
    let text = format!(
        "ping = true\n[entryPoints.traefik]\naddress = \"127.0.0.1:0\"\n{PG}[tcp.routers.r]\nrule = \"HostSNI(`db.example.com`)\"\nservice = \"pg\"\ntls = true\n[[tls.certificates]]\ncertFile = \"a.crt\"\nkeyFile = \"a.key\"\n"
    );
    let (_d, r) = load_text("true-sections", &text);
    let c = r.expect("loads");
    let tls = c.routers[0].tls.as_ref().expect("tls on");
    assert!(!tls.passthrough);
    assert_eq!(tls.options, model::TlsOptionsId::DEFAULT);
    assert!(c.admin.expect("admin").ping);
}

#[test]
fn unknown_provider_reference_and_admin_without_entrypoint() {
    let text =
        format!("[api]\n{PG}[tcp.routers.r]\nrule = \"HostSNI(`*`)\"\nservice = \"pg@docker\"\n");
    let errors = errors_of(load_text("provider-ref", &text).1);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("main.toml:9:11: service `pg@docker` names provider `docker`")),
        "{errors:?}"
    );
    let (_d, r) = load_text("api-no-ep", &format!("[api]\n{PG}"));
    let c = r.expect("loads");
    assert!(c.admin.is_none());
    assert!(
        c.warnings[0]
            .contains("main.toml:1:1: the API is not served: there is no [entryPoints.traefik]"),
        "{:?}",
        c.warnings
    );
}

// ------------------------------------------------------------------
// Hostile inputs through the real binary's `check`: every run is bounded
// (killed at `CHECK_LIMIT`, and its address space capped, so a regression
// fails the test instead of hanging CI or eating the machine's memory).

/// Generous: each of these runs takes well under a second to a few seconds
/// (debug build); before the fixes they took minutes or never ended.
const CHECK_LIMIT: Duration = Duration::from_secs(30);

/// Address-space cap for the checked process (KiB, `ulimit -v`): ample for
/// `check`, small enough that reading `/dev/zero` aborts quickly.
const CHECK_MEMORY_KIB: u64 = 2 << 20;

/// `sluicegate check -c config`, bounded in time and memory.
fn check(config: &Path) -> Ran {
    let script = format!("ulimit -v {CHECK_MEMORY_KIB}; exec \"$0\" check -c \"$1\"");
    run(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(support::BIN)
            .arg(config),
        b"",
        CHECK_LIMIT,
    )
}

fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo");
    assert!(made.success(), "mkfifo {}", path.display());
}

#[test]
fn check_refuses_a_ten_megabyte_config_at_once() {
    let dir = TempDir::new("huge");
    // One 10 MB line: parsing and locating its errors took minutes.
    let line = format!(
        "entryPoints = {{ web = {{ address = \"127.0.0.1:0\", {} }} }}\n",
        (0..1_200_000)
            .map(|i| format!("k{i}=1"))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(line.len() > 10_000_000);
    let path = dir.write("main.toml", &line);
    let r = check(&path);
    assert!(!r.ok(), "{r:?}");
    assert_eq!(
        r.stderr.trim(),
        format!(
            "{}: cannot read: larger than the limit of 4 MiB",
            path.display()
        )
    );
}

#[test]
fn check_locates_a_hundred_thousand_errors_on_one_long_line_in_linear_time() {
    let dir = TempDir::new("long-line");
    // 3 MB of string, then 100,000 unknown keys, all on line 1 (3.9 MB, under
    // the 4 MiB cap). Each error's column was counted from the start of the
    // line: 100,000 x 3.5 MB (about a minute before; seconds now).
    let head = format!(
        "entryPoints = {{ web = {{ address = \"127.0.0.1:0\", zz = \"{}\", ",
        "x".repeat(3_000_000)
    );
    let keys: Vec<String> = (0..100_000).map(|i| format!("k{i}=\"\"")).collect();
    let text = format!("{head}{} }} }}\n", keys.join(","));
    let path = dir.write("main.toml", &text);
    let r = check(&path);
    assert!(!r.ok(), "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    let file = path.display().to_string();
    // The first 1000 errors (sorted by position) and a count of the rest.
    assert_eq!(
        lines.len(),
        1001,
        "{}",
        &r.stderr[..2000.min(r.stderr.len())]
    );
    let zz = text.find("zz =").unwrap() + 1;
    assert_eq!(
        lines[0],
        format!("{file}:1:{zz}: unknown key `zz` in [entryPoints.web]")
    );
    let k0 = text.find("k0=").unwrap() + 1;
    assert_eq!(
        lines[1],
        format!("{file}:1:{k0}: unknown key `k0` in [entryPoints.web]")
    );
    assert_eq!(
        lines[1000],
        format!("{file}: 99001 more errors not shown (only the first 1000 are)")
    );
}

/// A `[providers.file] directory` main config pointing at `dir`.
fn directory_config(dir: &TempDir, directory: &str) -> PathBuf {
    dir.write(
        "main.toml",
        &format!(
            "[entryPoints.pg]\naddress = \"127.0.0.1:0\"\n[providers.file]\ndirectory = \"{directory}\"\n"
        ),
    )
}

#[test]
fn check_walks_a_directory_with_symlinks_to_itself_once() {
    let dir = TempDir::new("symlink-loop");
    dir.write(
        "dyn/routes.toml",
        &format!("{PG_ROUTER}[tcp.services.pg.loadBalancer]\nservers = [{{ address = \"127.0.0.1:5432\" }}]\n"),
    );
    // Three links back to the directory and its parent: the old walk followed
    // them, 3^16 directories deep (minutes, then "nested too deep").
    for (link, target) in [("a", "."), ("b", ".."), ("c", "../dyn")] {
        std::os::unix::fs::symlink(target, dir.0.join("dyn").join(link)).unwrap();
    }
    // A symbolic link to a file is read (Kubernetes ConfigMap volumes).
    dir.write(
        "elsewhere/extra.toml",
        "[tcp.middlewares.m.inFlightConn]\namount = 1\n",
    );
    std::os::unix::fs::symlink("../elsewhere/extra.toml", dir.0.join("dyn/extra.toml")).unwrap();
    let main = directory_config(&dir, "dyn");
    let r = check(&main).expect_ok("check");
    assert!(r.stdout.contains("routers (1):"), "{}", r.stdout);
    assert!(r.stdout.contains("middlewares (1):"), "{}", r.stdout);
    for link in ["a", "b", "c"] {
        assert!(
            r.stderr.contains(&format!(
                "main.toml:4:13: `{}` is a symbolic link to a directory: not followed",
                dir.0.join("dyn").join(link).display()
            )),
            "{link}: {}",
            r.stderr
        );
    }
}

#[test]
fn check_walks_dev_without_hanging() {
    let dir = TempDir::new("dev");
    // `/dev` has devices, FIFOs, sockets and links into /proc: before, the
    // walk followed /dev/fd into itself and never ended. It holds no `.toml`
    // file, so the configuration is valid and routes nothing.
    let main = directory_config(&dir, "/dev");
    let r = check(&main).expect_ok("check");
    assert!(r.stdout.contains("routers (0):"), "{}", r.stdout);
    assert!(
        r.stderr.contains("no routers: nothing is routed"),
        "{}",
        r.stderr
    );
}

#[test]
fn check_caps_the_files_of_a_directory() {
    let dir = TempDir::new("many");
    for i in 0..1001 {
        dir.write(&format!("dyn/{i:04}.toml"), "");
    }
    let main = directory_config(&dir, "dyn");
    let r = check(&main);
    assert!(!r.ok(), "{r:?}");
    assert!(
        r.stderr.contains("main.toml:4:13: `")
            && r.stderr
                .contains("more than 1000 configuration files under the directory"),
        "{}",
        r.stderr
    );
}

#[test]
fn check_refuses_fifos_and_devices_as_config_files() {
    let dir = TempDir::new("fifo");
    mkfifo(&dir.0.join("dynamic.toml"));
    fs::create_dir_all(dir.0.join("d")).unwrap();
    mkfifo(&dir.0.join("d/fifo.toml"));
    // A FIFO named by `filename` blocked the loader in open() until a writer
    // came, for ever; one in a `directory` too.
    let ep = "[entryPoints.pg]\naddress = \"127.0.0.1:0\"\n[providers.file]\n";
    for (name, key, file) in [
        (
            "by-name.toml",
            "filename = \"dynamic.toml\"",
            "dynamic.toml",
        ),
        ("by-dir.toml", "directory = \"d\"", "d/fifo.toml"),
    ] {
        let main = dir.write(name, &format!("{ep}{key}\n"));
        let r = check(&main);
        assert!(!r.ok(), "{r:?}");
        assert_eq!(
            r.stderr.trim_end(),
            format!(
                "{}:4:{}: cannot read `{}`: a FIFO, not a regular file",
                main.display(),
                key.find('"').unwrap() + 1,
                dir.0.join(file).display()
            )
        );
    }
    // The main file itself.
    let r = check(&dir.0.join("dynamic.toml"));
    assert!(
        r.stderr
            .ends_with("dynamic.toml: cannot read: a FIFO, not a regular file\n"),
        "{r:?}"
    );
    let r = check(Path::new("/dev/zero"));
    assert_eq!(
        r.stderr,
        "/dev/zero: cannot read: a character device, not a regular file\n"
    );
}

#[test]
fn check_refuses_dev_zero_and_fifos_as_certificates_with_positions() {
    let dir = TempDir::new("pem");
    mkfifo(&dir.0.join("key.fifo"));
    mkfifo(&dir.0.join("ca.fifo"));
    // `/dev/zero` as a certificate grew memory at 300 MB/s until the
    // allocator aborted; a FIFO blocked for ever.
    let main = dir.write(
        "main.toml",
        r#"[entryPoints.tls]
address = "127.0.0.1:0"
[[tls.certificates]]
certFile = "/dev/zero"
keyFile = "key.fifo"
[tls.options.default.clientAuth]
caFiles = ["/dev/urandom", "ca.fifo"]
[tcp.routers.r]
rule = "HostSNI(`a.test`)"
service = "s"
[tcp.routers.r.tls]
[tcp.services.s.loadBalancer]
servers = [{ address = "127.0.0.1:5432", tls = true }]
[tcp.serversTransports.default.tls]
rootCAs = ["/"]
"#,
    );
    let r = check(&main);
    assert!(!r.ok(), "{r:?}");
    let m = main.display();
    let d = dir.0.display();
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{m}:4:12: cannot read certificates from `/dev/zero`: a character device, not a regular file"),
            format!("{m}:5:11: cannot read private key from `{d}/key.fifo`: a FIFO, not a regular file"),
            format!("{m}:7:12: cannot read certificates from `/dev/urandom`: a character device, not a regular file"),
            format!("{m}:7:28: cannot read certificates from `{d}/ca.fifo`: a FIFO, not a regular file"),
            format!("{m}:15:12: cannot read certificates from `/`: a directory, not a regular file"),
        ],
        "{}",
        r.stderr
    );
}

#[test]
fn check_warns_when_nothing_listens_or_nothing_is_routed() {
    let dir = TempDir::new("idle");
    // An empty (or mistyped) file passed `check` silently, as if it were a
    // working gateway. It is still valid: exit 0, with a warning.
    for (name, text, warning) in [
        ("empty.toml", "", "no entrypoints: nothing listens"),
        (
            "comments.toml",
            "# [entryPoints.pg]\n# address = \":5432\"\n",
            "no entrypoints: nothing listens",
        ),
        (
            "no-routers.toml",
            PG,
            "no routers: nothing is routed, every connection is closed unrouted",
        ),
        (
            "admin-only.toml",
            "[entryPoints.traefik]\naddress = \"127.0.0.1:0\"\n[ping]\n",
            "no TCP entrypoints: only the admin endpoints listen, nothing is routed",
        ),
    ] {
        let path = dir.write(name, text);
        let r = check(&path).expect_ok(name);
        assert_eq!(
            r.stderr.trim_end(),
            format!("warning: {}:1:1: {warning}", path.display()),
            "{name}"
        );
        assert!(r.stdout.contains("1 warning(s)"), "{name}: {}", r.stdout);
    }
    // A configuration that routes has no such warning.
    let path = dir.write("ok.toml", &format!("{PG}{PG_ROUTER}"));
    let r = check(&path).expect_ok("ok.toml");
    assert_eq!(r.stderr, "", "{r:?}");
}

#[test]
fn check_caps_the_configuration_files_in_all() {
    let dir = TempDir::new("total");
    // Each file is under the 4 MiB cap; three of them are over 8 MiB in all.
    let big = format!("# {}\n", "x".repeat(3 << 20));
    for name in ["a", "b", "c"] {
        dir.write(&format!("dyn/{name}.toml"), &big);
    }
    let main = directory_config(&dir, "dyn");
    let r = check(&main);
    assert!(!r.ok(), "{r:?}");
    assert_eq!(
        r.stderr.trim_end(),
        format!(
            "{}:4:13: `{}`: the configuration files together are larger than the limit of 8 MiB",
            main.display(),
            dir.0.join("dyn/c.toml").display()
        )
    );
}

#[test]
fn pem_values_may_be_inline_content_everywhere_traefik_takes_them() {
    let dir = support::TempDir::new("inline-pem");
    let ca = support::tls::Ca::new("inline CA");
    let (cert, key) = ca.leaf(&["inline.test"], false);
    let (client_cert, client_key) = ca.leaf(&["client.test"], false);
    let main = dir.write(
        "main.toml",
        &format!(
            r#"
[entryPoints.tls]
address = "127.0.0.1:0"

[tcp.routers.r]
rule = "HostSNI(`inline.test`)"
service = "s"
  [tcp.routers.r.tls]

[tcp.services.s.loadBalancer]
serversTransport = "t"
servers = [{{ address = "127.0.0.1:5432", tls = true }}]

[tcp.serversTransports.t.tls]
serverName = "db.test"
rootCAs = ['''{ca_pem}''', "relative-ca.pem"]
certificates = [{{ certFile = '''{client_cert}''', keyFile = '''{client_key}''' }}]

[[tls.certificates]]
certFile = '''{cert}'''
keyFile = '''{key}'''

[tls.stores.default.defaultCertificate]
certFile = '''{cert}'''
keyFile = "default.key"

[tls.options.default.clientAuth]
caFiles = ['''{ca_pem}''']
"#,
            ca_pem = ca.pem,
        ),
    );
    let c = load_ok(&main);
    let inline = |p: &model::ConfigPath, want: &str| {
        assert_eq!(p.inline.as_deref(), Some(want), "{p:?}");
        assert_eq!(p.path, Path::new(model::INLINE_PEM_LABEL));
        assert!(p.at.starts_with(&format!("{}:", main.display())), "{p:?}");
    };
    inline(&c.tls.certificates[0].cert_file, &cert);
    inline(&c.tls.certificates[0].key_file, &key);
    let default = c.tls.default_certificate.as_ref().unwrap();
    inline(&default.cert_file, &cert);
    // A value without a PEM armour line stays a path, relative to the file.
    assert_eq!(default.key_file.inline, None);
    assert_eq!(default.key_file.path, dir.0.join("default.key"));
    inline(&c.tls.options[0].client_ca_files[0], &ca.pem);
    let t = c.transports[1].tls.as_ref().unwrap();
    inline(&t.root_cas[0], &ca.pem);
    assert_eq!(t.root_cas[1].path, dir.0.join("relative-ca.pem"));
    inline(&t.certificates[0].cert_file, &client_cert);
    inline(&t.certificates[0].key_file, &client_key);
    // Built as a start would: the inline ones load; the two files that do
    // not exist are reported at the keys that name them.
    let Err(err) = sluicegate::state::Snapshot::new(c) else {
        panic!("the missing files must fail the build");
    };
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{}:", main.display()))
                && l.contains(":11: cannot read private key from `")
                && l.contains("default.key")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(":6: cannot read certificates from `")
                && l.contains("relative-ca.pem")),
        "{err}"
    );
}

#[test]
fn peer_cert_sans_and_the_deprecated_peer_cert_uri_are_read() {
    let dir = support::TempDir::new("peer-sans");
    let main = dir.write(
        "main.toml",
        r#"
[entryPoints.e]
address = "127.0.0.1:0"

[tcp.routers.r]
rule = "HostSNI(`*`)"
service = "s"

[tcp.services.s.loadBalancer]
serversTransport = "t"
servers = [{ address = "127.0.0.1:5432", tls = true }]

[tcp.serversTransports.t.tls]
insecureSkipVerify = true
peerCertSANs = [{type = "DNSName", value = "foo.com"}, {type = "URI", value = "spiffe://example.org/peer"}]
peerCertURI = "spiffe://example.org/old"
"#,
    );
    let c = load_ok(&main);
    let t = c.transports[1].tls.as_ref().unwrap();
    assert_eq!(
        t.peer_cert_sans,
        vec![
            model::PeerSan::Dns("foo.com".into()),
            model::PeerSan::Uri("spiffe://example.org/peer".into()),
            model::PeerSan::Uri("spiffe://example.org/old".into()),
        ]
    );
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(
        c.warnings[0]
            .contains("main.toml:16:15: `tcp.serversTransports.t.tls.peerCertURI` is deprecated"),
        "{:?}",
        c.warnings
    );
}

#[test]
fn weighted_health_check_is_an_empty_table_that_marks_the_service() {
    let dir = support::TempDir::new("weighted-hc");
    let main = dir.write(
        "main.toml",
        r#"
[entryPoints.e]
address = "127.0.0.1:0"

[tcp.routers.r]
rule = "HostSNI(`*`)"
service = "w"

[tcp.services.w.weighted]
services = [{ name = "inner", weight = 2 }, { name = "a" }]
  [tcp.services.w.weighted.healthCheck]

[tcp.services.inner.weighted]
services = [{ name = "a" }]
healthCheck = {}

[tcp.services.plain.weighted]
services = [{ name = "b" }]

[tcp.services.a.loadBalancer]
servers = [{ address = "127.0.0.1:5432" }]
healthCheck = {}

[tcp.services.b.loadBalancer]
servers = [{ address = "127.0.0.1:5433" }]
"#,
    );
    let c = load_ok(&main);
    let flag = |name: &str| {
        c.services
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .weighted_health_check
    };
    assert!(flag("w"));
    assert!(flag("inner"));
    assert!(!flag("plain"));
    assert!(!flag("a"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let summary = c.summary();
    assert!(
        summary.contains("  w (weighted, healthCheck: down children skipped):\n"),
        "{summary}"
    );
    assert!(summary.contains("  plain (weighted):\n"), "{summary}");
}

#[test]
fn rule_syntax_is_v2_or_v3_and_v2_errors_point_inside_the_rule() {
    let text = format!(
        "{PG}[tcp.routers.r]\nrule = \"HostSNI(`*`)\"\nruleSyntax = \"v4\"\nservice = \"pg\"\n[tcp.routers.w]\nruleSyntax = \"v2\"\nrule = \"HostSNI(`*.a.com`)\"\nservice = \"pg\"\n[tcp.routers.w.tls]\n"
    );
    let errors = errors_of(load_text("rule-syntax", &text).1);
    assert!(
        errors.iter().any(|e| e.contains(
            "main.toml:8:14: `tcp.routers.r.ruleSyntax` must be \"v3\" or \"v2\", not \"v4\""
        )),
        "{errors:?}"
    );
    // v2 has no `*.` wildcards; the error points at the argument (col 8 + 1 + 8).
    assert!(
        errors
            .iter()
            .any(|e| e.contains("main.toml:12:17: invalid rule: invalid value for HostSNI")),
        "{errors:?}"
    );
}
