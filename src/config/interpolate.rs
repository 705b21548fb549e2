//! `${VAR}` substitution in the config text, so that secrets and per-site values can come from
//! the environment (systemd `Environment=`/`EnvironmentFile=`) instead of the YAML file.

use super::diagnostic::Problem;

/// Replaces `${VAR}` and `${VAR:-default}` with the variable's value; `$$` stands for `$`.
///
/// Substitution happens before parsing and never spans lines, so line numbers in later errors
/// still match the file. Comments are left alone. An unset variable without a default is a
/// problem at its position.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<Problem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for (line_index, full_line) in text.split_inclusive('\n').enumerate() {
        let (line, comment) = full_line.split_at(comment_start(full_line));
        let mut rest = line;
        while let Some(dollar) = rest.find('$') {
            out.push_str(&rest[..dollar]);
            let after = &rest[dollar + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let column = line.len() - rest.len() + dollar + 1;
                let Some(close) = body.find('}') else {
                    problems.push(Problem::at(
                        line_index + 1,
                        column,
                        "",
                        "`${` without a closing `}`",
                    ));
                    out.push_str(&rest[dollar..]);
                    rest = "";
                    break;
                };
                let expr = &body[..close];
                let (name, default) = match expr.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (expr, None),
                };
                match (lookup(name), default) {
                    (Some(value), _) => out.push_str(&value),
                    (None, Some(default)) => out.push_str(default),
                    (None, None) => problems.push(Problem::at(
                        line_index + 1,
                        column,
                        "",
                        format!("environment variable `{name}` is not set (write `${{{name}:-default}}` for a default)"),
                    )),
                }
                rest = &body[close + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Where a YAML comment starts on `line` (its length if none): a `#` at the start or after
/// whitespace, outside quotes.
fn comment_start(line: &str) -> usize {
    let mut quote = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') if previous.is_whitespace() => return i,
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        previous = c;
    }
    line.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "HOST").then(|| "broker.example".to_string())
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
    fn unset_variable_is_reported_at_its_position() {
        let problems = interpolate("a: 1\nb: x ${NOPE}\n", env).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line_column(), Some((2, 6)));
        assert!(problems[0].message.contains("NOPE"));
    }
}
