//! Manifest parsing: documents, kinds, and bad input reported with file and position.

use super::{parse_str, read_path};
use crate::problem::ProblemKind;

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: 198.19.0.10
  ports:
  - name: http
    port: 80
    targetPort: http
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
endpoints:
- addresses: ["198.18.2.2"]
  conditions: {ready: true}
---
"#;

#[test]
fn reads_services_and_slices_from_several_documents() {
    let snap = parse_str(WEB, "web.yaml");
    assert!(snap.problems.is_empty(), "{:?}", snap.problems);
    assert_eq!(snap.services.len(), 1);
    assert_eq!(snap.slices.len(), 1);
    assert_eq!(
        snap.services[0].metadata.namespace.as_deref(),
        Some("default"),
        "namespace defaults"
    );
    assert_eq!(snap.slices[0].metadata.namespace.as_deref(), Some("shop"));
    // Where each document's content begins (WEB starts with an empty line).
    assert_eq!(snap.origins["Service default/web"], "web.yaml:2");
    assert_eq!(snap.origins["EndpointSlice shop/web-1"], "web.yaml:13");
}

#[test]
fn bad_documents_are_reported_with_position_and_skipped() {
    let text = format!(
        "{WEB}\
apiVersion: v1
kind: Service
metadata: {{name: broken
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: app}}
---
just: a map
---
apiVersion: v1
kind: Service
metadata: {{name: typed}}
spec:
  ports:
  - port: eighty
---
apiVersion: v1
kind: Service
metadata: {{name: ok}}
spec: {{clusterIP: 198.19.0.11, ports: [{{port: 53, protocol: UDP}}]}}
"
    );
    let snap = parse_str(&text, "mixed.yaml");
    let names: Vec<_> = snap
        .services
        .iter()
        .filter_map(|s| s.metadata.name.as_deref())
        .collect();
    assert_eq!(
        names,
        ["web", "ok"],
        "good documents around bad ones still count"
    );
    let got: Vec<(ProblemKind, String)> = snap
        .problems
        .iter()
        .map(|p| (p.kind, p.origin.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        got,
        [
            (ProblemKind::Parse, "mixed.yaml:28".to_owned()),
            (ProblemKind::UnknownKind, "mixed.yaml:32".to_owned()),
            (ProblemKind::UnknownKind, "mixed.yaml:36".to_owned()),
            (ProblemKind::Parse, "mixed.yaml:38".to_owned()),
        ]
    );
    assert!(snap.problems[1].message.contains("apps/v1 Deployment"));
    assert!(
        snap.problems[3].message.contains("invalid Service"),
        "{}",
        snap.problems[3]
    );
}

/// Document boundaries come from a YAML parser: a `---` line inside a block scalar is text,
/// `...` ends a document, documents of comments only or of nothing are skipped quietly, and a
/// broken document is reported with its number and the line of its error.
#[test]
fn documents_are_split_by_a_yaml_parser() {
    let text = "\
# The notes service.
apiVersion: v1
kind: Service
metadata:
  name: notes
  annotations:
    note: |
      the first line
      ---
      not a document marker
spec: {clusterIP: 198.19.0.20}
...
---
# Nothing here yet.
---
---
apiVersion: v1
kind: Service
metadata: {name: broken
...
apiVersion: v1
kind: Service
metadata: {name: after}
spec: {clusterIP: 198.19.0.21}
";
    let snap = parse_str(text, "shop.yaml");
    let names: Vec<_> = snap
        .services
        .iter()
        .filter_map(|s| s.metadata.name.as_deref())
        .collect();
    assert_eq!(names, ["notes", "after"]);
    let note = snap.services[0]
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("note"));
    assert_eq!(
        note.map(String::as_str),
        Some("the first line\n---\nnot a document marker\n")
    );
    assert_eq!(snap.origins["Service default/notes"], "shop.yaml:2");
    assert_eq!(snap.origins["Service default/after"], "shop.yaml:21");
    let [problem] = snap.problems.as_slice() else {
        panic!("one problem: {:#?}", snap.problems);
    };
    assert_eq!(problem.kind, ProblemKind::Parse);
    assert_eq!(problem.origin.as_deref(), Some("shop.yaml:17"));
    assert!(
        problem.message.contains("document 4 is not valid YAML"),
        "{problem}"
    );
    assert!(problem.message.contains("line 19"), "{problem}");
}

#[test]
fn lists_are_unpacked_and_later_definitions_win() {
    let text = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"clusterIP": "198.19.0.1"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"clusterIP": "198.19.0.2"}}
    ]}"#;
    let snap = parse_str(text, "list.json");
    assert_eq!(snap.services.len(), 1);
    let spec = snap.services[0].spec.as_ref().expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("198.19.0.2"));
    assert_eq!(snap.problems.len(), 1);
    assert_eq!(snap.problems[0].kind, ProblemKind::Conflict);
    assert_eq!(
        snap.problems[0].origin.as_deref(),
        Some("list.json:1 item 1")
    );
}

#[test]
fn reads_a_directory_in_name_order_skipping_other_files() {
    let dir = std::env::temp_dir().join(format!("kproxy-manifests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let service = |name: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: {ip}}}\n"
        )
    };
    std::fs::write(dir.join("b.yaml"), service("b", "198.19.0.2")).expect("write");
    std::fs::write(dir.join("a.yml"), service("a", "198.19.0.1")).expect("write");
    std::fs::write(dir.join(".a.yaml.swp"), "garbage: [").expect("write");
    std::fs::write(dir.join("notes.txt"), "not a manifest").expect("write");
    let snap = read_path(&dir);
    let names: Vec<_> = snap
        .services
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert!(snap.problems.is_empty(), "{:?}", snap.problems);
    let missing = read_path(&dir.join("nope.yaml"));
    assert_eq!(missing.problems.len(), 1);
    assert_eq!(missing.problems[0].kind, ProblemKind::Read);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn the_sample_manifests_are_clean() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let snap = read_path(&examples);
    assert!(snap.problems.is_empty(), "{:?}", snap.problems);
    let (desired, problems) = crate::model::desired_state(&snap.services, &snap.slices);
    assert!(problems.is_empty(), "{problems:?}");
    let frontends: Vec<String> = desired
        .iter()
        .map(|(k, f)| format!("{k} {} {:?}", f.endpoints.len(), f.affinity_timeout_s))
        .collect();
    assert_eq!(
        frontends,
        [
            "198.19.0.10:80/TCP 3 None",
            "198.19.0.11:80/TCP 3 Some(600)",
            "198.19.0.12:80/TCP 0 None",
            "198.19.0.53:53/UDP 3 None",
        ]
    );
}

/// A bad document of each sort, in YAML and in JSON: reported with its position, its kind,
/// and the object it names (when it names one); the good document after it still counts.
#[test]
#[expect(clippy::too_many_lines, reason = "one table of cases")]
fn bad_documents_name_their_object() {
    // (case, document, problem kind, object named, part of the message)
    let cases: &[(&str, &str, ProblemKind, Option<&str>, &str)] = &[
        (
            "a port that is not a number",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 198.19.0.10, ports: [{port: eighty}]}\n",
            ProblemKind::Parse,
            Some("Service shop/web"),
            "invalid Service",
        ),
        (
            "a port number beyond i32",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 198.19.0.10, ports: [{port: 99999999999}]}\n",
            ProblemKind::Parse,
            Some("Service default/web"),
            "invalid Service",
        ),
        (
            "ports that are not a list",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: 80}\n",
            ProblemKind::Parse,
            Some("Service default/web"),
            "invalid Service",
        ),
        (
            "a slice endpoint port that is not a number",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1}\naddressType: IPv4\nports: [{name: http, port: \"8080\"}]\nendpoints: []\n",
            ProblemKind::Parse,
            Some("EndpointSlice default/web-1"),
            "invalid EndpointSlice",
        ),
        (
            "addresses that are not a list",
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1}\naddressType: IPv4\nendpoints: [{addresses: 198.18.2.2}]\n",
            ProblemKind::Parse,
            Some("EndpointSlice default/web-1"),
            "invalid EndpointSlice",
        ),
        (
            "a name that is not a string: no name to give",
            "apiVersion: v1\nkind: Service\nmetadata: {name: [web]}\n",
            ProblemKind::Parse,
            Some("Service default/<unnamed>"),
            "invalid Service",
        ),
        (
            "a kind kproxy does not handle",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app, namespace: shop}\n",
            ProblemKind::UnknownKind,
            Some("Deployment shop/app"),
            "apps/v1 Deployment is not handled",
        ),
        (
            "a version kproxy does not handle",
            "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: web-1}\n",
            ProblemKind::UnknownKind,
            // Whether an unknown kind has namespaces is unknown: named as written.
            Some("EndpointSlice web-1"),
            "discovery.k8s.io/v1beta1 EndpointSlice",
        ),
        (
            "not YAML at all",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web\n",
            ProblemKind::Parse,
            None,
            "not valid YAML",
        ),
    ];
    let good =
        "apiVersion: v1\nkind: Service\nmetadata: {name: good}\nspec: {clusterIP: 198.19.0.99}\n";
    for (case, doc, kind, object, part) in cases {
        let yaml = format!("{doc}---\n{good}");
        let json_doc = serde_saphyr::from_str::<serde_json::Value>(doc).ok();
        let mut inputs = vec![("bad.yaml", yaml)];
        // The same document in JSON, in a List with the good one.
        if let Some(doc) = json_doc {
            let good: serde_json::Value = serde_saphyr::from_str(good).expect("good document");
            let list =
                serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [doc, good]});
            inputs.push(("bad.json", list.to_string()));
        }
        for (file, text) in inputs {
            let snap = parse_str(&text, file);
            let names: Vec<_> = snap
                .services
                .iter()
                .filter_map(|s| s.metadata.name.as_deref())
                .collect();
            assert_eq!(
                names,
                ["good"],
                "case {case} ({file}): the good document counts"
            );
            let [problem] = snap.problems.as_slice() else {
                panic!(
                    "case {case} ({file}): one problem, got {:#?}",
                    snap.problems
                );
            };
            assert_eq!(problem.kind, *kind, "case {case} ({file}): {problem}");
            assert_eq!(
                problem.object.as_deref(),
                *object,
                "case {case} ({file}): {problem}"
            );
            assert!(
                problem.message.contains(part),
                "case {case} ({file}): {problem}"
            );
            let origin = problem.origin.as_deref().unwrap_or_default();
            assert!(origin.starts_with(file), "case {case}: {problem}");
        }
    }
}

/// One EndpointSlice (or Service) defined twice: the later definition wins, as a later
/// `kubectl apply` would, and the duplicate is reported naming the object and both places.
#[test]
fn duplicate_slice_names_are_reported_and_the_later_wins() {
    let slice = |addr: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: shop}}\naddressType: IPv4\nendpoints: [{{addresses: [\"{addr}\"]}}]\n"
        )
    };
    let snap = parse_str(
        &format!("{}---\n{}", slice("198.18.2.2"), slice("198.18.3.2")),
        "twice.yaml",
    );
    assert_eq!(snap.slices.len(), 1);
    assert_eq!(snap.slices[0].endpoints[0].addresses, ["198.18.3.2"]);
    let [problem] = snap.problems.as_slice() else {
        panic!("{:#?}", snap.problems);
    };
    assert_eq!(problem.kind, ProblemKind::Conflict);
    assert_eq!(problem.object.as_deref(), Some("EndpointSlice shop/web-1"));
    assert_eq!(problem.origin.as_deref(), Some("twice.yaml:7"));
    assert!(
        problem.message.contains("first at twice.yaml:1"),
        "{problem}"
    );

    // Across files: the file later in name order wins.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a.yaml"), slice("198.18.2.2")).expect("write");
    std::fs::write(dir.path().join("b.yaml"), slice("198.18.3.2")).expect("write");
    let snap = read_path(dir.path());
    assert_eq!(snap.slices.len(), 1);
    assert_eq!(snap.slices[0].endpoints[0].addresses, ["198.18.3.2"]);
    let [problem] = snap.problems.as_slice() else {
        panic!("{:#?}", snap.problems);
    };
    assert_eq!(problem.kind, ProblemKind::Conflict);
    assert_eq!(problem.object.as_deref(), Some("EndpointSlice shop/web-1"));
    assert!(problem.message.contains("a.yaml"), "{problem}");
}

/// A NodePort/LoadBalancer Service and a Node as a manifest writes them: every field the
/// external frontends read reaches the model through the manifest source (parsed, trimmed).
#[test]
fn external_service_fields_and_the_nodes_pod_cidrs_reach_the_model() {
    use crate::{model::ClusterState, source::files::ManifestSource};
    let text = r#"
apiVersion: v1
kind: Service
metadata:
  name: shop
  namespace: web
  annotations:
    service.beta.kubernetes.io/load-balancer-source-ranges: 10.0.0.0/8
spec:
  type: LoadBalancer
  clusterIP: 198.19.0.20
  externalIPs: [192.0.2.11]
  externalTrafficPolicy: Local
  healthCheckNodePort: 30000
  loadBalancerSourceRanges: [203.0.113.0/25]
  ports:
  - name: http
    port: 80
    nodePort: 30080
status:
  loadBalancer:
    ingress:
    - ip: 192.0.2.10
      ipMode: VIP
    - ip: 192.0.2.12
      ipMode: Proxy
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: shop-1
  namespace: web
  labels: {kubernetes.io/service-name: shop}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: ["198.18.2.2"]
  nodeName: node-a
- addresses: ["198.18.3.2"]
  nodeName: node-b
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
spec:
  podCIDR: 10.244.1.0/24
  podCIDRs: [10.244.1.0/24]
status:
  addresses:
  - {type: InternalIP, address: 198.18.0.2}
"#;
    let dir = std::env::temp_dir().join(format!("kproxy-external-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("shop.yaml"), text).expect("write");
    let mut source = ManifestSource::new(&dir).with_node("node-a");
    let mut state = ClusterState::default();
    state.apply(source.refresh());
    std::fs::remove_dir_all(&dir).expect("cleanup");
    assert!(source.problems().is_empty(), "{:?}", source.problems());
    assert!(state.problems().is_empty(), "{:?}", state.problems());

    assert_eq!(
        state.node().pod_cidrs,
        vec!["10.244.1.0/24".parse::<ipnet::IpNet>().expect("cidr")]
    );
    assert_eq!(state.node().primary_ip(false), "198.18.0.2".parse().ok());
    let frontends: Vec<String> = state
        .desired()
        .iter()
        .map(|(k, f)| {
            format!(
                "{k} {:?} {} local={} ranges={:?}",
                f.kind,
                f.endpoints.len(),
                f.external_local,
                f.source_ranges
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            )
        })
        .collect();
    // The annotation is not read (kube-proxy reads the field only); the Proxy-mode ingress
    // is not captured.
    assert_eq!(
        frontends,
        [
            "*:30080/TCP NodePort 1 local=true ranges=[]",
            "*:30080/TCP (internal) NodePort 2 local=false ranges=[]",
            "192.0.2.10:80/TCP LoadBalancer 1 local=true ranges=[\"203.0.113.0/25\"]",
            "192.0.2.10:80/TCP (internal) LoadBalancer 2 local=false ranges=[\"203.0.113.0/25\"]",
            "192.0.2.11:80/TCP ExternalIp 1 local=true ranges=[]",
            "192.0.2.11:80/TCP (internal) ExternalIp 2 local=false ranges=[]",
            "198.19.0.20:80/TCP ClusterIp 2 local=false ranges=[]",
        ]
    );
    let health = state.health_checks();
    assert_eq!(health.len(), 1);
    assert_eq!(health[&30000].local_endpoints, 1);
}
