//! Compiles containerd's API from the `.proto` files shipped inside the `containerd-client` package.
//! The files are located through `cargo metadata` (the package is only listed in Cargo.lock, never
//! built), or taken from `CRATED_CONTAINERD_PROTOS` when set.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const PACKAGE_WITH_PROTOS: &str = "containerd-client";

const PROTOS: &[&str] = &[
    "github.com/containerd/containerd/api/types/descriptor.proto",
    "github.com/containerd/containerd/api/types/event.proto",
    "github.com/containerd/containerd/api/types/introspection.proto",
    "github.com/containerd/containerd/api/types/metrics.proto",
    "github.com/containerd/containerd/api/types/mount.proto",
    "github.com/containerd/containerd/api/types/platform.proto",
    "github.com/containerd/containerd/api/types/runc/options/oci.proto",
    "github.com/containerd/containerd/api/types/task/task.proto",
    "github.com/containerd/containerd/api/services/containers/v1/containers.proto",
    "github.com/containerd/containerd/api/services/content/v1/content.proto",
    "github.com/containerd/containerd/api/services/diff/v1/diff.proto",
    "github.com/containerd/containerd/api/services/events/v1/events.proto",
    "github.com/containerd/containerd/api/services/images/v1/images.proto",
    "github.com/containerd/containerd/api/services/introspection/v1/introspection.proto",
    "github.com/containerd/containerd/api/services/leases/v1/leases.proto",
    "github.com/containerd/containerd/api/services/namespaces/v1/namespace.proto",
    "github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto",
    "github.com/containerd/containerd/api/services/streaming/v1/streaming.proto",
    "github.com/containerd/containerd/api/services/tasks/v1/tasks.proto",
    "github.com/containerd/containerd/api/services/transfer/v1/transfer.proto",
    "github.com/containerd/containerd/api/types/transfer/imagestore.proto",
    "github.com/containerd/containerd/api/types/transfer/importexport.proto",
    "github.com/containerd/containerd/api/types/transfer/progress.proto",
    "github.com/containerd/containerd/api/types/transfer/registry.proto",
    "github.com/containerd/containerd/api/types/transfer/streaming.proto",
    "github.com/containerd/containerd/api/services/version/v1/version.proto",
    "github.com/containerd/containerd/api/events/container.proto",
    "github.com/containerd/containerd/api/events/content.proto",
    "github.com/containerd/containerd/api/events/image.proto",
    "github.com/containerd/containerd/api/events/namespace.proto",
    "github.com/containerd/containerd/api/events/snapshot.proto",
    "github.com/containerd/containerd/api/events/task.proto",
];

fn proto_root() -> PathBuf {
    println!("cargo:rerun-if-env-changed=CRATED_CONTAINERD_PROTOS");
    if let Some(dir) = env::var_os("CRATED_CONTAINERD_PROTOS") {
        return PathBuf::from(dir);
    }
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"))
        .join("Cargo.toml");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let packages = meta["packages"]
        .as_array()
        .expect("packages in cargo metadata");
    let manifest_path = packages
        .iter()
        .find(|p| p["name"] == PACKAGE_WITH_PROTOS)
        .and_then(|p| p["manifest_path"].as_str())
        .unwrap_or_else(|| panic!("{PACKAGE_WITH_PROTOS} not found by cargo metadata"));
    PathBuf::from(manifest_path)
        .parent()
        .expect("package directory")
        .join("vendor")
}

fn main() {
    let root = proto_root();
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let mut fds = protox::compile(&files, [&root]).expect("compiling containerd's .proto files");
    add_commit_parent(&mut fds);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .generate_default_stubs(true)
        .include_file("containerd_api.rs")
        .compile_fds(fds)
        .expect("generating Rust bindings");
}

/// containerd 2's API gives `CommitSnapshotRequest` a `parent` (field 5) for snapshotters with
/// the `rebase` capability; the packaged files predate it. The field is added to the compiled
/// descriptor, so the generated type carries what a containerd 2 client sends.
fn add_commit_parent(fds: &mut prost_types::FileDescriptorSet) {
    use prost_types::field_descriptor_proto::{Label, Type};
    let file = fds
        .file
        .iter_mut()
        .find(|f| f.package() == "containerd.services.snapshots.v1")
        .expect("snapshots.proto");
    let (index, message) = file
        .message_type
        .iter_mut()
        .enumerate()
        .find(|(_, m)| m.name() == "CommitSnapshotRequest")
        .expect("CommitSnapshotRequest in snapshots.proto");
    if message.field.iter().any(|f| f.number() == 5) {
        return;
    }
    message.field.push(prost_types::FieldDescriptorProto {
        name: Some("parent".into()),
        number: Some(5),
        label: Some(Label::Optional as i32),
        r#type: Some(Type::String as i32),
        json_name: Some("parent".into()),
        ..Default::default()
    });
    // The generator looks up each field's comments by its path (message 4, field 2).
    let path = vec![4, index as i32, 2, message.field.len() as i32 - 1];
    if let Some(info) = file.source_code_info.as_mut() {
        let at = info
            .location
            .binary_search_by(|l| l.path.cmp(&path))
            .unwrap_or_else(|at| at);
        info.location.insert(
            at,
            prost_types::source_code_info::Location {
                path,
                leading_comments: Some(
                    " The parent to commit onto (containerd 2, the `rebase` capability).\n".into(),
                ),
                ..Default::default()
            },
        );
    }
}
