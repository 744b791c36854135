//! One parsed configuration document, whatever its syntax: the tree the
//! schema walk (`reader`) reads. TOML (through `toml_edit`) and YAML (through
//! `yaml-rust2`'s event parser) are both turned into it, each value and key
//! keeping the byte offset it was written at, so every later message is
//! `FILE:LINE:COL` for both syntaxes alike.
//!
//! Pure: no IO.

use std::ops::Range;

/// A table: keys in document order (duplicates kept; the walk reports them).
#[derive(Debug, Default)]
pub struct Table {
    pub entries: Vec<Entry>,
}

/// The table a section switched on without content reads (`tls = true`).
pub static EMPTY: Table = Table {
    entries: Vec::new(),
};

#[derive(Debug)]
pub struct Entry {
    pub key: String,
    /// Byte offset of the key.
    pub key_at: usize,
    pub item: Item,
}

/// One value with where it is written.
#[derive(Debug)]
pub struct Item {
    pub v: V,
    /// Byte offset of the value.
    pub at: usize,
    /// The value's source text and how it is quoted, for offsets inside
    /// a string (a rule error points at the character).
    pub raw: Option<(Range<usize>, Style)>,
}

#[derive(Debug)]
pub enum V {
    Str(String),
    Int(i64),
    Bool(bool),
    Table(Table),
    Array(Vec<Item>),
    /// A value the schema never asks for (a float, a date, a YAML null):
    /// its type name, for the message that says so.
    Other(&'static str),
    /// `[[x]]` sections: an array of tables with its own name in messages.
    Tables(Vec<Item>),
}

/// How a string was written in the source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Style {
    /// TOML: any of its four string forms (`raw_offset` walks them).
    Toml,
    /// YAML plain scalar: the text is the value.
    Plain,
    /// YAML quoted scalar: one quote, then the value (escapes ignored).
    Quoted,
    /// A KV store's value: text with no type of its own, read as whatever
    /// the schema asks for (`true`, `3`, `10s`), as Traefik's KV decoder
    /// does.
    Untyped,
}

impl V {
    pub fn type_name(&self) -> &'static str {
        match self {
            V::Str(_) => "string",
            V::Int(_) => "integer",
            V::Bool(_) => "boolean",
            V::Table(_) => "table",
            V::Array(_) => "array",
            V::Other(t) => t,
            V::Tables(_) => "array of tables",
        }
    }
}

/// A syntax error: where, and what the parser said.
#[derive(Debug)]
pub struct SyntaxError {
    pub offset: usize,
    pub message: String,
}

// ---------------------------------------------------------------- TOML

/// Parses TOML text into a tree.
pub fn parse_toml(text: &str) -> Result<Table, SyntaxError> {
    let doc = toml_edit::ImDocument::parse(text).map_err(|e| SyntaxError {
        offset: e.span().map_or(0, |s| s.start),
        message: e.message().trim().replace('\n', "; "),
    })?;
    Ok(toml_table(doc.as_table(), 0))
}

fn toml_table(t: &dyn toml_edit::TableLike, fallback: usize) -> Table {
    let entries = t
        .iter()
        .map(|(k, item)| {
            let key_at = t
                .key(k)
                .and_then(|k| k.span())
                .map_or(fallback, |r| r.start);
            Entry {
                key: k.to_string(),
                key_at,
                item: toml_item(item, key_at),
            }
        })
        .collect();
    Table { entries }
}

fn toml_item(item: &toml_edit::Item, fallback: usize) -> Item {
    use toml_edit::Item as I;
    let at = item.span().map_or(fallback, |r| r.start);
    match item {
        I::Value(v) => toml_value(v, fallback),
        I::Table(t) => Item {
            v: V::Table(toml_table(t, at)),
            at,
            raw: None,
        },
        I::ArrayOfTables(a) => Item {
            v: V::Tables(
                a.iter()
                    .map(|t| {
                        let at = t.span().map_or(at, |r| r.start);
                        Item {
                            v: V::Table(toml_table(t, at)),
                            at,
                            raw: None,
                        }
                    })
                    .collect(),
            ),
            at,
            raw: None,
        },
        I::None => Item {
            v: V::Other("nothing"),
            at,
            raw: None,
        },
    }
}

fn toml_value(v: &toml_edit::Value, fallback: usize) -> Item {
    use toml_edit::Value as T;
    let span = v.span();
    let at = span.as_ref().map_or(fallback, |r| r.start);
    let mut raw = None;
    let v = match v {
        T::String(s) => {
            raw = span.map(|r| (r, Style::Toml));
            V::Str(s.value().clone())
        }
        T::Integer(i) => V::Int(*i.value()),
        T::Boolean(b) => V::Bool(*b.value()),
        T::Float(_) => V::Other("float"),
        T::Datetime(_) => V::Other("datetime"),
        T::Array(a) => V::Array(a.iter().map(|v| toml_value(v, at)).collect()),
        T::InlineTable(t) => V::Table(toml_table(t, at)),
    };
    Item { v, at, raw }
}

/// Maps a byte offset in a decoded TOML string to the byte offset in its
/// source text (quotes included). Escapes are walked for basic strings; for
/// the rare line-ending backslash of multi-line strings the result is close,
/// not exact.
pub(super) fn raw_offset(raw: &str, decoded: usize) -> usize {
    let (open, basic) = if raw.starts_with("\"\"\"") {
        (3, true)
    } else if raw.starts_with("'''") {
        (3, false)
    } else if raw.starts_with('"') {
        (1, true)
    } else {
        (1, false)
    };
    let mut i = open;
    // A newline right after a multi-line opening delimiter is not part of the value.
    if open == 3 {
        let rest = raw.get(i..).unwrap_or("");
        if rest.starts_with("\r\n") {
            i += 2;
        } else if rest.starts_with('\n') {
            i += 1;
        }
    }
    let bytes = raw.as_bytes();
    let mut out = 0;
    while out < decoded && i < raw.len() {
        if basic && bytes[i] == b'\\' {
            let (raw_len, dec_len) = match bytes.get(i + 1) {
                Some(b'u') => (6, escaped_len(raw.get(i + 2..i + 6))),
                Some(b'U') => (10, escaped_len(raw.get(i + 2..i + 10))),
                _ => (2, 1),
            };
            i += raw_len;
            out += dec_len;
        } else {
            let len = raw
                .get(i..)
                .and_then(|r| r.chars().next())
                .map_or(1, char::len_utf8);
            i += len;
            out += len;
        }
    }
    i.min(raw.len())
}

/// UTF-8 length of the character a `\u`/`\U` escape stands for.
fn escaped_len(hex: Option<&str>) -> usize {
    hex.and_then(|h| u32::from_str_radix(h, 16).ok())
        .and_then(char::from_u32)
        .map_or(1, char::len_utf8)
}

// ---------------------------------------------------------------- KV

/// A KV store's pairs under a root key as a tree: `tcp/routers/r/rule`
/// becomes `tcp.routers.r.rule`; a node whose children are all numbered
/// (`servers/0/address`, `servers/1/address`) is an array in index order.
/// `listing` is the text the positions refer to (one `key = value` line per
/// pair, in the given order, as `kv_listing` writes it), so errors point at
/// the pair's line.
pub fn from_pairs(pairs: &[(String, String)], listing: &str) -> Table {
    #[derive(Default)]
    struct Node {
        children: Vec<(String, Node)>,
        value: Option<(String, usize, usize)>,
        at: usize,
    }
    fn child<'n>(n: &'n mut Node, key: &str, at: usize) -> &'n mut Node {
        let i = match n.children.iter().position(|(k, _)| k == key) {
            Some(i) => i,
            None => {
                n.children.push((
                    key.to_string(),
                    Node {
                        at,
                        ..Node::default()
                    },
                ));
                n.children.len() - 1
            }
        };
        &mut n.children[i].1
    }
    fn convert(n: Node) -> Item {
        if let Some((v, at, value_at)) = n.value {
            if n.children.is_empty() {
                return Item {
                    v: V::Str(v),
                    at: value_at,
                    raw: Some((value_at..value_at, Style::Untyped)),
                };
            }
            let _ = at;
        }
        let at = n.at;
        let numbered = !n.children.is_empty()
            && n.children
                .iter()
                .all(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()));
        if numbered {
            let mut items: Vec<(u64, Item)> = n
                .children
                .into_iter()
                .map(|(k, c)| (k.parse().unwrap_or(u64::MAX), convert(c)))
                .collect();
            items.sort_by_key(|(i, _)| *i);
            return Item {
                v: V::Array(items.into_iter().map(|(_, i)| i).collect()),
                at,
                raw: None,
            };
        }
        Item {
            v: V::Table(Table {
                entries: n
                    .children
                    .into_iter()
                    .map(|(k, c)| {
                        let key_at = c.at;
                        Entry {
                            key: k,
                            key_at,
                            item: convert(c),
                        }
                    })
                    .collect(),
            }),
            at,
            raw: None,
        }
    }
    let mut root = Node::default();
    let mut line_at = 0;
    for (key, value) in pairs {
        let line_len = key.len() + 3 + value.len() + 1;
        let value_at = line_at + key.len() + 3;
        let mut n = &mut root;
        let mut seg_at = line_at;
        for seg in key.split('/').filter(|s| !s.is_empty()) {
            n = child(n, seg, seg_at);
            seg_at += seg.len() + 1;
        }
        n.value = Some((value.clone(), line_at, value_at));
        line_at += line_len;
    }
    debug_assert!(line_at <= listing.len() + 1);
    match convert(root).v {
        V::Table(t) => t,
        _ => Table::default(),
    }
}

/// The listing `from_pairs` positions refer to: `key = value` per line.
pub fn kv_listing(pairs: &[(String, String)]) -> String {
    let mut s = String::new();
    for (k, v) in pairs {
        s.push_str(k);
        s.push_str(" = ");
        s.push_str(v);
        s.push('\n');
    }
    s
}

// ---------------------------------------------------------------- YAML

/// Most values an alias may expand to in one document: anchors make a
/// small file describe an exponentially large tree ("billion laughs");
/// far above any real configuration.
const MAX_YAML_NODES: usize = 500_000;
/// Deepest nesting accepted (the tree is built without recursion, but the
/// schema walk and the drop of the tree are recursive).
const MAX_YAML_DEPTH: usize = 128;

/// Parses YAML text (one document; YAML 1.2 core schema, as Traefik's
/// loader reads it) into a tree. The top level must be a mapping; an
/// empty document is an empty table.
pub fn parse_yaml(text: &str) -> Result<Table, SyntaxError> {
    match yaml_documents(text, false)?.pop() {
        None => Ok(Table::default()),
        Some(doc) => top_table(doc.root).map(|t| t.unwrap_or_default()),
    }
}

/// One document of a YAML stream: where it starts and its top-level mapping.
#[derive(Debug)]
pub struct Document {
    /// Byte offset of the document's first value (or of its `---`).
    pub at: usize,
    pub table: Table,
}

/// Parses a YAML stream of any number of documents separated by `---` (as
/// `kubectl apply -f` reads a manifest file). Empty documents (a trailing
/// `---`, a document of comments) are left out; every other document must
/// be a mapping. Anchors are per document, as YAML defines them; the value
/// and depth caps hold for the whole stream.
pub fn parse_yaml_stream(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let mut out = Vec::new();
    for doc in yaml_documents(text, true)? {
        if let Some(table) = top_table(doc.root)? {
            // A block mapping's own mark is past its first key: the first
            // key is where the document visibly starts.
            let at = table.entries.first().map_or(doc.start, |e| e.key_at);
            out.push(Document { at, table });
        }
    }
    Ok(out)
}

/// A document's top-level value as a table; `None` for an empty document.
fn top_table(root: Option<Item>) -> Result<Option<Table>, SyntaxError> {
    match root {
        None => Ok(None),
        Some(Item { v: V::Table(t), .. }) => Ok(Some(t)),
        // `key:` alone at the top (null) or an empty document.
        Some(Item {
            v: V::Other("null"),
            ..
        }) => Ok(None),
        Some(other) => Err(SyntaxError {
            offset: other.at,
            message: format!(
                "the top level must be a mapping (key: value), not {}",
                other.v.type_name()
            ),
        }),
    }
}

/// A document as the event walk leaves it.
struct RawDocument {
    /// Where its `---` (or first event) is.
    start: usize,
    root: Option<Item>,
}

/// The documents of a YAML stream; with `multi` false a second document is
/// an error (a Traefik configuration file is one document).
fn yaml_documents(text: &str, multi: bool) -> Result<Vec<RawDocument>, SyntaxError> {
    use yaml_rust2::parser::{Event, Parser};

    /// A collection being built.
    enum Open {
        Map {
            t: Table,
            at: usize,
            anchor: usize,
            /// A key read, waiting for its value.
            key: Option<(String, usize)>,
        },
        Seq {
            items: Vec<Item>,
            at: usize,
            anchor: usize,
        },
    }
    let mut parser = Parser::new_from_str(text);
    let mut bytes = ByteOffsets::new(text);
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<Item> = None;
    let mut documents = 0;
    let mut docs: Vec<RawDocument> = Vec::new();
    let mut doc_start = 0;
    // Anchored values, kept as the events that rebuild them (aliases are
    // replayed through the same code).
    let mut anchors: std::collections::HashMap<usize, Vec<(Event, usize)>> = Default::default();
    // Events being recorded for open anchors: (anchor id, events).
    let mut recording: Vec<(usize, Vec<(Event, usize)>)> = Vec::new();
    let mut nodes = 0usize;
    let mut replay: Vec<(Event, usize)> = Vec::new();
    let err = |offset: usize, message: String| SyntaxError { offset, message };
    loop {
        let (ev, at) = if let Some(e) = replay.pop() {
            e
        } else {
            let (ev, mark) = parser.next_token().map_err(|e| SyntaxError {
                offset: bytes.at(e.marker().index()),
                message: e.info().to_string(),
            })?;
            let at = bytes.at(mark.index());
            // Record for open anchors (not replayed events: those are
            // already inside the recording that holds the alias), without
            // their own anchors, so a replay defines nothing again.
            if !recording.is_empty() {
                if let Some(e) = unanchored(&ev) {
                    for r in recording.iter_mut() {
                        r.1.push((e.clone(), at));
                    }
                }
            }
            (ev, at)
        };
        // A value (scalar or closed collection) to place in its parent.
        let mut value: Option<(Item, usize)> = None;
        match ev {
            Event::StreamStart | Event::Nothing => {}
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 && !multi {
                    return Err(err(
                        at,
                        "more than one YAML document in the file (Traefik reads one)".into(),
                    ));
                }
                // Anchors belong to their document.
                anchors.clear();
                recording.clear();
                doc_start = at;
            }
            Event::DocumentEnd => docs.push(RawDocument {
                start: doc_start,
                root: root.take(),
            }),
            Event::StreamEnd => break,
            Event::Alias(id) => {
                let Some(events) = anchors.get(&id) else {
                    return Err(err(at, "alias of an unknown anchor".into()));
                };
                // Replayed in order (the queue pops from the back).
                replay.extend(events.iter().rev().cloned().map(|(e, _)| (e, at)));
                // An alias's events are counted as the values they make.
                nodes += events.len();
                if nodes > MAX_YAML_NODES {
                    return Err(err(
                        at,
                        format!("aliases expand to more than {MAX_YAML_NODES} values"),
                    ));
                }
                continue;
            }
            Event::Scalar(s, style, anchor, tag) => {
                if anchor > 0 {
                    let e = Event::Scalar(s.clone(), style, 0, tag.clone());
                    anchors.insert(anchor, vec![(e, at)]);
                }
                let v = yaml_scalar(s, style, tag.as_ref());
                let raw = match style {
                    yaml_rust2::scanner::TScalarStyle::Plain => Some(Style::Plain),
                    yaml_rust2::scanner::TScalarStyle::SingleQuoted
                    | yaml_rust2::scanner::TScalarStyle::DoubleQuoted => Some(Style::Quoted),
                    _ => None,
                }
                .map(|st| (at..text.len(), st));
                value = Some((Item { v, at, raw }, anchor));
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_YAML_DEPTH {
                    return Err(err(
                        at,
                        format!("nested more than {MAX_YAML_DEPTH} levels deep"),
                    ));
                }
                if anchor > 0 {
                    // The start event itself opens the recording.
                    let start = unanchored(&ev).map(|e| (e, at));
                    recording.push((anchor, start.into_iter().collect()));
                }
                stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Open::Map {
                        t: Table::default(),
                        at,
                        anchor,
                        key: None,
                    }
                } else {
                    Open::Seq {
                        items: Vec::new(),
                        at,
                        anchor,
                    }
                });
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Open::Map { t, at, anchor, .. }) => {
                    value = Some((
                        Item {
                            v: V::Table(t),
                            at,
                            raw: None,
                        },
                        anchor,
                    ))
                }
                Some(Open::Seq { items, at, anchor }) => {
                    value = Some((
                        Item {
                            v: V::Array(items),
                            at,
                            raw: None,
                        },
                        anchor,
                    ))
                }
                None => return Err(err(at, "unbalanced collection".into())),
            },
        }
        let Some((item, anchor)) = value else {
            continue;
        };
        nodes += 1;
        if nodes > MAX_YAML_NODES {
            return Err(err(
                at,
                format!("more than {MAX_YAML_NODES} values in the document"),
            ));
        }
        if anchor > 0 {
            // Scalars were recorded when read; a collection's recording
            // is complete once it closes.
            if let Some(i) = recording.iter().rposition(|r| r.0 == anchor) {
                let (_, events) = recording.remove(i);
                anchors.insert(anchor, events);
            }
        }
        match stack.last_mut() {
            None => {
                if root.is_some() {
                    return Err(err(item.at, "a second top-level value".into()));
                }
                root = Some(item);
            }
            Some(Open::Seq { items, .. }) => items.push(item),
            Some(Open::Map { t, key, .. }) => match key.take() {
                None => {
                    let k = match item.v {
                        V::Str(s) => s,
                        V::Int(i) => i.to_string(),
                        V::Bool(b) => b.to_string(),
                        _ => {
                            return Err(err(item.at, "a mapping key must be a scalar".into()));
                        }
                    };
                    *key = Some((k, item.at));
                }
                Some((k, key_at)) => t.entries.push(Entry {
                    key: k,
                    key_at,
                    item,
                }),
            },
        }
    }
    if root.is_some() {
        // A stream cut short (the parser reports that first; kept for safety).
        docs.push(RawDocument {
            start: doc_start,
            root,
        });
    }
    Ok(docs)
}

/// yaml-rust2's markers count characters; positions here are bytes. The
/// markers mostly move forward, so a cursor walks the text once.
struct ByteOffsets<'t> {
    text: &'t str,
    ascii: bool,
    /// (character index, byte offset) of the cursor.
    cursor: (usize, usize),
}

impl<'t> ByteOffsets<'t> {
    fn new(text: &'t str) -> Self {
        ByteOffsets {
            text,
            ascii: text.is_ascii(),
            cursor: (0, 0),
        }
    }

    fn at(&mut self, chars: usize) -> usize {
        if self.ascii {
            return chars.min(self.text.len());
        }
        if chars < self.cursor.0 {
            self.cursor = (0, 0);
        }
        let (mut ci, mut bi) = self.cursor;
        for c in self.text[bi..].chars() {
            if ci == chars {
                break;
            }
            ci += 1;
            bi += c.len_utf8();
        }
        self.cursor = (ci, bi);
        bi
    }
}

/// An event as an anchored value's recording keeps it: without its anchor
/// (a replay must not define it again); `None` for document events.
fn unanchored(ev: &yaml_rust2::parser::Event) -> Option<yaml_rust2::parser::Event> {
    use yaml_rust2::parser::Event;
    Some(match ev {
        Event::MappingStart(_, tag) => Event::MappingStart(0, tag.clone()),
        Event::SequenceStart(_, tag) => Event::SequenceStart(0, tag.clone()),
        Event::Scalar(v, style, _, tag) => Event::Scalar(v.clone(), *style, 0, tag.clone()),
        Event::MappingEnd => Event::MappingEnd,
        Event::SequenceEnd => Event::SequenceEnd,
        Event::Alias(id) => Event::Alias(*id),
        _ => return None,
    })
}

/// A scalar's value under the YAML 1.2 core schema (as Go's yaml.v3, which
/// Traefik's loader uses): plain `true`/`false`, integers (decimal, `0x`,
/// `0o`), floats, `null`/`~`/empty; anything quoted, and every other plain
/// text, is a string. An explicit `!!str` tag keeps a string.
fn yaml_scalar(
    s: String,
    style: yaml_rust2::scanner::TScalarStyle,
    tag: Option<&yaml_rust2::parser::Tag>,
) -> V {
    use yaml_rust2::scanner::TScalarStyle;
    if style != TScalarStyle::Plain || tag.is_some_and(|t| t.suffix == "str") {
        return V::Str(s);
    }
    match s.as_str() {
        "true" | "True" | "TRUE" => return V::Bool(true),
        "false" | "False" | "FALSE" => return V::Bool(false),
        "" | "~" | "null" | "Null" | "NULL" => return V::Other("null"),
        _ => {}
    }
    let (neg, digits) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(&s)),
    };
    let int = if let Some(h) = digits.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()
    } else if let Some(o) = digits.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<i64>().ok()
    } else {
        None
    };
    if let Some(i) = int {
        return V::Int(if neg { -i } else { i });
    }
    let float_like = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
        && digits.bytes().any(|b| b.is_ascii_digit())
        && digits.parse::<f64>().is_ok();
    if float_like || matches!(digits, ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN") {
        return V::Other("float");
    }
    V::Str(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(t: &'a Table, k: &str) -> &'a Item {
        &t.entries.iter().find(|e| e.key == k).expect(k).item
    }

    #[test]
    fn raw_offsets_walk_quotes_and_escapes() {
        assert_eq!(raw_offset("\"abc\"", 2), 3);
        assert_eq!(raw_offset("'abc'", 0), 1);
        assert_eq!(raw_offset("\"a\\\"b\"", 2), 4);
        assert_eq!(raw_offset("\"\\u00e9x\"", 2), 7);
        assert_eq!(raw_offset("\"\"\"\nab\"\"\"", 1), 5);
    }

    #[test]
    fn yaml_scalars_follow_the_core_schema() {
        let t = parse_yaml(
            "a: 1\nb: true\nc: :5432\nd: \"7\"\ne: 10s\nf: ~\ng: 1.5\nh: HostSNI(`*`)\ni: 0x10\n",
        )
        .expect("parses");
        assert!(matches!(get(&t, "a").v, V::Int(1)));
        assert!(matches!(get(&t, "b").v, V::Bool(true)));
        assert!(matches!(&get(&t, "c").v, V::Str(s) if s == ":5432"));
        assert!(matches!(&get(&t, "d").v, V::Str(s) if s == "7"));
        assert!(matches!(&get(&t, "e").v, V::Str(s) if s == "10s"));
        assert!(matches!(get(&t, "f").v, V::Other("null")));
        assert!(matches!(get(&t, "g").v, V::Other("float")));
        assert!(matches!(&get(&t, "h").v, V::Str(s) if s == "HostSNI(`*`)"));
        assert!(matches!(get(&t, "i").v, V::Int(16)));
    }

    #[test]
    fn yaml_positions_are_byte_offsets() {
        let src = "é: x\nkey:\n  inner: [1, two]\n";
        let t = parse_yaml(src).expect("parses");
        let key = t.entries.iter().find(|e| e.key == "key").expect("key");
        assert_eq!(&src[key.key_at..key.key_at + 3], "key");
        let V::Table(inner) = &key.item.v else {
            panic!("table")
        };
        let V::Array(a) = &get(inner, "inner").v else {
            panic!("array")
        };
        assert_eq!(&src[a[1].at..a[1].at + 3], "two");
    }

    #[test]
    fn yaml_aliases_expand_and_are_bounded() {
        let t =
            parse_yaml("base: &b {x: 1, y: [a, b]}\ncopy: *b\ns: &s hi\nt: *s\n").expect("parses");
        let V::Table(c) = &get(&t, "copy").v else {
            panic!("copy is a table")
        };
        assert!(matches!(get(c, "x").v, V::Int(1)));
        assert!(matches!(&get(&t, "t").v, V::Str(s) if s == "hi"));
        // Nine levels of ten aliases each: 10^9 values.
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb += &format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            );
        }
        let e = parse_yaml(&bomb).expect_err("bounded");
        assert!(e.message.contains("expand"), "{}", e.message);
    }

    /// The fuzz target's seeds (fuzz/corpus/config_tree) through both
    /// parsers and the KV conversion: no panic, positions inside the text.
    #[test]
    fn fuzz_corpus_replays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/config_tree");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/config_tree exists") {
            let bytes = std::fs::read(entry.expect("dir entry").path()).expect("readable");
            let text = String::from_utf8_lossy(&bytes);
            for parsed in [parse_yaml(&text), parse_toml(&text)] {
                if let Err(e) = parsed {
                    assert!(e.offset <= text.len());
                }
            }
            let pairs: Vec<(String, String)> = text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let listing = kv_listing(&pairs);
            let _ = from_pairs(&pairs, &listing);
            n += 1;
        }
        assert!(n >= 5, "only {n} seed files in {}", dir.display());
    }

    #[test]
    fn kv_pairs_become_tables_and_numbered_arrays() {
        let pairs = vec![
            ("tcp/routers/r/entrypoints/1".to_string(), "b".to_string()),
            ("tcp/routers/r/entrypoints/0".to_string(), "a".to_string()),
            ("tcp/routers/r/rule".to_string(), "HostSNI(`*`)".to_string()),
        ];
        let listing = kv_listing(&pairs);
        let t = from_pairs(&pairs, &listing);
        let V::Table(tcp) = &get(&t, "tcp").v else {
            panic!("tcp")
        };
        let V::Table(routers) = &get(tcp, "routers").v else {
            panic!("routers")
        };
        let V::Table(r) = &get(routers, "r").v else {
            panic!("r")
        };
        let V::Array(eps) = &get(r, "entrypoints").v else {
            panic!("array")
        };
        let names: Vec<&str> = eps
            .iter()
            .map(|i| match &i.v {
                V::Str(s) => s.as_str(),
                _ => "?",
            })
            .collect();
        assert_eq!(names, ["a", "b"], "in index order");
        let rule = get(r, "rule");
        assert_eq!(
            &listing[rule.at..rule.at + 7],
            "HostSNI",
            "positions point into the listing"
        );
    }

    #[test]
    fn yaml_rejects_what_is_not_one_mapping() {
        assert!(parse_yaml("- a\n- b\n").is_err());
        assert!(parse_yaml("a: 1\n---\nb: 2\n").is_err());
        assert!(parse_yaml(&"[".repeat(100_000)).is_err());
        assert!(parse_yaml("a: [1\n").is_err());
        assert!(parse_yaml("").expect("empty").entries.is_empty());
    }

    #[test]
    fn yaml_streams_give_every_document_with_its_own_anchors() {
        let src = "# c\na: &x 1\nb: *x\n---\n---\nc: 2\n...\n---\n# only a comment\n";
        let docs = parse_yaml_stream(src).expect("parses");
        assert_eq!(docs.len(), 2);
        assert!(matches!(get(&docs[0].table, "b").v, V::Int(1)));
        assert_eq!(&src[docs[1].at..docs[1].at + 4], "c: 2");
        assert!(matches!(get(&docs[1].table, "c").v, V::Int(2)));
        // An anchor of the first document is unknown in the second.
        assert!(parse_yaml_stream("a: &x 1\n---\nb: *x\n").is_err());
        let e = parse_yaml_stream("a: 1\n---\n- x\n").expect_err("a sequence");
        assert!(e.message.contains("must be a mapping"), "{}", e.message);
        assert!(parse_yaml_stream("").expect("empty").is_empty());
    }
}
