//! A schema-checking walk over a parsed TOML document (`toml_edit` keeps a
//! span for every key and value).
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

use std::sync::OnceLock;

use toml_edit::{ArrayOfTables, InlineTable, Item, Table, TableLike, Value};

use super::diag::{Diags, Pos, Sp};

/// Largest edit distance at which an unknown key is considered a typo of a
/// known one (short keys: 2 edits, long keys a third of their length).
fn max_typo_distance(len: usize) -> usize {
    (len / 3).max(2)
}

/// A TOML table (standard, implicit or inline) being read against a schema.
pub struct Tbl<'a> {
    file: usize,
    src: &'a str,
    t: &'a dyn TableLike,
    /// Dotted path for messages (`entryPoints.pg`); empty at the top level.
    pub path: String,
    /// Where the table is written (its header, or its key when implicit).
    pub at: Pos,
    known: Vec<&'static str>,
}

/// What a key holds.
#[derive(Clone, Copy)]
enum Kind<'a> {
    Value(&'a Value),
    Table(&'a Table),
    Tables(&'a ArrayOfTables),
    /// `Item::None`: never produced by the parser, handled for completeness.
    Missing,
}

/// One value found under a key or in an array.
pub struct Node<'a> {
    file: usize,
    src: &'a str,
    kind: Kind<'a>,
    /// Dotted path for messages (`entryPoints.pg.address`).
    pub path: String,
    /// Where the value is written (falls back to its key).
    pub at: Pos,
    /// Where its key is written (the value itself for array elements).
    pub key_at: Pos,
}

fn pos(file: usize, span: Option<std::ops::Range<usize>>, fallback: Pos) -> Pos {
    span.map_or(fallback, |r| Pos {
        file,
        offset: r.start,
    })
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
    pub fn root(file: usize, src: &'a str, t: &'a Table) -> Self {
        Tbl {
            file,
            src,
            t,
            path: String::new(),
            at: Pos { file, offset: 0 },
            known: Vec::new(),
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
        for (k, item) in self.t.iter() {
            if !k.eq_ignore_ascii_case(key) {
                continue;
            }
            let node = self.node(k, item);
            if found.is_some() {
                d.error(
                    node.key_at,
                    format!(
                        "duplicate key `{}` in {}: Traefik matches keys case-insensitively, so this is `{}` again; spell them the same",
                        k,
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

    fn node(&self, k: &str, item: &'a Item) -> Node<'a> {
        let key_at = pos(self.file, self.t.key(k).and_then(|k| k.span()), self.at);
        let kind = match item {
            Item::Value(v) => Kind::Value(v),
            Item::Table(t) => Kind::Table(t),
            Item::ArrayOfTables(a) => Kind::Tables(a),
            Item::None => Kind::Missing,
        };
        Node {
            file: self.file,
            src: self.src,
            kind,
            path: join(&self.path, k),
            at: pos(self.file, item.span(), key_at),
            key_at,
        }
    }

    /// All entries of a map table (routers by name, ...), in document order.
    pub fn entries(&self) -> Vec<(Sp<String>, Node<'a>)> {
        self.t
            .iter()
            .map(|(k, item)| {
                let node = self.node(k, item);
                (Sp::new(k.to_string(), node.key_at), node)
            })
            .collect()
    }

    /// Whether `key` is present (case-insensitively), whatever its type.
    pub fn has(&self, key: &str) -> bool {
        self.t.iter().any(|(k, _)| k.eq_ignore_ascii_case(key))
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
    /// (paerser fills a pointer-to-struct from "true" with its defaults);
    /// `false` means absent.
    pub fn section(&mut self, key: &'static str, d: &mut Diags) -> Option<Tbl<'a>> {
        let n = self.get(key, d)?;
        match n.kind {
            Kind::Value(Value::Boolean(b)) => (*b.value()).then(|| Tbl {
                file: self.file,
                src: self.src,
                t: empty_table(),
                path: n.path.clone(),
                at: n.at,
                known: Vec::new(),
            }),
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
        for (k, _) in self.t.iter() {
            if self.known.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                continue;
            }
            let at = pos(self.file, self.t.key(k).and_then(|k| k.span()), self.at);
            // The suggestion is the costly part; skip it for errors that
            // will not be shown.
            let hint = (!d.errors_full())
                .then(|| suggest(k, &self.known))
                .flatten()
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            d.error(at, format!("unknown key `{k}` in {}{hint}", self.name()));
        }
    }
}

fn empty_table() -> &'static InlineTable {
    static EMPTY: OnceLock<InlineTable> = OnceLock::new();
    EMPTY.get_or_init(InlineTable::new)
}

fn type_name(kind: Kind<'_>) -> &'static str {
    match kind {
        Kind::Value(v) => v.type_name(),
        Kind::Table(_) => "table",
        Kind::Tables(_) => "array of tables",
        Kind::Missing => "nothing",
    }
}

impl<'a> Node<'a> {
    fn wrong(&self, expected: &str, d: &mut Diags) {
        d.error(
            self.at,
            format!(
                "`{}` must be {expected}, not {}",
                self.path,
                type_name(self.kind)
            ),
        );
    }

    fn value(&self) -> Option<&'a Value> {
        match self.kind {
            Kind::Value(v) => Some(v),
            _ => None,
        }
    }

    pub fn str(&self, d: &mut Diags) -> Option<Sp<String>> {
        match self.value() {
            Some(Value::String(s)) => Some(Sp::new(s.value().clone(), self.at)),
            _ => {
                self.wrong("a string", d);
                None
            }
        }
    }

    pub fn bool(&self, d: &mut Diags) -> Option<Sp<bool>> {
        match self.value() {
            Some(Value::Boolean(b)) => Some(Sp::new(*b.value(), self.at)),
            _ => {
                self.wrong("a boolean (true or false)", d);
                None
            }
        }
    }

    pub fn int(&self, d: &mut Diags) -> Option<Sp<i64>> {
        match self.value() {
            Some(Value::Integer(i)) => Some(Sp::new(*i.value(), self.at)),
            _ => {
                self.wrong("an integer", d);
                None
            }
        }
    }

    /// A string or an integer (durations, sizes and counts accept both).
    pub fn str_or_int(&self, d: &mut Diags) -> Option<Sp<StrOrInt>> {
        match self.value() {
            Some(Value::String(s)) => Some(Sp::new(StrOrInt::Str(s.value().clone()), self.at)),
            Some(Value::Integer(i)) => Some(Sp::new(StrOrInt::Int(*i.value()), self.at)),
            _ => {
                self.wrong("a string or an integer", d);
                None
            }
        }
    }

    /// The source text of the value as written, quotes and escapes included.
    pub fn raw(&self) -> Option<&'a str> {
        let span = self.value()?.span()?;
        self.src.get(span)
    }

    pub fn str_list(&self, d: &mut Diags) -> Option<Vec<Sp<String>>> {
        let Some(Value::Array(a)) = self.value() else {
            self.wrong("an array of strings", d);
            return None;
        };
        let mut out = Vec::new();
        for (i, v) in a.iter().enumerate() {
            let at = pos(self.file, v.span(), self.at);
            match v {
                Value::String(s) => out.push(Sp::new(s.value().clone(), at)),
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
        let t: &'a dyn TableLike = match self.kind {
            Kind::Table(t) => t,
            Kind::Value(Value::InlineTable(t)) => t,
            _ => {
                self.wrong("a table", d);
                return None;
            }
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

    /// An array of tables: `[[a.b]]` sections or an array of inline tables.
    pub fn tables(&self, d: &mut Diags) -> Vec<Tbl<'a>> {
        let mut out = Vec::new();
        match self.kind {
            Kind::Tables(a) => {
                for (i, t) in a.iter().enumerate() {
                    out.push(Tbl {
                        file: self.file,
                        src: self.src,
                        t,
                        path: format!("{}[{i}]", self.path),
                        at: pos(self.file, t.span(), self.at),
                        known: Vec::new(),
                    });
                }
            }
            Kind::Value(Value::Array(a)) => {
                for (i, v) in a.iter().enumerate() {
                    let at = pos(self.file, v.span(), self.at);
                    match v {
                        Value::InlineTable(t) => out.push(Tbl {
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
            }
            _ => self.wrong("an array of tables", d),
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
        let doc = toml_edit::ImDocument::parse(src.to_string()).expect("valid toml");
        let mut d = Diags::default();
        let mut root = Tbl::root(0, src, doc.as_table());
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
