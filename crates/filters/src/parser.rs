//! Recursive-descent parser turning one filter string into a [`Filter`].
//!
//! Grammar (whitespace may precede any token except where noted):
//!
//! ```text
//! selectors := selector ("," selector)*
//! selector  := fieldpath [operator value]
//! fieldpath := field ("." field)*
//! field     := [A-Za-z0-9_]+ | "double quoted"
//! operator  := "==" | "!=" | "~="
//! value     := bare | "double quoted" | /slash quoted/ | |pipe quoted|
//! ```
//!
//! Slash and pipe quoting is only allowed for the value of `~=`. Nothing but
//! `,` or the end of input may directly follow a selector (so whitespace
//! before a `,` or at the very end is an error, as in containerd).

use std::fmt;

use regex::Regex;

use crate::quote;
use crate::scanner::{Rune, Scanner, Token};
use crate::selector::{Op, Selector};
use crate::Filter;

/// A filter string that could not be parsed.
///
/// `Display` renders the input with the offending character marked, then the
/// message: `[name >|=|< x]: unsupported operator "="`. When the position is
/// at the end of the input the whole input is shown: `[name==]: expected
/// value or quoted`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// The filter string that was being parsed.
    pub input: String,
    /// Byte offset in `input` of the token the parser rejected.
    pub position: usize,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let marked = self.input.get(self.position..).and_then(|rest| {
            let c = rest.chars().next()?;
            let before = self.input.get(..self.position)?;
            Some((before, c, &rest[c.len_utf8()..]))
        });
        match marked {
            Some((before, c, after)) => {
                write!(f, "[{before} >|{c}|< {after}]: {}", self.message)
            }
            None => write!(f, "[{}]: {}", self.input, self.message),
        }
    }
}

pub(crate) fn parse_selectors(input: &str) -> Result<Filter, ParseError> {
    Parser {
        input,
        scanner: Scanner::new(input),
    }
    .selectors()
}

struct Parser<'a> {
    input: &'a str,
    scanner: Scanner<'a>,
}

impl<'a> Parser<'a> {
    fn error(&self, position: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            input: self.input.to_owned(),
            position,
            message: message.into(),
        }
    }

    fn scanner_error(&self, position: usize) -> ParseError {
        self.error(position, self.scanner.error_message())
    }

    fn selectors(&mut self) -> Result<Filter, ParseError> {
        let mut all = vec![self.selector()?];
        loop {
            match self.scanner.peek() {
                Rune::Char(',') => {
                    let (pos, tok, _) = self.scanner.scan();
                    if tok != Token::Separator {
                        return Err(self.error(pos, "expected a separator"));
                    }
                    all.push(self.selector()?);
                }
                Rune::Eof => return Ok(Filter::All(all)),
                other => {
                    return Err(self.error(
                        self.scanner.ppos,
                        format!("unexpected input: {}", other.display()),
                    ))
                }
            }
        }
    }

    fn selector(&mut self) -> Result<Filter, ParseError> {
        let fieldpath = self.fieldpath()?;
        if matches!(self.scanner.peek(), Rune::Char(',') | Rune::Eof) {
            return Ok(Filter::Selector(Selector {
                fieldpath,
                op: Op::Present,
            }));
        }

        let op = self.operator()?;
        let (pos, value) = self.value(op == OpKind::Matches)?;
        let op = match op {
            OpKind::Equal => Op::Equal(value),
            OpKind::NotEqual => Op::NotEqual(value),
            OpKind::Matches => Op::Matches(self.regex(pos, &value)?),
        };
        Ok(Filter::Selector(Selector { fieldpath, op }))
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, ParseError> {
        let mut path = vec![self.field()?];
        while self.scanner.peek() == Rune::Char('.') {
            let (pos, tok, _) = self.scanner.scan();
            if tok != Token::Separator {
                return Err(self.error(pos, "expected a field separator (`.`)"));
            }
            path.push(self.field()?);
        }
        Ok(path)
    }

    fn field(&mut self) -> Result<String, ParseError> {
        let (pos, tok, text) = self.scanner.scan();
        match tok {
            Token::Field => Ok(text.to_owned()),
            Token::Quoted => {
                let bytes = self.unquote(pos, text, false)?;
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            Token::Illegal => Err(self.scanner_error(pos)),
            _ => Err(self.error(pos, "expected field or quoted")),
        }
    }

    fn operator(&mut self) -> Result<OpKind, ParseError> {
        let (pos, tok, text) = self.scanner.scan();
        match tok {
            Token::Operator => match text {
                "==" => Ok(OpKind::Equal),
                "!=" => Ok(OpKind::NotEqual),
                "~=" => Ok(OpKind::Matches),
                other => Err(self.error(pos, format!("unsupported operator \"{other}\""))),
            },
            Token::Illegal => Err(self.scanner_error(pos)),
            _ => Err(self.error(pos, r#"expected an operator ("=="|"!="|"~=")"#)),
        }
    }

    fn value(&mut self, allow_alt_quotes: bool) -> Result<(usize, Vec<u8>), ParseError> {
        let (pos, tok, text) = self.scanner.scan();
        match tok {
            Token::Value | Token::Field => Ok((pos, text.as_bytes().to_vec())),
            Token::Quoted => Ok((pos, self.unquote(pos, text, allow_alt_quotes)?)),
            Token::Illegal => Err(self.scanner_error(pos)),
            _ => Err(self.error(pos, "expected value or quoted")),
        }
    }

    fn unquote(
        &self,
        pos: usize,
        text: &str,
        allow_alt_quotes: bool,
    ) -> Result<Vec<u8>, ParseError> {
        if !allow_alt_quotes && !text.starts_with('"') {
            return Err(self.error(pos, "invalid quote encountered"));
        }
        quote::unquote(text).map_err(|e| self.error(pos, format!("unquoting failed: {e}")))
    }

    fn regex(&self, pos: usize, pattern: &[u8]) -> Result<Regex, ParseError> {
        let fail =
            |detail: &str| self.error(pos, format!("failed to parse regular expression: {detail}"));
        let pattern = std::str::from_utf8(pattern).map_err(|_| fail("invalid UTF-8"))?;
        Regex::new(pattern).map_err(|e| fail(&regex_error_summary(&e)))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Equal,
    NotEqual,
    Matches,
}

/// The regex crate renders syntax errors over several lines (pattern, caret,
/// description); keep only the description so the message stays one line.
fn regex_error_summary(err: &regex::Error) -> String {
    let text = err.to_string();
    text.lines()
        .rev()
        .find_map(|line| line.strip_prefix("error: "))
        .map_or_else(|| text.replace('\n', " "), str::to_owned)
}
