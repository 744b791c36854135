//! logfmt lines on stderr: `ts=... level=info msg=... key=value ...`.
//!
//! One `write` per line on a locked stderr, so lines from different workers
//! never interleave. Values with spaces, quotes or `=` are quoted.
//!
//! When stderr is the journal (systemd sets `JOURNAL_STREAM=dev:ino` to the
//! device and inode of the stream it connected; it must match what fd 2 is
//! now, or stderr was redirected since), lines carry no timestamp of their
//! own (the journal stamps each one) and start with the level as a syslog
//! priority, `<3>` error, `<4>` warn, `<6>` info, which the journal strips
//! and stores as the entry's PRIORITY (`journalctl -p warning` filters).
//!
//! Owns: the `log!` macro and the line format. Depends on nothing in the
//! crate; every module may use it.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    /// The syslog priority prefix (`sd-daemon(3)`).
    fn priority(self) -> &'static str {
        match self {
            Level::Info => "<6>",
            Level::Warn => "<4>",
            Level::Error => "<3>",
        }
    }
}

/// Whether `journal_stream` (`JOURNAL_STREAM`'s value) names the stream
/// whose device and inode are `dev`, `ino`.
fn names_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    match journal_stream.split_once(':') {
        Some((d, i)) => d.parse() == Ok(dev) && i.parse() == Ok(ino),
        None => false,
    }
}

/// Whether stderr is the journal: decided once, at the first line.
fn to_journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        // fstat of a duplicate of fd 2 (same open file, so same device and
        // inode), through std: no unsafe needed.
        let meta = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map(std::fs::File::from)
            .and_then(|f| f.metadata());
        match (value.to_str(), meta) {
            (Some(v), Ok(m)) => names_stream(v, m.dev(), m.ino()),
            _ => false,
        }
    })
}

/// Append `v` for logfmt: bare when safe, quoted otherwise.
fn push_value(line: &mut String, v: &dyn fmt::Display) {
    let start = line.len();
    let _ = write!(line, "{v}");
    let needs_quotes = line.len() == start
        || line[start..]
            .bytes()
            .any(|b| b == b' ' || b == b'"' || b == b'=' || b < 0x20);
    if needs_quotes {
        let raw: String = line[start..].to_string();
        line.truncate(start);
        line.push('"');
        for c in raw.chars() {
            match c {
                '"' => line.push_str("\\\""),
                '\\' => line.push_str("\\\\"),
                '\n' => line.push_str("\\n"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(line, "\\u{:04x}", c as u32);
                }
                c => line.push(c),
            }
        }
        line.push('"');
    }
}

/// Emit one line. `fields` are `(key, value)` pairs.
pub fn emit(level: Level, msg: &str, fields: &[(&str, &dyn fmt::Display)]) {
    let mut line = String::with_capacity(160);
    if to_journal() {
        line.push_str(level.priority());
    } else {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let _ = write!(line, "ts={}.{:03} ", now.as_secs(), now.subsec_millis());
    }
    let _ = write!(line, "level={} msg=", level.as_str());
    push_value(&mut line, &msg);
    for (k, v) in fields {
        line.push(' ');
        line.push_str(k);
        line.push('=');
        push_value(&mut line, *v);
    }
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `log!(Info, "msg", key = value, ...)`
#[macro_export]
macro_rules! log {
    ($lvl:ident, $msg:expr $(, $k:ident = $v:expr)* $(,)?) => {
        $crate::log::emit(
            $crate::log::Level::$lvl,
            $msg,
            &[$((stringify!($k), &$v as &dyn ::std::fmt::Display)),*],
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_when_needed() {
        let mut s = String::new();
        push_value(&mut s, &"plain");
        s.push(' ');
        push_value(&mut s, &"two words");
        s.push(' ');
        push_value(&mut s, &"");
        assert_eq!(s, "plain \"two words\" \"\"");
    }

    #[test]
    fn journal_stream_must_name_this_device_and_inode() {
        assert!(names_stream("8:12345", 8, 12345));
        assert!(!names_stream("8:12346", 8, 12345));
        assert!(!names_stream("9:12345", 8, 12345));
        assert!(!names_stream("8", 8, 12345));
        assert!(!names_stream("8:12345:1", 8, 12345));
        assert!(!names_stream("", 8, 12345));
    }
}
