//! A local client that sends what containerd refuses: messages over the gRPC limits (and a frame
//! header claiming 4 GiB), answered RESOURCE_EXHAUSTED as grpc-go answers them without the
//! daemon reserving the memory.

use std::path::Path;
use std::time::Duration;

use crated_api::containerd::services::content::v1::content_client::ContentClient;
use crated_api::containerd::services::content::v1::{WriteAction, WriteContentRequest};
use crated_api::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use crated_api::containerd::services::namespaces::v1::{CreateNamespaceRequest, Namespace};
use crated_testsupport::{channel, in_namespace, peak_rss_kib, Daemon};
use tonic::Code;

mod common;
use common::start;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A namespace create whose message is about `size` bytes (one label that long).
async fn create_namespace_of(daemon: &Daemon, size: usize) -> tonic::Status {
    let mut client = NamespacesClient::new(channel(&daemon.socket).await.unwrap())
        .max_encoding_message_size(usize::MAX);
    let request = CreateNamespaceRequest {
        namespace: Some(Namespace {
            name: "big".into(),
            labels: [("big".to_string(), "x".repeat(size))].into(),
        }),
    };
    client.create(request).await.unwrap_err()
}

/// A content write of one `size`-byte message; the status it ends with, or None when the
/// write was accepted.
async fn write_of(daemon: &Daemon, size: usize) -> Option<tonic::Status> {
    let mut client = ContentClient::new(channel(&daemon.socket).await.unwrap())
        .max_encoding_message_size(usize::MAX);
    let message = WriteContentRequest {
        action: WriteAction::Write as i32,
        r#ref: format!("big-{size}"),
        data: vec![7; size],
        ..Default::default()
    };
    let request = in_namespace(tokio_stream::iter(vec![message]), "default", None);
    match client.write(request).await {
        Err(status) => Some(status),
        Ok(answers) => {
            let mut answers = answers.into_inner();
            loop {
                match answers.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(status) => return Some(status),
                }
            }
        }
    }
}

#[test]
fn messages_over_16_mib_are_refused_with_resource_exhausted_as_containerd_does() {
    let daemon = start(None);
    runtime().block_on(async {
        let over = create_namespace_of(&daemon, 17 << 20).await;
        assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
        assert!(
            over.message()
                .starts_with("grpc: received message larger than max ("),
            "{over:?}"
        );
        // Under the limit the message is read, and refused for what it says.
        let under = create_namespace_of(&daemon, 15 << 20).await;
        assert_eq!(under.code(), Code::InvalidArgument, "{under:?}");

        let over = write_of(&daemon, 17 << 20).await.unwrap();
        assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
        assert!(write_of(&daemon, 15 << 20).await.is_none());
    });
}

#[test]
fn the_grpc_config_sets_the_limits() {
    let daemon = start(Some(
        "version = 2\n[grpc]\nmax_recv_message_size = 1048576\n",
    ));
    runtime().block_on(async {
        let over = write_of(&daemon, 2 << 20).await.unwrap();
        assert_eq!(over.code(), Code::ResourceExhausted, "{over:?}");
        assert!(over.message().ends_with("vs. 1048576)"), "{over:?}");
        assert!(write_of(&daemon, 1 << 19).await.is_none());
    });
}

/// A content write whose first frame's header claims 4 GiB, its body never sent: the daemon
/// answers at once and reserves nothing.
#[test]
fn a_frame_header_claiming_4_gib_is_refused_before_anything_is_reserved() {
    let daemon = start(None);
    let before = peak_rss_kib(daemon.pid()).unwrap();
    runtime().block_on(async {
        let io = tokio::net::UnixStream::connect(&daemon.socket)
            .await
            .unwrap();
        let (mut client, connection) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(connection);
        let request =
            http::Request::post("http://localhost/containerd.services.content.v1.Content/Write")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("containerd-namespace", "default")
                .body(())
                .unwrap();
        let mut streams = Vec::new();
        for _ in 0..3 {
            let (answer, mut body) = client.send_request(request.clone(), false).unwrap();
            body.send_data(
                bytes::Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
                false,
            )
            .unwrap();
            streams.push((answer, body));
        }
        for (answer, _body) in streams {
            let answer = tokio::time::timeout(Duration::from_secs(10), answer)
                .await
                .expect("an answer without the rest of the message")
                .unwrap();
            let (parts, mut body) = answer.into_parts();
            let mut status = parts.headers.get("grpc-status").cloned();
            if status.is_none() {
                while body.data().await.is_some() {}
                status = body
                    .trailers()
                    .await
                    .unwrap()
                    .and_then(|t| t.get("grpc-status").cloned());
            }
            assert_eq!(status.unwrap(), "8");
        }
    });
    let after = peak_rss_kib(daemon.pid()).unwrap();
    assert!(
        after < before + (64 << 10),
        "peak RSS {before} -> {after} KiB"
    );
}

/// PyPI's grpcio, installed by `scripts/setup.sh` in its own environment.
fn grpcio_python() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("CRATED_GRPCIO_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/cache/crated-test/grpcio".into());
    let python = dir.join("bin/python3");
    let has_grpc = std::process::Command::new(&python)
        .args(["-c", "import grpc"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_grpc {
        assert!(
            !crated_testsupport::on_ci(),
            "grpcio is not installed in {}: scripts/setup.sh installs it",
            dir.display()
        );
        eprintln!(
            "SKIPPED: grpcio not installed in {} (scripts/setup.sh)",
            dir.display()
        );
        return None;
    }
    Some(python)
}

/// gRPC's C core with default settings sends the socket's path as `:authority`, which h2
/// resets as malformed; and it accepts 8 KiB of metadata, which a synchronous delete's GC
/// statistics must stay within. Both target forms (`unix:` and `unix://`) are served.
#[test]
fn grpcio_with_default_settings_is_served() {
    let Some(python) = grpcio_python() else {
        return;
    };
    let daemon = start(None);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/grpcio_client.py");
    for form in ["unix:", "unix://"] {
        let out = std::process::Command::new(&python)
            .arg(&script)
            .arg(&daemon.socket)
            .arg(form)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stdout == b"ok\n",
            "{form}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What containerd's services refuse, a raw client sends: each is refused with containerd's
/// code and nothing is stored.
#[test]
fn what_containerd_refuses_is_refused() {
    use crated_api::containerd::services::events::v1::events_client::EventsClient;
    use crated_api::containerd::services::events::v1::ForwardRequest;
    use crated_api::containerd::services::images::v1::images_client::ImagesClient;
    use crated_api::containerd::services::images::v1::{CreateImageRequest, Image};
    use crated_api::containerd::services::leases::v1::leases_client::LeasesClient;
    use crated_api::containerd::services::leases::v1::{
        AddResourceRequest, CreateRequest, Resource,
    };
    use crated_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
    use crated_api::containerd::services::snapshots::v1::PrepareSnapshotRequest;
    use crated_api::containerd::types::{Descriptor, Envelope};

    let daemon = start(None);
    runtime().block_on(async {
        let channel = channel(&daemon.socket).await.unwrap();

        let mut images = ImagesClient::new(channel.clone());
        for digest in [
            "md5:0123",
            &format!("sha256:{}", "Z".repeat(64)),
            "sha256:abc",
        ] {
            let image = Image {
                name: "docker.io/library/x:1".into(),
                target: Some(Descriptor {
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    digest: digest.into(),
                    size: 10,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let request = CreateImageRequest {
                image: Some(image),
                ..Default::default()
            };
            let err = images
                .create(in_namespace(request, "default", None))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{digest}: {err:?}");
            assert!(err.message().starts_with("Target.Digest"), "{err:?}");
        }

        let mut leases = LeasesClient::new(channel.clone());
        let create = CreateRequest {
            id: "l".into(),
            ..Default::default()
        };
        leases
            .create(in_namespace(create, "default", None))
            .await
            .unwrap();
        for (kind, id, code) in [
            ("bogus", "x", Code::Unimplemented),
            ("content", "sha256:nothex", Code::InvalidArgument),
            ("snapshots", "k", Code::InvalidArgument),
        ] {
            let request = AddResourceRequest {
                id: "l".into(),
                resource: Some(Resource {
                    id: id.into(),
                    r#type: kind.into(),
                }),
            };
            let err = leases
                .add_resource(in_namespace(request, "default", None))
                .await
                .unwrap_err();
            assert_eq!(err.code(), code, "{kind}: {err:?}");
        }

        let mut events = EventsClient::new(channel.clone());
        let forward = ForwardRequest {
            envelope: Some(Envelope {
                timestamp: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
                namespace: "../x".into(),
                topic: "/x".into(),
                event: Some(Default::default()),
            }),
        };
        let err = events.forward(forward).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message()
                .starts_with("event envelope has invalid namespace"),
            "{err:?}"
        );

        let mut snapshots = SnapshotsClient::new(channel.clone());
        let prepare = PrepareSnapshotRequest {
            snapshotter: "native".into(),
            key: String::new(),
            ..Default::default()
        };
        let err = snapshots
            .prepare(in_namespace(prepare, "default", None))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

        // A negative total stands, and the commit fails its size check.
        let mut content = ContentClient::new(channel);
        let messages = vec![
            WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: "negative".into(),
                total: -1,
                data: b"abc".to_vec(),
                ..Default::default()
            },
            WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref: "negative".into(),
                offset: 3,
                ..Default::default()
            },
        ];
        let request = in_namespace(tokio_stream::iter(messages), "default", None);
        let mut answers = content.write(request).await.unwrap().into_inner();
        let err = loop {
            match answers.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the commit succeeded"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message()
                .contains("\"negative\" failed size validation: 3 != -1"),
            "{err:?}"
        );
    });
    assert!(daemon.blob_files().is_empty());
}

/// A call without a namespace, or with one that is no identifier, is refused as containerd's
/// `NamespaceRequired` refuses it; an absent namespace and an absent container read as in
/// containerd.
#[test]
fn namespaces_are_required_and_absent_ones_read_as_containerds() {
    use crated_api::containerd::services::containers::v1::containers_client::ContainersClient;
    use crated_api::containerd::services::containers::v1::{
        GetContainerRequest, ListContainersRequest,
    };
    use crated_api::containerd::services::namespaces::v1::GetNamespaceRequest;

    let daemon = start(None);
    runtime().block_on(async {
        let channel = channel(&daemon.socket).await.unwrap();
        let absent = NamespacesClient::new(channel.clone())
            .get(GetNamespaceRequest {
                name: "moby".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .namespace
            .unwrap();
        assert_eq!(absent.name, "moby");
        assert!(absent.labels.is_empty());

        let mut containers = ContainersClient::new(channel);
        let err = containers
            .list(ListContainersRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert_eq!(err.message(), "namespace is required: failed precondition");
        let err = containers
            .get(in_namespace(
                GetContainerRequest { id: "x".into() },
                "bad..ns",
                None,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().starts_with("namespace validation: "),
            "{err:?}"
        );
        let err = containers
            .get(in_namespace(
                GetContainerRequest { id: "nope".into() },
                "default",
                None,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert_eq!(
            err.message(),
            "container \"nope\" in namespace \"default\": not found"
        );
    });
}

/// A lease created without an id gets a random one, as containerd's service gives it.
#[test]
fn a_lease_without_an_id_gets_a_random_one() {
    use crated_api::containerd::services::leases::v1::leases_client::LeasesClient;
    use crated_api::containerd::services::leases::v1::CreateRequest;
    let daemon = start(None);
    runtime().block_on(async {
        let mut leases = LeasesClient::new(channel(&daemon.socket).await.unwrap());
        let mut ids = Vec::new();
        for _ in 0..2 {
            let lease = leases
                .create(in_namespace(CreateRequest::default(), "default", None))
                .await
                .unwrap()
                .into_inner()
                .lease
                .unwrap();
            assert!(!lease.id.is_empty());
            ids.push(lease.id);
        }
        assert_ne!(ids[0], ids[1]);
    });
}
