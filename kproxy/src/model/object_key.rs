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
        // Joined on the stack (names are short), then copied into the one allocation.
        let mut both = smallvec::SmallVec::<[u8; 128]>::new();
        both.extend_from_slice(namespace.as_bytes());
        both.push(b'/');
        both.extend_from_slice(name.as_bytes());
        Self(
            std::str::from_utf8(&both)
                .expect("two strings and a slash")
                .into(),
        )
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
    /// The order of `(namespace, name)`, found in one pass: byte by byte, with the slash
    /// ranked below every byte of a name (where one namespace ends and the other goes on,
    /// the shorter comes first).
    fn cmp(&self, other: &Self) -> Ordering {
        let rank = |b: u8| if b == b'/' { 0 } else { u16::from(b) + 1 };
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        match a.iter().zip(b).position(|(x, y)| x != y) {
            Some(at) => rank(a[at]).cmp(&rank(b[at])),
            None => a.len().cmp(&b.len()),
        }
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
        // Every pair orders as its (namespace, name) tuple does.
        let parts = [
            ("a", "x"),
            ("a", "x.y"),
            ("a", "x-y"),
            ("a", ""),
            ("a-b", "x"),
            ("a.b", "x"),
            ("ab", "x"),
            ("b", "a"),
            ("", "z"),
        ];
        for x in parts {
            for y in parts {
                let (kx, ky) = (ObjectKey::new(x.0, x.1), ObjectKey::new(y.0, y.1));
                assert_eq!(kx.cmp(&ky), x.cmp(&y), "{x:?} against {y:?}");
            }
        }
        assert_eq!(std::mem::size_of::<ObjectKey>(), 16);
    }
}
