//! The crate's top-level modules form a directed acyclic graph: no module
//! reaches, through `crate::` paths, a module that reaches it back.
//!
//! The test reads every `src/**/*.rs` file of the library (not `main.rs` or
//! `lib.rs`, which only declare and drive modules), strips comments, string
//! and character literals, collects every `crate::a...` and
//! `crate::{a, b::c}` path, and adds an edge from the file's top-level module
//! to each module named. A cycle is printed as `a -> b -> ... -> a`, with the
//! file and line of each edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One dependency: where it is written.
#[derive(Clone, Debug)]
struct Site {
    file: PathBuf,
    line: usize,
}

/// `from -> to -> sites`.
type Graph = BTreeMap<String, BTreeMap<String, Vec<Site>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/a.rs`, `src/a/**` → `a`).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    match name {
        "lib" | "main" | "bin" => None,
        _ => Some(name.to_string()),
    }
}

/// The source with comments, string and character literals replaced by
/// spaces (newlines kept, so line numbers stay right).
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && !b
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string r"..." or r#"..."#: count the hashes.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &ch in &b[i..j.min(b.len())] {
                out.push(blank(ch));
            }
            i = j;
        } else if c == '"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != '"' {
                if b[j] == '\\' {
                    j += 1;
                }
                j += 1;
            }
            let end = (j + 1).min(b.len());
            for &ch in &b[i..end] {
                out.push(blank(ch));
            }
            i = end;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            let end = if next == Some('\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                j + 1
            } else if b.get(i + 2) == Some(&'\'') {
                i + 3
            } else {
                i + 1
            };
            let end = end.min(b.len());
            for &ch in &b[i..end] {
                out.push(blank(ch));
            }
            i = end;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_at(b: &[char], mut i: usize) -> (String, usize) {
    while i < b.len() && b[i].is_whitespace() {
        i += 1;
    }
    let start = i;
    while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
        i += 1;
    }
    (b[start..i].iter().collect(), i)
}

/// The top-level modules named by `crate::` paths in `code`, with the line
/// of each.
fn crate_paths(code: &str) -> Vec<(String, usize)> {
    let b: Vec<char> = code.chars().collect();
    let line_of = |i: usize| b[..i].iter().filter(|&&c| c == '\n').count() + 1;
    let mut found = Vec::new();
    let mut i = 0;
    while i + 7 <= b.len() {
        let preceded_by_ident =
            i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_' || b[i - 1] == '$');
        if preceded_by_ident || b[i..i + 5].iter().collect::<String>() != "crate" {
            i += 1;
            continue;
        }
        let mut j = i + 5;
        while j < b.len() && b[j].is_whitespace() {
            j += 1;
        }
        if b.get(j) != Some(&':') || b.get(j + 1) != Some(&':') {
            i += 5;
            continue;
        }
        j += 2;
        while j < b.len() && b[j].is_whitespace() {
            j += 1;
        }
        if b.get(j) == Some(&'{') {
            // A group: the first identifier of each top-level item.
            let mut depth = 0;
            let mut expect_item = true;
            while j < b.len() {
                match b[j] {
                    '{' => {
                        depth += 1;
                        j += 1;
                        if depth == 1 {
                            expect_item = true;
                        }
                    }
                    '}' => {
                        depth -= 1;
                        j += 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        expect_item = true;
                        j += 1;
                    }
                    c if depth == 1 && expect_item && (c.is_alphabetic() || c == '_') => {
                        let (name, end) = ident_at(&b, j);
                        found.push((name, line_of(j)));
                        expect_item = false;
                        j = end;
                    }
                    _ => j += 1,
                }
            }
        } else {
            let (name, end) = ident_at(&b, j);
            if !name.is_empty() {
                found.push((name, line_of(j)));
            }
            j = end;
        }
        i = j.max(i + 1);
    }
    found
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(&src, f)).collect();
    let mut g = Graph::new();
    for file in &files {
        let Some(from) = top_module(&src, file) else {
            continue;
        };
        g.entry(from.clone()).or_default();
        let text = std::fs::read_to_string(file).unwrap();
        for (to, line) in crate_paths(&code_only(&text)) {
            if to == from || to == "self" || !modules.contains(&to) {
                continue;
            }
            let rel = file
                .strip_prefix(src.parent().unwrap())
                .unwrap()
                .to_path_buf();
            g.entry(from.clone())
                .or_default()
                .entry(to)
                .or_default()
                .push(Site { file: rel, line });
        }
    }
    g
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let g = s.g;
        for w in g.get(v).into_iter().flat_map(|m| m.keys()) {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// One shortest cycle through `start` inside `comp` (breadth-first).
fn cycle_through(g: &Graph, comp: &[String], start: &str) -> Vec<String> {
    let inside: BTreeSet<&str> = comp.iter().map(String::as_str).collect();
    let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in g[v]
            .keys()
            .map(String::as_str)
            .filter(|w| inside.contains(w))
        {
            if w == start {
                let mut path = vec![v.to_string()];
                let mut at = v;
                while at != start {
                    at = prev[at];
                    path.push(at.to_string());
                }
                path.reverse();
                path.push(start.to_string());
                return path;
            }
            if !prev.contains_key(w) && w != start {
                prev.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    vec![start.to_string()]
}

fn describe(g: &Graph, comps: &[Vec<String>]) -> String {
    let mut msg = String::new();
    for comp in comps {
        msg.push_str(&format!("modules in a cycle: {}\n", comp.join(", ")));
        let mut shown = BTreeSet::new();
        for start in comp {
            let path = cycle_through(g, comp, start);
            let mut key: Vec<String> = path[..path.len() - 1].to_vec();
            key.sort();
            if !shown.insert(key) {
                continue;
            }
            msg.push_str(&format!("  {}\n", path.join(" -> ")));
            for pair in path.windows(2) {
                let site = &g[&pair[0]][&pair[1]][0];
                msg.push_str(&format!(
                    "    {} -> {}: {}:{}\n",
                    pair[0],
                    pair[1],
                    site.file.display(),
                    site.line
                ));
            }
        }
    }
    msg
}

#[test]
fn top_level_modules_have_no_cycle() {
    let g = graph();
    assert!(
        g.len() > 10,
        "the scan found too few modules to be a real reading of src/: {:?}",
        g.keys().collect::<Vec<_>>()
    );
    let comps = cycles(&g);
    let listing: String = g
        .iter()
        .map(|(from, tos)| {
            let names: Vec<&str> = tos.keys().map(String::as_str).collect();
            format!("  {from} -> {}\n", names.join(", "))
        })
        .collect();
    assert!(
        comps.is_empty(),
        "the top-level modules have cycles:\n{}\nthe whole graph:\n{listing}",
        describe(&g, &comps)
    );
}

/// `worker` (the data-plane threads) is a leaf of the control plane: only
/// `engine` starts workers; shared state lives in `state`, which every other
/// module uses instead.
#[test]
fn only_the_engine_depends_on_worker() {
    let g = graph();
    assert!(
        g.get("engine").is_some_and(|m| m.contains_key("worker")),
        "the scan did not see engine -> worker"
    );
    let users: Vec<String> = g
        .iter()
        .filter(|(from, tos)| from.as_str() != "engine" && tos.contains_key("worker"))
        .map(|(from, tos)| {
            let site = &tos["worker"][0];
            format!("{from} ({}:{})", site.file.display(), site.line)
        })
        .collect();
    assert!(users.is_empty(), "modules depending on worker: {users:?}");
}

/// The scanner itself: paths in comments and strings are not dependencies,
/// groups name each of their modules, and the cycle finder sees a cycle.
#[test]
fn scanner_reads_paths_groups_and_finds_cycles() {
    let code = code_only(
        "use crate::{a, b::{c, d}, e::f as g};\n\
         // crate::commented\n\
         let s = \"crate::quoted\"; let r = r#\"crate::raw\"#; let c = '\"';\n\
         fn f<'a>(x: &'a crate::h::T) { crate :: i::j(); }\n",
    );
    let names: Vec<(String, usize)> = crate_paths(&code);
    let just: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(just, ["a", "b", "e", "h", "i"]);
    assert_eq!(names[3].1, 4, "line of crate::h");

    let site = || Site {
        file: PathBuf::from("x.rs"),
        line: 1,
    };
    let mut g = Graph::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e")] {
        g.entry(from.into())
            .or_default()
            .insert(to.into(), vec![site()]);
        g.entry(to.into()).or_default();
    }
    let comps = cycles(&g);
    assert_eq!(comps, vec![vec!["a".to_string(), "b".into(), "c".into()]]);
    let text = describe(&g, &comps);
    assert!(text.contains("a -> b -> c -> a"), "{text}");
}
