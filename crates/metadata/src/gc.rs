//! Mark and sweep over the metadata store, containerd's rules:
//! - roots: images (their target), containers (their snapshot), leases that have not expired
//!   (what they hold; with `containerd.io/gc.flat` only that, not what it references), records
//!   labelled `containerd.io/gc.root`, ingests that have not expired;
//! - edges: `containerd.io/gc.ref.content*` labels name blobs, `containerd.io/gc.ref.snapshot.<sn>`
//!   labels name snapshots of snapshotter `<sn>`, and a snapshot holds its parent;
//! - sweep: every content, snapshot and ingest record not reached, and every expired lease.
//!
//! The sweep is one write transaction. What the backends must then delete (blobs no namespace
//! records any more, aborted ingests, removed snapshots) is returned for the caller to do,
//! holding [`MetadataStore::gc_lock`] exclusively from before this call, and then each
//! backend's lock until that backend is swept ([`MetadataStore::writing_to`]).
//!
//! Images, containers and snapshots take part through these JSON fields of their records:
//! image `target.digest` and `labels`; container `snapshotter`, `snapshot_key` and `labels`;
//! snapshot (keyed `<ns>/<snapshotter>/<key>`) `parent` and `labels`.

use std::collections::{BTreeMap, HashMap, HashSet};

use redb::ReadableTable;
use serde_json::Value;

use crate::db::{MetadataStore, Table, LEASE_RESOURCES};
use crate::{IngestRecord, Lease, MetadataError};

pub const LABEL_ROOT: &str = "containerd.io/gc.root";
pub const LABEL_EXPIRE: &str = "containerd.io/gc.expire";
pub const LABEL_FLAT: &str = "containerd.io/gc.flat";
const LABEL_REF_CONTENT: &str = "containerd.io/gc.ref.content";
const LABEL_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";

/// A record GC can keep or remove.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Content {
        ns: String,
        digest: String,
    },
    Snapshot {
        ns: String,
        snapshotter: String,
        key: String,
    },
    Ingest {
        ns: String,
        reference: String,
        backend_ref: String,
    },
    Lease {
        ns: String,
        id: String,
    },
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Content { ns, digest } => write!(f, "content {ns}/{digest}"),
            Resource::Snapshot {
                ns,
                snapshotter,
                key,
            } => write!(f, "snapshot {ns}/{snapshotter}/{key}"),
            Resource::Ingest { ns, reference, .. } => write!(f, "ingest {ns}/{reference}"),
            Resource::Lease { ns, id } => write!(f, "lease {ns}/{id}"),
        }
    }
}

/// What one mark and sweep removed, and what the backends must keep.
#[derive(Debug, Default)]
pub struct Collection {
    pub removed: Vec<Resource>,
    /// Digests some namespace still records: every other blob in the backend is garbage.
    pub live_blobs: HashSet<String>,
    /// Backend refs of the ingests still recorded: every other backend ingest is garbage.
    pub live_ingests: HashSet<String>,
    /// Per snapshotter, the backend keys of the snapshots still recorded: every other
    /// snapshot in that backend is garbage.
    pub live_snapshots: HashMap<String, HashSet<String>>,
    /// The earliest future expiry of a lease or ingest (ns since the epoch): collect again then.
    pub next_expiry: Option<u64>,
}

/// `containerd.io/gc.expire` holds an RFC 3339 time; the nanoseconds since the epoch it names.
pub fn parse_expire(value: &str) -> Option<u64> {
    let t =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos()).ok()
}

/// The RFC 3339 form of `nanos` since the epoch, for `containerd.io/gc.expire`.
pub fn format_expire(nanos: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A node of the reference graph: a content or snapshot, followed through its references
/// unless flat (held by a flat lease, which keeps only the resource itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Node {
    Content(String, String),
    Snapshot(String, String, String),
}

fn label_refs(ns: &str, labels: &BTreeMap<String, String>, out: &mut Vec<Node>) {
    for (k, v) in labels {
        if k.starts_with(LABEL_REF_CONTENT) {
            out.push(Node::Content(ns.to_owned(), v.clone()));
        } else if let Some(rest) = k.strip_prefix(LABEL_REF_SNAPSHOT) {
            // `gc.ref.snapshot.<snapshotter>/<anything>` names several snapshots of one.
            let snapshotter = rest.split('/').next().unwrap_or(rest);
            out.push(Node::Snapshot(
                ns.to_owned(),
                snapshotter.to_owned(),
                v.clone(),
            ));
        }
    }
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn str_field<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, p| v.get(p))?
        .as_str()
        .filter(|s| !s.is_empty())
}

/// Every `(key, value)` of a table, decoded as JSON.
fn all_records(
    tx: &redb::WriteTransaction,
    table: Table,
) -> Result<Vec<(String, Value)>, MetadataError> {
    let t = tx.open_table(table.def())?;
    let mut out = Vec::new();
    for entry in t.iter()? {
        let (k, v) = entry?;
        out.push((k.value().to_owned(), serde_json::from_slice(v.value())?));
    }
    Ok(out)
}

fn earliest(slot: &mut Option<u64>, at: u64) {
    *slot = Some(slot.map_or(at, |n| n.min(at)));
}

fn split_ns(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

impl MetadataStore {
    /// One mark and sweep at time `now` (ns since the epoch). See the module documentation.
    pub fn collect_garbage(&self, now: u64) -> Result<Collection, MetadataError> {
        let tx = self.write()?;
        let mut out = Collection::default();
        let mut next_expiry = |at: u64| earliest(&mut out.next_expiry, at);
        let mut roots: Vec<(Node, bool)> = Vec::new();
        let mut live_leases_ingests: HashSet<(String, String)> = HashSet::new();
        let mut expired_leases = Vec::new();

        for (key, v) in all_records(&tx, Table::Leases)? {
            let lease: Lease = serde_json::from_value(v)?;
            let (ns, _) = split_ns(&key);
            if let Some(at) = lease.labels.get(LABEL_EXPIRE).and_then(|v| parse_expire(v)) {
                if at <= now {
                    expired_leases.push((ns.to_owned(), lease.id));
                    continue;
                }
                next_expiry(at);
            }
            let flat = lease.labels.contains_key(LABEL_FLAT);
            for r in self.lease_resources_in(&tx, ns, &lease.id)? {
                let node = match r.resource_type.as_str() {
                    "content" => Node::Content(ns.to_owned(), r.id),
                    "ingests" => {
                        live_leases_ingests.insert((ns.to_owned(), r.id));
                        continue;
                    }
                    t => match t.strip_prefix("snapshots/") {
                        Some(sn) => Node::Snapshot(ns.to_owned(), sn.to_owned(), r.id),
                        None => continue,
                    },
                };
                roots.push((node, flat));
            }
        }

        let mut refs = Vec::new();
        for (key, v) in all_records(&tx, Table::Images)? {
            let (ns, _) = split_ns(&key);
            if let Some(d) = str_field(&v, &["target", "digest"]) {
                refs.push(Node::Content(ns.to_owned(), d.to_owned()));
            }
            label_refs(ns, &labels_of(&v), &mut refs);
        }
        for (key, v) in all_records(&tx, Table::Containers)? {
            let (ns, _) = split_ns(&key);
            if let (Some(sn), Some(k)) = (
                str_field(&v, &["snapshotter"]),
                str_field(&v, &["snapshot_key"]),
            ) {
                refs.push(Node::Snapshot(ns.to_owned(), sn.to_owned(), k.to_owned()));
            }
            label_refs(ns, &labels_of(&v), &mut refs);
        }

        // What each content and snapshot references, and the roots among them.
        let mut edges: HashMap<Node, Vec<Node>> = HashMap::new();
        let mut contents = Vec::new();
        for (key, v) in all_records(&tx, Table::Blobs)? {
            let (ns, digest) = split_ns(&key);
            let node = Node::Content(ns.to_owned(), digest.to_owned());
            let labels = labels_of(&v);
            if labels.contains_key(LABEL_ROOT) {
                refs.push(node.clone());
            }
            let mut to = Vec::new();
            label_refs(ns, &labels, &mut to);
            edges.insert(node.clone(), to);
            contents.push((key, node));
        }
        let mut snapshots = Vec::new();
        for (key, v) in all_records(&tx, Table::Snapshots)? {
            let mut parts = key.splitn(3, '/');
            let (Some(ns), Some(sn), Some(k)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let node = Node::Snapshot(ns.to_owned(), sn.to_owned(), k.to_owned());
            let labels = labels_of(&v);
            if labels.contains_key(LABEL_ROOT) {
                refs.push(node.clone());
            }
            let mut to = Vec::new();
            if let Some(parent) = str_field(&v, &["parent"]) {
                to.push(Node::Snapshot(
                    ns.to_owned(),
                    sn.to_owned(),
                    parent.to_owned(),
                ));
            }
            label_refs(ns, &labels, &mut to);
            edges.insert(node.clone(), to);
            let backend_name = str_field(&v, &["name"]).unwrap_or_default().to_owned();
            snapshots.push((key, node, backend_name));
        }
        roots.extend(refs.into_iter().map(|n| (n, false)));

        // Mark: a flat root is kept but not followed.
        let mut reached: HashSet<Node> = HashSet::new();
        let mut followed: HashSet<Node> = HashSet::new();
        let mut stack = roots;
        while let Some((node, flat)) = stack.pop() {
            reached.insert(node.clone());
            if flat || !followed.insert(node.clone()) {
                continue;
            }
            if let Some(to) = edges.get(&node) {
                stack.extend(to.iter().cloned().map(|n| (n, false)));
            }
        }

        // Sweep.
        {
            let mut blobs = tx.open_table(Table::Blobs.def())?;
            for (key, node) in contents {
                if reached.contains(&node) {
                    if let Node::Content(_, digest) = node {
                        out.live_blobs.insert(digest);
                    }
                    continue;
                }
                blobs.remove(key.as_str())?;
                if let Node::Content(ns, digest) = node {
                    out.removed.push(Resource::Content { ns, digest });
                }
            }
            let mut snaps = tx.open_table(Table::Snapshots.def())?;
            for (key, node, backend_name) in snapshots {
                if reached.contains(&node) {
                    if let Node::Snapshot(_, snapshotter, _) = node {
                        out.live_snapshots
                            .entry(snapshotter)
                            .or_default()
                            .insert(backend_name);
                    }
                    continue;
                }
                snaps.remove(key.as_str())?;
                if let Node::Snapshot(ns, snapshotter, key) = node {
                    out.removed.push(Resource::Snapshot {
                        ns,
                        snapshotter,
                        key,
                    });
                }
            }
        }
        for (key, v) in all_records(&tx, Table::Ingests)? {
            let record: IngestRecord = serde_json::from_value(v)?;
            let (ns, _) = split_ns(&key);
            let held = live_leases_ingests.contains(&(ns.to_owned(), record.reference.clone()));
            let expired = !held && record.expires_at.is_none_or(|at| at <= now);
            if !expired {
                if let Some(at) = record.expires_at.filter(|_| !held) {
                    next_expiry(at);
                }
                out.live_ingests.insert(record.backend_ref);
                continue;
            }
            tx.open_table(Table::Ingests.def())?.remove(key.as_str())?;
            out.removed.push(Resource::Ingest {
                ns: ns.to_owned(),
                reference: record.reference,
                backend_ref: record.backend_ref,
            });
        }
        for (ns, id) in expired_leases {
            self.lease_delete_in(&tx, &ns, &id)?;
            out.removed.push(Resource::Lease { ns, id });
        }
        tx.commit()?;
        Ok(out)
    }

    fn lease_resources_in(
        &self,
        tx: &redb::WriteTransaction,
        ns: &str,
        lease: &str,
    ) -> Result<Vec<crate::LeaseResource>, MetadataError> {
        let t = tx.open_table(LEASE_RESOURCES)?;
        crate::leases::resources_under(&t, ns, lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ContentRecord;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn blob(s: &MetadataStore, ns: &str, c: char, labels: &[(&str, String)], lease: Option<&str>) {
        let record = ContentRecord {
            digest: digest(c),
            size: 1,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..Default::default()
        };
        s.content_add(ns, &record, lease, None).unwrap();
    }

    fn lease(s: &MetadataStore, ns: &str, id: &str, labels: &[(&str, &str)]) {
        let lease = Lease {
            id: id.into(),
            created_at: 0,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        s.lease_create(ns, &lease).unwrap();
    }

    fn has(s: &MetadataStore, ns: &str, c: char) -> bool {
        s.content_get(ns, &digest(c)).is_ok()
    }

    fn store() -> (tempfile::TempDir, MetadataStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = MetadataStore::open(&dir.path().join("m.db")).unwrap();
        (dir, s)
    }

    /// A collection waiting for, or holding, the write transaction makes commits not short;
    /// once it ends they are again.
    #[test]
    fn commits_are_not_short_during_a_collection() {
        let dir = tempfile::tempdir().unwrap();
        let journal = crated_wal::Journal::open(&dir.path().join("stores.wal")).unwrap();
        let s = MetadataStore::open_in(&dir.path().join("meta.db"), Some(&journal)).unwrap();
        assert!(s.commits_are_short());
        let held = s.db.begin_write().unwrap();
        std::thread::scope(|scope| {
            let collection = scope.spawn(|| s.collect_garbage(0));
            let waited = std::time::Instant::now();
            while s.commits_are_short() {
                assert!(
                    waited.elapsed().as_secs() < 10,
                    "the collection never started"
                );
                std::thread::yield_now();
            }
            drop(held);
            collection.join().unwrap().unwrap();
        });
        assert!(s.commits_are_short());
    }

    /// Any write counts as open until it ends, however it ends: a panic included.
    #[test]
    fn commits_are_not_short_while_a_write_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let journal = crated_wal::Journal::open(&dir.path().join("stores.wal")).unwrap();
        let s = MetadataStore::open_in(&dir.path().join("meta.db"), Some(&journal)).unwrap();
        let tx = s.write().unwrap();
        assert!(!s.commits_are_short());
        tx.commit().unwrap();
        assert!(s.commits_are_short());
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _tx = s.write().unwrap();
            panic!("a write panics");
        }));
        assert!(unwound.is_err());
        assert!(s.commits_are_short());
    }

    #[test]
    fn references_from_roots_keep_blobs_and_the_rest_goes() {
        let (_d, s) = store();
        // root -> a -> b; c referenced by nothing; d held by a lease.
        blob(&s, "ns", 'b', &[], None);
        blob(
            &s,
            "ns",
            'a',
            &[("containerd.io/gc.ref.content.l.0", digest('b'))],
            None,
        );
        blob(
            &s,
            "ns",
            'e',
            &[
                (LABEL_ROOT, "x".into()),
                ("containerd.io/gc.ref.content.m", digest('a')),
            ],
            None,
        );
        blob(&s, "ns", 'c', &[], None);
        lease(&s, "ns", "l", &[]);
        blob(&s, "ns", 'd', &[], Some("l"));
        // The same digest in another namespace is a different record.
        blob(&s, "other", 'b', &[], None);

        let c = s.collect_garbage(crate::now_nanos()).unwrap();
        assert!(has(&s, "ns", 'a') && has(&s, "ns", 'b') && has(&s, "ns", 'e'));
        assert!(has(&s, "ns", 'd'));
        assert!(!has(&s, "ns", 'c') && !has(&s, "other", 'b'));
        let mut removed = c.removed.clone();
        removed.sort();
        assert_eq!(
            removed,
            [
                Resource::Content {
                    ns: "ns".into(),
                    digest: digest('c')
                },
                Resource::Content {
                    ns: "other".into(),
                    digest: digest('b')
                }
            ]
        );
        // b is still recorded in "ns", so its data must stay.
        assert!(c.live_blobs.contains(&digest('b')));
        assert!(!c.live_blobs.contains(&digest('c')));

        s.lease_delete("ns", "l").unwrap();
        s.collect_garbage(crate::now_nanos()).unwrap();
        assert!(!has(&s, "ns", 'd'));
    }

    #[test]
    fn flat_leases_keep_only_what_they_hold() {
        let (_d, s) = store();
        lease(&s, "ns", "flat", &[(LABEL_FLAT, "1")]);
        lease(&s, "ns", "deep", &[]);
        blob(&s, "ns", 'b', &[], None);
        blob(
            &s,
            "ns",
            'a',
            &[("containerd.io/gc.ref.content", digest('b'))],
            Some("flat"),
        );
        blob(&s, "ns", 'd', &[], None);
        blob(
            &s,
            "ns",
            'c',
            &[("containerd.io/gc.ref.content", digest('d'))],
            Some("deep"),
        );
        s.collect_garbage(crate::now_nanos()).unwrap();
        assert!(has(&s, "ns", 'a') && !has(&s, "ns", 'b'));
        assert!(has(&s, "ns", 'c') && has(&s, "ns", 'd'));
    }

    #[test]
    fn expired_leases_go_with_what_they_held_and_future_ones_set_the_next_wake() {
        let (_d, s) = store();
        lease(&s, "ns", "old", &[(LABEL_EXPIRE, "2001-01-01T00:00:00Z")]);
        lease(
            &s,
            "ns",
            "new",
            &[(LABEL_EXPIRE, "2400-01-01T01:00:00+01:00")],
        );
        blob(&s, "ns", 'a', &[], Some("old"));
        blob(&s, "ns", 'b', &[], Some("new"));
        let c = s.collect_garbage(crate::now_nanos()).unwrap();
        assert!(!has(&s, "ns", 'a') && has(&s, "ns", 'b'));
        assert!(c.removed.contains(&Resource::Lease {
            ns: "ns".into(),
            id: "old".into()
        }));
        assert_eq!(s.lease_list("ns").unwrap().len(), 1);
        assert_eq!(c.next_expiry, parse_expire("2400-01-01T00:00:00Z"));
    }

    #[test]
    fn ingests_live_until_they_expire_or_lose_their_lease() {
        let (_d, s) = store();
        let now = crate::now_nanos();
        s.ingest_open("ns", "stale", None, Some(now - 1)).unwrap();
        s.ingest_open("ns", "fresh", None, Some(now + 5_000_000_000))
            .unwrap();
        lease(&s, "ns", "l", &[]);
        s.ingest_open("ns", "held", Some("l"), None).unwrap();
        let c = s.collect_garbage(now).unwrap();
        assert_eq!(
            c.removed,
            [Resource::Ingest {
                ns: "ns".into(),
                reference: "stale".into(),
                backend_ref: "ns/stale".into()
            }]
        );
        assert_eq!(
            c.live_ingests,
            HashSet::from(["ns/fresh".to_string(), "ns/held".to_string()])
        );
        assert_eq!(c.next_expiry, Some(now + 5_000_000_000));

        s.lease_delete("ns", "l").unwrap();
        let c = s.collect_garbage(now).unwrap();
        assert!(
            matches!(&c.removed[..], [Resource::Ingest { reference, .. }] if reference == "held")
        );
        // A commit ends the ingest's record with it.
        let record = ContentRecord {
            digest: digest('f'),
            size: 1,
            ..Default::default()
        };
        s.content_add("ns", &record, None, Some("fresh")).unwrap();
        assert!(s.ingest_list("ns").unwrap().is_empty());
    }

    #[test]
    fn images_and_containers_are_roots() {
        let (_d, s) = store();
        blob(&s, "ns", 'a', &[], None);
        blob(&s, "ns", 'b', &[], None);
        let tx = s.db.begin_write().unwrap();
        {
            let mut images = tx.open_table(Table::Images.def()).unwrap();
            let image = serde_json::json!({"name": "x", "target": {"digest": digest('a')}});
            images
                .insert("ns/x", serde_json::to_vec(&image).unwrap().as_slice())
                .unwrap();
            let mut snaps = tx.open_table(Table::Snapshots.def()).unwrap();
            for (key, parent) in [
                ("ns/native/top", "mid"),
                ("ns/native/mid", ""),
                ("ns/native/lone", ""),
            ] {
                let v = serde_json::json!({"parent": parent});
                snaps
                    .insert(key, serde_json::to_vec(&v).unwrap().as_slice())
                    .unwrap();
            }
            let mut containers = tx.open_table(Table::Containers.def()).unwrap();
            let c = serde_json::json!({"snapshotter": "native", "snapshot_key": "top"});
            containers
                .insert("ns/c1", serde_json::to_vec(&c).unwrap().as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
        let c = s.collect_garbage(crate::now_nanos()).unwrap();
        assert!(has(&s, "ns", 'a') && !has(&s, "ns", 'b'));
        let snapshots: Vec<_> = c
            .removed
            .iter()
            .filter(|r| matches!(r, Resource::Snapshot { .. }))
            .collect();
        assert_eq!(
            snapshots,
            [&Resource::Snapshot {
                ns: "ns".into(),
                snapshotter: "native".into(),
                key: "lone".into()
            }]
        );
    }

    #[test]
    fn mutations_are_reported_with_deletions_and_expiries() {
        let (_d, s) = store();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        s.on_mutation(move |m| sink.lock().unwrap().push(m));
        lease(&s, "ns", "l", &[(LABEL_EXPIRE, "2400-01-01T00:00:00Z")]);
        s.lease_delete("ns", "l").unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].expires_at, parse_expire("2400-01-01T00:00:00Z"));
        assert!(!seen[0].dirty);
        assert!(seen[1].dirty);
    }
}
