//! Decoding of quoted literals.
//!
//! Literals use Go's double-quoted string escapes. Besides `"`, the delimiters
//! `/` and `|` are accepted (the parser only allows them for regular
//! expression values); inside such a literal, the delimiter itself is escaped
//! with a backslash. `\x` and octal escapes produce single bytes, so the
//! result is a byte string that need not be valid UTF-8.

/// The literal is malformed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct QuoteSyntaxError;

impl std::fmt::Display for QuoteSyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("quote syntax error")
    }
}

/// Decodes `literal`, which includes its opening and closing delimiter.
pub(crate) fn unquote(literal: &str) -> Result<Vec<u8>, QuoteSyntaxError> {
    let bytes = literal.as_bytes();
    let (&quote, rest) = bytes.split_first().ok_or(QuoteSyntaxError)?;
    let (&closing, mut body) = rest.split_last().ok_or(QuoteSyntaxError)?;
    if quote != closing || !matches!(quote, b'"' | b'/' | b'|') || body.contains(&b'\n') {
        return Err(QuoteSyntaxError);
    }

    let mut out = Vec::with_capacity(body.len());
    while let Some((&c, tail)) = body.split_first() {
        if c == quote {
            return Err(QuoteSyntaxError);
        }
        if c != b'\\' {
            // Plain bytes, including every byte of a multi-byte character,
            // are copied unchanged.
            out.push(c);
            body = tail;
            continue;
        }
        body = unescape(tail, quote, &mut out)?;
    }
    Ok(out)
}

/// Decodes the escape whose backslash precedes `s`, appending the result to
/// `out`; returns what follows the escape.
fn unescape<'a>(s: &'a [u8], quote: u8, out: &mut Vec<u8>) -> Result<&'a [u8], QuoteSyntaxError> {
    let (&kind, s) = s.split_first().ok_or(QuoteSyntaxError)?;
    let simple = match kind {
        b'a' => Some(0x07),
        b'b' => Some(0x08),
        b'f' => Some(0x0c),
        b'n' => Some(b'\n'),
        b'r' => Some(b'\r'),
        b't' => Some(b'\t'),
        b'v' => Some(0x0b),
        b'\\' => Some(b'\\'),
        b'\'' | b'"' | b'|' | b'/' if kind == quote => Some(kind),
        _ => None,
    };
    if let Some(byte) = simple {
        out.push(byte);
        return Ok(s);
    }

    match kind {
        b'x' | b'u' | b'U' => {
            let width = match kind {
                b'x' => 2,
                b'u' => 4,
                _ => 8,
            };
            let digits = s.get(..width).ok_or(QuoteSyntaxError)?;
            let mut value: u32 = 0;
            for &d in digits {
                let v = char::from(d).to_digit(16).ok_or(QuoteSyntaxError)?;
                value = (value << 4) | v;
            }
            if kind == b'x' {
                // At most 0xff: a single raw byte.
                out.push(u8::try_from(value).map_err(|_| QuoteSyntaxError)?);
            } else {
                if value > u32::from(char::MAX) {
                    return Err(QuoteSyntaxError);
                }
                // Surrogates cannot be encoded and become U+FFFD.
                let c = char::from_u32(value).unwrap_or(char::REPLACEMENT_CHARACTER);
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
            Ok(&s[width..])
        }
        b'0'..=b'7' => {
            let digits = s.get(..2).ok_or(QuoteSyntaxError)?;
            let mut value = u32::from(kind - b'0');
            for &d in digits {
                if !(b'0'..=b'7').contains(&d) {
                    return Err(QuoteSyntaxError);
                }
                value = (value << 3) | u32::from(d - b'0');
            }
            out.push(u8::try_from(value).map_err(|_| QuoteSyntaxError)?);
            Ok(&s[2..])
        }
        _ => Err(QuoteSyntaxError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(literal: &str) -> Vec<u8> {
        match unquote(literal) {
            Ok(v) => v,
            Err(e) => panic!("{literal:?}: {e}"),
        }
    }

    #[test]
    fn plain_literals() {
        assert_eq!(ok(r#""""#), b"");
        assert_eq!(ok(r#""too complex, yo""#), b"too complex, yo");
        assert_eq!(ok("/[abc]+/"), b"[abc]+");
        assert_eq!(ok("|foo/bar|"), b"foo/bar");
        assert_eq!(ok("\"牛\""), "牛".as_bytes());
    }

    #[test]
    fn simple_escapes() {
        assert_eq!(ok(r#""a\nb\tc\\d\"e""#), b"a\nb\tc\\d\"e");
        assert_eq!(ok(r#""\a\b\f\r\v""#), b"\x07\x08\x0c\r\x0b");
        assert_eq!(ok(r"/foo\/bar/"), b"foo/bar");
        assert_eq!(ok(r"|a\|b|"), b"a|b");
    }

    #[test]
    fn delimiter_escapes_only_for_their_own_delimiter() {
        assert_eq!(unquote(r#""a\/b""#), Err(QuoteSyntaxError));
        assert_eq!(unquote(r#"/a\"b/"#), Err(QuoteSyntaxError));
        assert_eq!(unquote(r#""a\'b""#), Err(QuoteSyntaxError));
        assert_eq!(unquote(r"|a\/b|"), Err(QuoteSyntaxError));
    }

    #[test]
    fn numeric_escapes() {
        assert_eq!(ok(r#""\x41\u00e9\U0001F600""#), "Aé😀".as_bytes());
        assert_eq!(ok(r#""\101\060""#), b"A0");
        // \x and octal give raw bytes, not characters.
        assert_eq!(ok(r#""\xe9""#), vec![0xe9]);
        assert_eq!(ok(r#""\377""#), vec![0xff]);
        // A surrogate cannot be encoded.
        assert_eq!(ok(r#""\ud800""#), "\u{FFFD}".as_bytes());
    }

    #[test]
    fn malformed_literals() {
        for bad in [
            "\"",
            "\"abc",
            "\"abc/",
            "'a'",
            "`a`",
            r#""\g""#,
            r#""\x4""#,
            r#""\xzz""#,
            r#""\u12""#,
            r#""\400""#,
            r#""\189""#,
            r#""\U00110000""#,
            "\"a\nb\"",
            r#""a"b""#,
            r#""\""#,
        ] {
            assert_eq!(unquote(bad), Err(QuoteSyntaxError), "{bad:?}");
        }
    }
}
