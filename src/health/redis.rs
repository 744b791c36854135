//! The Redis health probe: `AUTH` when a password is configured (with the
//! ACL user name when given), then `ROLE`: `master` is a primary, `slave` a
//! replica (whatever its link state: a replica that lost its master still
//! serves reads, as Redis does by default). A `-ERR`/`-NOAUTH`/`-LOADING`
//! reply, a Sentinel, or anything else is down with the reply as reason.

use super::{ProbeError, Timed, Verdict};
use crate::model::Secret;

/// Longest reply line read (a role name or an error).
const MAX_LINE: usize = 4096;

pub fn probe(
    c: &mut Timed,
    username: Option<&str>,
    password: Option<&Secret>,
) -> Result<Verdict, ProbeError> {
    let mut rd = Lines::default();
    if let Some(pw) = password {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        if let Some(u) = username {
            args.push(u.as_bytes());
        }
        args.push(pw.0.as_bytes());
        c.send(&command(&args))?;
        let line = rd.line(c)?;
        if line != b"+OK" {
            // Redis' own text; it never contains the password.
            return Err(refused("AUTH", &line));
        }
    }
    c.send(&command(&[b"ROLE"]))?;
    // `*N`, then `$len`, then the role name.
    let head = rd.line(c)?;
    if !head.starts_with(b"*") {
        return Err(refused("ROLE", &head));
    }
    let len = rd.line(c)?;
    if !len.starts_with(b"$") {
        return Err(refused("ROLE", &len));
    }
    let role = rd.line(c)?;
    match role.as_slice() {
        b"master" => Ok(Verdict::Primary),
        b"slave" => Ok(Verdict::Replica),
        _ => Err(refused("ROLE", &role)),
    }
}

fn refused(what: &str, line: &[u8]) -> ProbeError {
    ProbeError::Refused(format!(
        "redis: {what} answered {:?}",
        String::from_utf8_lossy(line)
    ))
}

/// A command as a RESP array of bulk strings (safe for any password).
fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// CRLF-terminated lines out of the probe's reads.
#[derive(Default)]
struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    fn line(&mut self, c: &mut Timed) -> Result<Vec<u8>, ProbeError> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return Err(ProbeError::Refused("redis: reply line too long".into()));
            }
            let mut chunk = [0u8; 512];
            let n = c.recv(&mut chunk)?;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn commands_are_resp_arrays() {
        assert_eq!(
            super::command(&[b"AUTH", b"p w"]),
            b"*2\r\n$4\r\nAUTH\r\n$3\r\np w\r\n"
        );
    }
}
