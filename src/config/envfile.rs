//! Reads an env file the way systemd's EnvironmentFile= does, so the packaged
//! /etc/ragspool/ragspool.env means the same to systemd and to a manual run:
//! `#`/`;` comment lines, blank lines, `KEY=VALUE`, single and double quotes,
//! backslash escapes and continuation lines; no `$VAR` expansion, no `export`.

/// One assignment and the line it starts on (1-based).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Variable name.
    pub(crate) key: String,
    /// Value after unquoting.
    pub(crate) value: String,
    /// Line number of the assignment.
    pub(crate) line: usize,
}

/// A syntax error at a line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    /// Line number (1-based).
    pub(crate) line: usize,
    /// What is wrong.
    pub(crate) message: String,
}

/// What an env file holds: its assignments and every syntax error, so that all
/// of them are reported in one run.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Parsed {
    /// Assignments, in order.
    pub(crate) entries: Vec<Entry>,
    /// Lines that are not valid EnvironmentFile syntax.
    pub(crate) errors: Vec<SyntaxError>,
}

/// Parses the text of an env file; after a bad line it goes on at the next one.
pub(crate) fn parse(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    loop {
        // Skip blank space and blank lines before a statement.
        while let Some(&c) = chars.peek() {
            if c == '\n' {
                line += 1;
                chars.next();
            } else if c.is_whitespace() {
                chars.next();
            } else {
                break;
            }
        }
        let Some(&first) = chars.peek() else { break };
        let start = line;
        if first == '#' || first == ';' {
            skip_line(&mut chars, &mut line);
            continue;
        }
        match statement(&mut chars, &mut line, start) {
            Ok(entry) => parsed.entries.push(entry),
            Err(e) => {
                // The rest of a bad line means nothing; a line break already
                // taken (a key without `=`) must not be skipped twice.
                if line == start {
                    skip_line(&mut chars, &mut line);
                }
                parsed.errors.push(e);
            }
        }
    }
    parsed
}

/// Consumes up to and with the end of the current line.
fn skip_line(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, line: &mut usize) {
    for c in chars.by_ref() {
        if c == '\n' {
            *line += 1;
            break;
        }
    }
}

/// One `KEY=VALUE` statement starting at line `start`.
fn statement(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    line: &mut usize,
    start: usize,
) -> Result<Entry, SyntaxError> {
    let mut key = String::new();
    while let Some(&c) = chars.peek() {
        if c == '=' || c == '\n' {
            break;
        }
        key.push(c);
        chars.next();
    }
    let key = key.trim_end().to_string();
    if chars.peek() != Some(&'=') {
        return Err(SyntaxError {
            line: start,
            message: format!("expected KEY=VALUE, got `{key}`"),
        });
    }
    chars.next();
    if key.starts_with("export ") {
        return Err(SyntaxError {
            line: start,
            message: "`export` is not EnvironmentFile syntax; write KEY=VALUE".into(),
        });
    }
    if !valid_name(&key) {
        return Err(SyntaxError {
            line: start,
            message: format!("`{key}` is not a valid variable name"),
        });
    }
    let value = read_value(chars, line, start)?;
    Ok(Entry {
        key,
        value,
        line: start,
    })
}

fn valid_name(key: &str) -> bool {
    let mut bytes = key.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Reads one value up to its unescaped, unquoted end of line.
fn read_value(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    line: &mut usize,
    start: usize,
) -> Result<String, SyntaxError> {
    while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
        chars.next();
    }
    let mut value = String::new();
    // Unquoted trailing blanks are dropped; quoted ones are kept.
    let mut keep = 0;
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                *line += 1;
                break;
            }
            '\\' => match chars.next() {
                Some('\n') => *line += 1,
                Some(e) => {
                    value.push(e);
                    keep = value.len();
                }
                None => break,
            },
            '"' | '\'' => {
                read_quoted(chars, c, &mut value, line, start)?;
                keep = value.len();
            }
            c => {
                value.push(c);
                if !c.is_whitespace() {
                    keep = value.len();
                }
            }
        }
    }
    value.truncate(keep);
    Ok(value)
}

fn read_quoted(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    quote: char,
    value: &mut String,
    line: &mut usize,
    start: usize,
) -> Result<(), SyntaxError> {
    loop {
        match chars.next() {
            None => {
                return Err(SyntaxError {
                    line: start,
                    message: format!("unterminated {quote} quote"),
                });
            }
            Some(c) if c == quote => return Ok(()),
            Some('\\') if quote == '"' => match chars.next() {
                Some('\n') => *line += 1,
                Some(e @ ('"' | '\\' | '$' | '`')) => value.push(e),
                Some('n') => value.push('\n'),
                Some(e) => {
                    value.push('\\');
                    value.push(e);
                }
                None => continue,
            },
            Some(c) => {
                if c == '\n' {
                    *line += 1;
                }
                value.push(c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(text: &str) -> Vec<(String, String)> {
        parse(text)
            .entries
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect()
    }

    #[test]
    fn comments_blank_lines_and_spaces() {
        let text = "# comment\n; also\n\n  A = one two  \nB=\n";
        assert_eq!(
            kv(text),
            vec![("A".into(), "one two".into()), ("B".into(), String::new())]
        );
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(kv("A=\"x # y\"\n")[0].1, "x # y");
        assert_eq!(kv("A='$HOME \\n'\n")[0].1, "$HOME \\n");
        assert_eq!(kv("A=\"a\\\"b\\\\c\"\n")[0].1, "a\"b\\c");
        assert_eq!(kv("A=\"  padded  \"\n")[0].1, "  padded  ");
        assert_eq!(kv("A=\"multi\nline\"\nB=2")[1], ("B".into(), "2".into()));
    }

    #[test]
    fn no_expansion_and_continuations() {
        assert_eq!(kv("A=$B\n")[0].1, "$B");
        assert_eq!(kv("A=one \\\ntwo\n")[0].1, "one two");
    }

    #[test]
    fn line_numbers_are_kept() {
        let e = parse("\n# c\nA=1\n\nB=2").entries;
        assert_eq!((e[0].line, e[1].line), (3, 5));
    }

    #[test]
    fn errors_name_the_line() {
        let first = |text: &str| parse(text).errors.first().map(|e| e.line);
        assert_eq!(first("A=1\nexport B=2\n"), Some(2));
        assert_eq!(first("A=1\njunk\n"), Some(2));
        assert_eq!(first("1A=1\n"), Some(1));
        assert_eq!(first("A=\"open\n"), Some(1));
    }

    #[test]
    fn every_error_is_found_and_good_lines_are_kept() {
        let p = parse("junk\nA=1\nexport B=2\n1C=3 x\nD=4\nE=\"open\n");
        let lines: Vec<usize> = p.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 3, 4, 6]);
        let keys: Vec<&str> = p.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["A", "D"]);
    }
}

#[cfg(test)]
mod corpus {
    /// Every seed and every input a fuzzer ever crashed on parses without panicking.
    #[test]
    fn fuzz_corpus_and_regressions_parse_without_panic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut seen = 0;
        for dir in ["corpus/envfile", "regressions/envfile"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let bytes = std::fs::read(entry.path()).unwrap_or_default();
                let _ = super::parse(&String::from_utf8_lossy(&bytes));
                seen += 1;
            }
        }
        assert!(seen >= 3, "the committed seed corpus is missing");
    }
}
