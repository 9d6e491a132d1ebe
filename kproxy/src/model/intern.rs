//! One shared copy of each of the names that many objects repeat: port names and node
//! names. A cluster has few of each and tens of thousands of objects naming them; a
//! copy per object is an allocation per object (the allocator's smallest chunk is 32 bytes,
//! whatever the name's length).

use std::sync::{Arc, Mutex, PoisonError};

/// A port name (of a Service or an EndpointSlice): most are `http`, `https`, `metrics` or
/// empty, whatever the number of Services.
pub fn port_name(name: &str) -> Arc<str> {
    static PORT_NAMES: Mutex<Interned> = Mutex::new(Interned::new());
    get(&PORT_NAMES, name)
}

/// The node an endpoint is on: every EndpointSlice endpoint names one, and a node holds
/// many endpoints.
pub fn node_name(name: &str) -> Arc<str> {
    static NODE_NAMES: Mutex<Interned> = Mutex::new(Interned::new());
    get(&NODE_NAMES, name)
}

fn get(table: &Mutex<Interned>, name: &str) -> Arc<str> {
    if name.is_empty() {
        // Shared without the lock: `Arc<str>` of "" still allocates its counts.
        static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "".into());
        return Arc::clone(&EMPTY);
    }
    table
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
}

/// Interned names, sorted. Names no object uses any more are dropped whenever the list has
/// doubled since the last time: ports and nodes come and go, and none is held
/// forever.
struct Interned {
    names: Vec<Arc<str>>,
    pruned_at: usize,
}

impl Interned {
    const fn new() -> Self {
        Self {
            names: Vec::new(),
            pruned_at: 0,
        }
    }

    fn get(&mut self, name: &str) -> Arc<str> {
        match self.names.binary_search_by(|n| (**n).cmp(name)) {
            Ok(at) => Arc::clone(&self.names[at]),
            Err(at) => {
                let shared: Arc<str> = name.into();
                self.names.insert(at, Arc::clone(&shared));
                if self.names.len() > 2 * self.pruned_at + 64 {
                    self.names.retain(|n| Arc::strong_count(n) > 1);
                    self.pruned_at = self.names.len();
                }
                shared
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_names_are_shared_and_dropped_once_unused() {
        let mut interned = Interned::new();
        let (a, again) = (interned.get("a"), interned.get("a"));
        assert!(Arc::ptr_eq(&a, &again));
        let kept = interned.get("kept");
        drop((a, again));
        for i in 0..200 {
            drop(interned.get(&format!("ns-{i}")));
        }
        assert!(
            interned.names.len() < 100,
            "names nothing uses are dropped ({} kept)",
            interned.names.len()
        );
        assert!(
            Arc::ptr_eq(&kept, &interned.get("kept")),
            "names in use stay"
        );
    }

    #[test]
    fn port_and_node_names_are_shared_the_empty_one_too() {
        assert!(Arc::ptr_eq(&port_name("http"), &port_name("http")));
        assert!(Arc::ptr_eq(&node_name("node-1"), &node_name("node-1")));
        assert!(Arc::ptr_eq(&port_name(""), &node_name("")));
        assert_eq!(&*node_name("node-1"), "node-1");
    }
}
