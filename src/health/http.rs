//! The HTTP health probe: one HTTP/1.1 request (`Connection: close`) and
//! the status line of the reply. The configured `status` must match
//! exactly; without one, 2xx and 3xx are healthy (as Traefik's HTTP health
//! check). This is what Patroni (`/primary`, `/replica`, `/replica?lag=1MB`,
//! `/read-only`), Stolon and Consul expose: the endpoint decides the role,
//! so the verdict is `up` or `down`.

use super::{ProbeError, Timed, Verdict};

/// The status line is the first line; longer is not HTTP.
const MAX_STATUS_LINE: usize = 1024;

pub fn probe(
    c: &mut Timed,
    method: &str,
    path: &str,
    host: &str,
    want: Option<u16>,
) -> Result<Verdict, ProbeError> {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sluicegate-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    c.send(req.as_bytes())?;
    let mut buf = Vec::new();
    let line = loop {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            break buf[..i].to_vec();
        }
        if buf.len() > MAX_STATUS_LINE {
            return Err(ProbeError::Refused("http: no status line".into()));
        }
        let mut chunk = [0u8; 512];
        match c.recv(&mut chunk) {
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(ProbeError::Closed(_)) => return Err(ProbeError::Closed(buf.len())),
            Err(e) => return Err(e),
        }
    };
    let status = status_of(&line)
        .ok_or_else(|| ProbeError::Refused("http: reply is not HTTP/1.x".into()))?;
    let ok = match want {
        Some(w) => status == w,
        None => (200..400).contains(&status),
    };
    if ok {
        Ok(Verdict::Up)
    } else {
        Err(ProbeError::Refused(format!("http: status {status}")))
    }
}

/// The code of `HTTP/1.x NNN reason`.
fn status_of(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_lines() {
        assert_eq!(
            super::status_of(b"HTTP/1.1 503 Service Unavailable\r"),
            Some(503)
        );
        assert_eq!(super::status_of(b"HTTP/1.0 200 OK"), Some(200));
        assert_eq!(super::status_of(b"HTTP/2 200"), None);
        assert_eq!(super::status_of(b"SSH-2.0-OpenSSH"), None);
    }
}
