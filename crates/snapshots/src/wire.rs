//! Snapshot types as containerd's snapshots API carries them, both ways: the gRPC services and
//! the proxy client convert here, once.

use crated_api::containerd::services::snapshots::v1 as api;
use crated_api::containerd::types;

use crate::{Info, Kind, Mount};

pub fn kind_to_api(kind: Kind) -> api::Kind {
    match kind {
        Kind::View => api::Kind::View,
        Kind::Active => api::Kind::Active,
        Kind::Committed => api::Kind::Committed,
    }
}

pub fn kind_from_api(kind: i32) -> Option<Kind> {
    match api::Kind::try_from(kind).ok()? {
        api::Kind::View => Some(Kind::View),
        api::Kind::Active => Some(Kind::Active),
        api::Kind::Committed => Some(Kind::Committed),
        api::Kind::Unknown => None,
    }
}

fn timestamp(nanos: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (nanos / 1_000_000_000) as i64,
        nanos: (nanos % 1_000_000_000) as i32,
    }
}

fn nanos(t: Option<prost_types::Timestamp>) -> u64 {
    t.map_or(0, |t| {
        (t.seconds.max(0) as u64) * 1_000_000_000 + t.nanos.max(0) as u64
    })
}

pub fn info_to_api(i: Info) -> api::Info {
    api::Info {
        name: i.name,
        parent: i.parent,
        kind: kind_to_api(i.kind) as i32,
        created_at: Some(timestamp(i.created)),
        updated_at: Some(timestamp(i.updated)),
        labels: i.labels,
    }
}

/// An info from the wire; a kind this build does not know reads as active.
pub fn info_from_api(i: api::Info) -> Info {
    Info {
        name: i.name,
        parent: i.parent,
        kind: kind_from_api(i.kind).unwrap_or(Kind::Active),
        labels: i.labels,
        created: nanos(i.created_at),
        updated: nanos(i.updated_at),
    }
}

pub fn mounts_to_api(mounts: Vec<Mount>) -> Vec<types::Mount> {
    mounts
        .into_iter()
        .map(|m| types::Mount {
            r#type: m.r#type,
            source: m.source,
            target: m.target,
            options: m.options,
        })
        .collect()
}

pub fn mounts_from_api(mounts: Vec<types::Mount>) -> Vec<Mount> {
    mounts
        .into_iter()
        .map(|m| Mount {
            r#type: m.r#type,
            source: m.source,
            target: m.target,
            options: m.options,
        })
        .collect()
}
