//! containerd's content store test suite (`crated_testsupport::content_suite`, ported from
//! containerd 1.6's `content/testsuite`) run three ways: through crated's content API (its
//! local store under the metadata store, and the cross-namespace suites of the `shared` and
//! `isolated` policies), through crated with a proxy content plugin (`crated-content`), and
//! against the local store alone, served bare by `crated-content`.

use std::path::Path;

use crated_testsupport::content_suite::{self, Target};
use crated_testsupport::SocketServer;

mod common;
use common::start;

fn run(body: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(body)
}

fn content_server(socket: &Path, root: &Path) -> SocketServer {
    SocketServer::start(
        "crated-content",
        &[socket.as_os_str(), root.as_os_str()],
        socket,
    )
}

#[test]
fn containerds_content_suite_through_the_content_api() {
    let daemon = start(None);
    run(async {
        let t = Target::connect(&daemon.socket, Some("suite"), true).await;
        content_suite::content_suite(&t).await;
        content_suite::cross_namespace_shared_suite(&t, "suite-other").await;
    });
}

#[test]
fn containerds_cross_namespace_suite_with_the_isolated_policy() {
    let daemon = start(Some(
        "version = 2\n[plugins.\"io.containerd.metadata.v1.bolt\"]\ncontent_sharing_policy = \"isolated\"\n",
    ));
    run(async {
        let t = Target::connect(&daemon.socket, Some("suite"), true).await;
        content_suite::cross_namespace_isolated_suite(&t, "suite-other").await;
    });
}

#[test]
fn containerds_content_suite_through_a_proxy_content_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, store) = (dir.path().join("content.sock"), dir.path().join("store"));
    let _server = content_server(&socket, &store);
    let daemon = start(Some(&format!(
        "version = 2\ndisabled_plugins = [\"io.containerd.content.v1.content\"]\n\
         [proxy_plugins.remote]\n  type = \"content\"\n  address = \"{}\"\n",
        socket.display()
    )));
    run(async {
        let t = Target::connect(&daemon.socket, Some("suite"), true).await;
        content_suite::content_suite(&t).await;
        content_suite::cross_namespace_shared_suite(&t, "suite-other").await;
    });
}

/// The local store alone keeps no labels, as containerd's without a label store.
#[test]
fn containerds_content_suite_against_the_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, store) = (dir.path().join("content.sock"), dir.path().join("store"));
    let _server = content_server(&socket, &store);
    run(async {
        let t = Target::connect(&socket, None, false).await;
        content_suite::content_suite(&t).await;
    });
}
