//! A v1 shim spoken to as the task manager speaks to v2 shims: each call of the v2 task API
//! (`containerd.task.v2.Task/<method>`, its messages as bytes) becomes the v1 call that does
//! the same, and the v1 answer the v2 one. Where the two APIs lay a message out alike (State,
//! Delete, Wait, Pids answers), its bytes pass as they are. The events a v2 shim publishes
//! itself and a v1 shim leaves to the daemon (create, start, exec start, pause, resume,
//! delete) are published here.

use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::api;
use crated_api::containerd::events as ev;
use crated_events::Exchange;
use prost::Message as _;

use super::proto;
use crate::RuntimeError;

pub struct Client {
    client: ttrpc::asynchronous::Client,
    pub namespace: String,
    pub id: String,
    exchange: Arc<Exchange>,
}

fn decode<M: containerd_shim_protos::protobuf::Message>(
    method: &str,
    payload: &[u8],
) -> Result<M, RuntimeError> {
    M::parse_from_bytes(payload)
        .map_err(|e| RuntimeError::InvalidArgument(format!("decoding {method}: {e}")))
}

fn encode<M: containerd_shim_protos::protobuf::Message>(m: &M) -> Result<Vec<u8>, RuntimeError> {
    m.write_to_bytes()
        .map_err(|e| RuntimeError::InvalidArgument(format!("encoding an answer: {e}")))
}

fn any(a: &containerd_shim_protos::protobuf::well_known_types::any::Any) -> prost_types::Any {
    prost_types::Any {
        type_url: a.type_url.clone(),
        value: a.value.clone(),
    }
}

/// The process a v2 request names: its exec, or the init process (the task's id).
fn process(id: &str, exec_id: &str) -> String {
    if exec_id.is_empty() {
        id.to_owned()
    } else {
        exec_id.to_owned()
    }
}

impl Client {
    pub async fn connect(
        address: &str,
        namespace: &str,
        id: &str,
        exchange: Arc<Exchange>,
    ) -> Result<Client, RuntimeError> {
        let client = ttrpc::asynchronous::Client::connect(address)
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("connecting to shim {address}: {e}")))?;
        Ok(Client {
            client,
            namespace: namespace.to_owned(),
            id: id.to_owned(),
            exchange,
        })
    }

    /// One call of the v1 shim API.
    pub async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        method: &str,
        req: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, RuntimeError> {
        let payload = self.raw(method, req.encode_to_vec(), timeout).await?;
        Resp::decode(&payload[..])
            .map_err(|e| RuntimeError::Unavailable(format!("shim answered {method} badly: {e}")))
    }

    async fn raw(
        &self,
        method: &str,
        payload: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, RuntimeError> {
        let request = ttrpc::Request {
            service: proto::SERVICE.into(),
            method: method.into(),
            payload,
            timeout_nano: timeout.map_or(0, |t| t.as_nanos() as i64),
            ..Default::default()
        };
        Ok(self.client.request(request).await?.payload)
    }

    fn publish<M: prost::Message>(&self, topic: &str, type_name: &str, event: &M) {
        self.exchange
            .publish_message(&self.namespace, topic, type_name, event);
    }

    /// The v2 call `method` with its request's bytes; the bytes of its v2 answer.
    pub async fn call_v2(
        &self,
        method: &str,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, RuntimeError> {
        match method {
            "State" => {
                let r: api::StateRequest = decode(method, payload)?;
                let id = proto::IdRequest {
                    id: process(&r.id, &r.exec_id),
                };
                // v1's answer is v2's without exec_id (field 11).
                self.raw("State", id.encode_to_vec(), timeout).await
            }
            "Start" => {
                let r: api::StartRequest = decode(method, payload)?;
                let id = proto::IdRequest {
                    id: process(&r.id, &r.exec_id),
                };
                let started: proto::StartResponse = self.call("Start", &id, timeout).await?;
                if r.exec_id.is_empty() {
                    self.publish(
                        "/tasks/start",
                        "containerd.events.TaskStart",
                        &ev::TaskStart {
                            container_id: r.id.clone(),
                            pid: started.pid,
                        },
                    );
                } else {
                    self.publish(
                        "/tasks/exec-started",
                        "containerd.events.TaskExecStarted",
                        &ev::TaskExecStarted {
                            container_id: r.id.clone(),
                            exec_id: r.exec_id.clone(),
                            pid: started.pid,
                        },
                    );
                }
                encode(&api::StartResponse {
                    pid: started.pid,
                    ..Default::default()
                })
            }
            "Delete" => {
                let r: api::DeleteRequest = decode(method, payload)?;
                // Both APIs lay DeleteResponse out alike.
                if r.exec_id.is_empty() {
                    let answer = self.raw("Delete", Vec::new(), timeout).await?;
                    let deleted = proto::DeleteResponse::decode(&answer[..]).unwrap_or_default();
                    self.publish(
                        "/tasks/delete",
                        "containerd.events.TaskDelete",
                        &ev::TaskDelete {
                            container_id: r.id.clone(),
                            pid: deleted.pid,
                            exit_status: deleted.exit_status,
                            exited_at: deleted.exited_at,
                            id: String::new(),
                        },
                    );
                    Ok(answer)
                } else {
                    let id = proto::IdRequest { id: r.exec_id };
                    self.raw("DeleteProcess", id.encode_to_vec(), timeout).await
                }
            }
            "Kill" => {
                let r: api::KillRequest = decode(method, payload)?;
                let kill = proto::KillRequest {
                    id: process(&r.id, &r.exec_id),
                    signal: r.signal,
                    all: r.all,
                };
                self.raw("Kill", kill.encode_to_vec(), timeout).await
            }
            "Exec" => {
                let r: api::ExecProcessRequest = decode(method, payload)?;
                let exec = proto::ExecProcessRequest {
                    id: r.exec_id,
                    terminal: r.terminal,
                    stdin: r.stdin,
                    stdout: r.stdout,
                    stderr: r.stderr,
                    spec: r.spec.as_ref().map(any),
                };
                self.raw("Exec", exec.encode_to_vec(), timeout).await
            }
            "ResizePty" => {
                let r: api::ResizePtyRequest = decode(method, payload)?;
                let resize = proto::ResizePtyRequest {
                    id: process(&r.id, &r.exec_id),
                    width: r.width,
                    height: r.height,
                };
                self.raw("ResizePty", resize.encode_to_vec(), timeout).await
            }
            "CloseIO" => {
                let r: api::CloseIORequest = decode(method, payload)?;
                let close = proto::CloseIoRequest {
                    id: process(&r.id, &r.exec_id),
                    stdin: r.stdin,
                };
                self.raw("CloseIO", close.encode_to_vec(), timeout).await
            }
            "Pause" | "Resume" => {
                let answer = self.raw(method, Vec::new(), timeout).await?;
                let (topic, name) = if method == "Pause" {
                    ("/tasks/paused", "containerd.events.TaskPaused")
                } else {
                    ("/tasks/resumed", "containerd.events.TaskResumed")
                };
                let container_id = self.id.clone();
                if method == "Pause" {
                    self.publish(topic, name, &ev::TaskPaused { container_id });
                } else {
                    self.publish(topic, name, &ev::TaskResumed { container_id });
                }
                Ok(answer)
            }
            "Pids" => {
                let r: api::PidsRequest = decode(method, payload)?;
                let id = proto::IdRequest { id: r.id };
                // ListPidsResponse and PidsResponse are laid out alike.
                self.raw("ListPids", id.encode_to_vec(), timeout).await
            }
            "Update" => {
                let r: api::UpdateTaskRequest = decode(method, payload)?;
                let update = proto::UpdateTaskRequest {
                    resources: r.resources.as_ref().map(any),
                };
                self.raw("Update", update.encode_to_vec(), timeout).await
            }
            "Wait" => {
                let r: api::WaitRequest = decode(method, payload)?;
                let id = proto::IdRequest {
                    id: process(&r.id, &r.exec_id),
                };
                self.raw("Wait", id.encode_to_vec(), timeout).await
            }
            "Connect" => {
                // ShimInfoResponse is ConnectResponse's first field.
                self.raw("ShimInfo", Vec::new(), timeout).await
            }
            other => Err(RuntimeError::Shim {
                kind: crated_errdefs::Kind::NotImplemented,
                message: format!("{other} on a runtime v1 task: not implemented"),
            }),
        }
    }
}
