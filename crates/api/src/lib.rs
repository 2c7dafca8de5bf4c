//! containerd's gRPC API (types, services, events) as Rust types, clients and server traits,
//! generated at build time. Nothing else lives here.
#![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/containerd_api.rs"));

pub use prost;
pub use prost_types;
pub use tonic;
