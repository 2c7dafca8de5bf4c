use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crated_config::{ConfigError, PluginSection};
use crated_errdefs::Kind;

use crate::context::{InitContext, LookupError};

/// How a plugin's init ended when it did not produce an instance.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// Not usable on this host; the message carries containerd's `skip plugin` marker so that
    /// `ctr plugins ls` shows `skip`.
    #[error("{0}: skip plugin")]
    Skip(String),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("{message}")]
    Failed { kind: Kind, message: String },
}

impl PluginError {
    pub fn skip(reason: impl Into<String>) -> Self {
        PluginError::Skip(reason.into())
    }

    /// A real fault, from any error.
    pub fn failed(err: impl std::fmt::Display) -> Self {
        PluginError::Failed {
            kind: Kind::Unknown,
            message: err.to_string(),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            PluginError::Skip(_) => Kind::Unknown,
            PluginError::Lookup(e) => crated_errdefs::HasKind::kind(e),
            PluginError::Failed { kind, .. } => *kind,
        }
    }
}

type CloseFn = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// What a plugin's init returns: a value other plugins look up by type, and an optional close
/// hook run at shutdown (in reverse init order).
pub struct Instance {
    pub(crate) value: Arc<dyn Any + Send + Sync>,
    pub(crate) close: Option<CloseFn>,
    pub(crate) health: Option<HealthFn>,
}

/// Tells whether a plugin that started can be used right now (an external one may be down):
/// `Err` carries why not.
pub type HealthFn = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

impl Instance {
    pub fn new<T: Any + Send + Sync>(value: Arc<T>) -> Self {
        Instance {
            value,
            close: None,
            health: None,
        }
    }

    /// A check introspection runs each time it reports the plugin: a failing one shows the
    /// plugin as unavailable (not `ok`) with the reason, until it passes again.
    pub fn with_health<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.health = Some(Arc::new(move || Box::pin(check())));
        self
    }

    pub fn with_close<F, Fut>(mut self, close: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.close = Some(Box::new(move || Box::pin(close())));
        self
    }
}

type InitFn =
    Box<dyn FnOnce(InitContext) -> BoxFuture<'static, Result<Instance, PluginError>> + Send>;

/// Decodes and prints one plugin's typed config.
pub(crate) struct ConfigCodec {
    pub default: fn() -> Result<toml::Table, String>,
    pub decode: fn(&PluginSection) -> Result<Box<dyn Any + Send + Sync>, ConfigError>,
    pub dump: fn(&(dyn Any + Send + Sync)) -> Result<toml::Table, String>,
}

/// One plugin as the daemon knows it before start-up.
pub struct Registration {
    pub plugin_type: String,
    pub id: String,
    /// Types this plugin needs started first; `"*"` means every other plugin.
    pub requires: Vec<String>,
    pub(crate) config: Option<ConfigCodec>,
    pub(crate) init: InitFn,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("uri", &self.uri())
            .field("requires", &self.requires)
            .finish()
    }
}

impl Registration {
    pub fn new<F, Fut>(plugin_type: &str, id: &str, init: F) -> Self
    where
        F: FnOnce(InitContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Instance, PluginError>> + Send + 'static,
    {
        Registration {
            plugin_type: plugin_type.to_owned(),
            id: id.to_owned(),
            requires: Vec::new(),
            config: None,
            init: Box::new(move |ctx| Box::pin(init(ctx))),
        }
    }

    pub fn requires(mut self, types: &[&str]) -> Self {
        self.requires = types.iter().map(|t| t.to_string()).collect();
        self
    }

    /// Gives the plugin a typed config section `[plugins."<type>.<id>"]`, decoded strictly
    /// (unknown keys are errors) and defaulting to `C::default()`.
    pub fn with_config<C>(mut self) -> Self
    where
        C: DeserializeOwned + Serialize + Default + Send + Sync + 'static,
    {
        fn to_table<C: Serialize>(c: &C) -> Result<toml::Table, String> {
            toml::Table::try_from(c).map_err(|e| e.to_string())
        }
        self.config = Some(ConfigCodec {
            default: || to_table(&C::default()),
            decode: |section| Ok(Box::new(section.decode::<C>()?)),
            dump: |any| match any.downcast_ref::<C>() {
                Some(c) => to_table(c),
                None => Err("config of an unexpected type".into()),
            },
        });
        self
    }

    /// `<type>.<id>`, the name used in configs and filters.
    pub fn uri(&self) -> String {
        format!("{}.{}", self.plugin_type, self.id)
    }

    /// The plugin's default config as a TOML table (for `crated config default`).
    pub fn default_config(&self) -> Option<Result<toml::Table, String>> {
        self.config.as_ref().map(|c| (c.default)())
    }

    /// Decodes this plugin's section (or the default when there is none), checking it strictly.
    pub fn decode_config(
        &self,
        section: Option<&PluginSection>,
    ) -> Result<Option<Box<dyn Any + Send + Sync>>, ConfigError> {
        let Some(codec) = &self.config else {
            return Ok(None);
        };
        match section {
            Some(section) => (codec.decode)(section).map(Some),
            None => Ok(None),
        }
    }

    /// Prints a decoded config back as TOML (for `crated config dump`).
    pub fn dump_config(
        &self,
        config: Option<&(dyn Any + Send + Sync)>,
    ) -> Option<Result<toml::Table, String>> {
        let codec = self.config.as_ref()?;
        Some(match config {
            Some(c) => (codec.dump)(c),
            None => (codec.default)(),
        })
    }
}
