use std::any::Any;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crated_errdefs::{HasKind, Kind};

use crate::registration::PluginError;
use crate::set::{PluginRecord, PluginSet, Status};
use crate::shared::Shared;

/// What a plugin advertises in introspection, settable during init (also when it then skips).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub platforms: Vec<String>,
    pub exports: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
}

/// Why a plugin could not get one it requires.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LookupError {
    #[error("no plugin of type {plugin_type} is loaded")]
    NoneOfType { plugin_type: String },
    #[error("plugin {uri} not found")]
    NotFound { uri: String },
    #[error("requires {uri}, which is disabled")]
    Disabled { uri: String },
    #[error("requires {uri}, which was skipped: {reason}")]
    Skipped { uri: String, reason: String },
    /// `root` names the plugin whose failure started the chain, when it is not `uri` itself,
    /// so the root cause is told once, not nested.
    #[error("requires {uri}, which failed{}: {message}", root.as_ref().map(|r| format!(" because {r} failed")).unwrap_or_default())]
    Failed {
        uri: String,
        root: Option<String>,
        message: String,
    },
    #[error("plugin {uri} is not a {expected}")]
    WrongType { uri: String, expected: &'static str },
}

impl HasKind for LookupError {
    fn kind(&self) -> Kind {
        match self {
            LookupError::NoneOfType { .. } | LookupError::NotFound { .. } => Kind::NotFound,
            _ => Kind::FailedPrecondition,
        }
    }
}

/// Everything a plugin's init gets: its own config and directories, the daemon's addresses,
/// and typed access to the plugins started before it.
pub struct InitContext {
    pub(crate) root: PathBuf,
    pub(crate) state: PathBuf,
    pub grpc_address: String,
    pub ttrpc_address: String,
    pub(crate) config: Option<Box<dyn Any + Send + Sync>>,
    pub(crate) meta: Arc<Mutex<Meta>>,
    pub(crate) set: PluginSet,
    pub(crate) shared: Shared,
}

impl InitContext {
    /// The plugin's own `<root>/<type>.<id>`, created on first use (as containerd's plugins
    /// create theirs), so plugins without files leave no empty directories.
    pub fn root(&self) -> Result<PathBuf, PluginError> {
        make_dir(&self.root, 0o700)
    }

    /// The plugin's own `<state>/<type>.<id>`, created on first use.
    pub fn state(&self) -> Result<PathBuf, PluginError> {
        make_dir(&self.state, 0o700)
    }

    /// [`Self::root`] and [`Self::state`] with `mode`, set also on directories an earlier
    /// start made with another (a runtime's must be traversable by remapped container roots).
    pub fn dirs_with_mode(&self, mode: u32) -> Result<(PathBuf, PathBuf), PluginError> {
        use std::os::unix::fs::PermissionsExt;
        let mut dirs = [self.root.clone(), self.state.clone()];
        for dir in &mut dirs {
            make_dir(dir, mode)?;
            std::fs::set_permissions(&*dir, std::fs::Permissions::from_mode(mode)).map_err(
                |e| PluginError::failed(format!("setting the mode of {}: {e}", dir.display())),
            )?;
        }
        let [root, state] = dirs;
        Ok((root, state))
    }

    /// The daemon's resource of type `T` (see [`Shared`]), when it gave one.
    pub fn shared<T: std::any::Any + Send + Sync>(&self) -> Option<&T> {
        self.shared.get::<T>()
    }

    /// Where [`InitContext::root`] is, without creating it (for exports and messages).
    pub fn root_path(&self) -> &std::path::Path {
        &self.root
    }

    /// The plugin's typed config: its decoded section, or the default when it has none.
    pub fn config<C: Default + 'static>(&mut self) -> Result<C, PluginError> {
        match self.config.take() {
            None => Ok(C::default()),
            Some(any) => any
                .downcast::<C>()
                .map(|c| *c)
                .map_err(|_| PluginError::failed("plugin config has an unexpected type")),
        }
    }

    pub fn meta(&self) -> MutexGuard<'_, Meta> {
        // A poisoned lock only means another init panicked; the data is still usable.
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live set of all plugins, for introspection (it grows while start-up goes on).
    pub fn plugins(&self) -> PluginSet {
        self.set.clone()
    }

    /// The first ready plugin of a type.
    pub fn get_single<T: Any + Send + Sync>(
        &self,
        plugin_type: &str,
    ) -> Result<Arc<T>, LookupError> {
        let records = self.set.records();
        let of_type: Vec<&Arc<PluginRecord>> = records
            .iter()
            .filter(|r| r.plugin_type == plugin_type)
            .collect();
        if let Some(ready) = of_type.iter().find(|r| r.instance.is_some()) {
            return downcast(ready);
        }
        if let Some(first) = of_type.first() {
            return Err(unavailable(first));
        }
        if let Some(uri) = self
            .set
            .disabled()
            .into_iter()
            .find(|u| crated_config::split_uri(u).is_some_and(|(t, _)| t == plugin_type))
        {
            return Err(LookupError::Disabled { uri });
        }
        Err(LookupError::NoneOfType {
            plugin_type: plugin_type.to_owned(),
        })
    }

    /// Every ready plugin of a type, by id, in init order (skipped and failed ones are left out).
    pub fn get_by_type<T: Any + Send + Sync>(
        &self,
        plugin_type: &str,
    ) -> Result<Vec<(String, Arc<T>)>, LookupError> {
        self.set
            .records()
            .iter()
            .filter(|r| r.plugin_type == plugin_type && r.instance.is_some())
            .map(|r| Ok((r.id.clone(), downcast(r)?)))
            .collect()
    }

    pub fn get_by_id<T: Any + Send + Sync>(
        &self,
        plugin_type: &str,
        id: &str,
    ) -> Result<Arc<T>, LookupError> {
        let uri = format!("{plugin_type}.{id}");
        let records = self.set.records();
        match records
            .iter()
            .find(|r| r.plugin_type == plugin_type && r.id == id)
        {
            Some(r) if r.instance.is_some() => downcast(r),
            Some(r) => Err(unavailable(r)),
            None if self.set.disabled().contains(&uri) => Err(LookupError::Disabled { uri }),
            None => Err(LookupError::NotFound { uri }),
        }
    }
}

/// Creates a directory a plugin owns (and its parents) with `mode` when missing.
pub fn make_dir(path: &std::path::Path, mode: u32) -> Result<PathBuf, PluginError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| PluginError::failed(format!("creating {}: {e}", path.display())))?;
    Ok(path.to_path_buf())
}

fn downcast<T: Any + Send + Sync>(record: &PluginRecord) -> Result<Arc<T>, LookupError> {
    record
        .instance
        .clone()
        .and_then(|i| i.downcast::<T>().ok())
        .ok_or_else(|| LookupError::WrongType {
            uri: record.uri(),
            expected: std::any::type_name::<T>(),
        })
}

fn unavailable(record: &PluginRecord) -> LookupError {
    match &record.status {
        Status::Skipped(reason) => LookupError::Skipped {
            uri: record.uri(),
            reason: reason.clone(),
        },
        Status::Failed(err) => match &err.root_cause {
            Some((root, message)) => LookupError::Failed {
                uri: record.uri(),
                root: Some(root.clone()),
                message: message.clone(),
            },
            None => LookupError::Failed {
                uri: record.uri(),
                root: None,
                message: err.message.clone(),
            },
        },
        Status::Ok => LookupError::NotFound { uri: record.uri() },
    }
}
