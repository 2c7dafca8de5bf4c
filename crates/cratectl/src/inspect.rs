//! `cratectl images check|usage`: what of an image the daemon holds. `check` walks each
//! image's tree for this host (index, manifest, config, layers) and says how many of its blobs
//! are in the content store and whether it is unpacked, in ctr's columns; `usage` gives the
//! disk usage of each layer's snapshot.

use std::io::Write;

use crated_api::containerd::services::content::v1::InfoRequest;
use crated_api::containerd::services::images::v1 as images;
use crated_api::containerd::services::snapshots::v1 as snapshots;
use tabwriter::TabWriter;

use crate::client::Connection;
use crate::snapshots::human;

/// The descriptors (digest, size) of the image's tree for this host (index, manifest,
/// config, layers), as far as the documents present allow; and the diff IDs of its config
/// when reached.
async fn tree(
    conn: &Connection,
    target: &crated_api::containerd::types::Descriptor,
) -> (Vec<(String, i64)>, Vec<String>) {
    let (mut blobs, manifest) = crate::images::host_manifest(conn, target).await;
    let Ok(doc) = manifest else {
        return (blobs, Vec::new());
    };
    let config = doc["config"]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    blobs.push((
        config.clone(),
        doc["config"]["size"].as_i64().unwrap_or_default(),
    ));
    for l in doc["layers"].as_array().into_iter().flatten() {
        let d = l["digest"].as_str().unwrap_or_default().to_owned();
        blobs.push((d, l["size"].as_i64().unwrap_or_default()));
    }
    let diff_ids = match crate::images::read_json(conn, &config).await {
        Ok(c) => c["rootfs"]["diff_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(str::to_owned))
            .collect(),
        Err(_) => Vec::new(),
    };
    (blobs, diff_ids)
}

async fn list(conn: &Connection, filters: Vec<String>) -> anyhow::Result<Vec<images::Image>> {
    Ok(conn
        .images()
        .list(conn.request(images::ListImagesRequest { filters }))
        .await?
        .into_inner()
        .images)
}

async fn snapshot_exists(conn: &Connection, snapshotter: &str, key: &str) -> bool {
    conn.snapshots()
        .stat(conn.request(snapshots::StatSnapshotRequest {
            snapshotter: snapshotter.to_owned(),
            key: key.to_owned(),
        }))
        .await
        .is_ok()
}

pub async fn check(
    conn: &Connection,
    snapshotter: &str,
    quiet: bool,
    filters: Vec<String>,
) -> anyhow::Result<()> {
    let mut w = TabWriter::new(std::io::stdout()).padding(1);
    if !quiet {
        writeln!(w, "REF\tTYPE\tDIGEST\tSTATUS\tSIZE\tUNPACKED")?;
    }
    for image in list(conn, filters).await? {
        let target = image.target.unwrap_or_default();
        let (blobs, diff_ids) = tree(conn, &target).await;
        let (mut present, mut have, mut total) = (0, 0i64, 0i64);
        for (digest, size) in &blobs {
            total = total.saturating_add(*size);
            let info = conn
                .content()
                .info(conn.request(InfoRequest {
                    digest: digest.clone(),
                }))
                .await;
            if info.is_ok() {
                present += 1;
                have = have.saturating_add(*size);
            }
        }
        // Complete: every blob of the tree, down to the layers, is there.
        let complete = present == blobs.len() && !diff_ids.is_empty();
        let status = if complete { "complete" } else { "incomplete" };
        let unpacked = match crated_images::chain_ids(&diff_ids).pop() {
            Some(top) => snapshot_exists(conn, snapshotter, &top).await,
            None => false,
        };
        if quiet {
            if complete {
                writeln!(w, "{}", image.name)?;
            }
            continue;
        }
        writeln!(
            w,
            "{}\t{}\t{}\t{status} ({present}/{})\t{}/{}\t{unpacked}",
            image.name,
            target.media_type,
            target.digest,
            blobs.len(),
            human(have),
            human(total),
        )?;
    }
    w.flush()?;
    Ok(())
}

pub async fn usage(conn: &Connection, snapshotter: &str, reference: &str) -> anyhow::Result<()> {
    let image = crate::images::get(conn, reference).await?;
    let (_, diff_ids) = tree(conn, &image.target.unwrap_or_default()).await;
    let mut w = TabWriter::new(std::io::stdout()).padding(1);
    writeln!(w, "LAYER\tSNAPSHOT\tSIZE\tINODES")?;
    let (mut size, mut inodes) = (0i64, 0i64);
    for (diff_id, chain) in diff_ids.iter().zip(crated_images::chain_ids(&diff_ids)) {
        let usage = conn
            .snapshots()
            .usage(conn.request(snapshots::UsageRequest {
                snapshotter: snapshotter.to_owned(),
                key: chain.clone(),
            }))
            .await;
        match usage {
            Ok(u) => {
                let u = u.into_inner();
                size = size.saturating_add(u.size);
                inodes = inodes.saturating_add(u.inodes);
                writeln!(w, "{diff_id}\t{chain}\t{}\t{}", human(u.size), u.inodes)?;
            }
            Err(_) => writeln!(w, "{diff_id}\t{chain}\tnot unpacked\t-")?,
        }
    }
    writeln!(w, "total\t\t{}\t{inodes}", human(size))?;
    w.flush()?;
    Ok(())
}
