//! logfmt lines on stderr: `ts=... level=info msg=... key=value ...`.
//!
//! One `write` per line on a locked stderr, so lines from different workers
//! never interleave. Values with spaces, quotes or `=` are quoted.

use std::fmt::{self, Write as _};
use std::io::Write as _;
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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let _ = write!(
        line,
        "ts={}.{:03} level={} msg=",
        now.as_secs(),
        now.subsec_millis(),
        level.as_str()
    );
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
}
