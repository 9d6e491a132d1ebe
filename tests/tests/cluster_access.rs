//! kproxy's access to the API, judged by the real authorizer (RBAC on a real API server):
//! the ClusterRole in `deploy/kproxy.yaml` grants what kproxy watches and nothing more, kproxy
//! uses every verb it is granted and is refused none, and a role missing a verb makes kproxy
//! say so loudly (an error naming the verb, a metric) until the role is fixed.

mod support;

use std::{collections::BTreeSet, time::Duration};

use kproxy_testbed::{
    TopologyOptions,
    kubernetes::{access::Permission, kproxy_access::DEPLOY_MANIFEST},
    require_privileges,
};
use serde_json::json;
use support::{
    agent::wait_until,
    cluster::{ClusterBed, service},
};

const KPROXY_USER: &str = "system:serviceaccount:kube-system:kproxy";
const FOLLOW: Duration = Duration::from_secs(10);

/// What kproxy declares it needs, as single permissions.
fn required() -> BTreeSet<Permission> {
    kproxy::source::api::REQUIRED_ACCESS
        .iter()
        .flat_map(|(group, resource, verbs)| {
            verbs.iter().map(|verb| {
                (
                    (*group).to_owned(),
                    (*resource).to_owned(),
                    (*verb).to_owned(),
                )
            })
        })
        .collect()
}

#[test]
fn kproxy_is_granted_exactly_what_it_watches_and_uses_all_of_it() {
    if !require_privileges("kproxy_is_granted_exactly_what_it_watches_and_uses_all_of_it") {
        return;
    }
    let cluster = ClusterBed::new(TopologyOptions::default());
    // What every authenticated service account may do anyway (review itself, ...): a
    // service account bound to nothing shows it.
    cluster.apply(&json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "nobody", "namespace": "kube-system"},
    }));
    let nobody = cluster
        .plane
        .token_kubeconfig(
            "kube-system",
            "nobody",
            &cluster.dir.path().join("nobody.kubeconfig"),
        )
        .expect("a token for nobody");
    let baseline = cluster
        .plane
        .resource_permissions(&nobody, "default")
        .expect("nobody's rules");
    let granted: BTreeSet<Permission> = cluster
        .plane
        .resource_permissions(&cluster.kubeconfig, "default")
        .expect("kproxy's rules")
        .difference(&baseline)
        .cloned()
        .collect();
    assert_eq!(granted, required(), "deploy/kproxy.yaml grants");

    // kproxy at work (the review above was the test's, in kproxy's name): it lists and
    // watches, and programs a service.
    let reviews = cluster
        .plane
        .audit_events(KPROXY_USER)
        .expect("audit log")
        .len();
    let _agent = cluster.start_agent(&[]);
    let b = cluster.backends();
    let app = json!({"app": "web"});
    cluster.apply(&service("web", &app, &json!({})));
    cluster.ready_pod("web-0", &app, b[0]);
    let vip = cluster.cluster_ip("web");
    cluster.wait_for_backends(&format!("{vip}:80/TCP"), &ClusterBed::at(&b[..1]), FOLLOW);

    let mut events = cluster.plane.audit_events(KPROXY_USER).expect("audit log");
    events.drain(..reviews);
    let refused: Vec<String> = events
        .iter()
        .filter(|e| {
            e["responseStatus"]["code"]
                .as_u64()
                .is_none_or(|c| c >= 400)
        })
        .map(|e| {
            format!(
                "{} {} → {}",
                e["verb"], e["requestURI"], e["responseStatus"]
            )
        })
        .collect();
    assert!(refused.is_empty(), "kproxy was refused: {refused:#?}");
    let used: BTreeSet<Permission> = events
        .iter()
        .filter_map(|e| {
            let object = e["objectRef"].as_object()?;
            let group = object
                .get("apiGroup")
                .and_then(|g| g.as_str())
                .unwrap_or("");
            Some((
                group.to_owned(),
                object.get("resource")?.as_str()?.to_owned(),
                e["verb"].as_str()?.to_owned(),
            ))
        })
        .collect();
    assert_eq!(used, required(), "what kproxy asked the API server for");
}

#[test]
fn a_role_missing_a_verb_fails_loudly_until_it_is_granted() {
    if !require_privileges("a_role_missing_a_verb_fails_loudly_until_it_is_granted") {
        return;
    }
    let cluster = ClusterBed::new(TopologyOptions::default());
    // The role as an operator might trim it: EndpointSlices listed but not watched.
    cluster.apply(&json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "kproxy"},
        "rules": [
            {"apiGroups": [""], "resources": ["services", "nodes"], "verbs": ["list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]},
        ],
    }));
    let agent = cluster.start_agent(&[]);
    let forbidden = r#"kproxy_watch_errors_total{resource="endpointslices",reason="forbidden"}"#;
    wait_until("the refusal counted", FOLLOW, || {
        cluster.metric(forbidden).filter(|n| *n >= 1.0)
    });
    // client-go's request metrics, as kube-proxy exports them, count the refused requests
    // and the ones that succeeded, by the real API server's answers.
    let metrics = cluster.metrics();
    let requests = |code: &str| -> f64 {
        let prefix = format!(r#"rest_client_requests_total{{code="{code}",method="GET",host=""#);
        metrics
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    assert!(requests("403") >= 1.0, "{metrics}");
    assert!(
        requests("200") >= 2.0,
        "Services and Nodes listed: {metrics}"
    );
    let log = agent.log_text();
    let error = log
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("kproxy may not watch endpointslices"))
        .unwrap_or_else(|| panic!("an error naming the verb: {log}"));
    assert!(
        error.contains("deploy/kproxy.yaml") && error.contains("discovery.k8s.io"),
        "{error}"
    );

    // Meanwhile Services are followed, their endpoints are not.
    let b = cluster.backends();
    let app = json!({"app": "web"});
    cluster.apply(&service("web", &app, &json!({})));
    cluster.ready_pod("web-0", &app, b[0]);
    let frontend = format!("{}:80/TCP", cluster.cluster_ip("web"));
    cluster.wait_for_backends(&frontend, &[], FOLLOW);
    std::thread::sleep(Duration::from_secs(1));
    cluster.wait_for_backends(&frontend, &[], Duration::ZERO);

    // The operator applies the manifest's role again: kproxy recovers by itself.
    cluster
        .plane
        .apply_yaml(DEPLOY_MANIFEST, &["DaemonSet"])
        .expect("applying deploy/kproxy.yaml");
    cluster.wait_for_backends(&frontend, &ClusterBed::at(&b[..1]), Duration::from_mins(1));
    assert!(
        agent
            .log_text()
            .contains(r#"watch recovered resource="endpointslices""#),
        "{}",
        agent.log_text()
    );
}
