//! Resources the daemon opens before any plugin and hands to every plugin's init, by type
//! (the journal its stores share, for one): the plugin system carries them without knowing
//! what they are.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

/// At most one value of each type.
#[derive(Clone, Default)]
pub struct Shared {
    values: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Shared {
    /// Adds `value`, replacing the one of its type given before.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.values.insert(TypeId::of::<T>(), Arc::new(value));
    }

    /// The value of type `T`, when the daemon gave one.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|value| value.downcast_ref::<T>())
    }
}

#[cfg(test)]
mod tests {
    use super::Shared;

    #[test]
    fn values_are_found_by_their_type_only() {
        let mut shared = Shared::default();
        assert_eq!(shared.get::<u32>(), None);
        shared.insert(7u32);
        shared.insert(String::from("journal"));
        shared.insert(9u32);
        assert_eq!(shared.get::<u32>(), Some(&9));
        assert_eq!(shared.get::<String>().map(String::as_str), Some("journal"));
        assert_eq!(shared.get::<u64>(), None);
    }
}
