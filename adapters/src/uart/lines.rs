//! Cutting a serial byte stream into lines, with a bound on what is held.

/// Why a line was thrown away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineDrop {
    /// Longer than `max_length` before its delimiter came.
    TooLong,
    /// Not valid UTF-8.
    NotUtf8,
}

impl LineDrop {
    /// The name of the device error counter.
    pub fn as_str(self) -> &'static str {
        match self {
            LineDrop::TooLong => "line_too_long",
            LineDrop::NotUtf8 => "not_utf8",
        }
    }
}

/// Splits bytes into lines at `delimiter`. A line over `max_length` is skipped up to the next
/// delimiter, so garbage without delimiters costs at most `max_length` bytes of memory.
#[derive(Debug)]
pub struct LineFramer {
    delimiter: u8,
    max_length: usize,
    buffer: Vec<u8>,
    discarding: bool,
}

impl LineFramer {
    /// A framer for lines ending in `delimiter`, at most `max_length` bytes long.
    pub fn new(delimiter: u8, max_length: usize) -> Self {
        Self {
            delimiter,
            max_length,
            buffer: Vec::with_capacity(max_length.min(4096)),
            discarding: false,
        }
    }

    /// Feeds `bytes`; calls `line` for every complete line (without delimiter and trailing
    /// `\r`, blank lines skipped) and `dropped` for every line thrown away.
    pub fn push(
        &mut self,
        bytes: &[u8],
        mut line: impl FnMut(&str),
        mut dropped: impl FnMut(LineDrop),
    ) {
        for chunk in bytes.split_inclusive(|b| *b == self.delimiter) {
            let complete = chunk.last() == Some(&self.delimiter);
            let body = if complete {
                &chunk[..chunk.len() - 1]
            } else {
                chunk
            };
            if !self.discarding {
                if self.buffer.len() + body.len() > self.max_length {
                    self.buffer.clear();
                    self.discarding = true;
                    dropped(LineDrop::TooLong);
                } else {
                    self.buffer.extend_from_slice(body);
                }
            }
            if complete {
                if !self.discarding {
                    let raw = self.buffer.strip_suffix(b"\r").unwrap_or(&self.buffer);
                    match std::str::from_utf8(raw) {
                        Ok(text) if text.trim().is_empty() => {}
                        Ok(text) => line(text),
                        Err(_) => dropped(LineDrop::NotUtf8),
                    }
                }
                self.buffer.clear();
                self.discarding = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(framer: &mut LineFramer, bytes: &[u8]) -> (Vec<String>, Vec<LineDrop>) {
        let (mut lines, mut drops) = (Vec::new(), Vec::new());
        framer.push(bytes, |l| lines.push(l.to_string()), |d| drops.push(d));
        (lines, drops)
    }

    #[test]
    fn splits_across_reads_and_strips_cr() {
        let mut framer = LineFramer::new(b'\n', 64);
        assert_eq!(run(&mut framer, b"t=1\r\nt=").0, ["t=1"]);
        assert_eq!(run(&mut framer, b"2\n\n").0, ["t=2"]);
    }

    #[test]
    fn overlong_and_invalid_lines_are_dropped_and_counted() {
        let mut framer = LineFramer::new(b'\n', 8);
        let (lines, drops) = run(&mut framer, b"0123456789abcdef");
        assert!(lines.is_empty());
        assert_eq!(drops, [LineDrop::TooLong]);
        // The rest of the long line is skipped, the next line is fine.
        let (lines, drops) = run(&mut framer, b"more garbage\nok=1\n\xff\xfe\n");
        assert_eq!(lines, ["ok=1"]);
        assert_eq!(drops, [LineDrop::NotUtf8]);
        assert!(framer.buffer.capacity() <= 4096);
    }

    #[test]
    fn a_megabyte_without_newline_holds_no_more_than_max_length() {
        let mut framer = LineFramer::new(b'\n', 1024);
        let garbage = vec![b'x'; 1 << 20];
        let (lines, drops) = run(&mut framer, &garbage);
        assert!(lines.is_empty());
        assert_eq!(drops, [LineDrop::TooLong]);
        assert!(framer.buffer.len() <= 1024);
    }
}
