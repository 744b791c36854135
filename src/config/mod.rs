//! Configuration: Traefik's TCP TOML → file model → validation → `model::Config`.
//!
//! `load` is the IO edge: it reads the main file and the files that
//! `[providers.file]` names, and resolves server host names. Everything else
//! is pure and works on texts and parsed documents:
//!
//! - `reader`: schema-checking walk over `toml_edit` (unknown keys, types)
//! - `static_conf`, `dynamic`, `tls`: Traefik's sections → `file` model
//! - `build`: references, defaults, overlaps, cycles → `model::Config`
//! - `diag`: positions and `FILE:LINE:COL: message` rendering
//! - `duration`, `address`, `values`: value parsers
//! - `summary`: what `sluicegate check` prints
//! - `rule`: the rule language
//!
//! Every problem is collected before anything is reported, so one run shows
//! them all (a TOML syntax error stops the run: the rest of that file cannot
//! be read).

mod address;
mod build;
mod diag;
pub mod duration;
mod dynamic;
mod file;
mod reader;
pub mod rule;
mod static_conf;
mod summary;
mod tls;
mod values;

use std::path::{Path, PathBuf};

pub use address::Resolve;
pub use diag::Errors;
use diag::{Diags, Pos, Severity, Sources};
use file::FileModel;
use reader::Tbl;
use values::FileCtx;

use crate::model;

/// Extension of the files a `[providers.file] directory` contributes.
const DYNAMIC_EXTENSION: &str = "toml";
/// Traefik also reads YAML there; sluicegate does not, and says so rather than
/// silently skip routers.
const YAML_EXTENSIONS: &[&str] = &["yaml", "yml"];
/// Nesting limit for `directory` walks (Traefik recurses; a symlink loop must
/// not hang the loader).
const MAX_DIRECTORY_DEPTH: usize = 16;

/// Loads and validates a configuration: the file at `path` and the files its
/// `[providers.file]` names. Host names of servers and entrypoints are
/// resolved with the system resolver.
pub fn load(path: &Path) -> Result<model::Config, Errors> {
    load_with(path, &address::system_resolve)
}

/// `load` with a given resolver (tests use a fixed table).
pub fn load_with(path: &Path, resolve: Resolve<'_>) -> Result<model::Config, Errors> {
    let mut sources = Sources::default();
    let mut d = Diags::default();
    let mut m = FileModel::default();
    let text = std::fs::read_to_string(path)
        .map_err(|e| Errors(vec![format!("{}: cannot read: {e}", path.display())]))?;
    let main = sources.add(path.to_path_buf(), text);
    let main_doc = parse(&sources, main)?;
    let base = parent_dir(path);
    static_conf::read_main(
        Tbl::root(main, &sources.files[main].text, main_doc.as_table()),
        FileCtx { base: &base },
        &mut m,
        &mut d,
    );
    let dynamic_files = provider_files(&m, path, &mut d);
    let mut syntax = Vec::new();
    let mut docs = Vec::new();
    for (file_path, at) in dynamic_files {
        match std::fs::read_to_string(&file_path) {
            Ok(text) => {
                let id = sources.add(file_path, text);
                match parse(&sources, id) {
                    Ok(doc) => docs.push((id, doc)),
                    Err(e) => syntax.extend(e.0),
                }
            }
            Err(e) => d.error(at, format!("cannot read `{}`: {e}", file_path.display())),
        }
    }
    if !syntax.is_empty() {
        return Err(Errors(syntax));
    }
    for (id, doc) in &docs {
        let dir = parent_dir(&sources.files[*id].path);
        static_conf::read_dynamic_file(
            Tbl::root(*id, &sources.files[*id].text, doc.as_table()),
            FileCtx { base: &dir },
            &mut m,
            &mut d,
        );
    }
    let config = build::build(m, &sources, resolve, &mut d);
    match config {
        Some(mut c) if !d.has_errors() => {
            c.warnings = d.render(&sources, Severity::Warning);
            Ok(c)
        }
        _ => Err(Errors(d.render(&sources, Severity::Error))),
    }
}

type Doc = toml_edit::ImDocument<String>;

/// Parses one loaded file; a syntax error is the only thing reported for it.
fn parse(sources: &Sources, id: usize) -> Result<Doc, Errors> {
    let text = sources.files[id].text.clone();
    Doc::parse(text).map_err(|e| {
        let at = Pos {
            file: id,
            offset: e.span().map_or(0, |s| s.start),
        };
        let message = e.message().trim().replace('\n', "; ");
        Errors(vec![format!(
            "{}: TOML syntax error: {message}",
            sources.locate(at)
        )])
    })
}

fn parent_dir(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The dynamic files named by `[providers.file]`, each with the position to
/// blame when it cannot be read. The main file is skipped if named again
/// (a common Traefik layout points the provider at the static file itself).
fn provider_files(m: &FileModel, main: &Path, d: &mut Diags) -> Vec<(PathBuf, Pos)> {
    let Some(p) = &m.provider else {
        return Vec::new();
    };
    let main_canon = std::fs::canonicalize(main).ok();
    let is_main = |f: &Path| main_canon.is_some() && std::fs::canonicalize(f).ok() == main_canon;
    let mut out = Vec::new();
    if let Some(f) = &p.filename {
        if !is_main(&f.v) {
            out.push((f.v.clone(), f.at));
        }
    }
    if let Some(dir) = &p.directory {
        let mut files = Vec::new();
        walk_dir(&dir.v, 0, dir.at, &mut files, d);
        files.sort();
        out.extend(
            files
                .into_iter()
                .filter(|f| !is_main(f))
                .map(|f| (f, dir.at)),
        );
    }
    out
}

fn walk_dir(dir: &Path, depth: usize, at: Pos, out: &mut Vec<PathBuf>, d: &mut Diags) {
    if depth > MAX_DIRECTORY_DEPTH {
        d.error(
            at,
            format!(
                "`{}`: directories nested more than {MAX_DIRECTORY_DEPTH} deep",
                dir.display()
            ),
        );
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            d.error(
                at,
                format!("cannot read directory `{}`: {e}", dir.display()),
            );
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        // Editors' and Kubernetes' hidden files (`.x.swp`, `..data`) are not config.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk_dir(&path, depth + 1, at, out, d);
            continue;
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if ext == DYNAMIC_EXTENSION {
            out.push(path);
        } else if YAML_EXTENSIONS.contains(&ext.as_str()) {
            d.error(
                at,
                format!(
                    "`{}`: YAML files are not supported (only TOML); its routers would be missing",
                    path.display()
                ),
            );
        }
    }
}
