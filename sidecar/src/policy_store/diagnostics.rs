//! Load problems: what is wrong, in which file, and where in it.
//!
//! Every error the snapshot loader reports is a [`Problem`]: the file, the line and column
//! when Cedar (or the JSON parser) gives a position, and one sentence. A load that finds
//! several problems reports all of them in a [`LoadError`], so a security engineer fixes
//! a broken directory in one pass instead of one error at a time.

use std::fmt;
use std::path::{Path, PathBuf};

use miette::Diagnostic;

/// A 1-based line and column in a source file (the column counts characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// The line and column of byte `offset` in `text`. An offset past the end (or inside
    /// a character) is clamped to the nearest earlier character boundary.
    pub fn of_offset(text: &str, offset: usize) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = text.get(..offset).unwrap_or_default();
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).unwrap_or_default().chars().count() + 1;
        Self { line, column }
    }
}

/// Byte offset → line and column for one text, in O(log lines) per lookup: loaders
/// locate every entity of a file that may hold tens of thousands.
#[derive(Debug, Clone)]
pub(super) struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset where each line starts; the first is 0.
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Self { text, starts }
    }

    pub(super) fn locate(&self, offset: usize) -> Location {
        let line = self.starts.partition_point(|&start| start <= offset).max(1);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        let mut end = offset.min(self.text.len()).max(start);
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let column = self.text.get(start..end).map_or(0, |s| s.chars().count()) + 1;
        Location { line, column }
    }
}

/// One thing wrong with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub location: Option<Location>,
    pub message: String,
}

impl Problem {
    pub fn new(file: impl Into<PathBuf>, location: Option<Location>, message: impl Into<String>) -> Self {
        Self { file: file.into(), location, message: message.into() }
    }

    /// Problems from a Cedar diagnostic, one for the diagnostic itself and one for each
    /// related diagnostic (Cedar's parser reports later syntax errors as related ones).
    /// `text` is the source the diagnostic's spans point into.
    pub fn from_diagnostic(file: &Path, text: &str, diagnostic: &dyn Diagnostic) -> Vec<Self> {
        Self::from_diagnostic_at(file, text, 0, diagnostic)
    }

    /// As [`Self::from_diagnostic`], for a diagnostic whose spans count from byte `base`
    /// of `text` (a policy parsed on its own from a statement of a file).
    pub fn from_diagnostic_at(file: &Path, text: &str, base: usize, diagnostic: &dyn Diagnostic) -> Vec<Self> {
        let mut problems = vec![Self::one_from_diagnostic(file, text, base, diagnostic)];
        if let Some(related) = diagnostic.related() {
            problems.extend(related.map(|d| Self::one_from_diagnostic(file, text, base, d)));
        }
        problems
    }

    fn one_from_diagnostic(file: &Path, text: &str, base: usize, diagnostic: &dyn Diagnostic) -> Self {
        let label = diagnostic.labels().and_then(|mut labels| labels.next());
        let location = label.as_ref().map(|l| Location::of_offset(text, base.saturating_add(l.offset())));
        Self::new(file, location, describe(diagnostic, label.as_ref().and_then(|l| l.label())))
    }
}

/// One sentence from a diagnostic: its message, what its label says, and its help.
pub(super) fn describe(diagnostic: &dyn Diagnostic, label: Option<&str>) -> String {
    let mut message = diagnostic.to_string();
    // Cedar wraps the useful part (which attribute, which type) in source errors.
    let mut source = std::error::Error::source(diagnostic);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(&format!(": {text}"));
        }
        source = cause.source();
    }
    if let Some(label) = label.filter(|l| !l.is_empty() && !message.contains(l)) {
        message.push_str(&format!(" ({label})"));
    }
    if let Some(help) = diagnostic.help() {
        message.push_str(&format!("; help: {help}"));
    }
    message
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(Location { line, column }) => {
                write!(f, "{}:{line}:{column}: {}", self.file.display(), self.message)
            }
            None if self.file.as_os_str().is_empty() => f.write_str(&self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Why a snapshot could not be built: every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub problems: Vec<Problem>,
}

impl LoadError {
    pub fn new(mut problems: Vec<Problem>) -> Self {
        problems.sort_by(|a, b| (&a.file, a.location).cmp(&(&b.file, b.location)));
        problems.dedup();
        Self { problems }
    }

    pub fn single(problem: Problem) -> Self {
        Self { problems: vec![problem] }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(f, "{count} problem{} found", if count == 1 { "" } else { "s" })?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_lines_and_columns() {
        let text = "ab\ncdé\nf";
        assert_eq!(Location::of_offset(text, 0), Location { line: 1, column: 1 });
        assert_eq!(Location::of_offset(text, 3), Location { line: 2, column: 1 });
        assert_eq!(Location::of_offset(text, 7), Location { line: 2, column: 4 });
        // inside the two-byte é: clamped to its start
        assert_eq!(Location::of_offset(text, 6), Location { line: 2, column: 3 });
        assert_eq!(Location::of_offset(text, 999), Location { line: 3, column: 2 });
    }

    #[test]
    fn the_line_index_agrees_with_a_scan() {
        let text = "ab\ncdé\n\nf\n";
        let index = LineIndex::new(text);
        for offset in 0..=text.len() + 2 {
            assert_eq!(index.locate(offset), Location::of_offset(text, offset), "offset {offset}");
        }
    }

    #[test]
    fn problems_print_file_line_and_column() {
        let p = Problem::new("policies/a.cedar", Some(Location { line: 3, column: 7 }), "unexpected token");
        assert_eq!(p.to_string(), "policies/a.cedar:3:7: unexpected token");
        let p = Problem::new("entities", None, "no entity files");
        assert_eq!(p.to_string(), "entities: no entity files");
    }
}
