//! Resolving a reference: the root document, then the manifests the request's platforms want,
//! through indexes nested a few levels deep at most.

use crated_images::manifest::{self, Document};
use crated_images::{Descriptor, Platform, Reference, Registry, RegistryOptions};

use crate::error::{Result, TransferError};
use crate::progress::object_name;

/// How deep indexes may nest in an image (an index whose entries are indexes...).
const MAX_INDEX_DEPTH: usize = 4;

/// A manifest or index fetched: its descriptor, bytes, parsed document, and the progress names
/// of its parents.
pub(crate) struct Fetched {
    pub desc: Descriptor,
    pub raw: Vec<u8>,
    pub doc: Document,
    pub parents: Vec<String>,
}

/// The registry of `reference`, and its root descriptor and document bytes.
pub(crate) async fn resolve(
    reference: &Reference,
    options: RegistryOptions,
) -> Result<(Registry, Descriptor, Vec<u8>)> {
    let registry = Registry::new(reference, options)?;
    let (root, body) = registry.resolve().await?;
    Ok((registry, root, body))
}

/// The root document, parsed; a root without a media type gets its document's.
pub(crate) fn root(desc: Descriptor, raw: Vec<u8>) -> Result<Fetched> {
    let doc = Document::parse(&desc.media_type, &raw)?;
    let desc = Descriptor {
        media_type: match (&doc, desc.media_type.is_empty()) {
            (Document::Index(_), true) => manifest::OCI_INDEX.into(),
            (Document::Manifest(_), true) => manifest::OCI_MANIFEST.into(),
            _ => desc.media_type,
        },
        ..desc
    };
    Ok(Fetched {
        desc,
        raw,
        doc,
        parents: Vec::new(),
    })
}

/// Walks an index tree from `node`: the manifests `platforms` want go into `manifests`, the
/// indexes on the way into `indexes` (outermost first).
pub(crate) async fn walk_indexes(
    registry: &Registry,
    platforms: &[Platform],
    node: Fetched,
    depth: usize,
    manifests: &mut Vec<Fetched>,
    indexes: &mut Vec<Fetched>,
) -> Result<()> {
    let Document::Index(index) = &node.doc else {
        manifests.push(node);
        return Ok(());
    };
    if depth >= MAX_INDEX_DEPTH {
        return Err(TransferError::InvalidArgument(format!(
            "index {} is nested more than {MAX_INDEX_DEPTH} deep",
            node.desc.digest
        )));
    }
    let parents = vec![object_name("index", &node.desc)];
    let mut children = Vec::new();
    for desc in manifest::select(index, platforms) {
        let raw = registry.fetch_manifest(desc).await?;
        let doc = Document::parse(&desc.media_type, &raw)?;
        children.push(Fetched {
            desc: desc.clone(),
            raw,
            doc,
            parents: parents.clone(),
        });
    }
    indexes.push(node);
    for child in children {
        Box::pin(walk_indexes(
            registry,
            platforms,
            child,
            depth + 1,
            manifests,
            indexes,
        ))
        .await?;
    }
    Ok(())
}
