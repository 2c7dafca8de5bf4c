//! `cratectl gc` and `cratectl content prune`: a collection now, by deleting a fresh lease
//! synchronously (containerd's way to wait for one); crated answers with what it removed.

use crated_api::containerd::services::leases::v1::{CreateRequest, DeleteRequest};
use crated_gc::{Stats, STATS_HEADER};

use crate::client::Connection;

pub enum Show {
    Everything,
    /// Only the blobs of this namespace (`content prune`).
    ContentOf(String),
}

pub async fn run(conn: &Connection, show: Show) -> anyhow::Result<()> {
    let mut leases = conn.leases();
    let id = format!(
        "cratectl-gc-{}-{}",
        std::process::id(),
        crate::leases::now_nanos()
    );
    leases
        .create(conn.request(CreateRequest {
            id: id.clone(),
            labels: Default::default(),
        }))
        .await?;
    let response = leases
        .delete(conn.request(DeleteRequest { id, sync: true }))
        .await?;
    let Some(raw) = response.metadata().get_bin(STATS_HEADER) else {
        println!("collected (the daemon reports no statistics: not crated?)");
        return Ok(());
    };
    let stats: Stats = serde_json::from_slice(&raw.to_bytes()?)?;
    match show {
        Show::Everything => {
            for r in &stats.removed {
                println!("removed {r}");
            }
            for f in &stats.failed {
                println!("failed {f}");
            }
            println!(
                "{} removed, {} failed; all writers held for {:?}, pause (mark and sweep) {:?}, collection took {:?}",
                stats.removed.len(),
                stats.failed.len(),
                stats.lock_held,
                stats.pause,
                stats.elapsed
            );
        }
        Show::ContentOf(ns) => {
            let prefix = format!("content {ns}/");
            for r in &stats.removed {
                if let Some(digest) = r.strip_prefix(&prefix) {
                    println!("{digest}");
                }
            }
        }
    }
    Ok(())
}

/// The `containerd.io/gc.expire` label for something that expires after `after` (Go's
/// duration form; `0` for never, which gives no label), as ctr writes it: an RFC 3339 time.
pub fn expire_label(after: &str) -> anyhow::Result<Option<(String, String)>> {
    let after =
        crated_config::duration::parse(after).map_err(|e| anyhow::anyhow!("--expires: {e}"))?;
    if after.is_zero() {
        return Ok(None);
    }
    let at = time::OffsetDateTime::now_utc() + after;
    let text = at
        .replace_nanosecond(0)?
        .format(&time::format_description::well_known::Rfc3339)?;
    Ok(Some(("containerd.io/gc.expire".into(), text)))
}
