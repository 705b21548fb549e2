//! Config problems as people read them: file:line:column, the field path, what is wrong, and
//! the offending line.

use std::fmt;

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line and column, when the problem has a place in the file.
    location: Option<(usize, usize)>,
    /// Field path such as `devices[2].values[0].sine.period`; empty for the whole file.
    pub path: String,
    /// What is wrong, and where it helps, what would be right.
    pub message: String,
}

impl Problem {
    /// A problem at a known place.
    pub fn at(
        line: usize,
        column: usize,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            location: Some((line, column)),
            path: path.into(),
            message: message.into(),
        }
    }

    /// A problem with a field path but no known place.
    pub fn new(
        location: Option<(usize, usize)>,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            location,
            path: path.into(),
            message: message.into(),
        }
    }

    /// Line and column, 1-based.
    pub fn line_column(&self) -> Option<(usize, usize)> {
        self.location
    }
}

/// Every problem found in one file, with the file's text to quote from.
#[derive(Debug)]
pub struct Report {
    /// The file as the user named it.
    pub file: String,
    /// The file's text (after `${VAR}` substitution).
    pub text: String,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in &self.problems {
            write!(f, "error: {}", self.file)?;
            if let Some((line, column)) = problem.location {
                write!(f, ":{line}:{column}")?;
            }
            if problem.path.is_empty() {
                writeln!(f, ": {}", problem.message)?;
            } else {
                writeln!(f, ": {}: {}", problem.path, problem.message)?;
            }
            if let Some((line, column)) = problem.location
                && let Some(source) = self.text.lines().nth(line.saturating_sub(1))
            {
                let gutter = line.to_string().len();
                writeln!(f, "{:gutter$} |", "")?;
                writeln!(f, "{line} | {source}")?;
                writeln!(f, "{:gutter$} | {:>column$}", "", "^")?;
            }
        }
        let n = self.problems.len();
        write!(
            f,
            "{n} problem{} in {}",
            if n == 1 { "" } else { "s" },
            self.file
        )
    }
}

impl std::error::Error for Report {}
