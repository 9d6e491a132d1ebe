//! Which algorithm picks a new flow's backend: round robin (kube-proxy's behaviour) or
//! Maglev consistent hashing (`maglev`), chosen for the whole node by flags and per Service
//! by an annotation.

use crate::model::FrontendKind;

/// The annotation that chooses a Service's algorithm (`round-robin` or `maglev`), over
/// `--lb-algorithm`.
pub const ANNOTATION_LB_ALGORITHM: &str = "kproxy.io/lb-algorithm";

/// How new flows pick a backend. A `clap::ValueEnum` (as `SocketLbMode` is) so that
/// `--lb-algorithm` takes the annotation's spellings and shows these docs in its help.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum LbAlgorithm {
    /// In turn, each service port from a random start (kube-proxy picks at random).
    #[default]
    RoundRobin,
    /// By Maglev consistent hashing of the flow's addresses and ports.
    Maglev,
}

impl LbAlgorithm {
    /// The algorithm an `ANNOTATION_LB_ALGORITHM` value names, `None` for anything else:
    /// exact and lowercase, as Kubernetes' own enumerated annotation values are, so that a
    /// typo is reported rather than guessed at.
    pub fn from_annotation(value: &str) -> Option<Self> {
        match value {
            "round-robin" => Some(Self::RoundRobin),
            "maglev" => Some(Self::Maglev),
            _ => None,
        }
    }
}

/// Which frontends Maglev applies to when chosen (`--maglev-scope`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum MaglevScope {
    /// NodePorts, external IPs and load-balancer IPs: traffic that may reach any node
    /// (ECMP, a load balancer in front), where the same flow must find the same backend.
    #[default]
    External,
    /// Every frontend, cluster IPs too.
    All,
}

/// The node's choice of algorithm (`--lb-algorithm`, `--maglev-scope`; the table size is
/// the datapath's, `MapSizes::maglev_table_size`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbPolicy {
    /// For Services without the annotation.
    pub algorithm: LbAlgorithm,
    pub maglev_scope: MaglevScope,
}

impl LbPolicy {
    /// Whether new flows to a `kind` frontend of a Service whose annotation says
    /// `annotated` pick their backend by Maglev. The annotation overrides the node's
    /// algorithm but not its scope: with the `External` scope a Service's cluster IPs stay
    /// round robin even when it asks for Maglev: a cluster IP's flows start and stay on the
    /// client's node, so they gain nothing from every node choosing alike.
    pub fn maglev(&self, annotated: Option<LbAlgorithm>, kind: FrontendKind) -> bool {
        annotated.unwrap_or(self.algorithm) == LbAlgorithm::Maglev
            && (self.maglev_scope == MaglevScope::All || kind.is_external())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_KINDS: [FrontendKind; 4] = [
        FrontendKind::ClusterIp,
        FrontendKind::NodePort,
        FrontendKind::ExternalIp,
        FrontendKind::LoadBalancer,
    ];
    const EXTERNAL: &[FrontendKind] = &[
        FrontendKind::NodePort,
        FrontendKind::ExternalIp,
        FrontendKind::LoadBalancer,
    ];
    const NONE: &[FrontendKind] = &[];

    #[test]
    fn maglev_follows_the_annotation_then_the_node_within_the_scope() {
        use LbAlgorithm::{Maglev, RoundRobin};
        use MaglevScope::{All, External};
        /// (node algorithm, scope, annotation, the kinds that use Maglev)
        type Case = (
            LbAlgorithm,
            MaglevScope,
            Option<LbAlgorithm>,
            &'static [FrontendKind],
        );
        let cases: [Case; 12] = [
            (RoundRobin, External, None, NONE),
            (RoundRobin, All, None, NONE),
            (RoundRobin, External, Some(RoundRobin), NONE),
            (RoundRobin, All, Some(RoundRobin), NONE),
            (RoundRobin, External, Some(Maglev), EXTERNAL),
            (RoundRobin, All, Some(Maglev), &ALL_KINDS),
            (Maglev, External, None, EXTERNAL),
            (Maglev, All, None, &ALL_KINDS),
            (Maglev, External, Some(Maglev), EXTERNAL),
            (Maglev, All, Some(Maglev), &ALL_KINDS),
            (Maglev, External, Some(RoundRobin), NONE),
            (Maglev, All, Some(RoundRobin), NONE),
        ];
        for (algorithm, maglev_scope, annotated, want) in cases {
            let policy = LbPolicy {
                algorithm,
                maglev_scope,
            };
            for kind in ALL_KINDS {
                assert_eq!(
                    policy.maglev(annotated, kind),
                    want.contains(&kind),
                    "{algorithm:?}, {maglev_scope:?}, annotated {annotated:?}: {kind}"
                );
            }
        }
    }

    #[test]
    fn the_default_policy_is_round_robin_everywhere() {
        let policy = LbPolicy::default();
        assert!(ALL_KINDS.iter().all(|&kind| !policy.maglev(None, kind)));
    }

    #[test]
    fn annotation_values_are_exact() {
        let cases = [
            ("maglev", Some(LbAlgorithm::Maglev)),
            ("round-robin", Some(LbAlgorithm::RoundRobin)),
            ("Maglev", None),
            ("ROUND-ROBIN", None),
            ("roundrobin", None),
            (" maglev", None),
            ("", None),
        ];
        for (value, want) in cases {
            assert_eq!(LbAlgorithm::from_annotation(value), want, "{value:?}");
        }
    }

    #[test]
    fn the_annotation_and_the_flag_spell_algorithms_alike() {
        use clap::ValueEnum as _;
        for &algorithm in LbAlgorithm::value_variants() {
            let flag = algorithm.to_possible_value().expect("not hidden");
            assert_eq!(
                LbAlgorithm::from_annotation(flag.get_name()),
                Some(algorithm)
            );
        }
    }
}
