//! What a user may do, as the API server's authorizer answers it: a SelfSubjectRulesReview
//! made with the user's own credentials, flattened to single permissions.

use std::{collections::BTreeSet, path::Path};

use anyhow::{Context, Result};
use k8s_openapi::api::authorization::v1::{SelfSubjectRulesReview, SelfSubjectRulesReviewSpec};
use kube::{Api, api::PostParams};

use super::ControlPlane;

/// One permission on a resource: (API group, resource, verb); "" is the core group.
pub type Permission = (String, String, String);

impl ControlPlane {
    /// Every resource permission the user of `kubeconfig` holds in `namespace`, cluster-wide
    /// grants included, one (group, resource, verb) per entry; wildcards stay "*".
    pub fn resource_permissions(
        &self,
        kubeconfig: &Path,
        namespace: &str,
    ) -> Result<BTreeSet<Permission>> {
        let client = self.connect(kubeconfig)?;
        let review = SelfSubjectRulesReview {
            spec: SelfSubjectRulesReviewSpec {
                namespace: Some(namespace.to_owned()),
            },
            ..SelfSubjectRulesReview::default()
        };
        let answer = self
            .run(async move {
                Api::<SelfSubjectRulesReview>::all(client)
                    .create(&PostParams::default(), &review)
                    .await
            })
            .with_context(|| format!("a rules review as {}", kubeconfig.display()))?;
        let status = answer.status.context("a rules review without a status")?;
        let mut permissions = BTreeSet::new();
        for rule in status.resource_rules {
            for group in rule.api_groups.unwrap_or_default() {
                for resource in rule.resources.clone().unwrap_or_default() {
                    for verb in &rule.verbs {
                        permissions.insert((group.clone(), resource.clone(), verb.clone()));
                    }
                }
            }
        }
        Ok(permissions)
    }
}
