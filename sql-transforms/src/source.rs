//! Transform files on disk: where they are, what kind each is, and how an
//! error is pinned to a line of one.

use std::path::{Path, PathBuf};

use datafusion::error::DataFusionError;

use crate::error::{Result, TransformError};

/// When a transform runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TransformKind {
    /// On change batches before a sink (files at the top of the folder).
    PostConsume,
    /// On inbound payloads before they are written to the metastore (`ingest/`).
    PreIngest,
    /// Lineage propagation, written back to the metastore (`propagation/`).
    Propagation,
}

impl TransformKind {
    /// The sub-folder holding transforms of this kind ("" for the top).
    pub fn folder(self) -> &'static str {
        match self {
            TransformKind::PostConsume => "",
            TransformKind::PreIngest => "ingest",
            TransformKind::Propagation => "propagation",
        }
    }

    /// Every kind.
    pub const ALL: [TransformKind; 3] = [
        TransformKind::PostConsume,
        TransformKind::PreIngest,
        TransformKind::Propagation,
    ];
}

/// One transform file as read from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformSource {
    /// Its name: the path under the transforms folder without `.sql`
    /// (`pii_masked_assets`, `ingest/monte_carlo`, `propagation/classifications`).
    pub name: String,
    /// When it runs.
    pub kind: TransformKind,
    /// The file.
    pub path: PathBuf,
    /// Its SQL text.
    pub sql: String,
}

impl TransformSource {
    /// An error at a place in this file.
    pub fn error_at(&self, line: u64, column: u64, message: impl Into<String>) -> TransformError {
        TransformError::Invalid {
            file: self.path.clone(),
            line,
            column,
            message: message.into(),
        }
    }

    /// An error at the first statement of this file.
    pub fn error(&self, message: impl Into<String>) -> TransformError {
        let (line, column) = first_statement(&self.sql);
        self.error_at(line, column, message)
    }

    /// A DataFusion error located in this file: at the span DataFusion
    /// reports, else the position the SQL parser names, else the first statement.
    pub fn datafusion_error(&self, e: &DataFusionError) -> TransformError {
        let message = e.strip_backtrace().trim().to_owned();
        if let Some(span) = e.diagnostic().and_then(|d| d.span)
            && span.start.line > 0
        {
            return self.error_at(span.start.line, span.start.column, message);
        }
        if let Some((line, column)) = parser_position(&message) {
            return self.error_at(line, column, message);
        }
        // The parser names no position when the text ends too early.
        if message.contains("found: EOF") {
            let (line, column) = end_of_text(&self.sql);
            return self.error_at(line, column, message);
        }
        self.error(message)
    }

    /// The value of a `-- name: value` header line, if the file has one
    /// before its first statement.
    pub fn directive(&self, name: &str) -> Option<&str> {
        self.sql
            .lines()
            .map(str::trim)
            .take_while(|l| l.is_empty() || l.starts_with("--"))
            .filter_map(|l| l.strip_prefix("--"))
            .filter_map(|l| l.trim().split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }
}

/// Line and column of the first character that is not blank or a comment.
fn first_statement(sql: &str) -> (u64, u64) {
    for (i, line) in sql.lines().enumerate() {
        let trimmed = line.trim_start();
        if !trimmed.is_empty() && !trimmed.starts_with("--") {
            return (i as u64 + 1, (line.len() - trimmed.len()) as u64 + 1);
        }
    }
    (1, 1)
}

/// Line and column just after the last non-blank character.
fn end_of_text(sql: &str) -> (u64, u64) {
    sql.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .last()
        .map_or((1, 1), |(i, l)| {
            (i as u64 + 1, l.trim_end().len() as u64 + 1)
        })
}

/// "... at Line: 3, Column: 14" as sqlparser writes it.
fn parser_position(message: &str) -> Option<(u64, u64)> {
    let rest = &message[message.find("Line: ")? + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?))
}

/// Every `.sql` file under `dir`: post-consume at the top, pre-ingest in
/// `ingest/`, propagation in `propagation/`, ordered by name. A missing
/// folder holds none.
pub fn discover(dir: &Path) -> Result<Vec<TransformSource>> {
    let mut found = Vec::new();
    for kind in TransformKind::ALL {
        let folder = dir.join(kind.folder());
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(TransformError::Io {
                    path: folder,
                    source,
                });
            }
        };
        for entry in entries {
            let entry = entry.map_err(|source| TransformError::Io {
                path: folder.clone(),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "sql") || !path.is_file() {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let name = match kind.folder() {
                "" => stem.to_owned(),
                f => format!("{f}/{stem}"),
            };
            let sql = std::fs::read_to_string(&path).map_err(|source| TransformError::Io {
                path: path.clone(),
                source,
            })?;
            found.push(TransformSource {
                name,
                kind,
                path,
                sql,
            });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(sql: &str) -> TransformSource {
        TransformSource {
            name: "t".into(),
            kind: TransformKind::PostConsume,
            path: "t.sql".into(),
            sql: sql.into(),
        }
    }

    #[test]
    fn first_statement_skips_comments_and_blank_lines() {
        assert_eq!(first_statement("-- a\n\n  SELECT 1"), (3, 3));
        assert_eq!(first_statement("SELECT 1"), (1, 1));
    }

    #[test]
    fn a_query_cut_short_is_reported_at_its_end() {
        let s = source("-- x\nSELECT a\nFROM t WHERE\n\n");
        let e = s.datafusion_error(&DataFusionError::Plan(
            "Expected: an expression, found: EOF".into(),
        ));
        assert!(e.to_string().starts_with("t.sql:3:13:"), "{e}");
    }

    #[test]
    fn parser_positions_are_read_from_messages() {
        assert_eq!(
            parser_position(
                "sql parser error: Expected: end of statement, found: x at Line: 4, Column: 12"
            ),
            Some((4, 12))
        );
        assert_eq!(parser_position("no position"), None);
    }

    #[test]
    fn directives_come_from_the_header_only() {
        let s = source("-- A comment\n-- target: incidents\nSELECT 1\n-- other: x\n");
        assert_eq!(s.directive("target"), Some("incidents"));
        assert_eq!(s.directive("other"), None);
    }

    #[test]
    fn discover_names_files_by_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("propagation")).unwrap();
        std::fs::write(dir.path().join("b.sql"), "SELECT 1").unwrap();
        std::fs::write(dir.path().join("notes.md"), "x").unwrap();
        std::fs::write(dir.path().join("propagation/tags.sql"), "SELECT 2").unwrap();
        let found = discover(dir.path()).unwrap();
        let names: Vec<_> = found.iter().map(|s| (s.name.as_str(), s.kind)).collect();
        assert_eq!(
            names,
            [
                ("b", TransformKind::PostConsume),
                ("propagation/tags", TransformKind::Propagation)
            ]
        );
    }
}
