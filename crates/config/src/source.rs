use std::path::PathBuf;
use std::sync::Arc;

use crate::error::Location;

/// The text of one config file, kept so that errors found later (when a plugin decodes its
/// section) can still name the line.
#[derive(Debug)]
pub(crate) struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn new(path: PathBuf, text: String) -> Arc<Source> {
        Arc::new(Source { path, text })
    }

    /// The 1-based line and column of a byte offset, and the key written on that line.
    pub fn locate(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |p| p + 1);
        let column = self.text[line_start..offset].chars().count() + 1;
        let line_text = self.text[line_start..]
            .split('\n')
            .next()
            .unwrap_or_default()
            .trim();
        Location {
            file: self.path.clone(),
            line,
            column,
            key: key_on_line(line_text),
        }
    }
}

/// `a.b = 1` gives `a.b`; `[plugins."x"]` gives `plugins."x"`; anything else nothing.
fn key_on_line(line: &str) -> Option<String> {
    if let Some(header) = line.strip_prefix('[') {
        let header = header.trim_start_matches('[');
        let end = header.find(']')?;
        return Some(header[..end].trim().to_owned());
    }
    let eq = line.find('=')?;
    let key = line[..eq].trim();
    (!key.is_empty()).then(|| key.to_owned())
}
