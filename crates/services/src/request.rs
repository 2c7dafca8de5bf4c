//! What containerd's clients send with a call: the namespace it is for and the lease its
//! new resources go under, as headers.

use tonic::Status;

/// The gRPC header carrying the namespace of a call.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

/// The gRPC header carrying the lease new resources are put under.
pub const LEASE_HEADER: &str = "containerd-lease";

/// The namespace a call is for. As containerd's `NamespaceRequired`: a call without one is
/// FailedPrecondition, an invalid one InvalidArgument.
pub fn namespace<T>(request: &tonic::Request<T>) -> Result<String, Status> {
    caller_namespace(request)?
        .ok_or_else(|| Status::failed_precondition("namespace is required: failed precondition"))
}

/// The namespace the caller sent, if any (for services that need none).
pub fn caller_namespace<T>(request: &tonic::Request<T>) -> Result<Option<String>, Status> {
    let Some(value) = request.metadata().get(NAMESPACE_HEADER) else {
        return Ok(None);
    };
    let ns = value.to_str().map_err(|_| {
        Status::invalid_argument("namespace header is not valid text: invalid argument")
    })?;
    if ns.is_empty() {
        return Ok(None);
    }
    crated_metadata::validate::identifier(ns)
        .map_err(|e| Status::invalid_argument(format!("namespace validation: {e}")))?;
    Ok(Some(ns.to_owned()))
}

/// The lease a call's new resources go under, if the client named one.
pub fn lease<T>(request: &tonic::Request<T>) -> Option<String> {
    request
        .metadata()
        .get(LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}
