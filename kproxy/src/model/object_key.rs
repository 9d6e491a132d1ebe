//! The key of an object: its namespace and name in one shared string.

use std::{cmp::Ordering, fmt, sync::Arc};

/// `namespace/name` of an object, as one shared string. A key is cloned into several
/// indexes (the model's, the API mirror's), into every frontend the object asks for and
/// into the names of its metrics: at 100,000 Services each word of a key is megabytes, and
/// one string (two words) instead of a namespace and a name (four words) is 16 bytes less
/// in each of them. Neither part can hold a `/` (both are DNS names), so the first one
/// splits them. Ordered by namespace, then name, as kube-proxy's tie-breaks read them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey(Arc<str>);

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        let mut both = String::with_capacity(namespace.len() + 1 + name.len());
        both.push_str(namespace);
        both.push('/');
        both.push_str(name);
        Self(both.into())
    }

    /// Where the namespace ends (the first `/`).
    fn split(&self) -> usize {
        self.0.find('/').unwrap_or(self.0.len())
    }

    pub fn namespace(&self) -> &str {
        &self.0[..self.split()]
    }

    pub fn name(&self) -> &str {
        self.0.get(self.split() + 1..).unwrap_or_default()
    }

    /// The namespace and the name.
    pub fn parts(&self) -> (&str, &str) {
        (self.namespace(), self.name())
    }

    /// Whether both are the one shared string.
    #[cfg(test)]
    pub fn is_shared_with(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Ord for ObjectKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts().cmp(&other.parts())
    }
}

impl PartialOrd for ObjectKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The key of an object as kube-proxy names it (a missing namespace is `default`).
pub fn object_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_its_namespace_and_name_in_their_order() {
        let key = ObjectKey::new("team-a", "web");
        assert_eq!(key.parts(), ("team-a", "web"));
        assert_eq!(key.to_string(), "team-a/web");
        assert_eq!(ObjectKey::new("ns", "").parts(), ("ns", ""));
        // By namespace first, whatever the characters after it: "a" < "a-b", though
        // "a/" > "a-" as strings.
        let mut keys = [
            ObjectKey::new("a-b", "x"),
            ObjectKey::new("a", "z"),
            ObjectKey::new("a", "y"),
        ];
        keys.sort();
        let sorted: Vec<String> = keys.iter().map(ToString::to_string).collect();
        assert_eq!(sorted, ["a/y", "a/z", "a-b/x"]);
        assert_eq!(std::mem::size_of::<ObjectKey>(), 16);
    }
}
