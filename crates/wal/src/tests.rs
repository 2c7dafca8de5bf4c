use super::*;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

fn put(db: &Database, from: u64, to: u64, size: usize) {
    let tx = db.begin_write().unwrap();
    {
        let mut t = tx.open_table(TABLE).unwrap();
        for k in from..to {
            t.insert(k, vec![k as u8; size].as_slice()).unwrap();
        }
    }
    tx.commit().unwrap();
}

/// The keys the table holds, each checked to hold what `put` wrote.
fn keys(db: &Database) -> Vec<u64> {
    let tx = db.begin_read().unwrap();
    let t = tx.open_table(TABLE).unwrap();
    t.iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            assert!(
                v.value().iter().all(|b| *b == k.value() as u8),
                "key {}",
                k.value()
            );
            k.value()
        })
        .collect()
}

fn corrupt(path: &Path, at: u64) {
    let f = OpenOptions::new()
        .write(true)
        .read(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
}

#[test]
fn commits_survive_across_reopens_and_log_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    // A small log, so that it starts over many times and one commit outgrows it.
    for round in 0..3u64 {
        let db = open_with_capacity(&path, 64 << 10).unwrap();
        for i in 0..20 {
            let from = round * 1000 + i * 10;
            put(&db, from, from + 10, 600);
        }
        put(&db, round * 1000 + 500, round * 1000 + 700, 1000);
        drop(db);
    }
    let db = open(&path).unwrap();
    let found = keys(&db);
    let mut expected: Vec<u64> = (0..3u64)
        .flat_map(|r| (r * 1000..r * 1000 + 200).chain(r * 1000 + 500..r * 1000 + 700))
        .collect();
    expected.sort();
    assert_eq!(found, expected);
}

/// The database file's writes since the log started may never reach the disk: the log's
/// records bring them back.
#[test]
fn committed_data_survives_losing_the_database_files_unflushed_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let db = open(&path).unwrap();
    put(&db, 0, 10, 100);
    // What the file holds now is a state it can be in on disk after a crash: it was flushed
    // at open, and the writes since are in the log.
    let flushed = std::fs::read(&path).unwrap();
    for i in 1..8 {
        put(&db, i * 10, i * 10 + 10, 100);
    }
    drop(db);
    std::fs::write(&path, &flushed).unwrap();
    let db = open(&path).unwrap();
    assert_eq!(keys(&db), (0..80).collect::<Vec<_>>());
}

/// A commit whose record was torn by the crash is not applied, and the commits before it are.
#[test]
fn a_torn_last_record_is_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let db = open(&path).unwrap();
    put(&db, 0, 10, 100);
    let flushed = std::fs::read(&path).unwrap();
    put(&db, 10, 20, 100);
    let log = std::fs::read(log_path(&path)).unwrap();
    let mut at = 0;
    while let Some(r) = decode(&log[at..]) {
        at += r.size;
    }
    put(&db, 20, 30, 100);
    drop(db);
    // The last commit's record loses a byte in its middle; its pages never reached the file.
    corrupt(&log_path(&path), at as u64 + 100);
    std::fs::write(&path, &flushed).unwrap();
    let db = open(&path).unwrap();
    assert_eq!(keys(&db), (0..20).collect::<Vec<_>>());
}

#[test]
fn replay_stops_at_an_older_epoch_and_at_a_gap_in_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let (file_path, log_path) = (dir.path().join("f"), dir.path().join("l"));
    let page = |b: u8| vec![b; 16];
    let mut log = Vec::new();
    log.extend(encode(7, 0, 64, &[(0, page(1))]));
    log.extend(encode(7, 1, 64, &[(16, page(2))]));
    // Left by the log's previous epoch: not applied.
    log.extend(encode(6, 2, 64, &[(32, page(3))]));
    log.extend(vec![0; 100]);
    std::fs::write(&log_path, &log).unwrap();
    std::fs::write(&file_path, []).unwrap();
    let (file, log_file) = (
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file_path)
            .unwrap(),
        File::open(&log_path).unwrap(),
    );
    assert_eq!(replay(&file, &log_file).unwrap(), Some(7));
    let mut expected = page(1);
    expected.extend(page(2));
    expected.extend(vec![0; 32]);
    assert_eq!(std::fs::read(&file_path).unwrap(), expected);

    // Out of sequence within the epoch: nothing after the gap.
    let mut log = encode(9, 0, 16, &[(0, page(4))]);
    log.extend(encode(9, 2, 32, &[(16, page(5))]));
    std::fs::write(&log_path, &log).unwrap();
    let log_file = File::open(&log_path).unwrap();
    assert_eq!(replay(&file, &log_file).unwrap(), Some(9));
    assert_eq!(std::fs::read(&file_path).unwrap(), page(4));
}

/// A log without its database file belongs to an earlier database and is not replayed.
#[test]
fn a_log_left_without_its_database_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let db = open(&path).unwrap();
    put(&db, 0, 10, 100);
    drop(db);
    std::fs::remove_file(&path).unwrap();
    let db = open(&path).unwrap();
    let tx = db.begin_read().unwrap();
    assert!(tx.open_table(TABLE).is_err(), "the old table came back");
}
