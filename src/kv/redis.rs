//! Redis: the whole tree in one atomic read, a Lua script that lists the
//! keys under the root and returns them with their values (a script runs
//! without interleaving, so the view is consistent). Plain RESP over TCP;
//! `password` (and `username`, Redis 6 ACLs) with AUTH, `db` with SELECT.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};

use super::{content_hash, relative, Tree, CONNECT_TIMEOUT, IO_TIMEOUT, MAX_BYTES};
use crate::model::KvProvider;

/// Keys under the prefix and their string values, flattened.
const SCRIPT: &str = "local out = {} \
    for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
      local t = redis.call('TYPE', k)['ok'] \
      if t == 'string' then out[#out+1] = k; out[#out+1] = redis.call('GET', k) end \
    end \
    return out";

fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[derive(Debug, PartialEq)]
enum Reply {
    Simple(String),
    Bulk(Option<Vec<u8>>),
    Int(i64),
    Array(Vec<Reply>),
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// One reply; `budget` bounds the bytes a reply may hold in all.
fn reply(r: &mut impl BufRead, budget: &mut usize) -> io::Result<Reply> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(line.len().min(1));
    let num = || {
        rest.parse::<i64>()
            .map_err(|_| bad(format!("bad reply `{line}`")))
    };
    match kind {
        "+" => Ok(Reply::Simple(rest.to_string())),
        "-" => Err(io::Error::other(format!("redis: {rest}"))),
        ":" => Ok(Reply::Int(num()?)),
        "$" => {
            let n = num()?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let n = n as usize;
            if n > *budget {
                return Err(bad(format!("reply larger than {} MiB", MAX_BYTES >> 20)));
            }
            *budget -= n;
            let mut b = vec![0u8; n + 2];
            r.read_exact(&mut b)?;
            b.truncate(n);
            Ok(Reply::Bulk(Some(b)))
        }
        "*" => {
            let n = num()?;
            if n < 0 {
                return Ok(Reply::Array(Vec::new()));
            }
            if n as usize > *budget {
                return Err(bad("reply has too many elements"));
            }
            (0..n)
                .map(|_| reply(r, budget))
                .collect::<io::Result<_>>()
                .map(Reply::Array)
        }
        _ => Err(bad(format!("unexpected reply `{line}`"))),
    }
}

fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub fn read(endpoint: &str, p: &KvProvider) -> io::Result<Tree> {
    let addr = endpoint
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("{endpoint}: no address")))?;
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut budget = MAX_BYTES;
    let mut ask = |args: &[&str], r: &mut BufReader<TcpStream>| -> io::Result<Reply> {
        w.write_all(&command(args))?;
        reply(r, &mut budget)
    };
    match (&p.username, &p.password) {
        (Some(u), Some(pw)) => {
            ask(&["AUTH", u, pw], &mut r)?;
        }
        (None, Some(pw)) => {
            ask(&["AUTH", pw], &mut r)?;
        }
        _ => {}
    }
    if p.db != 0 {
        ask(&["SELECT", &p.db.to_string()], &mut r)?;
    }
    let pattern = format!("{}/*", escape_glob(p.root_key.trim_end_matches('/')));
    let Reply::Array(items) = ask(&["EVAL", SCRIPT, "0", &pattern], &mut r)? else {
        return Err(bad("the read script did not return a list"));
    };
    let mut pairs = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let text = |x: Reply| match x {
            Reply::Bulk(Some(b)) => {
                String::from_utf8(b).map_err(|_| bad("a key or value is not UTF-8"))
            }
            other => Err(bad(format!("unexpected element {other:?}"))),
        };
        pairs.push((text(k)?, text(v)?));
    }
    let pairs = relative(&p.root_key, pairs);
    Ok(Tree {
        revision: content_hash(&pairs),
        pairs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_and_stay_bounded() {
        let mut budget = 100;
        let mut r = io::Cursor::new(b"*2\r\n$3\r\nabc\r\n:5\r\n".to_vec());
        assert_eq!(
            reply(&mut r, &mut budget).unwrap(),
            Reply::Array(vec![Reply::Bulk(Some(b"abc".to_vec())), Reply::Int(5)])
        );
        let mut small = 2;
        let mut r = io::Cursor::new(b"$3\r\nabc\r\n".to_vec());
        assert!(reply(&mut r, &mut small).is_err());
        let mut r = io::Cursor::new(b"-ERR nope\r\n".to_vec());
        assert!(reply(&mut r, &mut budget)
            .unwrap_err()
            .to_string()
            .contains("nope"));
        assert_eq!(escape_glob("a*b"), "a\\*b");
    }
}
