//! Shapes on the wire that the services share: streams of answers, and timestamps.

use tonic::Status;

/// What server-streaming calls return.
pub type BoxStream<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A record timestamp (nanoseconds since the epoch) as protobuf's.
pub fn timestamp(nanos: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (nanos / 1_000_000_000) as i64,
        nanos: (nanos % 1_000_000_000) as i32,
    }
}
