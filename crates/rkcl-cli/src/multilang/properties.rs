//! The Java properties format (`java.util.Properties.load`), as the
//! MultiLangDaemon's `--properties-file` is written: `key = value`,
//! `key: value` or `key value`; `#` and `!` comment lines; a line ending in
//! an odd number of backslashes continues on the next; escapes `\t`, `\n`,
//! `\r`, `\f`, `\uXXXX`, and a backslash before any other character stands
//! for that character. A key given twice keeps its last value.
//!
//! Pure: no IO, so every rule is unit-tested here.

use std::collections::BTreeMap;

/// The key–value pairs of a properties file, by key.
pub(crate) type Properties = BTreeMap<String, String>;

/// Parses the text of a properties file. Never fails: like Java, a
/// malformed `\u` escape is kept as written rather than refused.
pub(crate) fn parse(text: &str) -> Properties {
    let mut properties = Properties::new();
    for line in logical_lines(text) {
        let (key, value) = split_key_value(&line);
        properties.insert(unescape(key), unescape(value));
    }
    properties
}

/// The logical lines: natural lines joined at continuations, leading
/// white space removed, comment and blank lines dropped.
fn logical_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current: Option<String> = None;
    for natural in text.split('\n') {
        let natural = natural.strip_suffix('\r').unwrap_or(natural);
        let trimmed = natural.trim_start_matches([' ', '\t', '\u{c}']);
        let mut logical = match current.take() {
            Some(so_far) => so_far,
            None => {
                if trimmed.is_empty() || trimmed.starts_with(['#', '!']) {
                    continue;
                }
                String::new()
            }
        };
        if ends_in_continuation(trimmed) {
            logical.push_str(trimmed.get(..trimmed.len() - 1).unwrap_or_default());
            current = Some(logical);
        } else {
            logical.push_str(trimmed);
            lines.push(logical);
        }
    }
    if let Some(last) = current {
        lines.push(last);
    }
    lines
}

/// Whether a line ends in an odd number of backslashes.
fn ends_in_continuation(line: &str) -> bool {
    line.chars().rev().take_while(|&c| c == '\\').count() % 2 == 1
}

/// Splits a logical line at the first unescaped `=`, `:` or white space;
/// white space around the separator is not part of the key or the value.
fn split_key_value(line: &str) -> (&str, &str) {
    let mut escaped = false;
    let mut end = line.len();
    for (at, c) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '=' | ':' | ' ' | '\t' | '\u{c}' => {
                end = at;
                break;
            }
            _ => {}
        }
    }
    let key = line.get(..end).unwrap_or_default();
    let rest = line.get(end..).unwrap_or_default();
    let rest = rest.trim_start_matches([' ', '\t', '\u{c}']);
    let rest = rest.strip_prefix(['=', ':']).unwrap_or(rest);
    (key, rest.trim_start_matches([' ', '\t', '\u{c}']))
}

/// Resolves the escapes of a key or a value.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let hex: String = chars.clone().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(decoded) if hex.len() == 4 => {
                        out.push(decoded);
                        for _ in 0..4 {
                            chars.next();
                        }
                    }
                    _ => out.push_str("\\u"),
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(properties: &'a Properties, key: &str) -> Option<&'a str> {
        properties.get(key).map(String::as_str)
    }

    #[test]
    fn the_three_separators_and_comments() {
        let properties = parse(
            "# a comment\n! another\n\n  executableName = python3 app.py\n\
             applicationName:orders-app\nregionName eu-west-1\nempty=\nbare\n",
        );
        assert_eq!(get(&properties, "executableName"), Some("python3 app.py"));
        assert_eq!(get(&properties, "applicationName"), Some("orders-app"));
        assert_eq!(get(&properties, "regionName"), Some("eu-west-1"));
        assert_eq!(get(&properties, "empty"), Some(""));
        assert_eq!(get(&properties, "bare"), Some(""));
        assert_eq!(properties.len(), 5);
    }

    #[test]
    fn continuations_join_lines_without_the_next_lines_indent() {
        let properties = parse("command = python3 \\\n    app.py \\\r\n    --verbose\nnext = 1\n");
        assert_eq!(
            get(&properties, "command"),
            Some("python3 app.py --verbose")
        );
        assert_eq!(get(&properties, "next"), Some("1"));
        // An even number of backslashes is an escaped backslash, not a
        // continuation; a comment line is never continued.
        let properties = parse("path = C:\\\\\nother = 2\n# comment \\\nthird = 3");
        assert_eq!(get(&properties, "path"), Some("C:\\"));
        assert_eq!(get(&properties, "other"), Some("2"));
        assert_eq!(get(&properties, "third"), Some("3"));
    }

    #[test]
    fn escapes_in_keys_and_values() {
        let properties = parse("a\\ key\\=x = tab\\there \\u00e9\\q\nbad = \\u12\n");
        assert_eq!(get(&properties, "a key=x"), Some("tab\there éq"));
        assert_eq!(get(&properties, "bad"), Some("\\u12"));
    }

    #[test]
    fn the_last_value_of_a_key_wins_and_values_keep_inner_separators() {
        let properties = parse("k = 1\nk = 2\nurl = http://localhost:4566/x=y\n");
        assert_eq!(get(&properties, "k"), Some("2"));
        assert_eq!(get(&properties, "url"), Some("http://localhost:4566/x=y"));
    }
}
