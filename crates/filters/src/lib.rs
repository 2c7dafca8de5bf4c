//! containerd's filter language (`name==foo,labels."a.b"~=^v1`): parses filter
//! strings and matches the result against objects through an [`Adaptor`].

use std::collections::HashMap;

mod parser;
mod quote;
mod scanner;
mod selector;

pub use parser::ParseError;
use selector::Selector;

/// A parsed filter.
#[derive(Debug, Clone)]
pub enum Filter {
    /// Matches everything.
    Always,
    /// Matches when any of the inner filters matches (none: never).
    Any(Vec<Filter>),
    /// Matches when all of the inner filters match (none: always).
    All(Vec<Filter>),
    /// One `<fieldpath>[<operator><value>]` test.
    Selector(Selector),
}

impl Filter {
    /// The filter that matches every object.
    pub fn always() -> Filter {
        Filter::Always
    }

    /// Whether the object seen through `adaptor` passes this filter.
    pub fn matches(&self, adaptor: &dyn Adaptor) -> bool {
        match self {
            Filter::Always => true,
            Filter::Any(filters) => filters.iter().any(|f| f.matches(adaptor)),
            Filter::All(filters) => filters.iter().all(|f| f.matches(adaptor)),
            Filter::Selector(selector) => selector.matches(adaptor),
        }
    }
}

/// Parses one filter string. The empty string matches everything.
///
/// The string is a `,`-separated list of selectors that must all match. A
/// selector is a field path (`name`, `labels.foo`, `labels."a.b"`), optionally
/// followed by `==`, `!=` or `~=` (regular expression search) and a value
/// (bare, `"quoted"`, or for `~=` also `/quoted/` or `|quoted|`); a path
/// alone tests that the field is present.
pub fn parse(input: &str) -> Result<Filter, ParseError> {
    if input.is_empty() {
        return Ok(Filter::Always);
    }
    parser::parse_selectors(input)
}

/// Parses several filter strings into a filter matching objects that pass
/// any of them. No strings at all matches everything. Fails with the error of
/// the first string that does not parse.
pub fn parse_all<S: AsRef<str>>(inputs: &[S]) -> Result<Filter, ParseError> {
    if inputs.is_empty() {
        return Ok(Filter::Always);
    }
    inputs
        .iter()
        .map(|s| parse(s.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map(Filter::Any)
}

/// Something a filter can look at: returns the value at a field path, None when absent.
pub trait Adaptor {
    /// The value at `path` (for example `["labels", "foo"]`), or None when the
    /// object has no such field.
    fn field(&self, path: &[String]) -> Option<String>;
}

impl<F: Fn(&[String]) -> Option<String>> Adaptor for F {
    fn field(&self, path: &[String]) -> Option<String> {
        self(path)
    }
}

/// Helper for the common `labels.<key>` case: looks `path` (the part after "labels") up in a map.
///
/// The components are joined with `.`, so `labels.a.b` and `labels."a.b"`
/// both find the key `a.b`. An empty path finds nothing.
pub fn label_field(labels: &HashMap<String, String>, path: &[String]) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    labels.get(&path.join(".")).cloned()
}
