//! The mistakes of a task file, each pointing at its line and column.
//!
//! A file is read to the end whatever it gets wrong, so that one run of `warren tasks validate`
//! names every mistake rather than one per edit.

use std::fmt;
use std::ops::Range;

/// One mistake: where it is (1-based line and column, in characters) and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mistake {
    /// The line.
    pub line: usize,
    /// The column.
    pub column: usize,
    /// What is wrong, and what would be right.
    pub message: String,
}

/// Every mistake of one task file, in the order of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Mistakes {
    file: String,
    mistakes: Vec<Mistake>,
}

impl Mistakes {
    /// The file, as it was named.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The mistakes, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Mistake> {
        self.mistakes.iter()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.mistakes.len()
    }

    /// Never: a file without mistakes is not an error.
    pub fn is_empty(&self) -> bool {
        self.mistakes.is_empty()
    }

    /// Each mistake as `FILE:LINE:COL: message`, the form editors and terminals link to.
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.mistakes
            .iter()
            .map(|m| format!("{}:{}:{}: {}", self.file, m.line, m.column, m.message))
    }
}

/// One line, for a replica that refuses to start: every mistake, separated by `; `.
impl fmt::Display for Mistakes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is not a valid task file ({} mistake(s)): {}",
            self.file,
            self.mistakes.len(),
            self.lines().collect::<Vec<_>>().join("; ")
        )
    }
}

/// Collects mistakes by byte offset while a file is read; [`Found::finish`] puts them in order
/// and into lines and columns.
pub(super) struct Found<'s> {
    source: &'s str,
    at: Vec<(usize, String)>,
}

impl<'s> Found<'s> {
    pub(super) fn new(source: &'s str) -> Self {
        Found {
            source,
            at: Vec::new(),
        }
    }

    /// A mistake at the start of `span`.
    pub(super) fn at(&mut self, span: &Range<usize>, message: impl Into<String>) {
        self.at.push((span.start, message.into()));
    }

    /// How many so far.
    pub(super) fn count(&self) -> usize {
        self.at.len()
    }

    /// The 1-based line of a byte offset, for messages that refer to another place ("first at
    /// line 3").
    pub(super) fn line_of(&self, offset: usize) -> usize {
        self.position(offset).0
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.source.len());
        let before = self.source.get(..offset).unwrap_or(self.source);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |at| at + 1);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    /// `Ok(())` when nothing was found, otherwise every mistake in file order.
    pub(super) fn finish(mut self, file: &str) -> Result<(), Mistakes> {
        if self.at.is_empty() {
            return Ok(());
        }
        // Stable: mistakes found at one place keep the order they were found in.
        self.at.sort_by_key(|(offset, _)| *offset);
        let mistakes = self
            .at
            .iter()
            .map(|(offset, message)| {
                let (line, column) = self.position(*offset);
                Mistake {
                    line,
                    column,
                    message: message.clone(),
                }
            })
            .collect();
        Err(Mistakes {
            file: file.to_owned(),
            mistakes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns_counted_in_characters() {
        let source = "a = 1\nné = 2\n\nx";
        let mut found = Found::new(source);
        found.at(&(source.find('x').unwrap()..source.len()), "last");
        found.at(&(source.find('=').unwrap()..0), "first");
        found.at(&(source.rfind('=').unwrap()..0), "second");
        let mistakes = found.finish("f.toml").unwrap_err();
        assert_eq!(
            mistakes.lines().collect::<Vec<_>>(),
            [
                "f.toml:1:3: first",
                "f.toml:2:4: second",
                "f.toml:4:1: last"
            ]
        );
        assert_eq!(
            mistakes.to_string(),
            "f.toml is not a valid task file (3 mistake(s)): f.toml:1:3: first; f.toml:2:4: second; f.toml:4:1: last"
        );
    }

    #[test]
    fn nothing_found_is_no_error() {
        assert_eq!(Found::new("").finish("f.toml"), Ok(()));
    }
}
