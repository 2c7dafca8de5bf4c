//! The image model and the registry client: references as users write them, platforms and how
//! they match, the OCI and Docker manifest formats with the garbage-collection labels that tie
//! their blobs together, chain IDs, and an OCI distribution client that resolves and fetches
//! with basic or bearer-token auth and resumes a cut download with a ranged request. The
//! daemon-side pull that puts these into the content store and snapshotters is the transfer
//! service's.

pub mod error;
pub mod hosts;
pub mod manifest;
pub mod platform;
pub mod reference;
pub mod registry;

pub use error::ImageError;
pub use manifest::{chain_ids, Descriptor, Index, Manifest};
pub use platform::Platform;
pub use reference::Reference;
pub use registry::{BlobBody, Credentials, Registry, RegistryOptions};
