//! Objects as the API serves them, decoded one at a time. An object that does not match its
//! type (a string where a number belongs, a number out of range) is kept with its metadata
//! and the error, so it is reported by name and skipped, instead of failing the whole list
//! or watch event it came in: kube's list decodes every item in one go, so one bad object
//! would otherwise stop the agent from ever seeing a complete view of the cluster.
//!
//! A real API server validates objects on write, so this matters for servers with other
//! rules, aggregated APIs, and objects stored under older schemas.

use std::{borrow::Cow, sync::Arc};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer, de::DeserializeOwned};

/// One object of type `K`, or what is known of one that is not a valid `K`.
#[derive(Clone, Debug)]
pub enum Decoded<K> {
    Valid(Arc<K>),
    /// Boxed: rare.
    Invalid(Box<Invalid>),
}

/// What is known of an object that does not decode.
#[derive(Clone, Debug)]
pub struct Invalid {
    /// Its name and namespace, to report it by.
    pub metadata: ObjectMeta,
    pub error: String,
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Decoded<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through a JSON tree: whatever deserializer the object comes from (a list's items, a
        // watch event's object, buffered or not), a bad object fails only its own decoding.
        // The tree is consumed by the typed decoding, which takes its strings over instead of
        // copying them; an invalid object keeps the name and namespace it is reported by.
        let value = serde_json::Value::deserialize(deserializer)?;
        let name_of = |field: &str| value["metadata"][field].as_str().map(Into::into);
        let (name, namespace) = (name_of("name"), name_of("namespace"));
        Ok(match K::deserialize(value) {
            Ok(object) => Self::Valid(Arc::new(object)),
            Err(e) => Self::Invalid(Box::new(Invalid {
                metadata: ObjectMeta {
                    name,
                    namespace,
                    ..ObjectMeta::default()
                },
                error: e.to_string(),
            })),
        })
    }
}

impl<K> kube::Resource for Decoded<K>
where
    K: kube::Resource<DynamicType = ()> + Clone,
{
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &()) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Valid(object) => object.meta(),
            Self::Invalid(invalid) => &invalid.metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            // Not shared yet when the watcher hands it out for changes.
            Self::Valid(object) => Arc::make_mut(object).meta_mut(),
            Self::Invalid(invalid) => &mut invalid.metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;
    use kube::core::{ObjectList, WatchEvent};

    use super::Decoded;

    #[test]
    fn one_bad_item_does_not_fail_its_list_or_watch_event() {
        let list = r#"{"apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": "7"},
            "items": [
                {"metadata": {"name": "good", "namespace": "default"}, "spec": {"clusterIP": "198.19.0.10"}},
                {"metadata": {"name": "bad", "namespace": "shop"}, "spec": {"ports": [{"port": "eighty"}]}},
                {"metadata": {"name": 7}, "spec": {}}
            ]}"#;
        assert!(
            serde_json::from_str::<ObjectList<Service>>(list).is_err(),
            "decoded as plain Services, one bad item fails the whole list"
        );
        let list: ObjectList<Decoded<Service>> = serde_json::from_str(list).expect("list decodes");
        let [good, bad, nameless] = list.items.as_slice() else {
            panic!("three items");
        };
        assert!(matches!(good, Decoded::Valid(s) if s.metadata.name.as_deref() == Some("good")));
        let Decoded::Invalid(bad) = bad else {
            panic!("the bad item is kept as invalid");
        };
        assert_eq!(
            (
                bad.metadata.namespace.as_deref(),
                bad.metadata.name.as_deref()
            ),
            (Some("shop"), Some("bad"))
        );
        assert!(bad.error.contains("eighty"), "{}", bad.error);
        assert!(matches!(nameless, Decoded::Invalid(i) if i.metadata.name.is_none()));

        // Watch events, with the object before or after its type.
        for line in [
            r#"{"type": "ADDED", "object": {"metadata": {"name": "bad"}, "spec": {"ports": [{"port": -1.5}]}}}"#,
            r#"{"object": {"metadata": {"name": "bad"}, "spec": {"ports": [{"port": -1.5}]}}, "type": "ADDED"}"#,
        ] {
            let event: WatchEvent<Decoded<Service>> =
                serde_json::from_str(line).expect("event decodes");
            assert!(
                matches!(event, WatchEvent::Added(Decoded::Invalid(_))),
                "{line}"
            );
        }
    }
}
