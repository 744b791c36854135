//! A schema-checking walk over a parsed document (`tree`: TOML or YAML, a
//! position for every key and value).
//!
//! Serde with `deny_unknown_fields` stops at the first problem; this walker
//! records every unknown key, every value of the wrong type and every
//! ignored/unsupported key in `Diags` and carries on, so one run reports them
//! all. A `Tbl` remembers which keys the schema asked for; `finish` reports the
//! rest as unknown, with a "did you mean" from the same table's keys.
//!
//! Keys match case-insensitively, because Traefik's file loader (paerser) does:
//! `[entrypoints.web]` and `Address` are valid Traefik. Names (router, service,
//! ... names) stay case-sensitive.
//!
//! Pure: no IO.

use super::diag::{Diags, Pos, Sp};
use super::tree::{self, Item, Style, V};

/// Largest edit distance at which an unknown key is considered a typo of a
/// known one (short keys: 2 edits, long keys a third of their length).
fn max_typo_distance(len: usize) -> usize {
    (len / 3).max(2)
}

/// A table (TOML standard, implicit or inline; a YAML mapping) being read
/// against a schema.
pub struct Tbl<'a> {
    file: usize,
    src: &'a str,
    t: &'a tree::Table,
    /// Dotted path for messages (`entryPoints.pg`); empty at the top level.
    pub path: String,
    /// Where the table is written (its header, or its key when implicit).
    pub at: Pos,
    known: Vec<&'static str>,
}

/// One value found under a key or in an array.
pub struct Node<'a> {
    file: usize,
    src: &'a str,
    item: &'a Item,
    /// Dotted path for messages (`entryPoints.pg.address`).
    pub path: String,
    /// Where the value is written (falls back to its key).
    pub at: Pos,
    /// Where its key is written (the value itself for array elements).
    pub key_at: Pos,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'a> Tbl<'a> {
    /// The top level of a document.
    pub fn root(file: usize, src: &'a str, t: &'a tree::Table) -> Self {
        Tbl {
            file,
            src,
            t,
            path: String::new(),
            at: Pos { file, offset: 0 },
            known: Vec::new(),
        }
    }

    fn pos(&self, offset: usize) -> Pos {
        Pos {
            file: self.file,
            offset,
        }
    }

    /// Display name of this table in messages: `[entryPoints.pg]`.
    pub fn name(&self) -> String {
        if self.path.is_empty() {
            "the top level".to_string()
        } else {
            format!("[{}]", self.path)
        }
    }

    /// Looks a schema key up (case-insensitively) and marks it known.
    pub fn get(&mut self, key: &'static str, d: &mut Diags) -> Option<Node<'a>> {
        self.known.push(key);
        let mut found: Option<Node<'a>> = None;
        for e in &self.t.entries {
            if !e.key.eq_ignore_ascii_case(key) {
                continue;
            }
            let node = self.node(e);
            if found.is_some() {
                d.error(
                    node.key_at,
                    format!(
                        "duplicate key `{}` in {}: Traefik matches keys case-insensitively, so this is `{}` again; spell them the same",
                        e.key,
                        self.name(),
                        key
                    ),
                );
            } else {
                found = Some(node);
            }
        }
        found
    }

    fn node(&self, e: &'a tree::Entry) -> Node<'a> {
        Node {
            file: self.file,
            src: self.src,
            item: &e.item,
            path: join(&self.path, &e.key),
            at: self.pos(e.item.at),
            key_at: self.pos(e.key_at),
        }
    }

    /// All entries of a map table (routers by name, ...), in document order.
    pub fn entries(&self) -> Vec<(Sp<String>, Node<'a>)> {
        self.t
            .entries
            .iter()
            .map(|e| {
                let node = self.node(e);
                (Sp::new(e.key.clone(), node.key_at), node)
            })
            .collect()
    }

    /// Whether `key` is present (case-insensitively), whatever its type.
    pub fn has(&self, key: &str) -> bool {
        self.t
            .entries
            .iter()
            .any(|e| e.key.eq_ignore_ascii_case(key))
    }

    // Shorthands: look a key up and read it as one type.
    pub fn str(&mut self, key: &'static str, d: &mut Diags) -> Option<Sp<String>> {
        self.get(key, d).and_then(|n| n.str(d))
    }
    pub fn bool(&mut self, key: &'static str, d: &mut Diags) -> Option<Sp<bool>> {
        self.get(key, d).and_then(|n| n.bool(d))
    }
    pub fn int(&mut self, key: &'static str, d: &mut Diags) -> Option<Sp<i64>> {
        self.get(key, d).and_then(|n| n.int(d))
    }
    pub fn str_list(&mut self, key: &'static str, d: &mut Diags) -> Option<Vec<Sp<String>>> {
        self.get(key, d).and_then(|n| n.str_list(d))
    }
    pub fn table(&mut self, key: &'static str, d: &mut Diags) -> Option<Tbl<'a>> {
        self.get(key, d).and_then(|n| n.table(d))
    }

    /// A section that Traefik also lets one switch on with `key = true`
    /// (paerser fills a pointer-to-struct from "true" with its defaults),
    /// or, in YAML, with the key alone (`tls:`); `false` means absent.
    pub fn section(&mut self, key: &'static str, d: &mut Diags) -> Option<Tbl<'a>> {
        let n = self.get(key, d)?;
        let empty = |n: &Node<'a>| Tbl {
            file: self.file,
            src: self.src,
            t: &tree::EMPTY,
            path: n.path.clone(),
            at: n.at,
            known: Vec::new(),
        };
        match n.item.v {
            V::Bool(b) => b.then(|| empty(&n)),
            V::Other("null") => Some(empty(&n)),
            _ => n.table(d),
        }
    }

    /// A Traefik key that does not change TCP traffic: accepted, with a warning.
    pub fn ignored(&mut self, key: &'static str, why: &str, d: &mut Diags) {
        if let Some(n) = self.get(key, d) {
            d.warn(n.key_at, format!("`{}` is ignored: {why}", n.path));
        }
    }

    /// A Traefik key whose absence would silently drop traffic: an error.
    pub fn unsupported(&mut self, key: &'static str, why: &str, d: &mut Diags) {
        if let Some(n) = self.get(key, d) {
            d.error(n.key_at, format!("`{}` is not supported: {why}", n.path));
        }
    }

    /// Reports every key the schema did not ask for.
    pub fn finish(self, d: &mut Diags) {
        for e in &self.t.entries {
            if self.known.iter().any(|n| n.eq_ignore_ascii_case(&e.key)) {
                continue;
            }
            // The suggestion is the costly part; skip it for errors that
            // will not be shown.
            let hint = (!d.errors_full())
                .then(|| suggest(&e.key, &self.known))
                .flatten()
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            d.error(
                self.pos(e.key_at),
                format!("unknown key `{}` in {}{hint}", e.key, self.name()),
            );
        }
    }
}

impl<'a> Node<'a> {
    fn wrong(&self, expected: &str, d: &mut Diags) {
        d.error(
            self.at,
            format!(
                "`{}` must be {expected}, not {}",
                self.path,
                self.item.v.type_name()
            ),
        );
    }

    fn pos(&self, offset: usize) -> Pos {
        Pos {
            file: self.file,
            offset,
        }
    }

    pub fn str(&self, d: &mut Diags) -> Option<Sp<String>> {
        match &self.item.v {
            V::Str(s) => Some(Sp::new(s.clone(), self.at)),
            _ => {
                self.wrong("a string", d);
                None
            }
        }
    }

    pub fn bool(&self, d: &mut Diags) -> Option<Sp<bool>> {
        match self.item.v {
            V::Bool(b) => Some(Sp::new(b, self.at)),
            _ => {
                self.wrong("a boolean (true or false)", d);
                None
            }
        }
    }

    pub fn int(&self, d: &mut Diags) -> Option<Sp<i64>> {
        match self.item.v {
            V::Int(i) => Some(Sp::new(i, self.at)),
            _ => {
                self.wrong("an integer", d);
                None
            }
        }
    }

    /// A string or an integer (durations, sizes and counts accept both).
    pub fn str_or_int(&self, d: &mut Diags) -> Option<Sp<StrOrInt>> {
        match &self.item.v {
            V::Str(s) => Some(Sp::new(StrOrInt::Str(s.clone()), self.at)),
            V::Int(i) => Some(Sp::new(StrOrInt::Int(*i), self.at)),
            _ => {
                self.wrong("a string or an integer", d);
                None
            }
        }
    }

    /// Where the character at `decoded` (a byte offset into the string's
    /// value) is written, relative to the value's start; `None` when the
    /// syntax does not say (a YAML block scalar).
    pub fn offset_in_string(&self, decoded: usize) -> Option<usize> {
        let (range, style) = self.item.raw.clone()?;
        match style {
            Style::Toml => Some(tree::raw_offset(self.src.get(range)?, decoded)),
            Style::Plain => Some(decoded),
            Style::Quoted => Some(1 + decoded),
        }
    }

    pub fn str_list(&self, d: &mut Diags) -> Option<Vec<Sp<String>>> {
        let V::Array(a) = &self.item.v else {
            self.wrong("an array of strings", d);
            return None;
        };
        let mut out = Vec::new();
        for (i, v) in a.iter().enumerate() {
            let at = self.pos(v.at);
            match &v.v {
                V::Str(s) => out.push(Sp::new(s.clone(), at)),
                other => d.error(
                    at,
                    format!(
                        "`{}[{i}]` must be a string, not {}",
                        self.path,
                        other.type_name()
                    ),
                ),
            }
        }
        Some(out)
    }

    pub fn table(&self, d: &mut Diags) -> Option<Tbl<'a>> {
        let V::Table(t) = &self.item.v else {
            self.wrong("a table", d);
            return None;
        };
        Some(Tbl {
            file: self.file,
            src: self.src,
            t,
            path: self.path.clone(),
            at: self.at,
            known: Vec::new(),
        })
    }

    /// An array of tables: `[[a.b]]` sections or an array of inline tables
    /// (a YAML sequence of mappings).
    pub fn tables(&self, d: &mut Diags) -> Vec<Tbl<'a>> {
        let (V::Tables(a) | V::Array(a)) = &self.item.v else {
            self.wrong("an array of tables", d);
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, v) in a.iter().enumerate() {
            let at = self.pos(v.at);
            match &v.v {
                V::Table(t) => out.push(Tbl {
                    file: self.file,
                    src: self.src,
                    t,
                    path: format!("{}[{i}]", self.path),
                    at,
                    known: Vec::new(),
                }),
                other => d.error(
                    at,
                    format!(
                        "`{}[{i}]` must be a table, not {}",
                        self.path,
                        other.type_name()
                    ),
                ),
            }
        }
        out
    }
}

/// A value that may be written as a string or as an integer.
#[derive(Debug, Clone, PartialEq)]
pub enum StrOrInt {
    Str(String),
    Int(i64),
}

/// The known key closest to `key`, if it looks like a typo of it.
pub fn suggest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let key = key.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&key, &k.to_ascii_lowercase()), *k))
        .filter(|(dist, k)| *dist <= max_typo_distance(k.len()))
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, k)| k)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let known = ["address", "proxyProtocol", "transport"];
        assert_eq!(suggest("adress", &known), Some("address"));
        assert_eq!(suggest("ADRESS", &known), Some("address"));
        assert_eq!(suggest("proxyprotocl", &known), Some("proxyProtocol"));
        assert_eq!(suggest("zzz", &known), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn walks_and_reports_unknown_and_wrong_types() {
        let src = "[a]\nname = 1\nadress = \"x\"\nName = \"dup\"\n";
        let doc = tree::parse_toml(src).expect("valid toml");
        let mut d = Diags::default();
        let mut root = Tbl::root(0, src, &doc);
        let mut a = root.table("a", &mut d).expect("table a");
        assert!(a.str("name", &mut d).is_none());
        assert!(a.str("address", &mut d).is_none());
        a.finish(&mut d);
        root.finish(&mut d);
        let mut s = super::super::diag::Sources::default();
        s.add("t.toml".into(), src.to_string());
        let errs = d.render(&s, super::super::diag::Severity::Error);
        assert_eq!(
            errs,
            vec![
                "t.toml:2:8: `a.name` must be a string, not integer",
                "t.toml:3:1: unknown key `adress` in [a] (did you mean `address`?)",
                "t.toml:4:1: duplicate key `Name` in [a]: Traefik matches keys case-insensitively, so this is `name` again; spell them the same",
            ]
        );
    }
}
