//! Durations and byte sizes as they are written in the configuration.
//!
//! Pure string parsers, no IO. Durations follow Traefik's `ptypes.Duration`: a
//! bare integer (TOML integer or a string of digits) is a number of SECONDS,
//! anything else is a Go duration (`"100ms"`, `"1m30s"`, `"1.5s"`, `"-1s"`).
//! Values are signed nanoseconds like Go's `time.Duration`, because a negative
//! value means something for some keys (e.g. `terminationDelay < 0` = wait
//! forever); the caller decides what a sign means for its key.

/// Nanoseconds per unit, as Go's `time.ParseDuration` knows them.
const UNITS: &[(&str, i128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
];

const NANOS_PER_SEC: i128 = 1_000_000_000;

/// Parses a Traefik duration string into signed nanoseconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let t = s.trim();
    // Traefik first tries a plain integer: seconds.
    if let Ok(secs) = t.parse::<i64>() {
        return seconds(secs);
    }
    parse_go_duration(t)
}

/// A TOML integer given for a duration key: seconds (Traefik).
pub fn seconds(secs: i64) -> Result<i64, String> {
    i64::try_from(i128::from(secs) * NANOS_PER_SEC)
        .map_err(|_| format!("duration {secs}s is out of range"))
}

/// Go's `time.ParseDuration`: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, or `0`.
pub fn parse_go_duration(s: &str) -> Result<i64, String> {
    let bad = || {
        format!("invalid duration `{s}` (expected e.g. \"500ms\", \"10s\", \"1m30s\" or a number of seconds)")
    };
    let (neg, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let frac_len = r.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &r[..frac_len];
            rest = &r[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(bad());
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let Some(&(_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(if unit.is_empty() {
                format!("{}: missing unit", bad())
            } else {
                format!("{}: unknown unit `{unit}`", bad())
            });
        };
        let int: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| bad())?
        };
        let mut value = int.checked_mul(scale).ok_or_else(bad)?;
        // The fraction, truncated to whole nanoseconds like Go.
        let mut frac_scale = scale;
        for d in frac_part.bytes() {
            frac_scale /= 10;
            if frac_scale == 0 {
                break;
            }
            value += i128::from(d - b'0') * frac_scale;
        }
        total = total.checked_add(value).ok_or_else(bad)?;
        if total > i128::from(i64::MAX) {
            return Err(format!("duration `{s}` is out of range"));
        }
    }
    let signed = if neg { -total } else { total };
    i64::try_from(signed).map_err(|_| format!("duration `{s}` is out of range"))
}

/// Size units: decimal (KB = 1000) and binary (KiB = 1024), as commonly written.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("b", 1),
    ("k", 1024),
    ("kb", 1000),
    ("kib", 1024),
    ("m", 1024 * 1024),
    ("mb", 1000 * 1000),
    ("mib", 1024 * 1024),
    ("g", 1024 * 1024 * 1024),
    ("gb", 1000 * 1000 * 1000),
    ("gib", 1024 * 1024 * 1024),
];

/// Parses a byte size: `"65536"`, `"64KiB"`, `"64KB"` (= 64000), `"1MiB"`, `"1.5MiB"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad =
        || format!("invalid size `{s}` (expected e.g. \"64KiB\", \"1MiB\" or a number of bytes)");
    let num_len = t
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(t.len(), |(i, _)| i);
    let (num, unit) = t.split_at(num_len);
    let unit = unit.trim().to_ascii_lowercase();
    let scale = if unit.is_empty() {
        1
    } else {
        SIZE_UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|&(_, m)| m)
            .ok_or_else(bad)?
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(scale).ok_or_else(bad);
    }
    // A fractional size such as "1.5MiB": exact enough in f64 for any sane size.
    let f: f64 = num.parse().map_err(|_| bad())?;
    let bytes = f * scale as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 || bytes.fract() != 0.0 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;
    const S: i64 = 1_000_000_000;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("100ms"), Ok(100 * MS));
        assert_eq!(parse_duration("5s"), Ok(5 * S));
        assert_eq!(parse_duration("1m30s"), Ok(90 * S));
        assert_eq!(parse_duration("1h"), Ok(3600 * S));
        assert_eq!(parse_duration("1.5s"), Ok(1500 * MS));
        assert_eq!(parse_duration(".5s"), Ok(500 * MS));
        assert_eq!(parse_duration("-1s"), Ok(-S));
        assert_eq!(parse_duration("+2s"), Ok(2 * S));
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("1us"), Ok(1_000));
        assert_eq!(parse_duration("1µs"), Ok(1_000));
        assert_eq!(parse_duration("3ns"), Ok(3));
        assert_eq!(parse_duration("1h2m3s4ms"), Ok(3723 * S + 4 * MS));
    }

    #[test]
    fn bare_integers_are_seconds() {
        assert_eq!(parse_duration("30"), Ok(30 * S));
        assert_eq!(parse_duration("-1"), Ok(-S));
        assert_eq!(seconds(10), Ok(10 * S));
        assert!(seconds(i64::MAX).is_err());
    }

    #[test]
    fn bad_durations() {
        for s in [
            "",
            "s",
            "5x",
            "1.s.",
            "ms5",
            "--1s",
            "1 s",
            "5sec",
            "9999999999999h",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?} should be rejected");
        }
        assert!(parse_duration("5sec")
            .unwrap_err()
            .contains("unknown unit `sec`"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64KB"), Ok(64000));
        assert_eq!(parse_size("64kb"), Ok(64000));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1.5MiB"), Ok(3 << 19));
        assert_eq!(parse_size("16 MiB"), Ok(16 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        for s in ["", "KiB", "64XB", "-1", "1.1B", "1e3"] {
            assert!(parse_size(s).is_err(), "{s:?} should be rejected");
        }
    }
}
