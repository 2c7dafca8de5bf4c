//! The messages of containerd 1.6's shim v1 task API (service
//! `containerd.runtime.linux.shim.v1.Shim`) and of its runc options (`containerd.linux.runc`),
//! written here with prost: no published crate carries them.

use prost_types::{Any, Timestamp};

pub const SERVICE: &str = "containerd.runtime.linux.shim.v1.Shim";
/// The type URL of [`RuncOptions`] in a container's runtime options.
pub const RUNC_OPTIONS: &str = "containerd.linux.runc.RuncOptions";

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mount {
    #[prost(string, tag = "1")]
    pub r#type: String,
    #[prost(string, tag = "2")]
    pub source: String,
    #[prost(string, tag = "3")]
    pub target: String,
    #[prost(string, repeated, tag = "4")]
    pub options: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateTaskRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub bundle: String,
    #[prost(string, tag = "3")]
    pub runtime: String,
    #[prost(message, repeated, tag = "4")]
    pub rootfs: Vec<Mount>,
    #[prost(bool, tag = "5")]
    pub terminal: bool,
    #[prost(string, tag = "6")]
    pub stdin: String,
    #[prost(string, tag = "7")]
    pub stdout: String,
    #[prost(string, tag = "8")]
    pub stderr: String,
    #[prost(string, tag = "9")]
    pub checkpoint: String,
    #[prost(string, tag = "10")]
    pub parent_checkpoint: String,
    #[prost(message, optional, tag = "11")]
    pub options: Option<Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateTaskResponse {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteResponse {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    #[prost(uint32, tag = "2")]
    pub exit_status: u32,
    #[prost(message, optional, tag = "3")]
    pub exited_at: Option<Timestamp>,
}

/// Requests naming only a process: DeleteProcess, State, ListPids, Start, Wait.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IdRequest {
    #[prost(string, tag = "1")]
    pub id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExecProcessRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(bool, tag = "2")]
    pub terminal: bool,
    #[prost(string, tag = "3")]
    pub stdin: String,
    #[prost(string, tag = "4")]
    pub stdout: String,
    #[prost(string, tag = "5")]
    pub stderr: String,
    #[prost(message, optional, tag = "6")]
    pub spec: Option<Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResizePtyRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(uint32, tag = "2")]
    pub width: u32,
    #[prost(uint32, tag = "3")]
    pub height: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StateResponse {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub bundle: String,
    #[prost(uint32, tag = "3")]
    pub pid: u32,
    /// containerd.v1.types.Status: unknown 0, created 1, running 2, stopped 3, paused 4,
    /// pausing 5 (the task API's values).
    #[prost(int32, tag = "4")]
    pub status: i32,
    #[prost(string, tag = "5")]
    pub stdin: String,
    #[prost(string, tag = "6")]
    pub stdout: String,
    #[prost(string, tag = "7")]
    pub stderr: String,
    #[prost(bool, tag = "8")]
    pub terminal: bool,
    #[prost(uint32, tag = "9")]
    pub exit_status: u32,
    #[prost(message, optional, tag = "10")]
    pub exited_at: Option<Timestamp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct KillRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(uint32, tag = "2")]
    pub signal: u32,
    #[prost(bool, tag = "3")]
    pub all: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CloseIoRequest {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(bool, tag = "2")]
    pub stdin: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessInfo {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
    #[prost(message, optional, tag = "2")]
    pub info: Option<Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPidsResponse {
    #[prost(message, repeated, tag = "1")]
    pub processes: Vec<ProcessInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ShimInfoResponse {
    #[prost(uint32, tag = "1")]
    pub shim_pid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateTaskRequest {
    #[prost(message, optional, tag = "1")]
    pub resources: Option<Any>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StartResponse {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WaitResponse {
    #[prost(uint32, tag = "1")]
    pub exit_status: u32,
    #[prost(message, optional, tag = "2")]
    pub exited_at: Option<Timestamp>,
}

/// `containerd.linux.runc.RuncOptions`: a v1 container's runtime options.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RuncOptions {
    #[prost(string, tag = "1")]
    pub runtime: String,
    #[prost(string, tag = "2")]
    pub runtime_root: String,
    #[prost(string, tag = "3")]
    pub criu_path: String,
    #[prost(bool, tag = "4")]
    pub systemd_cgroup: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Field numbers as containerd's protobuf writes them.
    #[test]
    fn messages_carry_containerds_field_numbers() {
        let kill = KillRequest {
            id: "a".into(),
            signal: 9,
            all: true,
        };
        assert_eq!(kill.encode_to_vec(), [0x0a, 1, b'a', 0x10, 9, 0x18, 1]);
        let options = RuncOptions {
            runtime: "r".into(),
            systemd_cgroup: true,
            ..Default::default()
        };
        assert_eq!(options.encode_to_vec(), [0x0a, 1, b'r', 0x20, 1]);
        let state = StateResponse::decode(&[0x18, 7, 0x20, 2][..]).unwrap();
        assert_eq!((state.pid, state.status), (7, 2));
    }
}
