//! Where store work runs: short work on the calling thread, the rest where it may block.
//! Snapshot stores and the metadata store's snapshot records both use it.

/// How much a piece of store work may take, which decides the thread it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// A bounded number of store and filesystem calls, whatever the size of any tree, with at
    /// most one flush of the journal ([`crate::Writers::commits_are_short`]).
    Short,
    /// Anything else: it may walk or copy a tree, or wait for another writer.
    Long,
}

/// Runs a store transaction: on a multi-threaded runtime in place (the worker's other tasks
/// move on), sparing two thread hand-offs; elsewhere on the blocking pool.
pub async fn run_transaction<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        return Ok(tokio::task::block_in_place(f));
    }
    tokio::task::spawn_blocking(f).await
}

/// Runs [`Work::Short`] work on the calling thread, where a hand-off to another thread would
/// cost more than the work; [`Work::Long`] work as [`run_transaction`] does.
pub async fn run_store_work<T: Send + 'static>(
    work: Work,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    match work {
        Work::Short => Ok(f()),
        Work::Long => run_transaction(f).await,
    }
}
