//! The leaf test of a filter: one field path and how to compare its value.

use regex::Regex;

use crate::Adaptor;

/// One `<fieldpath>[<operator><value>]` test. Public only so that it can sit
/// inside [`crate::Filter`]; its module is private, so other crates can
/// neither name nor build it.
#[derive(Debug, Clone)]
pub struct Selector {
    pub(crate) fieldpath: Vec<String>,
    pub(crate) op: Op,
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Present,
    // Values are byte strings: `\x` and octal escapes can produce bytes that
    // are not UTF-8, and such a value equals no field.
    Equal(Vec<u8>),
    NotEqual(Vec<u8>),
    Matches(Regex),
}

impl Selector {
    pub(crate) fn matches(&self, adaptor: &dyn Adaptor) -> bool {
        let value = adaptor.field(&self.fieldpath);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(want) => value.is_some_and(|v| v.as_bytes() == want.as_slice()),
            // An absent field compares as the empty string.
            Op::NotEqual(want) => value.unwrap_or_default().as_bytes() != want.as_slice(),
            Op::Matches(re) => re.is_match(&value.unwrap_or_default()),
        }
    }
}
