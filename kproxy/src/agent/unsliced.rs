//! The first view's Services that wait for a slice of their own. While the EndpointSlices
//! are listed, a Service is written with the first slice of its own, never before it (a
//! Service written alone would be served with no endpoints, then written again), so the
//! order the lists end in does not matter.
//!
//! The waiting Services are kept by key: each batch of changes is sorted in one pass over
//! the batch. (Before, every batch was partitioned together with all that waited: 100,000
//! waiting Services looked at again for each of the first view's 25 parts at the bench's
//! largest start, 3% of the agent's thread.)

use crate::model::{
    KeyMap, KeySet, ObjectKey,
    cluster::{Change, ClusterState},
};

#[derive(Debug, Default)]
pub struct Unsliced {
    waiting: KeyMap<ObjectKey, Change>,
}

impl Unsliced {
    /// The changes of `batch` to write now, in order: slices, deletions, the Node, and
    /// Services with a slice (in `cluster`, in the batch, or come now for one that waited,
    /// which goes just before it). A Service with none waits here, its latest version only;
    /// its deletion ends its wait.
    pub fn sort(&mut self, cluster: &ClusterState, batch: Vec<Change>) -> Vec<Change> {
        let owners: KeySet<ObjectKey> = batch
            .iter()
            .filter_map(|c| match c {
                Change::Slice(_, Some(slice)) => slice.owner().cloned(),
                _ => None,
            })
            .collect();
        let (mut waiting, mut ready) = (Vec::new(), Vec::with_capacity(batch.len()));
        for change in batch {
            match &change {
                Change::Service(key, Some(_))
                    if !owners.contains(key) && !cluster.has_slices(key) =>
                {
                    waiting.push(change);
                }
                Change::Service(key, None) => {
                    self.waiting.remove(key);
                    ready.push(change);
                }
                Change::Slice(_, Some(slice)) => {
                    if let Some(service) = slice.owner().and_then(|o| self.waiting.remove(o)) {
                        ready.push(service);
                    }
                    ready.push(change);
                }
                _ => ready.push(change),
            }
        }
        for change in waiting {
            if let Change::Service(key, _) = &change {
                self.waiting.insert(key.clone(), change);
            }
        }
        ready
    }

    /// Every Service still waiting (the slices are all listed, or the first view is done).
    pub fn release(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.waiting).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::{service, slice};

    fn svc(name: &str, vip: &str) -> Change {
        Change::service(&service("shop", name, vip).build())
    }

    fn slice_of(name: &str, owner: &str) -> Change {
        Change::slice(&slice("shop", name, owner).build())
    }

    fn gone(name: &str) -> Change {
        Change::Service(ObjectKey::new("shop", name), None)
    }

    fn names(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Service(key, Some(service)) => {
                    let vips: Vec<String> = service
                        .spec
                        .iter()
                        .flat_map(|spec| spec.cluster_ips.iter().map(ToString::to_string))
                        .collect();
                    format!("svc {} {}", key.name(), vips.join(","))
                }
                Change::Service(key, None) => format!("gone {}", key.name()),
                Change::Slice(key, _) => format!("slice {}", key.name()),
                Change::Node(_) => "node".to_owned(),
            })
            .collect()
    }

    /// While the slices are listed, a Service waits for a slice of its own: one in the
    /// model already, or one in the same batch. Slices, deletions and Services with a
    /// slice go at once.
    #[test]
    fn a_service_waits_in_the_first_view_until_a_slice_of_its_own_is_known() {
        let mut cluster = ClusterState::default();
        cluster.apply([slice_of("listed-a", "listed")]);
        let mut unsliced = Unsliced::default();
        let ready = unsliced.sort(
            &cluster,
            vec![
                svc("alone", "198.19.0.1"),
                svc("listed", "198.19.0.2"),
                svc("together", "198.19.0.3"),
                slice_of("together-a", "together"),
                gone("old"),
            ],
        );
        assert_eq!(
            names(&ready),
            [
                "svc listed 198.19.0.2",
                "svc together 198.19.0.3",
                "slice together-a",
                "gone old"
            ]
        );
        assert_eq!(names(&unsliced.release()), ["svc alone 198.19.0.1"]);
        assert!(unsliced.release().is_empty());
    }

    /// A waiting Service goes just before the first slice of its own, in its latest
    /// version; one deleted while it waits is never written.
    #[test]
    fn a_waiting_service_goes_with_its_slice_in_its_latest_version_or_not_at_all() {
        let cluster = ClusterState::default();
        let mut unsliced = Unsliced::default();
        let ready = unsliced.sort(
            &cluster,
            vec![svc("web", "198.19.0.1"), svc("short-lived", "198.19.0.2")],
        );
        assert!(ready.is_empty());
        // A later batch: web changes, short-lived is deleted.
        let ready = unsliced.sort(
            &cluster,
            vec![svc("web", "198.19.0.9"), gone("short-lived")],
        );
        assert_eq!(names(&ready), ["gone short-lived"]);
        let ready = unsliced.sort(&cluster, vec![slice_of("web-a", "web")]);
        assert_eq!(names(&ready), ["svc web 198.19.0.9", "slice web-a"]);
        assert!(unsliced.release().is_empty());
    }
}
