//! Where each policy of a `.cedar` file starts.
//!
//! Cedar's public API does not expose a policy's source position, but it numbers the
//! policies of a parsed file in order (`policy0`, `policy1`, ...). This scanner finds
//! the byte offset where each statement starts, so the loader can say
//! `policies/presign.cedar:17` for a policy with no `@id`, a duplicate id, or an
//! explanation. It is only run on text Cedar has already parsed.

/// Byte offsets of the first character (an annotation or `permit`/`forbid`) of each
/// top-level statement, in order.
pub(super) fn statement_starts(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut depth = 0usize;
    let mut in_statement = false;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '/' if chars.peek().is_some_and(|&(_, n)| n == '/') => {
                // a comment runs to the end of the line
                for (_, n) in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
            }
            '"' => {
                mark_start(&mut starts, &mut in_statement, i);
                let mut escaped = false;
                for (_, n) in chars.by_ref() {
                    match n {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
            }
            c if c.is_whitespace() => {}
            '(' | '{' | '[' => {
                mark_start(&mut starts, &mut in_statement, i);
                depth += 1;
            }
            ')' | '}' | ']' => depth = depth.saturating_sub(1),
            ';' if depth == 0 => in_statement = false,
            _ => mark_start(&mut starts, &mut in_statement, i),
        }
    }
    starts
}

fn mark_start(starts: &mut Vec<usize>, in_statement: &mut bool, offset: usize) {
    if !*in_statement {
        starts.push(offset);
        *in_statement = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_statement_after_comments_and_annotations() {
        let text = "// header; with a semicolon\n@id(\"a;b\")\npermit(principal, action, resource);\n\n  forbid(principal, action, resource) when { \"x;\" == \"y\" };\n";
        let starts = statement_starts(text);
        assert_eq!(starts.len(), 2);
        assert!(text[starts[0]..].starts_with("@id(\"a;b\")"));
        assert!(text[starts[1]..].starts_with("forbid("));
    }

    #[test]
    fn escaped_quotes_do_not_end_strings() {
        let text =
            "permit(principal, action, resource) when { \"a\\\";\" == \"b\" };permit(principal, action, resource);";
        let starts = statement_starts(text);
        assert_eq!(starts.len(), 2);
        assert!(text[starts[1]..].starts_with("permit("));
    }
}
