//! What the model keeps of the objects it is given: what kube-proxy's semantics read,
//! parsed once when an object arrives. An API object, with its metadata, strings and
//! options, is several times this size; at tens of thousands of Services the objects would
//! be most of the agent's memory, so sources convert them at once (see `Change::service`)
//! and hold none.

use std::time::SystemTime;

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::Time,
};

use super::{
    LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME, ObjectKey,
    endpoints::{SliceInfo, slice_problems},
    service::ServiceSpec,
};
use crate::problem::Problem;

/// The annotation the EndpointSlice controller stamps with the time of the change that
/// triggered an update; network-programming latency is measured from it.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// What the model keeps of a Service.
#[derive(Debug, PartialEq)]
pub struct KeptService {
    /// `creationTimestamp`: of two Services claiming one frontend in a batch, the older
    /// gets it.
    pub(super) created: Option<Time>,
    /// What it serves; `None` when kube-proxy skips it.
    pub(crate) spec: Option<ServiceSpec>,
    /// What reading it found.
    pub(super) problems: Vec<Problem>,
    /// It lists ports (kube-proxy's health checks come from its service port map: a
    /// Service without ports has none).
    pub(super) has_ports: bool,
}

impl KeptService {
    /// `svc`, known by `key` (its `object_key`, whose shared names the spec takes).
    pub fn of(key: &ObjectKey, svc: &Service) -> Self {
        let mut problems = Vec::new();
        let spec = ServiceSpec::from_service(key, svc, &mut problems);
        Self {
            created: svc.metadata.creation_timestamp.clone(),
            spec,
            problems,
            has_ports: svc
                .spec
                .as_ref()
                .is_some_and(|s| s.ports.as_ref().is_some_and(|p| !p.is_empty())),
        }
    }
}

/// What the model keeps of an EndpointSlice.
#[derive(Debug, PartialEq)]
pub struct KeptSlice {
    /// The Service it feeds, unless kube-proxy ignores it.
    pub(super) owner: Option<ObjectKey>,
    /// What is wrong with it on its own (addresses, ports, address type); looked at only
    /// for a slice with an owner. A boxed slice: a word less, which takes the kept slice
    /// down an allocation size (16 bytes a slice).
    pub(super) problems: Box<[Problem]>,
    pub(super) info: SliceInfo,
    /// Its `endpoints.kubernetes.io/last-change-trigger-time`, when readable.
    pub trigger_time: Option<SystemTime>,
}

impl KeptSlice {
    /// The Service it feeds, unless kube-proxy ignores it.
    pub fn owner(&self) -> Option<&ObjectKey> {
        self.owner.as_ref()
    }

    pub fn of(slice: &EndpointSlice) -> Self {
        let owner = slice_owner(slice);
        Self {
            problems: if owner.is_some() {
                slice_problems(slice).into()
            } else {
                Box::default()
            },
            owner,
            info: SliceInfo::of(slice),
            trigger_time: trigger_time(slice),
        }
    }
}

/// The Service an EndpointSlice feeds, unless kube-proxy would ignore the slice.
fn slice_owner(slice: &EndpointSlice) -> Option<ObjectKey> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.contains_key(LABEL_HEADLESS) || labels.contains_key(LABEL_SERVICE_PROXY_NAME) {
        return None;
    }
    let service = labels.get(LABEL_SERVICE_NAME)?;
    let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
    Some(ObjectKey::new(namespace, service))
}

fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let stamp = slice
        .metadata
        .annotations
        .as_ref()?
        .get(TRIGGER_TIME_ANNOTATION)?;
    let time = k8s_openapi::chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
    Some(SystemTime::from(time))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn slice(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> EndpointSlice {
        let map = |pairs: &[(&str, &str)]| -> Option<BTreeMap<String, String>> {
            (!pairs.is_empty()).then(|| {
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect()
            })
        };
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("shop".into()),
                name: Some("web-abc".into()),
                labels: map(labels),
                annotations: map(annotations),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            ..EndpointSlice::default()
        }
    }

    #[test]
    fn a_kept_slice_has_its_owner_and_trigger_time() {
        type Pairs = &'static [(&'static str, &'static str)];
        /// (case, labels, annotations, owner, trigger time in seconds since the epoch)
        type Case = (
            &'static str,
            Pairs,
            Pairs,
            Option<&'static str>,
            Option<u64>,
        );
        let cases: [Case; 4] = [
            (
                "labelled, stamped",
                &[(LABEL_SERVICE_NAME, "web")],
                &[(TRIGGER_TIME_ANNOTATION, "2026-11-22T07:00:00Z")],
                Some("web"),
                Some(1_795_330_800),
            ),
            (
                "a stamp that is not a time",
                &[(LABEL_SERVICE_NAME, "web")],
                &[(TRIGGER_TIME_ANNOTATION, "yesterday")],
                Some("web"),
                None,
            ),
            ("no service label", &[], &[], None, None),
            (
                "headless: kube-proxy ignores it",
                &[(LABEL_SERVICE_NAME, "web"), (LABEL_HEADLESS, "")],
                &[],
                None,
                None,
            ),
        ];
        for (case, labels, annotations, owner, trigger) in cases {
            let kept = KeptSlice::of(&slice(labels, annotations));
            assert_eq!(
                kept.owner,
                owner.map(|name| ObjectKey::new("shop", name)),
                "{case}"
            );
            let seconds = kept.trigger_time.map(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .expect("after the epoch")
                    .as_secs()
            });
            assert_eq!(seconds, trigger, "{case}");
        }
    }
}
