//! Per-resource gates that keep LIST requests waiting while a test holds them, so it can
//! check what a client does before its initial list completes.

use tokio::sync::watch;

use super::resource::Resource;

#[derive(Debug)]
pub struct ListHolds {
    /// One "held" flag per resource, in `Resource::ALL` order.
    gates: Vec<(Resource, watch::Sender<bool>)>,
}

impl ListHolds {
    pub fn new() -> ListHolds {
        ListHolds {
            gates: Resource::ALL
                .into_iter()
                .map(|resource| (resource, watch::Sender::new(false)))
                .collect(),
        }
    }

    pub fn set(&self, resource: Resource, held: bool) {
        self.gate(resource).send_replace(held);
    }

    /// Returns once lists of `resource` are not held.
    pub async fn released(&self, resource: Resource) {
        let mut held = self.gate(resource).subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = held.wait_for(|held| !held).await;
    }

    fn gate(&self, resource: Resource) -> &watch::Sender<bool> {
        &self
            .gates
            .iter()
            .find(|(r, _)| *r == resource)
            .expect("every resource has a gate")
            .1
    }
}
