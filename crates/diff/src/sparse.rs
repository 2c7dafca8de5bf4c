//! Sparse files in a layer (GNU's `S` entries, and PAX's GNU.sparse formats 0.0, 0.1 and
//! 1.0) unpacked as sparse files: their data written at its offsets, their holes left holes,
//! where reading them as plain files would write the sparse map as content or gigabytes of
//! zeros. Each file's size is the one its sparse header declares.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use crate::DiffError;

/// How an entry's data is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Plain data, or a GNU sparse entry whose reader (the tar crate's) gives its holes as
    /// zeros: zero blocks are skipped instead of written.
    Plain { sparse: bool },
    /// PAX 0.x: the data segments, in order, with the map from the records.
    PaxMap { map: Vec<(u64, u64)>, size: u64 },
    /// PAX 1.0: the map leads the data, in decimal lines padded to 512 bytes.
    PaxInline { size: u64 },
}

/// What an entry's PAX records say of sparseness: its layout and the file's real name.
pub(crate) fn layout(
    records: &[(String, String)],
    gnu_sparse: bool,
) -> Result<(Layout, Option<String>), String> {
    let get = |key: &str| {
        records
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let number = |key: &str| -> Result<Option<u64>, String> {
        get(key)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| format!("{key} is not a number: {v:?}"))
            })
            .transpose()
    };
    let name = get("GNU.sparse.name").map(str::to_owned);
    let (major, minor) = (get("GNU.sparse.major"), get("GNU.sparse.minor"));
    if major == Some("1") && minor == Some("0") {
        let size = number("GNU.sparse.realsize")?.ok_or("GNU.sparse.realsize missing")?;
        return Ok((Layout::PaxInline { size }, name));
    }
    if let Some(map) = get("GNU.sparse.map") {
        // 0.1: "offset,size,offset,size,...".
        let numbers: Vec<u64> = if map.is_empty() {
            Vec::new()
        } else {
            map.split(',')
                .map(|n| n.parse().map_err(|_| format!("GNU.sparse.map: {n:?}")))
                .collect::<Result<_, _>>()?
        };
        if !numbers.len().is_multiple_of(2) {
            return Err("GNU.sparse.map has an odd count".into());
        }
        let size = number("GNU.sparse.size")?.ok_or("GNU.sparse.size missing")?;
        let map = numbers.chunks(2).map(|p| (p[0], p[1])).collect();
        return Ok((Layout::PaxMap { map, size }, name));
    }
    let offsets: Vec<&str> = records
        .iter()
        .filter(|(k, _)| k == "GNU.sparse.offset")
        .map(|(_, v)| v.as_str())
        .collect();
    if !offsets.is_empty() {
        // 0.0: repeated offset and numbytes records.
        let sizes: Vec<&str> = records
            .iter()
            .filter(|(k, _)| k == "GNU.sparse.numbytes")
            .map(|(_, v)| v.as_str())
            .collect();
        if sizes.len() != offsets.len() {
            return Err("GNU.sparse.offset and numbytes do not pair".into());
        }
        let parse = |v: &str| v.parse::<u64>().map_err(|_| format!("sparse number {v:?}"));
        let map = offsets
            .iter()
            .zip(&sizes)
            .map(|(o, s)| Ok((parse(o)?, parse(s)?)))
            .collect::<Result<_, String>>()?;
        let size = number("GNU.sparse.size")?.ok_or("GNU.sparse.size missing")?;
        return Ok((Layout::PaxMap { map, size }, name));
    }
    Ok((Layout::Plain { sparse: gnu_sparse }, None))
}

/// The file's size as it will be once written, when the layout says it before the data.
pub(crate) fn declared_size(layout: &Layout, entry_size: u64) -> u64 {
    match layout {
        Layout::Plain { .. } => entry_size,
        Layout::PaxMap { size, .. } | Layout::PaxInline { size } => *size,
    }
}

/// Writes the entry's data (read from `data`, which holds `stored` bytes) into `file`.
pub(crate) fn write(
    file: &File,
    data: &mut impl Read,
    layout: &Layout,
    buffer: &mut [u8],
    display: &str,
) -> Result<(), DiffError> {
    let read_err = || DiffError::io(format!("reading {display:?} from the layer"));
    let write_err = || DiffError::io(format!("writing {display:?}"));
    match layout {
        Layout::Plain { sparse } => {
            let mut offset = 0u64;
            loop {
                let n = data.read(buffer).map_err(read_err())?;
                if n == 0 {
                    break;
                }
                if *sparse {
                    write_skipping_zeros(file, &buffer[..n], offset).map_err(write_err())?;
                } else {
                    file.write_all_at(&buffer[..n], offset)
                        .map_err(write_err())?;
                }
                offset += n as u64;
            }
            if *sparse {
                file.set_len(offset).map_err(write_err())?;
            }
        }
        Layout::PaxMap { map, size } => {
            write_segments(file, data, map, *size, buffer, display)?;
        }
        Layout::PaxInline { size } => {
            let (map, consumed) = read_inline_map(data).map_err(|e| match e {
                MapError::Io(e) => read_err()(e),
                MapError::Invalid(why) => DiffError::invalid(display, &why),
            })?;
            // The map is padded to a 512-byte block.
            let padding = (512 - consumed % 512) % 512;
            io::copy(&mut data.take(padding), &mut io::sink()).map_err(read_err())?;
            write_segments(file, data, &map, *size, buffer, display)?;
        }
    }
    Ok(())
}

fn write_segments(
    file: &File,
    data: &mut impl Read,
    map: &[(u64, u64)],
    size: u64,
    buffer: &mut [u8],
    display: &str,
) -> Result<(), DiffError> {
    let mut end = 0;
    for &(offset, len) in map {
        let last = offset
            .checked_add(len)
            .filter(|last| *last <= size && offset >= end)
            .ok_or_else(|| {
                DiffError::invalid(display, "sparse map out of order or past the size")
            })?;
        let mut at = offset;
        let mut left = len;
        while left > 0 {
            let want = buffer
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = data
                .read(&mut buffer[..want])
                .map_err(DiffError::io(format!("reading {display:?} from the layer")))?;
            if n == 0 {
                return Err(DiffError::invalid(
                    display,
                    "sparse data shorter than its map",
                ));
            }
            file.write_all_at(&buffer[..n], at)
                .map_err(DiffError::io(format!("writing {display:?}")))?;
            at += n as u64;
            left -= n as u64;
        }
        end = last;
    }
    file.set_len(size)
        .map_err(DiffError::io(format!("writing {display:?}")))
}

/// The block a zero run must cover to be left a hole.
const HOLE: usize = 4096;
static ZEROS: [u8; HOLE] = [0; HOLE];

/// Writes `chunk` at `offset`, leaving whole zero blocks unwritten.
fn write_skipping_zeros(file: &File, chunk: &[u8], offset: u64) -> io::Result<()> {
    let mut start = 0;
    while start < chunk.len() {
        let end = (start + HOLE).min(chunk.len());
        let block = &chunk[start..end];
        if block.len() < HOLE || block != &ZEROS[..] {
            file.write_all_at(block, offset + start as u64)?;
        }
        start = end;
    }
    Ok(())
}

enum MapError {
    Io(io::Error),
    Invalid(String),
}

/// The PAX 1.0 map: a count, then that many offset and size pairs, each number on its own
/// line. Gives the map and the bytes it took.
fn read_inline_map(data: &mut impl Read) -> Result<(Vec<(u64, u64)>, u64), MapError> {
    let mut consumed = 0u64;
    let mut next = || -> Result<u64, MapError> {
        let mut digits = Vec::new();
        loop {
            let mut byte = [0u8];
            data.read_exact(&mut byte).map_err(MapError::Io)?;
            consumed += 1;
            match byte[0] {
                b'\n' => break,
                b @ b'0'..=b'9' if digits.len() < 20 => digits.push(b),
                _ => return Err(MapError::Invalid("malformed sparse map".into())),
            }
        }
        std::str::from_utf8(&digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| MapError::Invalid("malformed sparse map".into()))
    };
    let count = next()?;
    let mut map = Vec::new();
    for _ in 0..count {
        let offset = next()?;
        let len = next()?;
        map.push((offset, len));
    }
    Ok((map, consumed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pax_formats_are_told_apart() {
        let (got, name) = layout(
            &records(&[
                ("GNU.sparse.major", "1"),
                ("GNU.sparse.minor", "0"),
                ("GNU.sparse.name", "big"),
                ("GNU.sparse.realsize", "1048576"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(got, Layout::PaxInline { size: 1 << 20 });
        assert_eq!(name.as_deref(), Some("big"));

        let (got, _) = layout(
            &records(&[("GNU.sparse.size", "100"), ("GNU.sparse.map", "0,5,90,10")]),
            false,
        )
        .unwrap();
        assert_eq!(
            got,
            Layout::PaxMap {
                map: vec![(0, 5), (90, 10)],
                size: 100
            }
        );

        let (got, _) = layout(
            &records(&[
                ("GNU.sparse.size", "100"),
                ("GNU.sparse.offset", "10"),
                ("GNU.sparse.numbytes", "2"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(
            got,
            Layout::PaxMap {
                map: vec![(10, 2)],
                size: 100
            }
        );
        assert_eq!(layout(&[], true).unwrap().0, Layout::Plain { sparse: true });
        assert!(layout(&records(&[("GNU.sparse.map", "1,2,3")]), false).is_err());
    }

    #[test]
    fn an_inline_map_is_read_and_the_segments_land_at_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let mut data = b"2\n0\n3\n1000\n2\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"abcXY");
        let size = 1 << 20;
        write(
            &file,
            &mut &data[..],
            &Layout::PaxInline { size },
            &mut [0; 64],
            "f",
        )
        .unwrap();
        let written = std::fs::read(dir.path().join("f")).unwrap();
        assert_eq!(written.len() as u64, size);
        assert_eq!(&written[..3], b"abc");
        assert_eq!(&written[1000..1002], b"XY");
        assert!(written[3..1000].iter().all(|b| *b == 0));
        use std::os::unix::fs::MetadataExt;
        // A hole: far fewer blocks than the size.
        assert!(file.metadata().unwrap().blocks() * 512 < size / 4);
    }

    #[test]
    fn a_map_past_the_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let layout = Layout::PaxMap {
            map: vec![(90, 20)],
            size: 100,
        };
        assert!(write(&file, &mut &[0u8; 20][..], &layout, &mut [0; 64], "f").is_err());
    }

    #[test]
    fn zero_blocks_of_a_gnu_sparse_file_stay_holes() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("f")).unwrap();
        let mut data = vec![0u8; 8 << 20];
        data[0] = 1;
        *data.last_mut().unwrap() = 2;
        write(
            &file,
            &mut &data[..],
            &Layout::Plain { sparse: true },
            &mut vec![0; 1 << 20],
            "f",
        )
        .unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), data);
        use std::os::unix::fs::MetadataExt;
        assert!(file.metadata().unwrap().blocks() * 512 < 1 << 20);
    }
}
