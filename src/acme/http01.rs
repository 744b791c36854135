//! HTTP-01 answers on a resolver's `httpChallenge.entryPoint`.
//!
//! On such an entrypoint the first bytes of a plain connection are read
//! before routing: a request for `/.well-known/acme-challenge/<token>` is
//! answered here (200 with the key authorization of a challenge being
//! validated, else 404) and closed; anything else goes on to the routers
//! with its bytes replayed. A client that sends nothing first (a
//! server-speaks-first protocol) waits for the entrypoint's readTimeout
//! there, so such routers belong on another entrypoint.

use monoio::net::TcpStream;

use crate::peek::{PeekError, Reader};

const PREFIX: &[u8] = b"GET /.well-known/acme-challenge/";
/// The request head of a validation is short; a longer one is refused.
const MAX_HEAD: usize = 8 * 1024;

/// Whether the bytes so far can still be, or are, an HTTP-01 request.
fn could_be(buf: &[u8]) -> bool {
    let n = buf.len().min(PREFIX.len());
    buf[..n] == PREFIX[..n]
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// The response to a complete request head.
fn response(head: &[u8]) -> Vec<u8> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let token = line
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split(|&b| b == b' ').next())
        .and_then(|t| std::str::from_utf8(t).ok())
        .unwrap_or_default();
    match super::http01_answer(token) {
        Some(ka) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{ka}",
            ka.len()
        )
        .into_bytes(),
        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
    }
}

/// Answers the connection when it is an HTTP-01 request (`Ok(true)`: done,
/// close it); `Ok(false)`: not one, route it with `reader.buf` replayed.
pub async fn serve(client: &TcpStream, reader: &mut Reader<'_>) -> Result<bool, PeekError> {
    loop {
        if !could_be(&reader.buf) {
            return Ok(false);
        }
        if let Some(end) = head_end(&reader.buf) {
            let reply = response(&reader.buf[..end]);
            let _ = crate::forward::write_all(client, &reply).await;
            return Ok(true);
        }
        if reader.buf.len() > MAX_HEAD {
            let _ = crate::forward::write_all(
                client,
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
            return Ok(true);
        }
        reader.read_more().await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_and_unknown_token() {
        assert!(could_be(b""));
        assert!(could_be(b"GET /.well"));
        assert!(!could_be(b"GET /other"));
        assert!(!could_be(b"\x16\x03\x01"));
        let r = response(b"GET /.well-known/acme-challenge/nope HTTP/1.1\r\nHost: a");
        assert!(r.starts_with(b"HTTP/1.1 404"));
    }
}
