//! `${VAR}` substitution, so that secrets and per-site values can come from the environment
//! (systemd `Environment=`/`EnvironmentFile=`) instead of the YAML file.
//!
//! A value replaces its placeholder *as the scalar it stands in*, whatever it holds: the text
//! is scanned the way YAML reads it (quotes, flow collections, comments, block scalars), and a
//! value that would change the document as plain text (`abc #def`, quotes, braces, an empty
//! string) is written as a double-quoted scalar instead. Inside quotes a value is escaped for
//! them. Pasting it in raw would cut `abc #def` at its `#`, break the parse on a brace, and
//! turn an empty token into no token at all.

use super::diagnostic::Problem;

/// Replaces `${VAR}` and `${VAR:-default}` with the variable's value; `$$` stands for `$`.
///
/// Substitution never adds or removes a line, so line numbers in later errors still match the
/// file. Comments are left alone. An unset variable without a default is a problem at its
/// position.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<Problem>> {
    let mut scanner = Scanner {
        lookup: &lookup,
        problems: Vec::new(),
        quote: None,
        flow: 0,
        block: None,
    };
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        scanner.line(index + 1, line, &mut out);
    }
    if scanner.problems.is_empty() {
        Ok(out)
    } else {
        Err(scanner.problems)
    }
}

/// What the YAML around a position is, carried from line to line.
struct Scanner<'a, F> {
    lookup: &'a F,
    problems: Vec<Problem>,
    /// Inside a quoted scalar (which may span lines): its quote.
    quote: Option<char>,
    /// How deep in `[...]` and `{...}` collections.
    flow: usize,
    /// Inside a block scalar (`|`, `>`): the indentation of the line that opened it.
    block: Option<usize>,
}

/// A run of one line's text: as written, or a placeholder.
enum Piece<'t> {
    Text(&'t str),
    Value(String),
}

impl<F: Fn(&str) -> Option<String>> Scanner<'_, F> {
    fn line(&mut self, number: usize, line: &str, out: &mut String) {
        let body = line.trim_end_matches(['\n', '\r']);
        let indent = body.len() - body.trim_start_matches(' ').len();
        if let Some(opened) = self.block {
            if body.trim().is_empty() || indent > opened {
                // Literal text, comments included: values go in as they are.
                for piece in self.pieces(number, line, 0, line.len()) {
                    push(out, &piece);
                }
                return;
            }
            self.block = None;
        }
        let bytes = body.as_bytes();
        let mut i = 0;
        // Where the plain scalar being read started.
        let mut plain: Option<usize> = None;
        let mut copied = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if let Some(q) = self.quote {
                if c == b'\\' && q == '"' {
                    i += 2;
                    continue;
                }
                if c == q as u8 {
                    if q == '\'' && bytes.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    self.flush_quoted(number, line, copied, i, q, out);
                    copied = i;
                    self.quote = None;
                }
                i += 1;
                continue;
            }
            if c == b'$' && bytes.get(i + 1) == Some(&b'{') {
                plain.get_or_insert(i);
                i = body[i..]
                    .find('}')
                    .map_or(bytes.len(), |close| i + close + 1);
                continue;
            }
            let next_blank = bytes.get(i + 1).is_none_or(|b| *b == b' ' || *b == b'\t');
            let ends_plain = (c == b':' && next_blank)
                || (self.flow > 0 && matches!(c, b',' | b']' | b'}'))
                || (c == b'#' && (i == 0 || matches!(bytes[i - 1], b' ' | b'\t')));
            if ends_plain {
                if let Some(start) = plain.take() {
                    self.flush_plain(number, line, (copied, start, i), out);
                    copied = i;
                }
                if c == b'#' {
                    break;
                }
                if c == b']' || c == b'}' {
                    self.flow = self.flow.saturating_sub(1);
                }
                i += 1;
                continue;
            }
            if plain.is_none() {
                match c {
                    b' ' | b'\t' => {}
                    b'"' | b'\'' => self.quote = Some(char::from(c)),
                    b'[' | b'{' => self.flow += 1,
                    b'-' | b'?' if next_blank => {}
                    b'|' | b'>' if self.flow == 0 => {
                        self.block = Some(indent);
                        break;
                    }
                    _ => plain = Some(i),
                }
            }
            i += 1;
        }
        if let Some(start) = plain {
            self.flush_plain(number, line, (copied, start, i), out);
            copied = i;
        }
        if let Some(q) = self.quote {
            // A quoted scalar going on to the next line: this line's part of it.
            self.flush_quoted(number, line, copied, body.len(), q, out);
            copied = body.len();
        }
        out.push_str(&line[copied..]);
    }

    /// Writes `line[from..to]`, which ends inside a quoted scalar: its text as it is, and
    /// values escaped for the quote.
    fn flush_quoted(
        &mut self,
        number: usize,
        line: &str,
        from: usize,
        to: usize,
        quote: char,
        out: &mut String,
    ) {
        for piece in self.pieces(number, line, from, to) {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Value(value) if quote == '"' => {
                    let json = serde_json::Value::String(value).to_string();
                    out.push_str(&json[1..json.len() - 1]);
                }
                Piece::Value(value) => out.push_str(&value.replace('\'', "''")),
            }
        }
    }

    /// Writes `line[from..end]`, whose plain scalar spans `start..end`: as it is when the
    /// values read back as the same plain scalar, else the scalar as one double-quoted string.
    fn flush_plain(
        &mut self,
        number: usize,
        line: &str,
        (from, start, end): (usize, usize, usize),
        out: &mut String,
    ) {
        let scalar = &line[start..end];
        let trimmed = scalar.trim_end();
        out.push_str(&line[from..start]);
        if !trimmed.contains("${") && !trimmed.contains("$$") {
            out.push_str(scalar);
            return;
        }
        let pieces = self.pieces(number, line, start, start + trimmed.len());
        let substituted = pieces.iter().any(|p| matches!(p, Piece::Value(_)));
        let mut value = String::new();
        for piece in &pieces {
            push(&mut value, piece);
        }
        if !substituted || plain_safe(&value, self.flow > 0) {
            out.push_str(&value);
        } else {
            out.push_str(&serde_json::Value::String(value).to_string());
        }
        out.push_str(&scalar[trimmed.len()..]);
    }

    /// `line[from..to]` cut into text and looked-up values; `$$` becomes `$`.
    fn pieces<'t>(
        &mut self,
        number: usize,
        line: &'t str,
        from: usize,
        to: usize,
    ) -> Vec<Piece<'t>> {
        let mut pieces = Vec::new();
        let mut rest = &line[from..to];
        let mut at = from;
        while let Some(dollar) = rest.find('$') {
            pieces.push(Piece::Text(&rest[..dollar]));
            let after = &rest[dollar + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                pieces.push(Piece::Text("$"));
                rest = tail;
                at += dollar + 2;
            } else if let Some(body) = after.strip_prefix('{') {
                let column = at + dollar + 1;
                let Some(close) = body.find('}') else {
                    self.problems.push(Problem::at(
                        number,
                        column,
                        "",
                        "`${` without a closing `}`",
                    ));
                    pieces.push(Piece::Text(&rest[dollar..]));
                    return pieces;
                };
                let expr = &body[..close];
                let (name, default) = match expr.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (expr, None),
                };
                match ((self.lookup)(name), default) {
                    (Some(value), _) => pieces.push(Piece::Value(value)),
                    (None, Some(default)) => pieces.push(Piece::Value(default.to_string())),
                    (None, None) => self.problems.push(Problem::at(
                        number,
                        column,
                        "",
                        format!("environment variable `{name}` is not set (write `${{{name}:-default}}` for a default)"),
                    )),
                }
                let used = dollar + 2 + close + 1;
                rest = &rest[used..];
                at += used;
            } else {
                pieces.push(Piece::Text("$"));
                rest = after;
                at += dollar + 1;
            }
        }
        pieces.push(Piece::Text(rest));
        pieces
    }
}

fn push(out: &mut String, piece: &Piece<'_>) {
    match piece {
        Piece::Text(text) => out.push_str(text),
        Piece::Value(value) => out.push_str(value),
    }
}

/// Whether `value`, written as a plain scalar, reads back as itself: not empty or null, no
/// comment, no `: `, no indicator in front, no line break, and no flow punctuation inside a
/// flow collection.
fn plain_safe(value: &str, in_flow: bool) -> bool {
    let Some(first) = value.chars().next() else {
        return false;
    };
    let second_blank = value[first.len_utf8()..]
        .chars()
        .next()
        .is_none_or(|c| c == ' ' || c == '\t');
    let unsafe_anywhere = [": ", ":\t", " #", "\t#"].iter().any(|p| value.contains(p))
        || value.ends_with(':')
        || value.chars().any(|c| c.is_control() && c != '\t')
        || (in_flow && value.contains([',', '[', ']', '{', '}']));
    let unsafe_in_front =
        "[]{}#&*!|>'\"%@`,".contains(first) || ("-?:".contains(first) && second_blank);
    let null = matches!(value, "~" | "null" | "Null" | "NULL");
    !(null || value.trim() != value || unsafe_in_front || unsafe_anywhere)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("broker.example".into()),
            "HASH" => Some("abc #def".into()),
            "ODD" => Some(r#"a"b'{c}: [d], \e"#.into()),
            "EMPTY" => Some(String::new()),
            "NEG" => Some("-5".into()),
            "NULL" => Some("null".into()),
            "LINES" => Some("one\ntwo".into()),
            _ => None,
        }
    }

    fn yaml(text: &str) -> serde_json::Value {
        serde_saphyr::from_str(&interpolate(text, env).unwrap()).unwrap()
    }

    #[test]
    fn substitutes_defaults_and_escapes() {
        let text = "host: ${HOST}\nport: ${PORT:-1883}\nprice: $$5 $x\n";
        let out = interpolate(text, env).unwrap();
        assert_eq!(out, "host: broker.example\nport: 1883\nprice: $5 $x\n");
    }

    #[test]
    fn comments_are_left_alone() {
        let text = "# use ${ANY}\nhost: ${HOST} # not ${THIS}\nurl: 'a#${HOST}'\n";
        let out = interpolate(text, env).unwrap();
        assert_eq!(
            out,
            "# use ${ANY}\nhost: broker.example # not ${THIS}\nurl: 'a#broker.example'\n"
        );
    }

    #[test]
    fn a_value_is_the_scalar_it_stands_in_whatever_it_holds() {
        let v = yaml(
            "a: ${HASH}\nb: ${ODD} # note\nc: \"x ${ODD}\"\nd: 'x ${ODD}'\n\
             e: { f: ${ODD}, g: 1 }\nh: [${HASH}, ${HOST}]\ni: ${EMPTY}\nj: ${NULL}\n\
             k: ${NEG}\nl: mqtt://${HOST}:1883\nm: ${LINES}\n",
        );
        let odd = env("ODD").unwrap();
        assert_eq!(v["a"], "abc #def");
        assert_eq!(v["b"], odd.as_str());
        assert_eq!(v["c"], format!("x {odd}"));
        assert_eq!(v["d"], format!("x {odd}"));
        assert_eq!(v["e"], serde_json::json!({"f": odd, "g": 1}));
        assert_eq!(v["h"], serde_json::json!(["abc #def", "broker.example"]));
        assert_eq!(v["i"], "", "an empty value is an empty string, not null");
        assert_eq!(v["j"], "null");
        assert_eq!(v["k"], -5, "a number stays a number");
        assert_eq!(v["l"], "mqtt://broker.example:1883");
        assert_eq!(v["m"], "one\ntwo");
    }

    #[test]
    fn lines_stay_where_they_were() {
        let text = "a: ${LINES}\nb: \"${LINES}\"\nc: 1\n";
        let out = interpolate(text, env).unwrap();
        assert_eq!(out.lines().count(), 3);
        assert_eq!(out.lines().nth(2), Some("c: 1"));
    }

    #[test]
    fn block_scalars_take_values_as_they_are() {
        let v = yaml("a: |\n  x ${HASH}\n  # ${HOST}\nb: ${HOST}\n");
        assert_eq!(v["a"], "x abc #def\n# broker.example\n");
        assert_eq!(v["b"], "broker.example");
    }

    #[test]
    fn unset_variable_is_reported_at_its_position() {
        let problems = interpolate("a: 1\nb: x ${NOPE}\n", env).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line_column(), Some((2, 6)));
        assert!(problems[0].message.contains("NOPE"));
    }
}
