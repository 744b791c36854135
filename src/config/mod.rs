//! Configuration: Traefik's TCP TOML or YAML → file model → validation → `model::Config`.
//!
//! `load` is the IO edge: it reads the main file and the files that
//! `[providers.file]` names (through `bounded`: regular files only, size
//! caps), and resolves server host names. Everything else
//! is pure and works on texts and parsed documents:
//!
//! - `tree`: TOML (`toml_edit`) and YAML (`yaml-rust2`) parsed into one tree
//!   with a position for every key and value
//! - `reader`: schema-checking walk over that tree (unknown keys, types)
//! - `static_conf`, `dynamic`, `tls`: Traefik's sections → `file` model
//! - `k8s`: `[providers.kubernetesCRD]`, Kubernetes objects → `file` model
//! - `build`: references, defaults, overlaps, cycles → `model::Config`
//! - `diag`: positions and `FILE:LINE:COL: message` rendering
//! - `duration`, `address`, `values`: value parsers
//! - `summary`: what `sluicegate check` prints
//!
//! Every problem is collected before anything is reported, so one run shows
//! them all (a syntax error stops the run: the rest of that file cannot
//! be read; beyond `diag::MAX_DIAGNOSTICS` they are counted, not listed).

mod acme;
mod address;
mod bounded;
mod build;
mod diag;
pub mod duration;
mod dynamic;
mod file;
mod k8s;
mod reader;
mod static_conf;
mod summary;
mod tls;
pub mod tree;
mod values;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use address::Resolve;
pub use bounded::{read_regular, MAX_CA_FILE_SIZE, MAX_CONFIG_FILE_SIZE, MAX_PEM_FILE_SIZE};
pub use diag::Errors;
pub use diag::Pos;

use diag::{Diags, Severity, Sources};
use file::FileModel;
use reader::Tbl;
use values::FileCtx;

use crate::model;

/// Extensions of the files a `[providers.file] directory` contributes (as
/// Traefik's file provider: TOML and YAML, mixed freely); a file named
/// directly (`-c`, `filename`) is YAML by these extensions, else TOML.
const YAML_EXTENSIONS: &[&str] = &["yaml", "yml"];
const DYNAMIC_EXTENSIONS: &[&str] = &["toml", "yaml", "yml"];
/// Kubernetes manifest files (`kubectl apply -f DIR` reads these).
const MANIFEST_EXTENSIONS: &[&str] = &["yaml", "yml", "json"];
/// Nesting limit for `directory` walks (Traefik recurses into
/// subdirectories; a deeper tree is a mistake such as `directory = "/"`).
const MAX_DIRECTORY_DEPTH: usize = 16;
/// Most configuration files one `directory` contributes: far more than any
/// deployment splits its routers into, few enough to load in seconds.
const MAX_DIRECTORY_FILES: usize = 1000;
/// Most directory entries (of any kind) one walk looks at, so a huge tree
/// named by mistake (`/`, `/usr`) is an error at once, not a walk of minutes.
const MAX_DIRECTORY_ENTRIES: usize = 20_000;
/// Most bytes of configuration read in all (main file and dynamic files):
/// each file is capped by `bounded::MAX_CONFIG_FILE_SIZE`, and this keeps
/// `MAX_DIRECTORY_FILES` of them from adding up. The parsed document costs
/// far more than its text (a 4 MiB file of 400,000 one-line keys takes about
/// 540 MB to load), so the total stays at two such files.
const MAX_CONFIG_TOTAL_SIZE: u64 = 8 << 20;

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
    let text = bounded::read_text(path, bounded::MAX_CONFIG_FILE_SIZE)
        .map_err(|e| Errors(vec![format!("{}: cannot read: {e}", path.display())]))?;
    let mut total = text.len() as u64;
    let main = sources.add(path.to_path_buf(), text);
    let main_doc = parse(&sources, main)?;
    let base = parent_dir(path);
    static_conf::read_main(
        Tbl::root(main, &sources.files[main].text, &main_doc),
        FileCtx {
            base: &base,
            sources: &sources,
        },
        &mut m,
        &mut d,
    );
    let dynamic_files = provider_files(&m, path, &mut d);
    let mut syntax = Vec::new();
    let mut reading = Reading {
        sources: &mut sources,
        total: &mut total,
        d: &mut d,
        syntax: &mut syntax,
    };
    let mut docs = reading.files(dynamic_files, parse);
    // `[providers.kubernetesCRD]`: every document of its manifest files.
    let kubernetes = m.kubernetes.take();
    let manifest_files = kubernetes
        .as_ref()
        .map(|k| manifest_files(k, reading.d))
        .unwrap_or_default();
    let manifests = reading.files(manifest_files, parse_manifests);
    // KV providers: each store's last consistent read, as one more source.
    let mut kv_trees = Vec::new();
    for p in m.kv.clone() {
        let id = p.id();
        match crate::kv::tree_for_load(&p) {
            Ok(t) => {
                let listing = tree::kv_listing(&t.pairs);
                let sid = sources.add(PathBuf::from(&id), listing);
                let table = tree::from_pairs(&t.pairs, &sources.files[sid].text);
                m.kv_revisions.push((id, t.revision));
                kv_trees.push((sid, table));
            }
            // Unreachable at start-up: serve without it, and the watcher
            // applies it when the store answers (Traefik does the same).
            Err(e) => d.warn(
                Pos {
                    file: main,
                    offset: 0,
                },
                format!("no configuration from the KV store yet: {e}"),
            ),
        }
    }
    docs.extend(kv_trees);
    if !syntax.is_empty() {
        return Err(Errors(syntax));
    }
    for (id, doc) in &docs {
        let dir = parent_dir(&sources.files[*id].path);
        static_conf::read_dynamic_file(
            Tbl::root(*id, &sources.files[*id].text, doc),
            FileCtx {
                base: &dir,
                sources: &sources,
            },
            &mut m,
            &mut d,
        );
    }
    if let Some(k) = &kubernetes {
        let mut objects = Vec::new();
        for (id, file_docs) in &manifests {
            for doc in file_docs {
                let mut t = Tbl::root(*id, &sources.files[*id].text, &doc.table);
                t.at.offset = doc.at;
                objects.push(t);
            }
        }
        k8s::read(objects, k, &sources, &mut m, &mut d);
    }
    let config = build::build(m, &sources, resolve, &mut d);
    match config {
        Some(mut c) if !d.has_errors() => {
            if let Some(dir) = kubernetes
                .as_ref()
                .filter(|k| k.watch)
                .and_then(|k| k.directory.as_ref())
            {
                // The directory (a file added) and each manifest (changed or
                // deleted: a directory's newest entry can stay the same when
                // an older file is removed).
                c.watch.push(dir.v.clone());
                c.watch.extend(
                    manifests
                        .iter()
                        .map(|(id, _)| sources.files[*id].path.clone()),
                );
            }
            c.warnings = d.render(&sources, Severity::Warning);
            Ok(c)
        }
        _ => Err(Errors(d.render(&sources, Severity::Error))),
    }
}

/// Parses one loaded file, TOML or YAML by its extension (`.yml`/`.yaml`,
/// as Traefik decides); a syntax error is the only thing reported for it.
fn parse(sources: &Sources, id: usize) -> Result<tree::Table, Errors> {
    let file = &sources.files[id];
    if is_yaml(&file.path) {
        tree::parse_yaml(&file.text).map_err(|e| syntax_error(sources, id, "YAML", e))
    } else {
        tree::parse_toml(&file.text).map_err(|e| syntax_error(sources, id, "TOML", e))
    }
}

/// Parses a Kubernetes manifest file: a YAML stream (JSON is YAML too).
fn parse_manifests(sources: &Sources, id: usize) -> Result<Vec<tree::Document>, Errors> {
    tree::parse_yaml_stream(&sources.files[id].text)
        .map_err(|e| syntax_error(sources, id, "YAML", e))
}

fn syntax_error(sources: &Sources, id: usize, syntax: &str, e: tree::SyntaxError) -> Errors {
    let at = Pos {
        file: id,
        offset: e.offset.min(sources.files[id].text.len()),
    };
    Errors(vec![format!(
        "{}: {syntax} syntax error: {}",
        sources.locate(at),
        e.message
    )])
}

/// Reading the files the providers name, under one total size cap.
struct Reading<'r> {
    sources: &'r mut Sources,
    total: &'r mut u64,
    d: &'r mut Diags,
    /// Syntax errors: they stop the load once every file is read.
    syntax: &'r mut Vec<String>,
}

impl Reading<'_> {
    /// Reads and parses `files`, each blamed at its position when it cannot be read.
    fn files<T>(
        &mut self,
        files: Vec<(PathBuf, Pos)>,
        parse: fn(&Sources, usize) -> Result<T, Errors>,
    ) -> Vec<(usize, T)> {
        let mut docs = Vec::new();
        for (file_path, at) in files {
            match bounded::read_text(&file_path, bounded::MAX_CONFIG_FILE_SIZE) {
                Ok(text) if *self.total + text.len() as u64 > MAX_CONFIG_TOTAL_SIZE => {
                    self.d.error(
                        at,
                        format!(
                            "`{}`: the configuration files together are larger than the limit of {} MiB",
                            file_path.display(),
                            MAX_CONFIG_TOTAL_SIZE >> 20
                        ),
                    );
                    break;
                }
                Ok(text) => {
                    *self.total += text.len() as u64;
                    let id = self.sources.add(file_path, text);
                    match parse(self.sources, id) {
                        Ok(doc) => docs.push((id, doc)),
                        Err(e) => self.syntax.extend(e.0),
                    }
                }
                Err(e) => self
                    .d
                    .error(at, format!("cannot read `{}`: {e}", file_path.display())),
            }
        }
        docs
    }
}

/// The manifest files of `[providers.kubernetesCRD] directory`: `.yaml`,
/// `.yml` and `.json`, walked as the file provider's directory.
fn manifest_files(k: &k8s::Settings, d: &mut Diags) -> Vec<(PathBuf, Pos)> {
    let Some(dir) = &k.directory else {
        return Vec::new();
    };
    let mut walk = Walk::new(dir.at, d, MANIFEST_EXTENSIONS);
    if let Ok(meta) = std::fs::metadata(&dir.v) {
        walk.visited.insert((meta.dev(), meta.ino()));
    }
    walk.dir(&dir.v, 0);
    let mut files = walk.files;
    files.sort();
    files.into_iter().map(|f| (f, dir.at)).collect()
}

fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

fn is_yaml(path: &Path) -> bool {
    YAML_EXTENSIONS.contains(&extension(path).as_str())
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
        let mut walk = Walk::new(dir.at, d, DYNAMIC_EXTENSIONS);
        if let Ok(meta) = std::fs::metadata(&dir.v) {
            walk.visited.insert((meta.dev(), meta.ino()));
        }
        walk.dir(&dir.v, 0);
        let mut files = walk.files;
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

/// A bounded walk of a `[providers.file] directory`, as Traefik's file
/// provider does it: every `.toml` file in the directory and, recursively, in
/// its real subdirectories. Symbolic links to files are read (Kubernetes
/// ConfigMap volumes are made of them); symbolic links to directories are
/// not followed (Traefik's directory listing does not follow them either),
/// which is what makes a loop of links impossible; a directory reached twice
/// (bind mounts) is skipped. Depth, entries and files are capped. The file
/// types are checked when the files are read (`bounded`): a `.toml` FIFO or
/// device is an error there, not a hang.
struct Walk<'d> {
    /// The `directory` key, blamed for every problem.
    at: Pos,
    d: &'d mut Diags,
    /// (device, inode) of every directory entered.
    visited: HashSet<(u64, u64)>,
    entries: usize,
    files: Vec<PathBuf>,
    /// A cap was hit and reported: stop everywhere.
    stopped: bool,
    /// The extensions of the files collected.
    extensions: &'static [&'static str],
}

impl<'d> Walk<'d> {
    fn new(at: Pos, d: &'d mut Diags, extensions: &'static [&'static str]) -> Self {
        Walk {
            at,
            d,
            visited: HashSet::new(),
            entries: 0,
            files: Vec::new(),
            stopped: false,
            extensions,
        }
    }

    fn dir(&mut self, dir: &Path, depth: usize) {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                self.d.error(
                    self.at,
                    format!("cannot read directory `{}`: {e}", dir.display()),
                );
                return;
            }
        };
        // Sorted, so warnings and caps do not depend on the file system's
        // order; one more than the cap is enough to know it is exceeded.
        let mut entries: Vec<_> = entries.flatten().take(MAX_DIRECTORY_ENTRIES + 1).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            if self.stopped {
                return;
            }
            let path = entry.path();
            let name = entry.file_name();
            // Editors' and Kubernetes' hidden files (`.x.swp`, `..data`) are not config.
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            self.entries += 1;
            if self.entries > MAX_DIRECTORY_ENTRIES {
                self.stop(format!(
                    "`{}`: more than {MAX_DIRECTORY_ENTRIES} entries under the directory; name the directory that holds the dynamic files",
                    dir.display()
                ));
                return;
            }
            // The entry's own type (not following a symbolic link).
            let Ok(own) = entry.file_type() else {
                continue;
            };
            if own.is_dir() {
                self.subdir(&path, depth + 1);
                continue;
            }
            if own.is_symlink() && std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
                self.d.warn(
                    self.at,
                    format!(
                        "`{}` is a symbolic link to a directory: not followed (as Traefik); its files are not loaded",
                        path.display()
                    ),
                );
                continue;
            }
            let ext = extension(&path);
            if self.extensions.contains(&ext.as_str()) {
                if self.files.len() == MAX_DIRECTORY_FILES {
                    self.stop(format!(
                        "`{}`: more than {MAX_DIRECTORY_FILES} configuration files under the directory",
                        path.display()
                    ));
                    return;
                }
                self.files.push(path);
            }
        }
    }

    fn subdir(&mut self, dir: &Path, depth: usize) {
        if depth > MAX_DIRECTORY_DEPTH {
            self.stop(format!(
                "`{}`: directories nested more than {MAX_DIRECTORY_DEPTH} deep",
                dir.display()
            ));
            return;
        }
        // A directory's own metadata (it is not a link here).
        let Ok(meta) = std::fs::symlink_metadata(dir) else {
            return;
        };
        if !self.visited.insert((meta.dev(), meta.ino())) {
            // Reached twice (a bind mount of an ancestor): once is enough.
            return;
        }
        self.dir(dir, depth);
    }

    fn stop(&mut self, message: String) {
        self.d.error(self.at, message);
        self.stopped = true;
    }
}
