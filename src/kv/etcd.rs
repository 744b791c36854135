//! etcd v3 through its JSON gateway (`/v3/kv/range`; keys and values are
//! base64): one range over the root prefix is one consistent read at one
//! revision. Authentication: `username`/`password` get a token from
//! `/v3/auth/authenticate` for each read.

use std::io;

use base64::Engine as _;

use super::{http, relative, Tree};
use crate::model::KvProvider;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// `[prefix, prefix_end)`: every key under `root/`.
fn range_body(root: &str, extra: &str) -> String {
    let prefix = format!("{}/", root.trim_end_matches('/'));
    let mut end = prefix.clone().into_bytes();
    // The prefix ends in '/', so incrementing its last byte cannot overflow.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    format!(
        r#"{{"key":"{}","range_end":"{}"{extra}}}"#,
        B64.encode(prefix.as_bytes()),
        B64.encode(&end)
    )
}

fn token(endpoint: &str, p: &KvProvider) -> io::Result<Option<String>> {
    let (Some(user), Some(pass)) = (&p.username, &p.password) else {
        return Ok(None);
    };
    let body = serde_json::json!({"name": user, "password": pass}).to_string();
    let raw = http::post_json(endpoint, "/v3/auth/authenticate", &body, None)?;
    let v: serde_json::Value = serde_json::from_slice(&raw).map_err(invalid)?;
    Ok(v.get("token").and_then(|t| t.as_str()).map(str::to_string))
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("etcd answer: {e}"))
}

fn range(endpoint: &str, p: &KvProvider, extra: &str) -> io::Result<serde_json::Value> {
    let tok = token(endpoint, p)?;
    let raw = http::post_json(
        endpoint,
        "/v3/kv/range",
        &range_body(&p.root_key, extra),
        tok.as_deref(),
    )?;
    serde_json::from_slice(&raw).map_err(invalid)
}

fn header_revision(v: &serde_json::Value) -> io::Result<u64> {
    // int64 fields come as JSON strings from the gateway.
    v.pointer("/header/revision")
        .and_then(|r| r.as_str().and_then(|s| s.parse().ok()).or(r.as_u64()))
        .ok_or_else(|| invalid("no header.revision"))
}

/// The store's current revision (no keys transferred).
pub fn revision(endpoint: &str, p: &KvProvider) -> io::Result<u64> {
    header_revision(&range(endpoint, p, r#","count_only":true"#)?)
}

/// Every pair under the root, at one revision.
pub fn read(endpoint: &str, p: &KvProvider) -> io::Result<Tree> {
    let v = range(endpoint, p, "")?;
    let revision = header_revision(&v)?;
    let mut pairs = Vec::new();
    if let Some(kvs) = v.get("kvs").and_then(|k| k.as_array()) {
        for kv in kvs {
            let field = |name: &str| -> io::Result<String> {
                let b = kv.get(name).and_then(|x| x.as_str()).unwrap_or("");
                let bytes = B64.decode(b).map_err(invalid)?;
                String::from_utf8(bytes).map_err(|_| invalid(format!("{name} is not UTF-8")))
            };
            pairs.push((field("key")?, field("value")?));
        }
    }
    Ok(Tree {
        revision,
        pairs: relative(&p.root_key, pairs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_covers_the_root_prefix_only() {
        let body = range_body("traefik", "");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let dec = |k: &str| B64.decode(v[k].as_str().unwrap()).unwrap();
        assert_eq!(dec("key"), b"traefik/");
        assert_eq!(dec("range_end"), b"traefik0");
    }
}
