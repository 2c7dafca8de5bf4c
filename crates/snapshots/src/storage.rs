//! A snapshotter's own small metadata store (redb, `<root>/metadata.db`), as containerd's
//! `snapshots/storage`: each snapshot's id, kind, parent, labels and timestamps, plus the usage
//! of committed ones. Ids come from a sequence, are never reused, and survive Commit, so the
//! directory (or subvolume) of a snapshot never moves.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::{now_nanos, Info, Kind, SnapshotError, Usage};

/// key -> JSON [`Record`].
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// `<parent id>/<child key>` -> empty: who builds on whom.
const CHILDREN: TableDefinition<&str, ()> = TableDefinition::new("children");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_ID: &str = "next_id";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: u64,
    kind: Kind,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    parent: String,
    created: u64,
    updated: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    usage: Usage,
}

impl Record {
    /// Whether this record is an active snapshot only crated's differ writes into
    /// ([`crate::LABEL_DIFFER_ONLY`]).
    fn extraction(&self) -> bool {
        self.kind == Kind::Active && crate::is_differ_only(self.labels.iter())
    }

    fn info(&self, name: &str) -> Info {
        Info {
            name: name.to_owned(),
            parent: self.parent.clone(),
            kind: self.kind,
            labels: self.labels.clone().into_iter().collect(),
            created: self.created,
            updated: self.updated,
        }
    }
}

/// What the filesystem side of a snapshotter needs to know of a snapshot: its id, its kind,
/// and the ids of its parents, the immediate one first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    pub kind: Kind,
    pub parent_ids: Vec<String>,
    /// An active snapshot only crated's differ writes into ([`crate::LABEL_DIFFER_ONLY`]).
    pub extraction: bool,
}

pub struct MetaStore {
    db: Database,
    /// The shared journal its commits are deferred to, if any.
    journal: Option<crated_wal::Journal>,
    writers: crated_wal::Writers,
}

/// Labels with empty values are not kept: containerd treats an empty value as no label.
fn kept_labels(labels: HashMap<String, String>) -> BTreeMap<String, String> {
    labels.into_iter().filter(|(_, v)| !v.is_empty()).collect()
}

fn not_found(key: &str) -> SnapshotError {
    SnapshotError::NotFound(format!("snapshot {key}"))
}

fn get_record(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<Record>, SnapshotError> {
    match table.get(key)? {
        Some(v) => Ok(Some(serde_json::from_slice(v.value())?)),
        None => Ok(None),
    }
}

fn require_record(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Record, SnapshotError> {
    get_record(table, key)?.ok_or_else(|| not_found(key))
}

fn parent_ids(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    mut parent: String,
) -> Result<Vec<String>, SnapshotError> {
    let mut ids = Vec::new();
    while !parent.is_empty() {
        let r = require_record(table, &parent)?;
        ids.push(r.id.to_string());
        parent = r.parent;
    }
    Ok(ids)
}

fn snapshot_of(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Snapshot, SnapshotError> {
    let r = require_record(table, key)?;
    if r.kind == Kind::Committed {
        return Err(SnapshotError::FailedPrecondition(format!(
            "requested snapshot {key} not active or view"
        )));
    }
    Ok(Snapshot {
        id: r.id.to_string(),
        kind: r.kind,
        extraction: r.extraction(),
        parent_ids: parent_ids(table, r.parent)?,
    })
}

fn info_of(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<(String, Info, Usage), SnapshotError> {
    let r = require_record(table, key)?;
    Ok((r.id.to_string(), r.info(key), r.usage))
}

fn all_infos(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<(String, Info)>, SnapshotError> {
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        let r: Record = serde_json::from_slice(v.value())?;
        out.push((r.id.to_string(), r.info(k.value())));
    }
    Ok(out)
}

impl MetaStore {
    /// Opens the store with a journal of its own: each commit is durable when it returns.
    pub fn open(path: &Path) -> Result<Self, SnapshotError> {
        Self::open_in(path, None)
    }

    /// Opens the store; with a `journal`, its commits are deferred to that journal and are
    /// durable at its next flush (see [`MetaStore::sync`]).
    pub fn open_in(
        path: &Path,
        journal: Option<&crated_wal::Journal>,
    ) -> Result<Self, SnapshotError> {
        let db = crated_wal::open_in(path, journal, crated_wal::Commits::Deferred)?;
        let tx = db.begin_write()?;
        tx.open_table(SNAPSHOTS)?;
        tx.open_table(CHILDREN)?;
        tx.open_table(META)?;
        tx.commit()?;
        Ok(MetaStore {
            db,
            journal: journal.cloned(),
            writers: Default::default(),
        })
    }

    /// Whether a write now starts at once and commits with no more than an append to the
    /// shared journal ([`crated_wal::Writers::commits_are_short`]).
    pub fn commits_are_short(&self) -> bool {
        self.writers.commits_are_short(self.journal.as_ref())
    }

    /// Makes every commit so far durable (they already are without a shared journal).
    pub fn sync(&self) -> Result<(), SnapshotError> {
        match &self.journal {
            Some(j) => j
                .sync()
                .map_err(SnapshotError::io("flushing the store's journal")),
            None => Ok(()),
        }
    }

    pub fn read(&self) -> Result<ReadTxn, SnapshotError> {
        Ok(ReadTxn {
            tx: self.db.begin_read()?,
        })
    }

    /// A write transaction; nothing is kept unless [`WriteTxn::commit`] is called.
    pub fn write(&self) -> Result<WriteTxn, SnapshotError> {
        Ok(WriteTxn {
            tx: self.writers.begin(&self.db)?,
        })
    }
}

pub struct ReadTxn {
    tx: redb::ReadTransaction,
}

impl ReadTxn {
    /// The active snapshot or view `key`; a committed one is FailedPrecondition.
    pub fn snapshot(&self, key: &str) -> Result<Snapshot, SnapshotError> {
        snapshot_of(&self.tx.open_table(SNAPSHOTS)?, key)
    }

    /// The id, info and (for committed snapshots) stored usage of `key`.
    pub fn info(&self, key: &str) -> Result<(String, Info, Usage), SnapshotError> {
        info_of(&self.tx.open_table(SNAPSHOTS)?, key)
    }

    /// Every snapshot with its id.
    pub fn all(&self) -> Result<Vec<(String, Info)>, SnapshotError> {
        all_infos(&self.tx.open_table(SNAPSHOTS)?)
    }
}

pub struct WriteTxn {
    tx: crated_wal::Write,
}

impl WriteTxn {
    pub fn snapshot(&self, key: &str) -> Result<Snapshot, SnapshotError> {
        snapshot_of(&self.tx.open_table(SNAPSHOTS)?, key)
    }

    pub fn info(&self, key: &str) -> Result<(String, Info, Usage), SnapshotError> {
        info_of(&self.tx.open_table(SNAPSHOTS)?, key)
    }

    pub fn all(&self) -> Result<Vec<(String, Info)>, SnapshotError> {
        all_infos(&self.tx.open_table(SNAPSHOTS)?)
    }

    /// Records a new active snapshot or view `key` on the committed `parent` (empty: none).
    pub fn create(
        &mut self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Snapshot, SnapshotError> {
        if kind == Kind::Committed {
            return Err(SnapshotError::InvalidArgument(format!(
                "snapshot type {} invalid; only snapshots of type active or view can be created",
                kind.as_str()
            )));
        }
        let mut table = self.tx.open_table(SNAPSHOTS)?;
        if get_record(&table, key)?.is_some() {
            return Err(SnapshotError::AlreadyExists(format!("snapshot {key}")));
        }
        let mut ids = Vec::new();
        if !parent.is_empty() {
            let p = get_record(&table, parent)?.ok_or_else(|| {
                SnapshotError::NotFound(format!("missing parent {parent:?} bucket"))
            })?;
            if p.kind != Kind::Committed {
                return Err(SnapshotError::InvalidArgument(format!(
                    "parent {parent:?} is not committed snapshot"
                )));
            }
            ids.push(p.id.to_string());
            ids.extend(parent_ids(&table, p.parent)?);
        }
        let id = {
            let mut meta = self.tx.open_table(META)?;
            let next = meta.get(NEXT_ID)?.map_or(1, |v| v.value());
            meta.insert(NEXT_ID, next + 1)?;
            next
        };
        let now = now_nanos();
        let record = Record {
            id,
            kind,
            parent: parent.to_owned(),
            created: now,
            updated: now,
            labels: kept_labels(labels),
            usage: Usage::default(),
        };
        table.insert(key, serde_json::to_vec(&record)?.as_slice())?;
        if let Some(pid) = ids.first() {
            self.tx
                .open_table(CHILDREN)?
                .insert(format!("{pid}/{key}").as_str(), ())?;
        }
        let extraction = record.extraction();
        Ok(Snapshot {
            id: id.to_string(),
            kind,
            parent_ids: ids,
            extraction,
        })
    }

    /// Changes the labels of `info.name` as containerd's `UpdateInfo` does.
    pub fn update(&mut self, info: Info, field_paths: &[String]) -> Result<Info, SnapshotError> {
        let mut table = self.tx.open_table(SNAPSHOTS)?;
        let mut r = require_record(&table, &info.name)?;
        let new_labels = kept_labels(info.labels);
        if field_paths.is_empty() {
            r.labels = new_labels;
        } else {
            for path in field_paths {
                if let Some(key) = path.strip_prefix("labels.") {
                    match new_labels.get(key) {
                        Some(v) => r.labels.insert(key.to_owned(), v.clone()),
                        None => r.labels.remove(key),
                    };
                } else if path == "labels" {
                    r.labels = new_labels.clone();
                } else {
                    return Err(SnapshotError::InvalidArgument(format!(
                        "cannot update {path:?} field on snapshot {:?}",
                        info.name
                    )));
                }
            }
        }
        r.updated = now_nanos();
        table.insert(info.name.as_str(), serde_json::to_vec(&r)?.as_slice())?;
        Ok(r.info(&info.name))
    }

    /// Turns the active snapshot `key` into the committed `name`, keeping its id. Returns the
    /// id. A non-empty `onto` rebases a snapshot prepared without a parent onto that committed
    /// one (containerd's Commit with `WithParent`); naming another parent than the one it has
    /// is InvalidArgument.
    pub fn commit_active(
        &mut self,
        key: &str,
        name: &str,
        onto: &str,
        usage: Usage,
        labels: HashMap<String, String>,
    ) -> Result<String, SnapshotError> {
        let mut table = self.tx.open_table(SNAPSHOTS)?;
        if get_record(&table, name)?.is_some() {
            return Err(SnapshotError::AlreadyExists(format!("snapshot {name}")));
        }
        let mut r = require_record(&table, key)?;
        if r.kind != Kind::Active {
            return Err(SnapshotError::FailedPrecondition(format!(
                "snapshot {key} is not active"
            )));
        }
        if !onto.is_empty() && onto != r.parent {
            if !r.parent.is_empty() {
                return Err(SnapshotError::InvalidArgument(format!(
                    "cannot change parent of active snapshot {key} on commit"
                )));
            }
            let p = require_record(&table, onto)?;
            if p.kind != Kind::Committed {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "parent {onto} is not committed"
                )));
            }
            // The parent's link to its new child is made below, as for any child.
            r.parent = onto.to_owned();
        }
        let now = now_nanos();
        let committed = Record {
            id: r.id,
            kind: Kind::Committed,
            parent: r.parent.clone(),
            created: now,
            updated: now,
            labels: kept_labels(labels),
            usage,
        };
        table.remove(key)?;
        table.insert(name, serde_json::to_vec(&committed)?.as_slice())?;
        if !r.parent.is_empty() {
            let p = require_record(&table, &r.parent)?;
            let mut children = self.tx.open_table(CHILDREN)?;
            children.remove(format!("{}/{key}", p.id).as_str())?;
            children.insert(format!("{}/{name}", p.id).as_str(), ())?;
        }
        Ok(r.id.to_string())
    }

    /// Forgets `key`, which must have no children. Returns its id and what it was.
    pub fn remove(&mut self, key: &str) -> Result<(String, Info), SnapshotError> {
        let removed = self.removal(key)?;
        let mut table = self.tx.open_table(SNAPSHOTS)?;
        let mut children = self.tx.open_table(CHILDREN)?;
        if !removed.1.parent.is_empty() {
            let p = require_record(&table, &removed.1.parent)?;
            children.remove(format!("{}/{key}", p.id).as_str())?;
        }
        table.remove(key)?;
        Ok(removed)
    }

    /// What [`WriteTxn::remove`] of `key` would take out (its id and info), with the same
    /// checks (it exists, it has no children), changing nothing.
    pub fn removal(&self, key: &str) -> Result<(String, Info), SnapshotError> {
        let table = self.tx.open_table(SNAPSHOTS)?;
        let r = require_record(&table, key)?;
        let children = self.tx.open_table(CHILDREN)?;
        let prefix = format!("{}/", r.id);
        if let Some(entry) = children.range(prefix.as_str()..)?.next() {
            let (k, _) = entry?;
            if k.value().starts_with(&prefix) {
                return Err(SnapshotError::FailedPrecondition(format!(
                    "cannot remove snapshot {key} with child"
                )));
            }
        }
        if !r.parent.is_empty() {
            require_record(&table, &r.parent)?;
        }
        Ok((r.id.to_string(), r.info(key)))
    }

    /// Makes the changes durable.
    pub fn commit(self) -> Result<(), SnapshotError> {
        self.tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, MetaStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = MetaStore::open(&dir.path().join("metadata.db")).unwrap();
        (dir, s)
    }

    fn kind_of(e: &SnapshotError) -> crated_errdefs::Kind {
        crated_errdefs::HasKind::kind(e)
    }

    /// Commits are short only for a store in a shared journal, and not while another write
    /// transaction, which may be a long one, is open.
    #[test]
    fn commits_are_short_unless_a_write_is_open() {
        let (dir, own) = store();
        assert!(
            !own.commits_are_short(),
            "a store with a journal of its own"
        );
        let journal = crated_wal::Journal::open(&dir.path().join("stores.wal")).unwrap();
        let s = MetaStore::open_in(&dir.path().join("shared.db"), Some(&journal)).unwrap();
        assert!(s.commits_are_short());
        let tx = s.write().unwrap();
        assert!(!s.commits_are_short(), "a write is open");
        tx.commit().unwrap();
        assert!(s.commits_are_short(), "committed");
        drop(s.write().unwrap());
        assert!(s.commits_are_short(), "dropped");

        // A write that waited for another is counted from its wait to its end.
        let first = s.write().unwrap();
        let (opened, open) = std::sync::mpsc::channel();
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|scope| {
            let s = &s;
            let second = scope.spawn(move || {
                let tx = s.write().unwrap();
                opened.send(()).unwrap();
                finished.recv().unwrap();
                tx.commit().unwrap();
            });
            while s.writers.count() < 2 {
                std::thread::yield_now();
            }
            first.commit().unwrap();
            open.recv().unwrap();
            assert!(!s.commits_are_short(), "the second write is open");
            finish.send(()).unwrap();
            second.join().unwrap();
        });
        assert!(s.commits_are_short(), "both ended");
    }

    #[test]
    fn create_commit_remove_follow_containerds_classes() {
        use crated_errdefs::Kind as K;
        let (_d, s) = store();
        let mut tx = s.write().unwrap();
        let a = tx.create(Kind::Active, "a", "", HashMap::new()).unwrap();
        assert_eq!(a.id, "1");
        assert!(a.parent_ids.is_empty());
        assert_eq!(
            kind_of(&tx.create(Kind::View, "a", "", HashMap::new()).unwrap_err()),
            K::AlreadyExists
        );
        assert_eq!(
            kind_of(
                &tx.create(Kind::Active, "b", "nope", HashMap::new())
                    .unwrap_err()
            ),
            K::NotFound
        );
        assert_eq!(
            kind_of(
                &tx.create(Kind::Active, "b", "a", HashMap::new())
                    .unwrap_err()
            ),
            K::InvalidArgument
        );
        assert_eq!(
            kind_of(
                &tx.create(Kind::Committed, "b", "", HashMap::new())
                    .unwrap_err()
            ),
            K::InvalidArgument
        );
        let id = tx
            .commit_active("a", "c", "", Usage::default(), HashMap::new())
            .unwrap();
        assert_eq!(id, "1");
        assert_eq!(kind_of(&tx.info("a").unwrap_err()), K::NotFound);
        assert_eq!(
            kind_of(&tx.snapshot("c").unwrap_err()),
            K::FailedPrecondition
        );
        let b = tx.create(Kind::Active, "b", "c", HashMap::new()).unwrap();
        assert_eq!(b.parent_ids, vec!["1".to_string()]);
        let v = tx.create(Kind::View, "v", "c", HashMap::new()).unwrap();
        assert_eq!(
            kind_of(
                &tx.commit_active("v", "x", "", Usage::default(), HashMap::new())
                    .unwrap_err()
            ),
            K::FailedPrecondition
        );
        assert_eq!(
            kind_of(
                &tx.commit_active("b", "c", "", Usage::default(), HashMap::new())
                    .unwrap_err()
            ),
            K::AlreadyExists
        );
        tx.commit_active("b", "d", "", Usage::default(), HashMap::new())
            .unwrap();
        let e = tx.create(Kind::Active, "e", "d", HashMap::new()).unwrap();
        assert_eq!(e.parent_ids, vec![b.id.clone(), "1".to_string()]);
        assert_eq!(kind_of(&tx.remove("c").unwrap_err()), K::FailedPrecondition);
        assert_eq!(kind_of(&tx.remove("zz").unwrap_err()), K::NotFound);
        tx.remove("e").unwrap();
        tx.remove("d").unwrap();
        let (id, removed) = tx.remove("v").unwrap();
        assert_eq!((id, removed.kind), (v.id, Kind::View));
        tx.remove("c").unwrap();
        tx.commit().unwrap();
        // Ids are never reused.
        let mut tx = s.write().unwrap();
        assert_eq!(
            tx.create(Kind::Active, "a", "", HashMap::new()).unwrap().id,
            "5"
        );
    }

    #[test]
    fn commit_rebases_a_parentless_snapshot() {
        use crated_errdefs::Kind as K;
        let (_d, s) = store();
        let mut tx = s.write().unwrap();
        let base = tx
            .create(Kind::Active, "base-key", "", HashMap::new())
            .unwrap();
        tx.commit_active("base-key", "base", "", Usage::default(), HashMap::new())
            .unwrap();
        let top = tx
            .create(Kind::Active, "top-key", "", HashMap::new())
            .unwrap();
        tx.create(Kind::Active, "open", "", HashMap::new()).unwrap();
        assert_eq!(
            kind_of(
                &tx.commit_active("top-key", "top", "nope", Usage::default(), HashMap::new())
                    .unwrap_err()
            ),
            K::NotFound
        );
        assert_eq!(
            kind_of(
                &tx.commit_active("top-key", "top", "open", Usage::default(), HashMap::new())
                    .unwrap_err()
            ),
            K::FailedPrecondition
        );
        tx.commit_active("top-key", "top", "base", Usage::default(), HashMap::new())
            .unwrap();
        assert_eq!(tx.info("top").unwrap().1.parent, "base");
        let child = tx.create(Kind::View, "v", "top", HashMap::new()).unwrap();
        assert_eq!(child.parent_ids, vec![top.id.clone(), base.id.clone()]);
        // The parent now has a child: it cannot go first.
        assert_eq!(
            kind_of(&tx.remove("base").unwrap_err()),
            K::FailedPrecondition
        );
        // A snapshot that has a parent keeps it.
        let other = tx
            .create(Kind::Active, "other", "top", HashMap::new())
            .unwrap();
        assert_eq!(other.parent_ids.len(), 2);
        assert_eq!(
            kind_of(
                &tx.commit_active("other", "o", "base", Usage::default(), HashMap::new())
                    .unwrap_err()
            ),
            K::InvalidArgument
        );
        tx.commit_active("other", "o", "top", Usage::default(), HashMap::new())
            .unwrap();
        tx.remove("o").unwrap();
        tx.remove("v").unwrap();
        tx.remove("top").unwrap();
        tx.remove("base").unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn update_follows_field_paths() {
        let (_d, s) = store();
        let mut tx = s.write().unwrap();
        let labels = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        tx.create(
            Kind::Active,
            "a",
            "",
            labels(&[("l1", "v1"), ("l2", "v2"), ("l3", "v3")]),
        )
        .unwrap();
        let mut info = tx.info("a").unwrap().1;
        info.labels = labels(&[("l1", "updated"), ("l4", "v4")]);
        let got = tx
            .update(info.clone(), &["labels.l1".into(), "labels.l2".into()])
            .unwrap();
        assert_eq!(got.labels, labels(&[("l1", "updated"), ("l3", "v3")]));
        let got = tx.update(info.clone(), &["labels".into()]).unwrap();
        assert_eq!(got.labels, labels(&[("l1", "updated"), ("l4", "v4")]));
        let err = tx.update(info.clone(), &["parent".into()]).unwrap_err();
        assert_eq!(kind_of(&err), crated_errdefs::Kind::InvalidArgument);
        info.labels = labels(&[("x", ""), ("y", "1")]);
        let got = tx.update(info, &[]).unwrap();
        assert_eq!(got.labels, labels(&[("y", "1")]));
        assert!(got.updated >= got.created);
    }
}
