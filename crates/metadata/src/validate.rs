//! containerd's rules for names and labels.

use std::sync::LazyLock;

use regex::Regex;

use crate::MetadataError;

const MAX_IDENTIFIER: usize = 76;
const MAX_LABEL: usize = 4096;

static IDENTIFIER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$").expect("identifier pattern compiles")
});

/// An identifier as containerd's `identifiers.Validate` accepts it (namespaces, container ids).
pub fn identifier(s: &str) -> Result<(), MetadataError> {
    if s.is_empty() {
        return Err(MetadataError::InvalidArgument(
            "identifier must not be empty".into(),
        ));
    }
    if s.len() > MAX_IDENTIFIER {
        return Err(MetadataError::InvalidArgument(format!(
            "identifier {s:?} greater than maximum length ({MAX_IDENTIFIER} characters)"
        )));
    }
    if !IDENTIFIER.is_match(s) {
        return Err(MetadataError::InvalidArgument(format!(
            "identifier {s:?} must match {}",
            IDENTIFIER.as_str()
        )));
    }
    Ok(())
}

/// A label as containerd's `labels.Validate` accepts it: key and value together at most 4096 bytes.
pub fn label(key: &str, value: &str) -> Result<(), MetadataError> {
    if key.len() + value.len() > MAX_LABEL {
        let shown: String = key.chars().take(10).collect();
        return Err(MetadataError::InvalidArgument(format!(
            "label key and value greater than maximum size ({MAX_LABEL} bytes), key: {shown}"
        )));
    }
    Ok(())
}
