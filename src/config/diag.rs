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

/// Bytes between two entries of `SourceFile::char_marks`: a column is found
/// by counting characters from the nearest mark before the offset, so one
/// lookup costs at most this many bytes however long the line is (a 4 MiB
/// single-line file with 100,000 errors used to count the line from its start
/// for each: quadratic, minutes).
const CHAR_MARK_STRIDE: usize = 512;

/// One loaded file: its path as shown in messages and its text.
#[derive(Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    /// Byte offset of the start of every line, for offset → line (binary
    /// search).
    line_starts: Vec<usize>,
    /// `char_marks[i]`: characters in `text[..i * CHAR_MARK_STRIDE]`, for
    /// offset → column without rescanning the line.
    char_marks: Vec<usize>,
}

impl SourceFile {
    /// Characters before byte `offset` (at most `CHAR_MARK_STRIDE` bytes
    /// counted). Counts UTF-8 lead bytes, so a mark inside a character is
    /// harmless.
    fn chars_before(&self, offset: usize) -> usize {
        let mark = offset / CHAR_MARK_STRIDE;
        let from = mark * CHAR_MARK_STRIDE;
        self.char_marks[mark] + count_chars(&self.text.as_bytes()[from..offset])
    }
}

/// Characters in a byte slice of UTF-8 (every byte that is not a
/// continuation byte starts one).
fn count_chars(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| (b & 0xC0) != 0x80).count()
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
        let mut char_marks = vec![0];
        let mut total = 0;
        for chunk in text.as_bytes().chunks(CHAR_MARK_STRIDE) {
            total += count_chars(chunk);
            char_marks.push(total);
        }
        self.files.push(SourceFile {
            path,
            text,
            line_starts,
            char_marks,
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
        let col = f.chars_before(offset) - f.chars_before(start);
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

/// Most diagnostics of one severity kept and shown. A real configuration has
/// a handful; a generated or hostile one can have one per key (400,000 in a
/// 4 MiB file), and printing, sorting and suggesting spellings for all of
/// them is minutes of work and a screen nobody reads. The rest are counted
/// and reported as one line.
pub const MAX_DIAGNOSTICS: usize = 1000;

/// Errors and warnings collected while loading.
#[derive(Debug, Default)]
pub struct Diags {
    list: Vec<Diag>,
    /// Diagnostics seen per severity (`[errors, warnings]`), kept or not.
    seen: [usize; 2],
}

fn slot(severity: Severity) -> usize {
    match severity {
        Severity::Error => 0,
        Severity::Warning => 1,
    }
}

impl Diags {
    fn push(&mut self, severity: Severity, at: Pos, message: String) {
        let seen = &mut self.seen[slot(severity)];
        *seen += 1;
        if *seen <= MAX_DIAGNOSTICS {
            self.list.push(Diag {
                severity,
                at,
                message,
            });
        }
    }

    pub fn error(&mut self, at: Pos, message: impl Into<String>) {
        self.push(Severity::Error, at, message.into());
    }

    pub fn warn(&mut self, at: Pos, message: impl Into<String>) {
        self.push(Severity::Warning, at, message.into());
    }

    pub fn has_errors(&self) -> bool {
        self.seen[slot(Severity::Error)] > 0
    }

    /// Whether another error would only be counted, not shown: callers skip
    /// expensive extras (spelling suggestions) then.
    pub fn errors_full(&self) -> bool {
        self.seen[slot(Severity::Error)] >= MAX_DIAGNOSTICS
    }

    /// Renders the diagnostics of one severity, sorted by file and position,
    /// without exact duplicates (two checks may notice the same thing); a
    /// last line counts those beyond `MAX_DIAGNOSTICS`.
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
        let seen = self.seen[slot(severity)];
        if seen > MAX_DIAGNOSTICS {
            let what = match severity {
                Severity::Error => "errors",
                Severity::Warning => "warnings",
            };
            let file = sources
                .files
                .first()
                .map_or_else(|| "?".to_string(), |f| f.path.display().to_string());
            out.push(format!(
                "{file}: {} more {what} not shown (only the first {MAX_DIAGNOSTICS} are)",
                seen - MAX_DIAGNOSTICS
            ));
        }
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
    fn columns_on_long_lines_match_a_plain_count() {
        // Multi-byte characters straddle the mark boundaries; lines longer
        // and shorter than the stride.
        let line: String = "aé€😀".repeat(3 * CHAR_MARK_STRIDE / 10);
        let text = format!("{line}\nx{line}\n\n{line}");
        let mut s = Sources::default();
        let f = s.add(PathBuf::from("a.toml"), text.clone());
        for (offset, _) in text.char_indices().step_by(97).chain([(text.len(), ' ')]) {
            let before = &text[..offset];
            let line_no = before.matches('\n').count() + 1;
            let start = before.rfind('\n').map_or(0, |i| i + 1);
            let col = text[start..offset].chars().count() + 1;
            assert_eq!(
                s.locate(Pos { file: f, offset }),
                format!("a.toml:{line_no}:{col}"),
                "offset {offset}"
            );
        }
    }

    #[test]
    fn diagnostics_beyond_the_cap_are_counted_not_kept() {
        let mut s = Sources::default();
        let f = s.add(PathBuf::from("a.toml"), "x\n".repeat(10));
        let mut d = Diags::default();
        for i in 0..MAX_DIAGNOSTICS + 5 {
            d.error(
                Pos {
                    file: f,
                    offset: i % 20,
                },
                format!("e{i}"),
            );
        }
        assert!(d.has_errors() && d.errors_full());
        let out = d.render(&s, Severity::Error);
        assert_eq!(out.len(), MAX_DIAGNOSTICS + 1);
        assert_eq!(
            out[MAX_DIAGNOSTICS],
            format!("a.toml: 5 more errors not shown (only the first {MAX_DIAGNOSTICS} are)")
        );
        assert!(d.render(&s, Severity::Warning).is_empty());
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
