//! containerd 2's `rebase`: layers prepared without a parent, each filled on its own, then
//! committed onto their parent with the `parent` of `CommitSnapshotRequest`, as containerd 2's
//! unpacker does when it unpacks side by side. Driven over the snapshots API in namespace
//! `default` under a lease (as clients work, so the collector keeps active snapshots), since
//! Debian's `ctr` (1.6) cannot send that field. Mounting needs root.

use std::path::Path;
use std::process::Command;

use crated_api::containerd::services::introspection::v1 as introspection;
use crated_api::containerd::services::leases::v1 as leases;
use crated_api::containerd::services::snapshots::v1 as api;
use crated_api::containerd::types::Mount;
use tonic::Code;

type Client = api::snapshots_client::SnapshotsClient<tonic::transport::Channel>;

const LEASE: &str = "rebase-check";

fn req<T>(message: T) -> tonic::Request<T> {
    crate::in_namespace(message, "default", Some(LEASE))
}

/// The capabilities introspection lists for the snapshotter plugin `id`.
pub async fn capabilities(socket: &Path, id: &str) -> Vec<String> {
    let channel = crate::channel(socket).await.expect("connecting");
    let plugins = introspection::introspection_client::IntrospectionClient::new(channel)
        .plugins(req(introspection::PluginsRequest {
            filters: vec![format!("type==io.containerd.snapshotter.v1,id=={id}")],
        }))
        .await
        .expect("introspection")
        .into_inner()
        .plugins;
    assert_eq!(plugins.len(), 1, "plugin {id}: {plugins:?}");
    plugins[0].capabilities.clone()
}

/// A client of the snapshots API at `socket` for `snapshotter`.
pub struct Snapshots {
    client: Client,
    snapshotter: String,
}

impl Snapshots {
    /// Connects, and makes the lease its calls run under unless it exists.
    pub async fn connect(socket: &Path, snapshotter: &str) -> Snapshots {
        let channel = crate::channel(socket).await.expect("connecting");
        let made = leases::leases_client::LeasesClient::new(channel.clone())
            .create(req(leases::CreateRequest {
                id: LEASE.into(),
                ..Default::default()
            }))
            .await;
        if let Err(e) = made {
            assert_eq!(e.code(), Code::AlreadyExists, "creating the lease: {e}");
        }
        Snapshots {
            client: Client::new(channel),
            snapshotter: snapshotter.to_owned(),
        }
    }

    pub async fn prepare(&mut self, key: &str, parent: &str) -> Vec<Mount> {
        let r = self
            .client
            .prepare(req(api::PrepareSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.into(),
                parent: parent.into(),
                ..Default::default()
            }))
            .await;
        r.unwrap_or_else(|e| panic!("prepare {key}: {e}"))
            .into_inner()
            .mounts
    }

    pub async fn view(&mut self, key: &str, parent: &str) -> Vec<Mount> {
        let r = self
            .client
            .view(req(api::ViewSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.into(),
                parent: parent.into(),
                ..Default::default()
            }))
            .await;
        r.unwrap_or_else(|e| panic!("view {key}: {e}"))
            .into_inner()
            .mounts
    }

    /// Commits `key` as `name`, onto `parent` when it is not empty.
    pub async fn commit(&mut self, name: &str, key: &str, parent: &str) -> Result<(), Code> {
        self.client
            .commit(req(api::CommitSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                name: name.into(),
                key: key.into(),
                parent: parent.into(),
                ..Default::default()
            }))
            .await
            .map(drop)
            .map_err(|s| s.code())
    }

    pub async fn stat(&mut self, key: &str) -> Result<api::Info, Code> {
        self.client
            .stat(req(api::StatSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.into(),
            }))
            .await
            .map(|r| r.into_inner().info.unwrap_or_default())
            .map_err(|s| s.code())
    }

    pub async fn remove(&mut self, key: &str) -> Result<(), Code> {
        self.client
            .remove(req(api::RemoveSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.into(),
            }))
            .await
            .map(drop)
            .map_err(|s| s.code())
    }
}

/// Mounts what a snapshotter returned at `at` with mount(8), runs `f` on it, unmounts.
pub fn with_mounts(mounts: &[Mount], at: &Path, f: impl FnOnce(&Path)) {
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let m = &mounts[0];
    std::fs::create_dir_all(at).unwrap();
    let status = Command::new("mount")
        .args(["-t", &m.r#type, &m.source])
        .arg(at)
        .args(["-o", &m.options.join(",")])
        .status()
        .unwrap();
    assert!(status.success(), "mounting {m:?}");
    f(at);
    crate::unmount(at);
}

/// Two layers prepared alone, the second committed onto the first: its view shows both, a
/// whiteout in the upper layer hides the lower file, and the parent link is recorded (the
/// parent cannot be removed under its child). A commit that would change an existing parent
/// is InvalidArgument, onto a missing parent NotFound, onto an active snapshot
/// FailedPrecondition; each leaves the active snapshot as it was. Removes what it made.
pub async fn check_rebase(socket: &Path, snapshotter: &str, work: &Path) {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let mut api = Snapshots::connect(socket, snapshotter).await;
    let at = work.join("rebase-mnt");

    let mounts = api.prepare("rebase-base-active", "").await;
    with_mounts(&mounts, &at, |m| {
        std::fs::write(m.join("a"), b"from the base").unwrap();
        std::fs::create_dir(m.join("d")).unwrap();
        std::fs::write(m.join("d/x"), b"hidden above").unwrap();
    });
    api.commit("rebase-base", "rebase-base-active", "")
        .await
        .unwrap();

    let mounts = api.prepare("rebase-top-active", "").await;
    with_mounts(&mounts, &at, |m| {
        std::fs::write(m.join("b"), b"from the top").unwrap();
        std::fs::create_dir(m.join("d")).unwrap();
        // What the applier writes for `.wh.x` in a layer prepared alone.
        mknod(&m.join("d/x"), SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).unwrap();
    });
    api.commit("rebase-top", "rebase-top-active", "rebase-base")
        .await
        .unwrap();
    assert_eq!(api.stat("rebase-top").await.unwrap().parent, "rebase-base");

    let mounts = api.view("rebase-view", "rebase-top").await;
    with_mounts(&mounts, &at, |m| {
        assert_eq!(std::fs::read(m.join("a")).unwrap(), b"from the base");
        assert_eq!(std::fs::read(m.join("b")).unwrap(), b"from the top");
        assert!(m.join("d").is_dir());
        assert!(!m.join("d/x").exists(), "the whiteout did not hide d/x");
    });
    assert_eq!(
        api.remove("rebase-base").await,
        Err(Code::FailedPrecondition)
    );

    // Refused commits leave the active snapshot as it was.
    api.prepare("rebase-child-active", "rebase-base").await;
    assert_eq!(
        api.commit("rebase-child", "rebase-child-active", "rebase-top")
            .await,
        Err(Code::InvalidArgument)
    );
    api.prepare("rebase-lone-active", "").await;
    assert_eq!(
        api.commit("rebase-lone", "rebase-lone-active", "missing")
            .await,
        Err(Code::NotFound)
    );
    assert_eq!(
        api.commit("rebase-lone", "rebase-lone-active", "rebase-child-active")
            .await,
        Err(Code::FailedPrecondition)
    );
    for key in ["rebase-child-active", "rebase-lone-active"] {
        let info = api.stat(key).await.unwrap();
        assert_eq!(info.kind, api::Kind::Active as i32, "{key}: {info:?}");
    }
    assert_eq!(api.stat("rebase-lone").await, Err(Code::NotFound));

    for key in [
        "rebase-view",
        "rebase-child-active",
        "rebase-lone-active",
        "rebase-top",
        "rebase-base",
    ] {
        api.remove(key)
            .await
            .unwrap_or_else(|c| panic!("remove {key}: {c:?}"));
    }
}
