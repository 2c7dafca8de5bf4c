//! Replay of a log at open: its whole records, of one epoch and in sequence, applied to the
//! files they name.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::record::decode;

pub(crate) struct Replayed {
    pub(crate) epoch: Option<u64>,
    pub(crate) records: usize,
}

/// Applies the log's whole records, of one epoch and in sequence from its start, to the files
/// they name under `dir` (`unnamed` for records without a name), and flushes those files. A
/// file that is not there is left so: the records belong to a database since deleted.
pub(crate) fn replay(dir: &Path, unnamed: &str, log: &File) -> io::Result<Replayed> {
    let len = log.metadata()?.len() as usize;
    let mut bytes = vec![0u8; len];
    log.read_exact_at(&mut bytes, 0)?;
    let mut at = 0;
    let mut epoch = None;
    let mut seq = 0;
    let mut files: HashMap<&str, Option<File>> = HashMap::new();
    while let Some(record) = decode(&bytes[at..]) {
        if epoch.is_some_and(|e| e != record.epoch) || record.seq != seq {
            break;
        }
        epoch = Some(record.epoch);
        let name = record.name.unwrap_or(unnamed);
        if !files.contains_key(name) {
            let opened = match OpenOptions::new().write(true).open(dir.join(name)) {
                Ok(f) => Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            files.insert(name, opened);
        }
        if let Some(Some(file)) = files.get(name) {
            for (offset, data) in &record.writes {
                file.write_all_at(data, *offset)?;
            }
            file.set_len(record.file_len)?;
        }
        seq += 1;
        at += record.size;
    }
    for file in files.values().flatten() {
        file.sync_all()?;
    }
    Ok(Replayed {
        epoch,
        records: seq as usize,
    })
}
