//! `event.*` filter fields: the decoded event's fields as containerd's generated `Field`
//! adaptors expose them (its string fields, `labels.<key>`, nested messages by path). An
//! empty string is an absent field, as there.

use std::collections::HashMap;

use crated_api::containerd::events as ev;
use crated_api::containerd::services::images::v1 as images;
use prost::Message;

fn text(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn label(labels: &HashMap<String, String>, rest: &[String]) -> Option<String> {
    labels.get(&rest.join(".")).cloned()
}

fn decode<M: Message + Default>(value: &[u8]) -> Option<M> {
    M::decode(value).ok()
}

/// The field at `path` of the event in `any` (path without the leading `event`).
pub fn event_field(any: &prost_types::Any, path: &[String]) -> Option<String> {
    let (first, rest) = path.split_first()?;
    let first = first.as_str();
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let v = &any.value[..];
    match name {
        "containerd.events.TaskCreate" => {
            let m: ev::TaskCreate = decode(v)?;
            match first {
                "container_id" => text(&m.container_id),
                "bundle" => text(&m.bundle),
                "checkpoint" => text(&m.checkpoint),
                "io" => {
                    let io = m.io?;
                    match rest.first()?.as_str() {
                        "stdin" => text(&io.stdin),
                        "stdout" => text(&io.stdout),
                        "stderr" => text(&io.stderr),
                        "terminal" => Some(io.terminal.to_string()),
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        "containerd.events.TaskStart" => {
            container_id(&decode::<ev::TaskStart>(v)?.container_id, first)
        }
        "containerd.events.TaskOOM" => container_id(&decode::<ev::TaskOom>(v)?.container_id, first),
        "containerd.events.TaskPaused" => {
            container_id(&decode::<ev::TaskPaused>(v)?.container_id, first)
        }
        "containerd.events.TaskResumed" => {
            container_id(&decode::<ev::TaskResumed>(v)?.container_id, first)
        }
        "containerd.events.TaskDelete" => {
            let m: ev::TaskDelete = decode(v)?;
            match first {
                "container_id" => text(&m.container_id),
                "id" => text(&m.id),
                _ => None,
            }
        }
        "containerd.events.TaskExit" => {
            let m: ev::TaskExit = decode(v)?;
            match first {
                "container_id" => text(&m.container_id),
                "id" => text(&m.id),
                _ => None,
            }
        }
        "containerd.events.TaskExecAdded" => {
            let m: ev::TaskExecAdded = decode(v)?;
            exec(&m.container_id, &m.exec_id, first)
        }
        "containerd.events.TaskExecStarted" => {
            let m: ev::TaskExecStarted = decode(v)?;
            exec(&m.container_id, &m.exec_id, first)
        }
        "containerd.events.TaskCheckpointed" => {
            let m: ev::TaskCheckpointed = decode(v)?;
            match first {
                "container_id" => text(&m.container_id),
                "checkpoint" => text(&m.checkpoint),
                _ => None,
            }
        }
        "containerd.events.ContainerCreate" => {
            let m: ev::ContainerCreate = decode(v)?;
            match first {
                "id" => text(&m.id),
                "image" => text(&m.image),
                "runtime" if rest.first().map(String::as_str) == Some("name") => {
                    text(&m.runtime?.name)
                }
                _ => None,
            }
        }
        "containerd.events.ContainerUpdate" => {
            let m: ev::ContainerUpdate = decode(v)?;
            match first {
                "id" => text(&m.id),
                "image" => text(&m.image),
                "labels" => label(&m.labels, rest),
                "snapshot_key" => text(&m.snapshot_key),
                _ => None,
            }
        }
        "containerd.events.ContainerDelete" => {
            named(&decode::<ev::ContainerDelete>(v)?.id, "id", first)
        }
        "containerd.services.images.v1.ImageCreate" => {
            let m: images::ImageCreate = decode(v)?;
            name_and_labels(&m.name, &m.labels, first, rest)
        }
        "containerd.services.images.v1.ImageUpdate" => {
            let m: images::ImageUpdate = decode(v)?;
            name_and_labels(&m.name, &m.labels, first, rest)
        }
        "containerd.services.images.v1.ImageDelete" => {
            named(&decode::<images::ImageDelete>(v)?.name, "name", first)
        }
        "containerd.events.NamespaceCreate" => {
            let m: ev::NamespaceCreate = decode(v)?;
            name_and_labels(&m.name, &m.labels, first, rest)
        }
        "containerd.events.NamespaceUpdate" => {
            let m: ev::NamespaceUpdate = decode(v)?;
            name_and_labels(&m.name, &m.labels, first, rest)
        }
        "containerd.events.NamespaceDelete" => {
            named(&decode::<ev::NamespaceDelete>(v)?.name, "name", first)
        }
        "containerd.events.SnapshotPrepare" => {
            let m: ev::SnapshotPrepare = decode(v)?;
            match first {
                "key" => text(&m.key),
                "parent" => text(&m.parent),
                _ => None,
            }
        }
        "containerd.events.SnapshotCommit" => {
            let m: ev::SnapshotCommit = decode(v)?;
            match first {
                "key" => text(&m.key),
                "name" => text(&m.name),
                _ => None,
            }
        }
        "containerd.events.SnapshotRemove" => {
            named(&decode::<ev::SnapshotRemove>(v)?.key, "key", first)
        }
        "containerd.events.ContentDelete" => {
            named(&decode::<ev::ContentDelete>(v)?.digest, "digest", first)
        }
        _ => None,
    }
}

fn named(value: &str, field: &str, first: &str) -> Option<String> {
    if first == field {
        text(value)
    } else {
        None
    }
}

fn container_id(value: &str, first: &str) -> Option<String> {
    named(value, "container_id", first)
}

fn exec(container: &str, exec_id: &str, first: &str) -> Option<String> {
    match first {
        "container_id" => text(container),
        "exec_id" => text(exec_id),
        _ => None,
    }
}

fn name_and_labels(
    name: &str,
    labels: &HashMap<String, String>,
    first: &str,
    rest: &[String],
) -> Option<String> {
    match first {
        "name" => text(name),
        "labels" => label(labels, rest),
        _ => None,
    }
}
