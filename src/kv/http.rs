//! Just enough HTTP/1.1 for etcd's JSON gateway: one POST per connection
//! (`Connection: close`), a bounded response, chunked or not.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};

use super::{CONNECT_TIMEOUT, IO_TIMEOUT, MAX_BYTES};

/// POSTs `body` (JSON) to `http://endpoint/path`; the response body when
/// the status is 200.
pub fn post_json(
    endpoint: &str,
    path: &str,
    body: &str,
    auth: Option<&str>,
) -> io::Result<Vec<u8>> {
    let addr = endpoint
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{endpoint}: no address")))?;
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let auth = auth.map_or(String::new(), |t| format!("Authorization: {t}\r\n"));
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.take(MAX_BYTES as u64 + 1).read_to_end(&mut raw)?;
    if raw.len() > MAX_BYTES {
        return Err(io::Error::other(format!(
            "response larger than {} MiB",
            MAX_BYTES >> 20
        )));
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> io::Result<Vec<u8>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of HTTP headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not UTF-8"))?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split(' ').nth(1).unwrap_or("");
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| bad("malformed chunked body"))?
    } else {
        body.to_vec()
    };
    if code != "200" {
        let text = String::from_utf8_lossy(&body);
        return Err(io::Error::other(format!(
            "HTTP {code}: {}",
            text.chars().take(200).collect::<String>()
        )));
    }
    Ok(body)
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), b"{}");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), b"{\"a\":1}");
        let err = b"HTTP/1.1 401 Unauthorized\r\n\r\nno";
        assert!(parse_response(err).unwrap_err().to_string().contains("401"));
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }
}
