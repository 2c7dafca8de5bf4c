//! containerd's services as plugins: each service is a pair, `io.containerd.service.v1.<name>`
//! (the implementation, returning library errors) and `io.containerd.grpc.v1.<name>` (the gRPC
//! front-end, which maps those errors to status codes in one place, [`status`]).

pub mod containers;
pub mod content;
pub mod diff;
pub mod events;
pub mod grpc;
pub mod healthcheck;
pub mod images;
pub mod introspection;
pub mod leases;
pub mod message_limits;
pub mod namespaces;
pub mod request;
pub mod snapshots;
pub mod socket;
pub mod status;
pub mod tasks;
pub mod transfer;
pub mod uds_authority;
pub mod version;
pub mod wire;

pub use grpc::GrpcService;
