//! Tokenizer for filter strings.
//!
//! The scanner walks the input one character at a time and keeps two cursors:
//! `pos`, the byte offset where the most recently read character starts, and
//! `ppos`, the byte offset just past it. Token positions are byte offsets into
//! the input. The first problem it runs into is remembered in `err` and is
//! what the parser reports for an illegal token, as containerd does.

use std::sync::LazyLock;

use regex::Regex;

/// One step of input: a character, the end of the input, or something the
/// scanner refuses (NUL, or the replacement character U+FFFD, which is what a
/// byte-oriented decoder reports for undecodable input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rune {
    Char(char),
    Eof,
    Illegal,
}

impl Rune {
    /// Text used when a rune is echoed back in an error message.
    pub(crate) fn display(self) -> String {
        match self {
            Rune::Char(c) => c.to_string(),
            Rune::Eof | Rune::Illegal => '\u{FFFD}'.to_string(),
        }
    }

    fn digit_value(self) -> u32 {
        match self {
            Rune::Char(c) => c.to_digit(16).unwrap_or(16),
            Rune::Eof | Rune::Illegal => 16,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Token {
    Eof,
    Quoted,
    Value,
    Field,
    Separator,
    Operator,
    Illegal,
    /// A character that starts no token (for example `?` in a field path).
    Other(char),
}

pub(crate) struct Scanner<'a> {
    input: &'a str,
    pos: usize,
    /// Byte offset just past the most recently read character.
    pub(crate) ppos: usize,
    /// Set after an operator: the next bare word is a value, not a field.
    value: bool,
    err: Option<&'static str>,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(input: &'a str) -> Self {
        Scanner {
            input,
            pos: 0,
            ppos: 0,
            value: false,
            err: None,
        }
    }

    /// The first error the scanner recorded, or "" when there was none.
    pub(crate) fn error_message(&self) -> &'static str {
        self.err.unwrap_or("")
    }

    fn record_error(&mut self, msg: &'static str) {
        if self.err.is_none() {
            self.err = Some(msg);
        }
    }

    fn text(&self, start: usize) -> &'a str {
        self.input.get(start..self.ppos).unwrap_or("")
    }

    fn next(&mut self) -> Rune {
        if self.pos >= self.input.len() {
            return Rune::Eof;
        }
        self.pos = self.ppos;
        let Some(c) = self.input.get(self.ppos..).and_then(|s| s.chars().next()) else {
            return Rune::Eof;
        };
        self.ppos += c.len_utf8();
        match c {
            '\u{FFFD}' => {
                self.record_error("rune error");
                Rune::Illegal
            }
            '\0' => {
                self.record_error("unexpected null");
                Rune::Illegal
            }
            c => Rune::Char(c),
        }
    }

    pub(crate) fn peek(&mut self) -> Rune {
        let (pos, ppos) = (self.pos, self.ppos);
        let r = self.next();
        self.pos = pos;
        self.ppos = ppos;
        r
    }

    /// Reads the next token, returning its byte position, kind and text.
    pub(crate) fn scan(&mut self) -> (usize, Token, &'a str) {
        let mut r = self.next();
        let mut start = self.pos;
        loop {
            let c = match r {
                Rune::Eof => return (self.pos, Token::Eof, ""),
                Rune::Illegal => return (self.pos, Token::Illegal, ""),
                Rune::Char(c) => c,
            };
            if is_quote(c) {
                let tok = if self.scan_quoted(c) {
                    Token::Quoted
                } else {
                    Token::Illegal
                };
                return (start, tok, self.text(start));
            }
            if is_separator(c) {
                self.value = false;
                return (start, Token::Separator, self.text(start));
            }
            if is_operator(c) {
                self.scan_while(is_operator);
                self.value = true;
                return (start, Token::Operator, self.text(start));
            }
            if c.is_whitespace() {
                r = self.next();
                start = self.pos;
                continue;
            }
            if self.value {
                self.scan_while(is_value_char);
                self.value = false;
                return (start, Token::Value, self.text(start));
            }
            if is_field_char(c) {
                self.scan_while(is_field_char);
                return (start, Token::Field, self.text(start));
            }
            return (self.pos, Token::Other(c), "");
        }
    }

    fn scan_while(&mut self, accept: fn(char) -> bool) {
        while let Rune::Char(c) = self.peek() {
            if !accept(c) {
                break;
            }
            self.next();
        }
    }

    /// Consumes a quoted literal whose opening `quote` was just read.
    /// Returns false when the literal is unterminated or has a bad escape.
    fn scan_quoted(&mut self, quote: char) -> bool {
        let mut legal = true;
        let mut r = self.next();
        while r != Rune::Char(quote) {
            match r {
                Rune::Char('\n') | Rune::Eof | Rune::Illegal => {
                    self.record_error("quoted literal not terminated");
                    return false;
                }
                Rune::Char('\\') => {
                    let (after, ok) = self.scan_escape(quote);
                    legal &= ok;
                    r = after;
                }
                Rune::Char(_) => r = self.next(),
            }
        }
        legal
    }

    /// Consumes an escape sequence whose backslash was just read; returns the
    /// rune following it and whether the escape was well formed.
    fn scan_escape(&mut self, quote: char) -> (Rune, bool) {
        let r = self.next();
        match r {
            Rune::Char(c)
                if matches!(c, 'a' | 'b' | 'f' | 'n' | 'r' | 't' | 'v' | '\\') || c == quote =>
            {
                (self.next(), true)
            }
            Rune::Char('0'..='7') => self.scan_digits(r, 8, 3),
            Rune::Char('x') => {
                let first = self.next();
                self.scan_digits(first, 16, 2)
            }
            Rune::Char('u') => {
                let first = self.next();
                self.scan_digits(first, 16, 4)
            }
            Rune::Char('U') => {
                let first = self.next();
                self.scan_digits(first, 16, 8)
            }
            _ => {
                self.record_error("illegal escape sequence");
                (r, false)
            }
        }
    }

    fn scan_digits(&mut self, mut r: Rune, base: u32, mut count: u32) -> (Rune, bool) {
        while count > 0 && r.digit_value() < base {
            r = self.next();
            count -= 1;
        }
        if count > 0 {
            self.record_error("illegal numeric escape sequence");
            return (r, false);
        }
        (r, true)
    }
}

fn is_field_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

fn is_operator(c: char) -> bool {
    matches!(c, '=' | '!' | '~')
}

fn is_quote(c: char) -> bool {
    matches!(c, '"' | '/' | '|')
}

fn is_separator(c: char) -> bool {
    matches!(c, ',' | '.')
}

/// Letters, marks, numbers, punctuation and symbols, as Go's
/// `unicode.IsGraphic` minus spaces.
static GRAPHIC: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^[\p{L}\p{M}\p{N}\p{P}\p{S}]$").ok());

fn is_value_char(c: char) -> bool {
    if c == ',' || c.is_whitespace() {
        return false;
    }
    if c.is_ascii() {
        return c.is_ascii_graphic();
    }
    match GRAPHIC.as_ref() {
        Some(re) => re.is_match(c.encode_utf8(&mut [0; 4])),
        None => !c.is_control(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Expected<'a> = (usize, Token, &'a str, Option<&'a str>);

    fn check(input: &str, expected: &[Expected<'_>]) {
        let mut sc = Scanner::new(input);
        let mut got = Vec::new();
        loop {
            let (pos, tok, text) = sc.scan();
            let err = (tok == Token::Illegal).then(|| sc.error_message());
            got.push((pos, tok, text, err));
            if tok == Token::Eof {
                break;
            }
            assert!(
                got.len() <= expected.len() + 1,
                "too many tokens for {input:?}: {got:?}"
            );
        }
        assert_eq!(got, expected, "tokens of {input:?}");
        assert_eq!(sc.scan().1, Token::Eof, "scanner must stay at EOF");
    }

    use Token::*;

    #[test]
    fn single_field() {
        check("name", &[(0, Field, "name", None), (4, Eof, "", None)]);
    }

    #[test]
    fn selectors_with_operators() {
        check(
            "name==value,foo!=bar",
            &[
                (0, Field, "name", None),
                (4, Operator, "==", None),
                (6, Value, "value", None),
                (11, Separator, ",", None),
                (12, Field, "foo", None),
                (15, Operator, "!=", None),
                (17, Value, "bar", None),
                (20, Eof, "", None),
            ],
        );
    }

    #[test]
    fn selectors_with_field_paths() {
        check(
            "name==value,labels.foo=value,other.bar~=match",
            &[
                (0, Field, "name", None),
                (4, Operator, "==", None),
                (6, Value, "value", None),
                (11, Separator, ",", None),
                (12, Field, "labels", None),
                (18, Separator, ".", None),
                (19, Field, "foo", None),
                (22, Operator, "=", None),
                (23, Value, "value", None),
                (28, Separator, ",", None),
                (29, Field, "other", None),
                (34, Separator, ".", None),
                (35, Field, "bar", None),
                (38, Operator, "~=", None),
                (40, Value, "match", None),
                (45, Eof, "", None),
            ],
        );
    }

    #[test]
    fn regexp_values() {
        check(
            "name~=[abc]+,foo=test",
            &[
                (0, Field, "name", None),
                (4, Operator, "~=", None),
                (6, Value, "[abc]+", None),
                (12, Separator, ",", None),
                (13, Field, "foo", None),
                (16, Operator, "=", None),
                (17, Value, "test", None),
                (21, Eof, "", None),
            ],
        );
        check(
            r"name~=[abc]\+,foo=test",
            &[
                (0, Field, "name", None),
                (4, Operator, "~=", None),
                (6, Value, r"[abc]\+", None),
                (13, Separator, ",", None),
                (14, Field, "foo", None),
                (17, Operator, "=", None),
                (18, Value, "test", None),
                (22, Eof, "", None),
            ],
        );
    }

    #[test]
    fn slash_and_pipe_quoted_regexps() {
        check(
            "name~=/[abc]{0,2}/,foo=test",
            &[
                (0, Field, "name", None),
                (4, Operator, "~=", None),
                (6, Quoted, "/[abc]{0,2}/", None),
                (18, Separator, ",", None),
                (19, Field, "foo", None),
                (22, Operator, "=", None),
                (23, Value, "test", None),
                (27, Eof, "", None),
            ],
        );
        check(
            r"input~=/foo\/bar/,id!=ff",
            &[
                (0, Field, "input", None),
                (5, Operator, "~=", None),
                (7, Quoted, r"/foo\/bar/", None),
                (17, Separator, ",", None),
                (18, Field, "id", None),
                (20, Operator, "!=", None),
                (22, Value, "ff", None),
                (24, Eof, "", None),
            ],
        );
        check(
            "input~=|foo/bar|,id!=ff",
            &[
                (0, Field, "input", None),
                (5, Operator, "~=", None),
                (7, Quoted, "|foo/bar|", None),
                (16, Separator, ",", None),
                (17, Field, "id", None),
                (19, Operator, "!=", None),
                (21, Value, "ff", None),
                (23, Eof, "", None),
            ],
        );
    }

    #[test]
    fn multibyte_positions_are_byte_offsets() {
        check(
            "name~=牛,labels.moo=true",
            &[
                (0, Field, "name", None),
                (4, Operator, "~=", None),
                (6, Value, "牛", None),
                (9, Separator, ",", None),
                (10, Field, "labels", None),
                (16, Separator, ".", None),
                (17, Field, "moo", None),
                (20, Operator, "=", None),
                (21, Value, "true", None),
                (25, Eof, "", None),
            ],
        );
        check(
            "name~=|牛|,labels.moo=true",
            &[
                (0, Field, "name", None),
                (4, Operator, "~=", None),
                (6, Quoted, "|牛|", None),
                (11, Separator, ",", None),
                (12, Field, "labels", None),
                (18, Separator, ".", None),
                (19, Field, "moo", None),
                (22, Operator, "=", None),
                (23, Value, "true", None),
                (27, Eof, "", None),
            ],
        );
    }

    #[test]
    fn escapes_stay_in_quoted_text() {
        check(
            r#"name~="asdf\n\tfooo""#,
            &[
                (0, Field, "name", None),
                (4, Operator, "~=", None),
                (6, Quoted, r#""asdf\n\tfooo""#, None),
                (20, Eof, "", None),
            ],
        );
    }

    #[test]
    fn null_is_illegal() {
        check(
            "foo\0bar",
            &[
                (0, Field, "foo", None),
                (3, Illegal, "", Some("unexpected null")),
                (4, Field, "bar", None),
                (7, Eof, "", None),
            ],
        );
    }

    #[test]
    fn replacement_character_is_illegal() {
        check(
            "a\u{FFFD}",
            &[
                (0, Field, "a", None),
                (1, Illegal, "", Some("rune error")),
                (4, Eof, "", None),
            ],
        );
    }

    #[test]
    fn spaces_are_skipped_between_tokens() {
        check(
            "foo = bar    ",
            &[
                (0, Field, "foo", None),
                (4, Operator, "=", None),
                (6, Value, "bar", None),
                (13, Eof, "", None),
            ],
        );
    }

    #[test]
    fn values_keep_punctuation() {
        check(
            "compound.labels==punctuated_value.foo-bar",
            &[
                (0, Field, "compound", None),
                (8, Separator, ".", None),
                (9, Field, "labels", None),
                (15, Operator, "==", None),
                (17, Value, "punctuated_value.foo-bar", None),
                (41, Eof, "", None),
            ],
        );
    }

    #[test]
    fn partial_and_double_values() {
        check(
            "interrupted=",
            &[
                (0, Field, "interrupted", None),
                (11, Operator, "=", None),
                (12, Eof, "", None),
            ],
        );
        check(
            "doublevalue=value value",
            &[
                (0, Field, "doublevalue", None),
                (11, Operator, "=", None),
                (12, Value, "value", None),
                (18, Field, "value", None),
                (23, Eof, "", None),
            ],
        );
    }

    #[test]
    fn leading_quoted_field() {
        check(
            r#""leading quote".postquote==value"#,
            &[
                (0, Quoted, r#""leading quote""#, None),
                (15, Separator, ".", None),
                (16, Field, "postquote", None),
                (25, Operator, "==", None),
                (27, Value, "value", None),
                (32, Eof, "", None),
            ],
        );
    }

    #[test]
    fn missing_value_yields_separator() {
        check(
            "input==,id!=ff",
            &[
                (0, Field, "input", None),
                (5, Operator, "==", None),
                (7, Separator, ",", None),
                (8, Field, "id", None),
                (10, Operator, "!=", None),
                (12, Value, "ff", None),
                (14, Eof, "", None),
            ],
        );
    }

    #[test]
    fn unterminated_quotes_are_illegal() {
        check(
            "labels.containerd.io/key==value",
            &[
                (0, Field, "labels", None),
                (6, Separator, ".", None),
                (7, Field, "containerd", None),
                (17, Separator, ".", None),
                (18, Field, "io", None),
                (
                    20,
                    Illegal,
                    "/key==value",
                    Some("quoted literal not terminated"),
                ),
                (31, Eof, "", None),
            ],
        );
        check(
            "labels.\"containerd.io\nkey\"==value",
            &[
                (0, Field, "labels", None),
                (6, Separator, ".", None),
                (
                    7,
                    Illegal,
                    "\"containerd.io\n",
                    Some("quoted literal not terminated"),
                ),
                (22, Field, "key", None),
                (
                    25,
                    Illegal,
                    "\"==value",
                    Some("quoted literal not terminated"),
                ),
                (33, Eof, "", None),
            ],
        );
    }

    #[test]
    fn bad_escapes_are_illegal() {
        check(
            r#"labels."\g""#,
            &[
                (0, Field, "labels", None),
                (6, Separator, ".", None),
                (7, Illegal, r#""\g""#, Some("illegal escape sequence")),
                (11, Eof, "", None),
            ],
        );
        check(
            r#"labels."\xaz""#,
            &[
                (0, Field, "labels", None),
                (6, Separator, ".", None),
                (
                    7,
                    Illegal,
                    r#""\xaz""#,
                    Some("illegal numeric escape sequence"),
                ),
                (13, Eof, "", None),
            ],
        );
    }

    #[test]
    fn dash_is_not_a_field_character() {
        check(
            "labels.fo-o",
            &[
                (0, Field, "labels", None),
                (6, Separator, ".", None),
                (7, Field, "fo", None),
                (9, Other('-'), "", None),
                (10, Field, "o", None),
                (11, Eof, "", None),
            ],
        );
    }

    #[test]
    fn value_characters() {
        assert!(is_value_char('a'));
        assert!(is_value_char('='));
        assert!(is_value_char('牛'));
        assert!(is_value_char('é'));
        assert!(!is_value_char(','));
        assert!(!is_value_char(' '));
        assert!(!is_value_char('\u{00A0}'));
        assert!(!is_value_char('\u{7}'));
        // A format character (zero width space) is not graphic.
        assert!(!is_value_char('\u{200B}'));
    }
}
