use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

use redb::{ReadableDatabase, ReadableTable, StorageBackend, TableDefinition};

use super::*;
use crate::backend::{changed_spans, JournalBackend, SPAN_GAP};
use crate::member::BLOCK;
use crate::record::{decode, encode};
use crate::replay::replay;

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
    log.extend(encode(7, 0, "f", 64, &[(0, page(1))]));
    log.extend(encode(7, 1, "f", 64, &[(16, page(2))]));
    // Left by the log's previous epoch: not applied.
    log.extend(encode(6, 2, "f", 64, &[(32, page(3))]));
    log.extend(vec![0; 100]);
    std::fs::write(&log_path, &log).unwrap();
    std::fs::write(&file_path, []).unwrap();
    let log_file = File::open(&log_path).unwrap();
    let replayed = replay(dir.path(), "", &log_file).unwrap();
    assert_eq!((replayed.epoch, replayed.records), (Some(7), 2));
    let mut expected = page(1);
    expected.extend(page(2));
    expected.extend(vec![0; 32]);
    assert_eq!(std::fs::read(&file_path).unwrap(), expected);

    // Out of sequence within the epoch: nothing after the gap.
    let mut log = encode(9, 0, "f", 16, &[(0, page(4))]);
    log.extend(encode(9, 2, "f", 32, &[(16, page(5))]));
    std::fs::write(&log_path, &log).unwrap();
    let log_file = File::open(&log_path).unwrap();
    assert_eq!(replay(dir.path(), "", &log_file).unwrap().epoch, Some(9));
    assert_eq!(std::fs::read(&file_path).unwrap(), page(4));
}

/// A record as a database's own log held them before records had names.
fn unnamed_record(epoch: u64, seq: u64, file_len: u64, writes: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let body: usize = writes.iter().map(|(_, d)| 12 + d.len()).sum();
    let mut r = b"CWAL".to_vec();
    for n in [epoch, seq, file_len] {
        r.extend_from_slice(&n.to_le_bytes());
    }
    r.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    r.extend_from_slice(&(body as u32).to_le_bytes());
    for (offset, data) in writes {
        r.extend_from_slice(&offset.to_le_bytes());
        r.extend_from_slice(&(data.len() as u32).to_le_bytes());
        r.extend_from_slice(data);
    }
    let crc = crc32fast::hash(&r);
    r.extend_from_slice(&crc.to_le_bytes());
    r
}

#[test]
fn unnamed_records_of_a_databases_own_log_go_to_that_database() {
    let dir = tempfile::tempdir().unwrap();
    let file_path = dir.path().join("meta.db");
    std::fs::write(&file_path, []).unwrap();
    let mut log = unnamed_record(3, 0, 8, &[(0, vec![7; 8])]);
    log.extend(unnamed_record(3, 1, 8, &[(4, vec![9; 4])]));
    std::fs::write(log_path(&file_path), &log).unwrap();
    drop(Journal::open_with_capacity(&log_path(&file_path), 0).unwrap());
    assert_eq!(std::fs::read(&file_path).unwrap(), [7, 7, 7, 7, 9, 9, 9, 9]);
    // Replayed once: the records are spoilt, so a later open does not apply them again over
    // what the file holds by then.
    std::fs::write(&file_path, [1; 8]).unwrap();
    drop(Journal::open_with_capacity(&log_path(&file_path), 0).unwrap());
    assert_eq!(std::fs::read(&file_path).unwrap(), [1; 8]);
}

/// Two databases in one journal, the first deferring: a commit of the first is durable with
/// the second's next commit, and neither file needs a flush of its own.
#[test]
fn databases_sharing_a_journal_are_made_durable_by_one_flush() {
    let dir = tempfile::tempdir().unwrap();
    let journal_path = dir.path().join("stores.wal");
    let (a_path, b_path) = (dir.path().join("a/a.db"), dir.path().join("b.db"));
    std::fs::create_dir(dir.path().join("a")).unwrap();
    let journal = Journal::open_with_capacity(&journal_path, 1 << 20).unwrap();
    let a = journal.database(&a_path, Commits::Deferred).unwrap();
    let b = journal.database(&b_path, Commits::Flushed).unwrap();
    put(&a, 0, 10, 100);
    put(&b, 0, 10, 100);
    let (a_flushed, b_flushed) = (
        std::fs::read(&a_path).unwrap(),
        std::fs::read(&b_path).unwrap(),
    );
    put(&a, 10, 20, 100);
    // The deferred commit is seen, but not yet durable.
    assert_eq!(keys(&a), (0..20).collect::<Vec<_>>());
    assert!(journal.unflushed().unwrap());
    put(&b, 10, 20, 100);
    assert!(
        !journal.unflushed().unwrap(),
        "b's commit flushed a's record too"
    );
    // The crash: the files lose every write since they were last flushed; the journal holds
    // all that was flushed to it. (Closing writes more: what the disk held at the crash is
    // put back afterwards.)
    let at_crash = std::fs::read(&journal_path).unwrap();
    drop((a, b, journal));
    std::fs::write(&journal_path, &at_crash).unwrap();
    std::fs::write(&a_path, &a_flushed).unwrap();
    std::fs::write(&b_path, &b_flushed).unwrap();
    let journal = Journal::open_with_capacity(&journal_path, 1 << 20).unwrap();
    let (a, b) = (
        journal.database(&a_path, Commits::Deferred).unwrap(),
        journal.database(&b_path, Commits::Flushed).unwrap(),
    );
    assert_eq!(keys(&a), (0..20).collect::<Vec<_>>());
    assert_eq!(keys(&b), (0..20).collect::<Vec<_>>());
}

#[test]
fn a_deferred_commit_is_durable_at_the_journals_sync() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open_with_capacity(&dir.path().join("j.wal"), 1 << 20).unwrap();
    let path = dir.path().join("a.db");
    let a = journal.database(&path, Commits::Deferred).unwrap();
    put(&a, 0, 5, 100);
    let before = std::fs::read(&path).unwrap();
    put(&a, 5, 10, 100);
    assert!(journal.unflushed().unwrap());
    journal.sync().unwrap();
    assert!(!journal.unflushed().unwrap());
    // Durable in the log; its pages wait in memory for the log's restart.
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(keys(&a), (0..10).collect::<Vec<_>>());
}

/// Pages a log holds in memory reach their file, flushed, when the log restarts and when the
/// database closes: the file alone then holds every commit.
#[test]
fn held_pages_reach_the_file_at_a_restart_and_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let journal_path = dir.path().join("j.wal");
    let (a_path, b_path) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let journal = Journal::open_with_capacity(&journal_path, 1 << 20).unwrap();
    let a = journal.database(&a_path, Commits::Flushed).unwrap();
    let b = journal.database(&b_path, Commits::Flushed).unwrap();
    put(&a, 0, 10, 100);
    let a_before = std::fs::read(&a_path).unwrap();
    // Enough pages that the log restarts, and again, for the memory they hold.
    journal.lock().unwrap().max_held = 64 << 10;
    let mut restarts = 0;
    let mut epoch = journal.lock().unwrap().epoch;
    for i in 0..20 {
        put(&b, i * 20, i * 20 + 20, 1000);
        let now = journal.lock().unwrap().epoch;
        restarts += usize::from(now != epoch);
        epoch = now;
    }
    assert!(restarts >= 2, "{restarts} restarts");
    assert_ne!(
        std::fs::read(&a_path).unwrap(),
        a_before,
        "a's pages written"
    );
    put(&a, 10, 20, 100);
    drop(a);
    drop(b);
    drop(journal);
    // Without the log, the files say it all.
    std::fs::remove_file(&journal_path).unwrap();
    let journal = Journal::open(&journal_path).unwrap();
    let a = journal.database(&a_path, Commits::Flushed).unwrap();
    let b = journal.database(&b_path, Commits::Flushed).unwrap();
    assert_eq!(keys(&a), (0..20).collect::<Vec<_>>());
    assert_eq!(keys(&b), (0..400).collect::<Vec<_>>());
}

/// A database reopened in the same journal reads what it committed before it closed, and its
/// old pages are not written over the new ones at the next restart.
#[test]
fn a_database_reopened_in_its_journal_keeps_its_commits() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open_with_capacity(&dir.path().join("j.wal"), 64 << 10).unwrap();
    let path = dir.path().join("a.db");
    let a = journal.database(&path, Commits::Deferred).unwrap();
    put(&a, 0, 10, 100);
    drop(a);
    let a = journal.database(&path, Commits::Flushed).unwrap();
    assert_eq!(keys(&a), (0..10).collect::<Vec<_>>());
    for i in 1..30 {
        put(&a, i * 10, i * 10 + 10, 300);
    }
    assert_eq!(keys(&a), (0..300).collect::<Vec<_>>());
}

/// A journal too small for more than a few records restarts many times, flushing every file
/// with records in it; deferred commits in between survive reopening.
#[test]
fn a_shared_journal_survives_its_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let journal_path = dir.path().join("j.wal");
    let (a_path, b_path) = (dir.path().join("a.db"), dir.path().join("b.db"));
    {
        let journal = Journal::open_with_capacity(&journal_path, 48 << 10).unwrap();
        let a = journal.database(&a_path, Commits::Deferred).unwrap();
        let b = journal.database(&b_path, Commits::Flushed).unwrap();
        for i in 0..30 {
            put(&a, i * 10, i * 10 + 10, 300);
            put(&b, i * 10, i * 10 + 10, 300);
        }
    }
    let journal = Journal::open(&journal_path).unwrap();
    let a = journal.database(&a_path, Commits::Deferred).unwrap();
    let b = journal.database(&b_path, Commits::Flushed).unwrap();
    assert_eq!(keys(&a), (0..300).collect::<Vec<_>>());
    assert_eq!(keys(&b), (0..300).collect::<Vec<_>>());
}

/// A database that had a journal of its own keeps what that journal held when it joins a
/// shared one.
#[test]
fn a_database_joining_a_shared_journal_keeps_its_own_logs_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.db");
    let db = open(&path).unwrap();
    put(&db, 0, 10, 100);
    let flushed = std::fs::read(&path).unwrap();
    put(&db, 10, 20, 100);
    let at_crash = std::fs::read(log_path(&path)).unwrap();
    drop(db);
    std::fs::write(log_path(&path), &at_crash).unwrap();
    std::fs::write(&path, &flushed).unwrap();
    let journal = Journal::open(&dir.path().join("stores.wal")).unwrap();
    let db = journal.database(&path, Commits::Flushed).unwrap();
    assert_eq!(keys(&db), (0..20).collect::<Vec<_>>());
    assert!(!log_path(&path).exists());
}

/// Records of a database whose file was deleted are not replayed (into a new file or any other).
#[test]
fn records_of_a_deleted_database_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let journal_path = dir.path().join("j.wal");
    let (a_path, b_path) = (dir.path().join("a.db"), dir.path().join("b.db"));
    {
        let journal = Journal::open(&journal_path).unwrap();
        let a = journal.database(&a_path, Commits::Flushed).unwrap();
        let b = journal.database(&b_path, Commits::Flushed).unwrap();
        put(&a, 0, 10, 100);
        put(&b, 0, 10, 100);
    }
    std::fs::remove_file(&a_path).unwrap();
    let journal = Journal::open(&journal_path).unwrap();
    assert!(!a_path.exists());
    let b = journal.database(&b_path, Commits::Flushed).unwrap();
    assert_eq!(keys(&b), (0..10).collect::<Vec<_>>());
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

#[test]
fn only_changed_bytes_are_logged_close_ones_together() {
    let before = [0u8; 100];
    let mut after = before;
    after[3] = 1;
    after[10] = 2; // within the gap of the first: one span
    after[90] = 3;
    let spans = changed_spans(1000, &before, &after);
    assert_eq!(spans, [(1003, after[3..11].to_vec()), (1090, vec![3])]);
    assert!(changed_spans(0, &before, &before).is_empty());
}

/// The chunked search finds what a byte-by-byte one does, wherever the changes fall.
#[test]
fn changed_spans_match_a_byte_by_byte_comparison() {
    fn naive(offset: u64, before: &[u8], after: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let differs: Vec<usize> = (0..after.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for i in differs {
            match spans.last_mut() {
                Some((_, end)) if i - *end <= SPAN_GAP => *end = i + 1,
                _ => spans.push((i, i + 1)),
            }
        }
        spans
            .into_iter()
            .map(|(s, e)| (offset + s as u64, after[s..e].to_vec()))
            .collect()
    }
    let before: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let positions: [&[usize]; 6] = [
        &[0],
        &[4095],
        &[63, 64, 511, 512, 513],
        &[100, 133, 166, 200, 1000, 1033, 4000],
        &[2047, 2048, 2049, 3000, 3032, 3065],
        &[],
    ];
    for changed in positions {
        let mut after = before.clone();
        for &i in changed {
            after[i] ^= 0x5a;
        }
        assert_eq!(
            changed_spans(8192, &before, &after),
            naive(8192, &before, &after),
            "changes at {changed:?}"
        );
    }
    let mut after = before.clone();
    for i in (0..4096).step_by(97) {
        after[i] = !after[i];
    }
    assert_eq!(changed_spans(0, &before, &after), naive(0, &before, &after));
    // Writes that cover part of a block: lengths and starts off the eight-byte words, runs of
    // changed bytes longer than a word, gaps either side of SPAN_GAP.
    let mut after = before.clone();
    for i in (5..300).chain(333..334).chain(367..368).chain(1000..1003) {
        after[i] = !after[i];
    }
    for (from, to) in [
        (0, 4096),
        (3, 4093),
        (5, 301),
        (6, 299),
        (299, 1001),
        (1001, 1002),
        (7, 7),
    ] {
        assert_eq!(
            changed_spans(64 + from as u64, &before[from..to], &after[from..to]),
            naive(64 + from as u64, &before[from..to], &after[from..to]),
            "slice {from}..{to}"
        );
    }
}

/// Records hold only changed bytes: replayed onto the file as it was when the log started
/// (every later page write lost), they still rebuild every commit, overwrites and deletes
/// included, and the log is far smaller than the pages written.
#[test]
fn changed_bytes_rebuild_the_database_from_the_logs_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    drop(open(&path).unwrap());
    let db = open(&path).unwrap();
    let base = std::fs::read(&path).unwrap();
    for i in 0..40 {
        put(&db, i * 5, i * 5 + 5, 50);
    }
    put(&db, 0, 100, 50); // overwrites
    let tx = db.begin_write().unwrap();
    {
        let mut t = tx.open_table(TABLE).unwrap();
        for k in 100..150 {
            t.remove(k).unwrap();
        }
    }
    tx.commit().unwrap();
    let at_crash = std::fs::read(log_path(&path)).unwrap();
    let mut logged = 0;
    let mut at = 0;
    while let Some(r) = decode(&at_crash[at..]) {
        logged += r.size;
        at += r.size;
    }
    drop(db);
    std::fs::write(log_path(&path), &at_crash).unwrap();
    std::fs::write(&path, &base).unwrap();
    let db = open(&path).unwrap();
    let mut expected: Vec<u64> = (0..100).chain(150..200).collect();
    expected.sort();
    assert_eq!(keys(&db), expected);
    // Whole pages made about 1 MB of records here (24 KiB a commit); changed bytes about a
    // third of that.
    assert!(logged < 600_000, "{logged} bytes logged");
}

/// A backend of `journal` for the file `path`, driven directly as redb would.
fn backend(journal: &Journal, path: &Path) -> JournalBackend {
    JournalBackend {
        journal: journal.clone(),
        member: journal.member(path).unwrap(),
        commits: Commits::Flushed,
    }
}

fn read(b: &JournalBackend, offset: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    b.read(offset, &mut out).unwrap();
    out
}

/// A file cut short and grown again reads as zeros where it grew, before and after a crash,
/// whether the cut was logged on its own or in the same record as the growth; and the file on
/// disk keeps its length until the log no longer needs what lay past the cut.
#[test]
fn a_file_cut_and_grown_again_reads_zeros_where_it_grew() {
    const B: u64 = BLOCK;
    for cut_logged_alone in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (journal_path, path) = (dir.path().join("j.wal"), dir.path().join("f"));
        let journal = Journal::open_with_capacity(&journal_path, 1 << 20).unwrap();
        let b = backend(&journal, &path);
        b.set_len(3 * B).unwrap();
        b.write(0, &vec![7u8; 3 * B as usize]).unwrap();
        b.sync_data().unwrap();
        journal.lock().unwrap().restart().unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            3 * B,
            "written back"
        );

        b.set_len(B + 100).unwrap();
        assert!(
            b.read(B + 50, &mut [0u8; 100]).is_err(),
            "read past the end"
        );
        if cut_logged_alone {
            b.sync_data().unwrap();
        }
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            3 * B,
            "the file is cut only at a write-back"
        );
        b.set_len(3 * B).unwrap();
        b.write(2 * B + 10, &[9u8; 10]).unwrap();
        b.sync_data().unwrap();
        let mut expected = vec![7u8; (B + 100) as usize];
        expected.resize(3 * B as usize, 0);
        expected[(2 * B + 10) as usize..(2 * B + 20) as usize].fill(9);
        assert_eq!(read(&b, 0, 3 * B as usize), expected);

        // The crash: the file holds what the last write-back put there, the log its records.
        let (at_crash, log_at_crash) = (
            std::fs::read(&path).unwrap(),
            std::fs::read(&journal_path).unwrap(),
        );
        drop((b, journal));
        std::fs::write(&path, &at_crash).unwrap();
        std::fs::write(&journal_path, &log_at_crash).unwrap();
        drop(Journal::open_with_capacity(&journal_path, 1 << 20).unwrap());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            expected,
            "{cut_logged_alone}"
        );
    }
}

/// `restart_near` says yes before a commit of up to [`NEAR_RESTART`] bytes could restart the
/// log: for a log near its end, and for one holding nearly as many pages as it may.
#[test]
fn a_restart_is_seen_coming() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open_with_capacity(&dir.path().join("j.wal"), 256 << 10).unwrap();
    let a = journal
        .database(&dir.path().join("a.db"), Commits::Flushed)
        .unwrap();
    assert!(!journal.restart_near());
    let epoch = journal.lock().unwrap().epoch;
    let mut commits = 0;
    while !journal.restart_near() {
        put(&a, commits * 4, commits * 4 + 4, 1000);
        commits += 1;
        assert_eq!(
            journal.lock().unwrap().epoch,
            epoch,
            "restarted unannounced"
        );
    }
    assert!(commits > 0);
    let mut key = 1000;
    while journal.lock().unwrap().epoch == epoch {
        put(&a, key, key + 1, 10);
        key += 1;
    }
    assert!(!journal.restart_near(), "a restarted log has room again");
    let mut log = journal.lock().unwrap();
    log.max_held = log.held + NEAR_RESTART / 2;
    drop(log);
    assert!(journal.restart_near(), "held pages near their limit");
    let small = Journal::open_with_capacity(&dir.path().join("small.wal"), 32 << 10).unwrap();
    assert!(small.restart_near(), "a log smaller than a look ahead");
}

/// Writers are counted until they end, however they end; commits are short only with none
/// and a shared journal not near its restart.
#[test]
fn writers_are_counted_until_they_end() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("stores.wal")).unwrap();
    let writers = Writers::default();
    assert!(writers.commits_are_short(Some(&journal)));
    assert!(!writers.commits_are_short(None), "a journal of its own");
    let first = writers.enter();
    let second = writers.clone().enter();
    assert_eq!(writers.count(), 2);
    assert!(!writers.commits_are_short(Some(&journal)));
    drop(first);
    assert!(!writers.commits_are_short(Some(&journal)), "one is left");
    drop(second);
    assert!(writers.commits_are_short(Some(&journal)));
    let unwound = std::panic::catch_unwind(|| {
        let _writer = writers.enter();
        panic!("a write panics");
    });
    assert!(unwound.is_err());
    assert_eq!(writers.count(), 0);
}
