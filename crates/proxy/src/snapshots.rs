//! A snapshotter reached over containerd's snapshots API: what `[proxy_plugins.x] type =
//! "snapshot"` configures. The metadata layer wraps it like a built-in one. Calls name the
//! proxy plugin as the snapshotter, as containerd's proxy client does.

use std::collections::HashMap;

use crated_api::containerd::services::snapshots::v1 as api;
use crated_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use crated_errdefs::Kind;
use crated_snapshots::wire::{info_from_api, info_to_api, mounts_from_api};
use crated_snapshots::{Info, Mount, SnapshotError, Snapshotter, Usage};
use tonic::transport::Channel;

use crate::connection::Connection;

pub struct ProxySnapshotter {
    connection: Connection,
    name: String,
    /// The plugin's config lists the `rebase` capability: commits may carry a parent.
    rebase: bool,
}

impl ProxySnapshotter {
    pub fn new(name: &str, connection: Connection, rebase: bool) -> Self {
        ProxySnapshotter {
            connection,
            name: name.to_owned(),
            rebase,
        }
    }

    async fn commit_with_parent(
        &self,
        name: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let req = api::CommitSnapshotRequest {
            snapshotter: self.name.clone(),
            name: name.to_owned(),
            key: key.to_owned(),
            labels,
            parent: parent.to_owned(),
        };
        self.call("commit", self.client().commit(req)).await
    }

    fn client(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.connection.channel())
    }

    async fn call<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, SnapshotError> {
        self.connection
            .call(what, call)
            .await
            .map(tonic::Response::into_inner)
            .map_err(error)
    }
}

/// An error of the remote snapshotter as ours: its class and its text as it sent them.
fn error((kind, message): (Kind, String)) -> SnapshotError {
    SnapshotError::Other { kind, message }
}

#[async_trait::async_trait]
impl Snapshotter for ProxySnapshotter {
    async fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        let req = api::StatSnapshotRequest {
            snapshotter: self.name.clone(),
            key: key.to_owned(),
        };
        let r = self.call("stat", self.client().stat(req)).await?;
        r.info
            .map(info_from_api)
            .ok_or_else(|| SnapshotError::NotFound(format!("snapshot {key}")))
    }

    async fn update(&self, info: Info, field_paths: &[String]) -> Result<Info, SnapshotError> {
        let name = info.name.clone();
        let req = api::UpdateSnapshotRequest {
            snapshotter: self.name.clone(),
            info: Some(info_to_api(info)),
            update_mask: Some(prost_types::FieldMask {
                paths: field_paths.to_vec(),
            }),
        };
        let r = self.call("update", self.client().update(req)).await?;
        r.info
            .map(info_from_api)
            .ok_or_else(|| SnapshotError::NotFound(format!("snapshot {name}")))
    }

    async fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let req = api::UsageRequest {
            snapshotter: self.name.clone(),
            key: key.to_owned(),
        };
        let r = self.call("usage", self.client().usage(req)).await?;
        Ok(Usage {
            size: r.size,
            inodes: r.inodes,
        })
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let req = api::MountsRequest {
            snapshotter: self.name.clone(),
            key: key.to_owned(),
        };
        let r = self.call("mounts", self.client().mounts(req)).await?;
        Ok(mounts_from_api(r.mounts))
    }

    async fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let req = api::PrepareSnapshotRequest {
            snapshotter: self.name.clone(),
            key: key.to_owned(),
            parent: parent.to_owned(),
            labels,
        };
        let r = self.call("prepare", self.client().prepare(req)).await?;
        Ok(mounts_from_api(r.mounts))
    }

    async fn view(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let req = api::ViewSnapshotRequest {
            snapshotter: self.name.clone(),
            key: key.to_owned(),
            parent: parent.to_owned(),
            labels,
        };
        let r = self.call("view", self.client().view(req)).await?;
        Ok(mounts_from_api(r.mounts))
    }

    async fn commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError> {
        self.commit_with_parent(name, key, "", labels).await
    }

    fn can_rebase(&self) -> bool {
        self.rebase
    }

    async fn commit_onto(
        &self,
        name: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotError> {
        if !self.rebase {
            return Err(crated_snapshots::rebase_unsupported(key, parent));
        }
        self.commit_with_parent(name, key, parent, labels).await
    }

    async fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let req = api::RemoveSnapshotRequest {
            snapshotter: self.name.clone(),
            key: key.to_owned(),
        };
        self.call("remove", self.client().remove(req)).await
    }

    async fn walk(&self, filters: &[String]) -> Result<Vec<Info>, SnapshotError> {
        let req = api::ListSnapshotsRequest {
            snapshotter: self.name.clone(),
            filters: filters.to_vec(),
        };
        let mut stream = self.call("list", self.client().list(req)).await?;
        let mut infos = Vec::new();
        while let Some(batch) = self
            .connection
            .call("list", stream.message())
            .await
            .map_err(error)?
        {
            infos.extend(batch.info.into_iter().map(info_from_api));
        }
        Ok(infos)
    }

    async fn cleanup(&self) -> Result<(), SnapshotError> {
        let req = api::CleanupRequest {
            snapshotter: self.name.clone(),
        };
        self.call("cleanup", self.client().cleanup(req)).await
    }

    async fn close(&self) -> Result<(), SnapshotError> {
        Ok(())
    }
}
