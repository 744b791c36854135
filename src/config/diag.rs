//! Diagnostics: positions in the loaded files, collected errors and warnings,
//! and their `FILE:LINE:COL: message` rendering.
//!
//! Pure: the loader hands in file texts it has already read; nothing here
//! touches the file system. Every problem found anywhere in the configuration
//! is collected here first, so the operator sees all of them at once, sorted by
//! file and position.

use std::fmt;
use std::path::PathBuf;

/// A byte offset in one of the loaded files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// Index into `Sources`, in load order (the main file is 0).
    pub file: usize,
    pub offset: usize,
}

/// A value read from the configuration together with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Sp<T> {
    pub v: T,
    pub at: Pos,
}

impl<T> Sp<T> {
    pub fn new(v: T, at: Pos) -> Self {
        Sp { v, at }
    }
}

/// One loaded file: its path as shown in messages and its text.
#[derive(Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    /// Byte offset of the start of every line, for offset → line/column.
    line_starts: Vec<usize>,
}

/// Every file read for one configuration, indexed by `Pos::file`.
#[derive(Debug, Default)]
pub struct Sources {
    pub files: Vec<SourceFile>,
}

impl Sources {
    pub fn add(&mut self, path: PathBuf, text: String) -> usize {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        self.files.push(SourceFile {
            path,
            text,
            line_starts,
        });
        self.files.len() - 1
    }

    /// `FILE:LINE:COL` (1-based line and column; the column counts characters,
    /// as editors do).
    pub fn locate(&self, pos: Pos) -> String {
        let Some(f) = self.files.get(pos.file) else {
            return "?".to_string();
        };
        let offset = pos.offset.min(f.text.len());
        let line = f.line_starts.partition_point(|&s| s <= offset).max(1) - 1;
        let start = f.line_starts[line];
        let col = f
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        format!("{}:{}:{}", f.path.display(), line + 1, col + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone)]
pub struct Diag {
    pub severity: Severity,
    pub at: Pos,
    pub message: String,
}

/// Errors and warnings collected while loading.
#[derive(Debug, Default)]
pub struct Diags {
    list: Vec<Diag>,
}

impl Diags {
    pub fn error(&mut self, at: Pos, message: impl Into<String>) {
        self.list.push(Diag {
            severity: Severity::Error,
            at,
            message: message.into(),
        });
    }

    pub fn warn(&mut self, at: Pos, message: impl Into<String>) {
        self.list.push(Diag {
            severity: Severity::Warning,
            at,
            message: message.into(),
        });
    }

    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|d| d.severity == Severity::Error)
    }

    /// Renders the diagnostics of one severity, sorted by file and position,
    /// without exact duplicates (two checks may notice the same thing).
    pub fn render(&self, sources: &Sources, severity: Severity) -> Vec<String> {
        let mut list: Vec<&Diag> = self
            .list
            .iter()
            .filter(|d| d.severity == severity)
            .collect();
        list.sort_by_key(|d| d.at);
        let mut out: Vec<String> = list
            .iter()
            .map(|d| format!("{}: {}", sources.locate(d.at), d.message))
            .collect();
        out.dedup();
        out
    }
}

/// Every error found in a configuration, each formatted `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Errors(pub Vec<String>);

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_counts_lines_and_characters() {
        let mut s = Sources::default();
        let f = s.add(PathBuf::from("a.toml"), "ab\ncé d\n".to_string());
        assert_eq!(s.locate(Pos { file: f, offset: 0 }), "a.toml:1:1");
        assert_eq!(s.locate(Pos { file: f, offset: 3 }), "a.toml:2:1");
        // 'é' is two bytes but one column.
        assert_eq!(s.locate(Pos { file: f, offset: 7 }), "a.toml:2:4");
        assert_eq!(
            s.locate(Pos {
                file: f,
                offset: 99
            }),
            "a.toml:3:1"
        );
    }

    #[test]
    fn render_sorts_by_position() {
        let mut s = Sources::default();
        let f = s.add(PathBuf::from("a.toml"), "x\ny\n".to_string());
        let mut d = Diags::default();
        d.error(Pos { file: f, offset: 2 }, "second");
        d.error(Pos { file: f, offset: 0 }, "first");
        d.warn(Pos { file: f, offset: 0 }, "warned");
        assert_eq!(
            d.render(&s, Severity::Error),
            vec!["a.toml:1:1: first", "a.toml:2:1: second"]
        );
        assert_eq!(d.render(&s, Severity::Warning), vec!["a.toml:1:1: warned"]);
    }
}
