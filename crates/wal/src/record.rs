//! The on-disk record of one commit: its header constants, `encode` and `decode`.

const MAGIC: &[u8; 4] = b"CWL2";
/// The magic of records without a name, which only a database's own log holds.
const MAGIC_UNNAMED: &[u8; 4] = b"CWAL";
/// Magic, epoch, sequence number, file length, write count, body length.
const HEADER_UNNAMED: usize = 4 + 8 + 8 + 8 + 4 + 4;
/// The same and the name's length.
const HEADER: usize = HEADER_UNNAMED + 2;
/// Offset and length of one write.
const WRITE_HEADER: usize = 8 + 4;
const TRAILER: usize = 4;

fn body_len(name: &str, writes: &[(u64, Vec<u8>)]) -> usize {
    name.len()
        + writes
            .iter()
            .map(|(_, d)| WRITE_HEADER + d.len())
            .sum::<usize>()
}

/// The size of the record [`encode`] makes of `name` and `writes`.
pub(crate) fn record_len(name: &str, writes: &[(u64, Vec<u8>)]) -> u64 {
    (HEADER + body_len(name, writes) + TRAILER) as u64
}

pub(crate) fn encode(
    epoch: u64,
    seq: u64,
    name: &str,
    file_len: u64,
    writes: &[(u64, Vec<u8>)],
) -> Vec<u8> {
    let body = body_len(name, writes);
    let mut record = Vec::with_capacity(HEADER + body + TRAILER);
    record.extend_from_slice(MAGIC);
    record.extend_from_slice(&epoch.to_le_bytes());
    record.extend_from_slice(&seq.to_le_bytes());
    record.extend_from_slice(&file_len.to_le_bytes());
    record.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    record.extend_from_slice(&(body as u32).to_le_bytes());
    record.extend_from_slice(&(name.len() as u16).to_le_bytes());
    record.extend_from_slice(name.as_bytes());
    for (offset, data) in writes {
        record.extend_from_slice(&offset.to_le_bytes());
        record.extend_from_slice(&(data.len() as u32).to_le_bytes());
        record.extend_from_slice(data);
    }
    let crc = crc32fast::hash(&record);
    record.extend_from_slice(&crc.to_le_bytes());
    record
}

/// One record read back from a log.
pub(crate) struct Record<'a> {
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
    /// None in an unnamed record.
    pub(crate) name: Option<&'a str>,
    pub(crate) file_len: u64,
    pub(crate) writes: Vec<(u64, &'a [u8])>,
    pub(crate) size: usize,
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// The record at the start of `b`, if a whole one is there.
pub(crate) fn decode(b: &[u8]) -> Option<Record<'_>> {
    let header = match b.get(..4)? {
        m if m == MAGIC => HEADER,
        m if m == MAGIC_UNNAMED => HEADER_UNNAMED,
        _ => return None,
    };
    if b.len() < header + TRAILER {
        return None;
    }
    let (epoch, seq, file_len) = (le_u64(&b[4..]), le_u64(&b[12..]), le_u64(&b[20..]));
    let (count, body) = (le_u32(&b[28..]) as usize, le_u32(&b[32..]) as usize);
    let end = header.checked_add(body)?;
    let size = end.checked_add(TRAILER)?;
    if b.len() < size || crc32fast::hash(&b[..end]) != le_u32(&b[end..]) {
        return None;
    }
    let mut at = header;
    let name = if header == HEADER {
        let len = u16::from_le_bytes([b[HEADER_UNNAMED], b[HEADER_UNNAMED + 1]]) as usize;
        let name = b.get(at..at.checked_add(len)?)?;
        at += len;
        Some(std::str::from_utf8(name).ok()?)
    } else {
        None
    };
    let mut writes = Vec::with_capacity(count.min(body / WRITE_HEADER));
    for _ in 0..count {
        if at + WRITE_HEADER > end {
            return None;
        }
        let (offset, len) = (le_u64(&b[at..]), le_u32(&b[at + 8..]) as usize);
        at += WRITE_HEADER;
        let data = b.get(at..at.checked_add(len)?)?;
        at += len;
        writes.push((offset, data));
    }
    (at == end).then_some(Record {
        epoch,
        seq,
        name,
        file_len,
        writes,
        size,
    })
}
