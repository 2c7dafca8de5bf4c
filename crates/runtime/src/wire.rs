//! Between the two encodings of containerd's types: the gRPC API's (prost, `crated-api`) and
//! the shim's (rust-protobuf, `containerd-shim-protos`). The bytes on the wire are the same.

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::{
    any::Any as ShimAny, timestamp::Timestamp as ShimTimestamp,
};

pub fn any_to_shim(a: prost_types::Any) -> ShimAny {
    let mut any = ShimAny::new();
    any.type_url = a.type_url;
    any.value = a.value;
    any
}

pub fn any_from_shim(a: &ShimAny) -> prost_types::Any {
    prost_types::Any {
        type_url: a.type_url.clone(),
        value: a.value.clone(),
    }
}

pub fn time_from_shim(t: &ShimTimestamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.seconds,
        nanos: t.nanos,
    }
}

pub fn mount_to_shim(m: crated_api::containerd::types::Mount) -> api::Mount {
    api::Mount {
        type_: m.r#type,
        source: m.source,
        target: m.target,
        options: m.options,
        ..Default::default()
    }
}
