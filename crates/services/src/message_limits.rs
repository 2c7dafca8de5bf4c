//! containerd's gRPC message limits (`[grpc] max_recv_message_size` and
//! `max_send_message_size`, 16 MiB each by default) on every service of a socket, answered as
//! grpc-go answers them: RESOURCE_EXHAUSTED with grpc-go's text, where tonic says OUT_OF_RANGE.
//! tonic checks a message's length from its frame header, before any of it is buffered.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame};
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::{Code, Status};

/// The largest message a call may receive and send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageLimits {
    pub recv: usize,
    pub send: usize,
}

impl MessageLimits {
    /// From the config's values; 0 leaves grpc-go's own default in place (4 MiB received,
    /// unbounded sent), as containerd applies only limits above 0.
    pub fn from_config(recv: u64, send: u64) -> MessageLimits {
        let or = |v: u64, default: usize| match v {
            0 => default,
            v => usize::try_from(v).unwrap_or(usize::MAX),
        };
        MessageLimits {
            recv: or(recv, 4 << 20),
            send: or(send, i32::MAX as usize),
        }
    }
}

impl Default for MessageLimits {
    /// containerd's defaults.
    fn default() -> Self {
        MessageLimits {
            recv: 16 << 20,
            send: 16 << 20,
        }
    }
}

/// A generated tonic server with the socket's message limits applied; every service of a
/// socket is added through this.
#[macro_export]
macro_rules! limited {
    ($server:expr, $limits:expr) => {{
        let limits: $crate::message_limits::MessageLimits = $limits;
        $server
            .max_decoding_message_size(limits.recv)
            .max_encoding_message_size(limits.send)
    }};
}
pub use crate::limited;

/// The status grpc-go gives for a message over a limit, in place of tonic's; None for any
/// other status.
fn grpc_go_status(status: &Status) -> Option<Status> {
    if status.code() != Code::OutOfRange {
        return None;
    }
    let message = status.message();
    let (received, rest) = if let Some(rest) =
        message.strip_prefix("Error, decoded message length too large: found ")
    {
        (true, rest)
    } else {
        let rest = message.strip_prefix("Error, encoded message length too large: found ")?;
        (false, rest)
    };
    let (len, limit) = rest
        .strip_suffix(" bytes")?
        .split_once(" bytes, the limit is: ")?;
    Some(Status::resource_exhausted(if received {
        format!("grpc: received message larger than max ({len} vs. {limit})")
    } else {
        format!("grpc: trying to send message larger than max ({len} vs. {limit})")
    }))
}

/// Rewrites the status in `headers` (a trailers-only answer's headers, or an answer's
/// trailers) when it is tonic's for a message over a limit.
fn rewrite(headers: &mut HeaderMap) {
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    if let Some(replacement) = grpc_go_status(&status) {
        if replacement.add_header(headers).is_err() {
            tracing::warn!("could not rewrite a message-size status: {status}");
        }
    }
}

/// The layer that gives a server's answers grpc-go's status for messages over a limit.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcGoLimitStatus;

impl<S> tower::Layer<S> for GrpcGoLimitStatus {
    type Service = WithGrpcGoLimitStatus<S>;
    fn layer(&self, inner: S) -> Self::Service {
        WithGrpcGoLimitStatus(inner)
    }
}

#[derive(Clone, Debug)]
pub struct WithGrpcGoLimitStatus<S>(S);

impl<S, B, R> tower::Service<Request<B>> for WithGrpcGoLimitStatus<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    R: HttpBody<Data = bytes::Bytes> + Send + 'static,
    R::Error: Into<tonic::codegen::StdError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let answer = self.0.call(request);
        Box::pin(async move {
            let (mut parts, body) = answer.await?.into_parts();
            rewrite(&mut parts.headers);
            Ok(Response::from_parts(
                parts,
                Body::new(Trailers(Box::pin(body))),
            ))
        })
    }
}

/// A body whose trailers go through [`rewrite`].
struct Trailers<R>(Pin<Box<R>>);

impl<R> HttpBody for Trailers<R>
where
    R: HttpBody,
{
    type Data = R::Data;
    type Error = R::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.0.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(match frame.into_trailers() {
                Ok(mut trailers) => {
                    rewrite(&mut trailers);
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            }))),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonics_limit_statuses_become_grpc_gos() {
        let got = grpc_go_status(&Status::out_of_range(
            "Error, decoded message length too large: found 17825792 bytes, the limit is: 16777216 bytes",
        ))
        .unwrap();
        assert_eq!(got.code(), Code::ResourceExhausted);
        assert_eq!(
            got.message(),
            "grpc: received message larger than max (17825792 vs. 16777216)"
        );
        let got = grpc_go_status(&Status::out_of_range(
            "Error, encoded message length too large: found 5 bytes, the limit is: 4 bytes",
        ))
        .unwrap();
        assert_eq!(got.code(), Code::ResourceExhausted);
        assert_eq!(
            got.message(),
            "grpc: trying to send message larger than max (5 vs. 4)"
        );
        assert!(grpc_go_status(&Status::out_of_range("offset 9 beyond size 3")).is_none());
        assert!(grpc_go_status(&Status::not_found("x")).is_none());
    }

    #[test]
    fn trailers_and_trailers_only_headers_are_rewritten() {
        let mut headers = HeaderMap::new();
        Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 8 bytes",
        )
        .add_header(&mut headers)
        .unwrap();
        rewrite(&mut headers);
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "grpc: received message larger than max (9 vs. 8)"
        );
    }

    #[test]
    fn zero_in_the_config_means_grpc_gos_default() {
        assert_eq!(
            MessageLimits::from_config(0, 0),
            MessageLimits {
                recv: 4 << 20,
                send: i32::MAX as usize
            }
        );
        assert_eq!(
            MessageLimits::from_config(16 << 20, 16 << 20),
            MessageLimits::default()
        );
    }
}
