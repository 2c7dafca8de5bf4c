//! The devmapper snapshotter's record of its thin devices (redb, `<root>/<pool>.db`, as
//! containerd's `<pool>.db`): for each device its thin id in the pool, size, origin, filesystem
//! and state. A record is written before the kernel is asked for the device, so that a crash
//! leaves nothing in the pool that no record names.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::SnapshotError;

/// device name -> JSON [`Device`].
const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");
/// thin id -> device name: ids in use.
const IDS: TableDefinition<u32, &str> = TableDefinition::new("ids");
const META: TableDefinition<&str, u32> = TableDefinition::new("meta");
const LAST_ID: &str = "last_id";
/// Thin device ids are 24-bit numbers.
const MAX_ID: u32 = 0x00ff_ffff;

/// Where a device is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Recorded; the thin device may or may not be in the pool yet.
    Creating,
    /// In the pool, with its filesystem.
    Ready,
    /// Its snapshot is removed; the thin device is deleted next.
    Removing,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The snapshot id it belongs to.
    pub snapshot: String,
    pub thin_id: u32,
    pub size: u64,
    /// Filesystem type (`ext4`, `ext2`, `xfs`), inherited from the origin.
    pub fs_type: String,
    /// The device this one is a snapshot of; empty for a fresh one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub origin: String,
    /// Mapped bytes when it was made: what it shares with its origin.
    #[serde(default)]
    pub shared: u64,
    pub state: State,
}

pub struct PoolStore {
    db: Database,
}

impl PoolStore {
    pub fn open(path: &Path) -> Result<Self, SnapshotError> {
        let db = crated_wal::open(path)?;
        let tx = db.begin_write()?;
        tx.open_table(DEVICES)?;
        tx.open_table(IDS)?;
        tx.open_table(META)?;
        tx.commit()?;
        Ok(PoolStore { db })
    }

    /// Records a new device under `name` in state Creating, with a thin id no other record
    /// holds (the next after the last one given, wrapping at 2^24).
    pub fn add(&self, name: &str, mut device: Device) -> Result<Device, SnapshotError> {
        let tx = self.db.begin_write()?;
        {
            let mut devices = tx.open_table(DEVICES)?;
            if devices.get(name)?.is_some() {
                return Err(SnapshotError::AlreadyExists(format!("device {name}")));
            }
            let mut ids = tx.open_table(IDS)?;
            let mut meta = tx.open_table(META)?;
            let last = meta.get(LAST_ID)?.map_or(0, |v| v.value());
            let mut id = last;
            let free = loop {
                id = if id >= MAX_ID { 1 } else { id + 1 };
                if ids.get(id)?.is_none() {
                    break id;
                }
                if id == last {
                    return Err(SnapshotError::FailedPrecondition(
                        "no free thin device id in the pool".into(),
                    ));
                }
            };
            device.thin_id = free;
            device.state = State::Creating;
            meta.insert(LAST_ID, free)?;
            ids.insert(free, name)?;
            devices.insert(name, serde_json::to_vec(&device)?.as_slice())?;
        }
        tx.commit()?;
        Ok(device)
    }

    pub fn get(&self, name: &str) -> Result<Device, SnapshotError> {
        let tx = self.db.begin_read()?;
        let devices = tx.open_table(DEVICES)?;
        match devices.get(name)? {
            Some(v) => Ok(serde_json::from_slice(v.value())?),
            None => Err(SnapshotError::NotFound(format!("device {name}"))),
        }
    }

    /// Changes the record of `name` with `change`.
    pub fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut Device),
    ) -> Result<(), SnapshotError> {
        let tx = self.db.begin_write()?;
        {
            let mut devices = tx.open_table(DEVICES)?;
            let mut device: Device = match devices.get(name)? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => return Err(SnapshotError::NotFound(format!("device {name}"))),
            };
            change(&mut device);
            devices.insert(name, serde_json::to_vec(&device)?.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets `name` and frees its thin id.
    pub fn remove(&self, name: &str) -> Result<(), SnapshotError> {
        let tx = self.db.begin_write()?;
        {
            let mut devices = tx.open_table(DEVICES)?;
            let removed = devices.remove(name)?.map(|v| v.value().to_vec());
            if let Some(bytes) = removed {
                let device: Device = serde_json::from_slice(&bytes)?;
                tx.open_table(IDS)?.remove(device.thin_id)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every device record, by name.
    pub fn all(&self) -> Result<BTreeMap<String, Device>, SnapshotError> {
        let tx = self.db.begin_read()?;
        let devices = tx.open_table(DEVICES)?;
        let mut out = BTreeMap::new();
        for entry in devices.iter()? {
            let (k, v) = entry?;
            out.insert(k.value().to_owned(), serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(snapshot: &str) -> Device {
        Device {
            snapshot: snapshot.into(),
            thin_id: 0,
            size: 1 << 20,
            fs_type: "ext4".into(),
            origin: String::new(),
            shared: 0,
            state: State::Ready,
        }
    }

    #[test]
    fn ids_are_unique_and_freed_ids_come_back_only_after_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = PoolStore::open(&dir.path().join("pool.db")).unwrap();
        let a = store.add("p-snap-1", device("1")).unwrap();
        let b = store.add("p-snap-2", device("2")).unwrap();
        assert_eq!((a.thin_id, b.thin_id), (1, 2));
        assert_eq!(a.state, State::Creating);
        assert!(matches!(
            store.add("p-snap-1", device("1")),
            Err(SnapshotError::AlreadyExists(_))
        ));
        store.remove("p-snap-1").unwrap();
        let c = store.add("p-snap-3", device("3")).unwrap();
        assert_eq!(
            c.thin_id, 3,
            "ids move on rather than reuse a freed one at once"
        );
        store
            .update("p-snap-3", |d| d.state = State::Ready)
            .unwrap();
        drop(store);

        // Reopened: the records and the sequence are still there.
        let store = PoolStore::open(&dir.path().join("pool.db")).unwrap();
        let all = store.all().unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["p-snap-2", "p-snap-3"]);
        assert_eq!(all["p-snap-3"].state, State::Ready);
        assert_eq!(store.add("p-snap-4", device("4")).unwrap().thin_id, 4);
        assert!(matches!(
            store.get("p-snap-1"),
            Err(SnapshotError::NotFound(_))
        ));
    }

    #[test]
    fn ids_wrap_past_the_largest_and_skip_those_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = PoolStore::open(&dir.path().join("pool.db")).unwrap();
        store.add("first", device("1")).unwrap();
        // Jump to the end of the id space.
        let tx = store.db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert(LAST_ID, MAX_ID - 1)
            .unwrap();
        tx.commit().unwrap();
        assert_eq!(store.add("last", device("2")).unwrap().thin_id, MAX_ID);
        // 1 is taken by "first": the next free one is 2.
        assert_eq!(store.add("wrapped", device("3")).unwrap().thin_id, 2);
    }
}
