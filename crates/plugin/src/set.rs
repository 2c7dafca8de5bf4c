use std::any::Any;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::watch;

use crated_errdefs::Kind;

use crate::context::{InitContext, LookupError, Meta};
use crate::registration::{HealthFn, PluginError, Registration};
use crate::shared::Shared;

/// A failed init as introspection reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitError {
    pub kind: Kind,
    pub message: String,
    /// The plugin (and its message) whose failure made this one fail, when it is another.
    pub root_cause: Option<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Not usable on this host, with the reason.
    Skipped(String),
    Failed(InitError),
}

impl Status {
    /// The `init_err` message containerd would report (a skip carries `skip plugin`).
    pub fn error_message(&self) -> Option<String> {
        match self {
            Status::Ok => None,
            Status::Skipped(reason) => Some(PluginError::Skip(reason.clone()).to_string()),
            Status::Failed(e) => Some(e.message.clone()),
        }
    }
}

type CloseFn = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// One plugin after its init.
pub struct PluginRecord {
    pub plugin_type: String,
    pub id: String,
    pub requires: Vec<String>,
    pub meta: Meta,
    pub status: Status,
    pub init_time: Duration,
    /// Place in the start-up order.
    position: usize,
    pub(crate) instance: Option<Arc<dyn Any + Send + Sync>>,
    close: Mutex<Option<CloseFn>>,
    health: Option<HealthFn>,
}

/// How long introspection waits for a plugin's health check.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

impl PluginRecord {
    pub fn uri(&self) -> String {
        format!("{}.{}", self.plugin_type, self.id)
    }

    /// The status now: the init outcome, or for a started plugin with a health check that
    /// fails (or does not answer in time), Unavailable with the reason.
    pub async fn current_status(&self) -> Status {
        let (Status::Ok, Some(check)) = (&self.status, &self.health) else {
            return self.status.clone();
        };
        let reason = match tokio::time::timeout(HEALTH_TIMEOUT, check()).await {
            Ok(Ok(())) => return Status::Ok,
            Ok(Err(reason)) => reason,
            Err(_) => format!("health check timed out after {HEALTH_TIMEOUT:?}"),
        };
        Status::Failed(InitError {
            kind: Kind::Unavailable,
            message: reason,
            root_cause: None,
        })
    }

    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }
}

impl std::fmt::Debug for PluginRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRecord")
            .field("uri", &self.uri())
            .field("status", &self.status)
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    records: Vec<Arc<PluginRecord>>,
    disabled: Vec<String>,
}

/// The plugins of this daemon in init order; cheap to clone, shared by everyone.
#[derive(Clone, Default)]
pub struct PluginSet {
    inner: Arc<RwLock<Inner>>,
}

impl PluginSet {
    pub fn records(&self) -> Vec<Arc<PluginRecord>> {
        self.read().records.clone()
    }

    /// URIs disabled by the config: they never started and are not listed.
    pub fn disabled(&self) -> Vec<String> {
        self.read().disabled.clone()
    }

    pub fn get(&self, uri: &str) -> Option<Arc<PluginRecord>> {
        self.read().records.iter().find(|r| r.uri() == uri).cloned()
    }

    /// The ready plugins of a type whose instance is a `T`, by id, in init order.
    pub fn instances<T: Any + Send + Sync>(&self, plugin_type: &str) -> Vec<(String, Arc<T>)> {
        self.read()
            .records
            .iter()
            .filter(|r| r.plugin_type == plugin_type)
            .filter_map(|r| {
                let value = r.instance.clone()?.downcast::<T>().ok()?;
                Some((r.id.clone(), value))
            })
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a record at its place in the start-up order, so lookups made while other inits
    /// still run see the same order as after start-up.
    fn insert(&self, record: PluginRecord) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let at = inner
            .records
            .partition_point(|r| r.position < record.position);
        inner.records.insert(at, Arc::new(record));
    }

    /// Runs the close hooks in reverse init order.
    pub async fn close_all(&self) {
        for record in self.records().iter().rev() {
            let hook = record
                .close
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(hook) = hook {
                tracing::debug!(plugin = %record.uri(), "closing plugin");
                hook().await;
            }
        }
    }
}

/// Addresses and directories shared by every plugin's context.
pub struct Environment<'a> {
    pub root: &'a Path,
    pub state: &'a Path,
    pub grpc_address: &'a str,
    pub ttrpc_address: &'a str,
    /// What the daemon opened for its plugins to share.
    pub shared: Shared,
}

/// Initialises `ordered` (from [`crate::graph`]), each with its decoded config from `configs`
/// (by URI), and records every outcome. A plugin starts as soon as the plugins of the types it
/// requires have finished (all earlier ones for `*`), so independent inits overlap; the records
/// keep the graph's order.
pub async fn init_all(
    ordered: Vec<Registration>,
    mut configs: HashMap<String, Box<dyn Any + Send + Sync>>,
    disabled: Vec<String>,
    env: &Environment<'_>,
) -> PluginSet {
    let set = PluginSet::default();
    set.inner
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .disabled = disabled;
    let types: Vec<String> = ordered.iter().map(|r| r.plugin_type.clone()).collect();
    let (done_senders, done_receivers): (Vec<_>, Vec<_>) =
        (0..ordered.len()).map(|_| watch::channel(false)).unzip();
    let mut inits = Vec::with_capacity(ordered.len());
    for ((position, reg), done) in ordered.into_iter().enumerate().zip(done_senders) {
        let wildcard = reg.requires.iter().any(|t| t == "*");
        // The graph put every requirement earlier, so only earlier plugins are waited for.
        let waits: Vec<watch::Receiver<bool>> = (0..position)
            .filter(|&j| wildcard || reg.requires.contains(&types[j]))
            .map(|j| done_receivers[j].clone())
            .collect();
        let uri = reg.uri();
        let meta = Arc::new(Mutex::new(Meta::default()));
        let ctx = InitContext {
            root: env.root.join(&uri),
            state: env.state.join(&uri),
            grpc_address: env.grpc_address.to_owned(),
            ttrpc_address: env.ttrpc_address.to_owned(),
            config: configs.remove(&uri),
            meta: meta.clone(),
            set: set.clone(),
            shared: env.shared.clone(),
        };
        let set = set.clone();
        let (plugin_type, id, requires) = (
            reg.plugin_type.clone(),
            reg.id.clone(),
            reg.requires.clone(),
        );
        let task = tokio::spawn(async move {
            for mut wait in waits {
                // A dropped sender means that plugin is finished too.
                let _ = wait.wait_for(|finished| *finished).await;
            }
            let started = Instant::now();
            // Each init is its own task: one that blocks or panics does not hold up or take
            // down the others; a panic is recorded as that plugin's failure.
            let result = match tokio::spawn((reg.init)(ctx)).await {
                Ok(result) => result,
                Err(join) => Err(PluginError::failed(format!("plugin init panicked: {join}"))),
            };
            let init_time = started.elapsed();
            let (status, instance, close, health) = outcome(&uri, result);
            tracing::info!(plugin = %uri, ?init_time, "plugin init finished");
            let meta = meta.lock().unwrap_or_else(|p| p.into_inner()).clone();
            set.insert(PluginRecord {
                plugin_type,
                id,
                requires,
                meta,
                status,
                init_time,
                position,
                instance,
                close: Mutex::new(close),
                health,
            });
            let _ = done.send(true);
        });
        inits.push(task);
    }
    for init in futures::future::join_all(inits).await {
        if let Err(e) = init {
            tracing::error!("plugin start-up task failed: {e}");
        }
    }
    set
}

type Outcome = (
    Status,
    Option<Arc<dyn Any + Send + Sync>>,
    Option<CloseFn>,
    Option<HealthFn>,
);

fn outcome(uri: &str, result: Result<crate::Instance, PluginError>) -> Outcome {
    match result {
        Ok(i) => (Status::Ok, Some(i.value), i.close, i.health),
        Err(PluginError::Skip(reason)) => {
            tracing::info!(plugin = %uri, "skip loading plugin: {reason}");
            (Status::Skipped(reason), None, None, None)
        }
        Err(err) => {
            let root_cause = match &err {
                PluginError::Lookup(LookupError::Failed { uri, root, message }) => {
                    Some((root.clone().unwrap_or_else(|| uri.clone()), message.clone()))
                }
                _ => None,
            };
            tracing::warn!(plugin = %uri, "failed to load plugin: {err}");
            let failed = InitError {
                kind: err.kind(),
                message: err.to_string(),
                root_cause,
            };
            (Status::Failed(failed), None, None, None)
        }
    }
}
