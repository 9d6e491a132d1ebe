//! The manifests in `deploy/` checked offline against Kubernetes and against what the agent
//! really is: the base and the kind overlay rendered by kubectl's kustomize, every object
//! valid under Kubernetes 1.37's OpenAPI schemas (`kubernetes-validate`) and known field by
//! field to the API types, `deploy/kproxy.yaml` the base rendered, the DaemonSet's command
//! line accepted by `kproxy run`, RBAC granting exactly what the API source watches, probes
//! on the ports the agent serves, the pod unprivileged and on every node, the kind overlay in
//! step with its cluster config. (deploy_capabilities.rs proves the capability set on the
//! real agent, deploy_dry_run.rs has the real API server judge the objects.)

mod deploy_support;

use std::{
    collections::BTreeSet,
    io::Write,
    process::{Command, Stdio},
    sync::OnceLock,
};

use deploy_support::{
    BASE, KIND, RENDERED_BASE, container, documents, environment, expanded_args, flag, kind,
    kustomize, pod_spec, repo_path, strict, the, volume_of,
};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, PodSpec, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kproxy_testbed::python_tool::KUBERNETES_VALIDATE;
use serde_json::Value;

/// The schemas' release: the test bed's Kubernetes (kubernetes_validate ships them).
const SCHEMA_VERSION: &str = "1.37.0";
/// The agent's container and the init container that sets its sysctls.
const AGENT: &str = "kproxy";
const SYSCTLS: &str = "sysctls";
/// The oom_score_adj the kubelet gives a system-node-critical pod's processes.
const NODE_CRITICAL_OOM_SCORE_ADJ: &str = "-997";

/// A rendered kustomization: its text and its objects.
struct Rendered {
    dir: &'static str,
    text: String,
    docs: Vec<Value>,
}

fn render(dir: &'static str) -> Rendered {
    let text = kustomize(&repo_path(dir));
    let docs = documents(&text);
    Rendered { dir, text, docs }
}

fn base() -> &'static Rendered {
    static RENDERED: OnceLock<Rendered> = OnceLock::new();
    RENDERED.get_or_init(|| render(BASE))
}

fn kind_overlay() -> &'static Rendered {
    static RENDERED: OnceLock<Rendered> = OnceLock::new();
    RENDERED.get_or_init(|| render(KIND))
}

fn both() -> [&'static Rendered; 2] {
    [base(), kind_overlay()]
}

#[test]
fn deploy_kproxy_yaml_is_the_base_rendered() {
    let file = std::fs::read_to_string(repo_path(RENDERED_BASE)).expect("reading the manifest");
    let body_at = file
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.len() + 1)
        .sum::<usize>();
    assert!(body_at > 0, "{RENDERED_BASE} opens with comments");
    assert!(
        file[body_at..] == base().text,
        "{RENDERED_BASE} is not `kubectl kustomize {BASE}` after its comments; regenerate it \
         with the command in its header:\n{}",
        base().text
    );
}

/// Runs kubernetes-validate (strict: unknown fields fail) on `yaml`; its exit status and
/// report.
fn schema_check(yaml: &str) -> (bool, String) {
    let program = KUBERNETES_VALIDATE
        .ensure()
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut child = Command::new(program)
        .args(["--strict", "--kubernetes-version", SCHEMA_VERSION, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting kubernetes-validate");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("writing to kubernetes-validate");
    let out = child.wait_with_output().expect("kubernetes-validate");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

#[test]
fn every_rendered_object_passes_the_kubernetes_schemas() {
    for rendered in both() {
        let (ok, report) = schema_check(&rendered.text);
        assert!(ok, "{}: {report}", rendered.dir);
        let passed = report.lines().filter(|l| l.contains(" passed ")).count();
        assert_eq!(
            passed,
            rendered.docs.len(),
            "{}: every object validated against {SCHEMA_VERSION}: {report}",
            rendered.dir
        );
    }
    // The check can fail: a misspelled field.
    let broken = base().text.replacen(
        "hostNetwork: true",
        "hostNetwork: true\n      hostNetwrk: true",
        1,
    );
    let (ok, report) = schema_check(&broken);
    assert!(!ok && report.contains("hostNetwrk"), "{report}");
}

#[test]
fn every_rendered_object_is_a_known_kubernetes_object() {
    for rendered in both() {
        let docs = &rendered.docs;
        let kinds: BTreeSet<&str> = docs.iter().map(kind).collect();
        assert_eq!(
            kinds,
            BTreeSet::from([
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "DaemonSet",
                "ServiceAccount"
            ]),
            "{}",
            rendered.dir
        );
        for doc in docs {
            match kind(doc) {
                "ServiceAccount" => drop(strict::<ServiceAccount>(doc)),
                "ClusterRole" => drop(strict::<ClusterRole>(doc)),
                "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(doc)),
                "ConfigMap" => drop(strict::<ConfigMap>(doc)),
                _ => drop(strict::<DaemonSet>(doc)),
            }
        }
    }
}

#[test]
fn the_daemonset_command_line_is_one_kproxy_accepts() {
    for rendered in both() {
        let pod = pod_spec(&rendered.docs);
        let agent = container(&pod, AGENT);
        assert_eq!(
            agent.command, None,
            "the image's entrypoint is kproxy (deploy/Dockerfile)"
        );
        let env = environment(agent, &rendered.docs, "node-1");
        let args = expanded_args(agent, &env);
        assert_eq!(args.first().map(String::as_str), Some("run"));
        kproxy::cli::check_run_args(args[1..].iter().cloned()).unwrap_or_else(|e| {
            panic!(
                "{}: kproxy rejects the DaemonSet's arguments: {e}",
                rendered.dir
            )
        });
        assert_eq!(
            flag(&args, "node-name"),
            Some("node-1"),
            "from the downward API"
        );
        assert!(
            flag(&args, "manifests").is_none() && flag(&args, "kubeconfig").is_none(),
            "in a cluster the agent reads the API with its service account"
        );
        assert_eq!(
            flag(&args, "oom-score-adj"),
            Some(NODE_CRITICAL_OOM_SCORE_ADJ),
            "lower would need SYS_RESOURCE"
        );
        // The init container sets the sysctls of exactly the interfaces the agent attaches.
        let sysctls = container(&pod, SYSCTLS);
        let init_env = environment(sysctls, &rendered.docs, "node-1");
        assert_eq!(
            init_env.get("KPROXY_ATTACH"),
            flag(&args, "attach").map(str::to_owned).as_ref()
        );
        assert_eq!(
            init_env.get("KPROXY_LOCALHOST_NODEPORTS"),
            flag(&args, "iptables-localhost-nodeports")
                .map(str::to_owned)
                .as_ref()
        );
        pins_and_probes(&pod, &args);
    }
}

/// The pins are on the host's bpffs, and the probes ask the agent's own endpoints on the
/// port it serves them on: liveness /livez, which neither a leaving node nor an API server
/// unreachable at start fails (a restart would not help either).
fn pins_and_probes(pod: &PodSpec, args: &[String]) {
    let agent = container(pod, AGENT);
    let pin_dir = flag(args, "pin-dir").expect("--pin-dir");
    let mount = agent
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| pin_dir.starts_with(&m.mount_path))
        .expect("the pin dir is on a mounted volume");
    let volume = volume_of(pod, mount);
    assert_eq!(
        volume.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/sys/fs/bpf"),
        "pins (and the datapath) outlive the pod"
    );
    let healthz_port = flag(args, "healthz-bind-address")
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<i32>().ok())
        .expect("--healthz-bind-address");
    for (probe, path) in [
        (&agent.liveness_probe, "/livez"),
        (&agent.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an HTTP probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(healthz_port));
    }
}

#[test]
fn the_agent_runs_on_every_node_unprivileged() {
    for rendered in both() {
        let ds: DaemonSet = the(&rendered.docs, "DaemonSet");
        let spec = ds.spec.expect("spec");
        let strategy = spec.update_strategy.expect("an update strategy");
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        assert_eq!(
            strategy.rolling_update.and_then(|r| r.max_unavailable),
            Some(IntOrString::Int(1))
        );
        let pod = spec.template.spec.expect("pod spec");
        assert_eq!(pod.host_network, Some(true), "attached to the node's links");
        assert_eq!(
            pod.dns_policy.as_deref(),
            Some("Default"),
            "cluster DNS is a Service the agent itself serves"
        );
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        let tolerations = pod.tolerations.clone().unwrap_or_default();
        assert!(
            tolerations.len() == 1
                && tolerations[0].operator.as_deref() == Some("Exists")
                && tolerations[0].key.is_none()
                && tolerations[0].effect.is_none(),
            "every taint tolerated: {tolerations:?}"
        );
        assert!(
            pod.termination_grace_period_seconds
                .is_some_and(|s| (1..=30).contains(&s))
        );
        for c in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
            assert!(
                requests.is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")),
                "{}: CPU and memory requested",
                c.name
            );
        }
        let security = container(&pod, AGENT)
            .security_context
            .clone()
            .expect("a security context");
        assert_ne!(security.privileged, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        let caps = security.capabilities.expect("capabilities");
        assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]), "only what it adds");
        let added = caps.add.unwrap_or_default();
        assert!(
            !added.is_empty() && !added.iter().any(|c| c == "SYS_ADMIN"),
            "{added:?}"
        );
        let init = container(&pod, SYSCTLS).security_context.clone();
        assert!(
            init.as_ref()
                .and_then(|s| s.capabilities.as_ref()?.drop.clone())
                .is_some_and(|d| d == ["ALL"])
                && init
                    .as_ref()
                    .and_then(|s| s.capabilities.as_ref()?.add.as_ref())
                    .is_none(),
            "net sysctls are root's: no capability needed"
        );
        let privileged: Vec<&str> = pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
            .filter(|c| c.security_context.as_ref().and_then(|s| s.privileged) == Some(true))
            .map(|c| c.name.as_str())
            .collect();
        let allowed: &[&str] = if rendered.dir == KIND {
            &["bpffs"]
        } else {
            &[]
        };
        assert_eq!(
            privileged, allowed,
            "{}: privileged containers",
            rendered.dir
        );
    }
}

#[test]
fn rbac_grants_exactly_what_the_api_source_watches() {
    for rendered in both() {
        let docs = &rendered.docs;
        let role: ClusterRole = the(docs, "ClusterRole");
        let mut granted: BTreeSet<(String, String, String)> = BTreeSet::new();
        for rule in role.rules.iter().flatten() {
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        granted.insert((group.clone(), resource.clone(), verb.clone()));
                    }
                }
            }
        }
        let needed: BTreeSet<(String, String, String)> = kproxy::source::api::REQUIRED_ACCESS
            .iter()
            .flat_map(|(group, resource, verbs)| {
                verbs
                    .iter()
                    .map(move |v| ((*group).to_owned(), (*resource).to_owned(), (*v).to_owned()))
            })
            .collect();
        assert_eq!(
            granted, needed,
            "read-only, and nothing more than the watches use"
        );

        let binding: ClusterRoleBinding = the(docs, "ClusterRoleBinding");
        let account: ServiceAccount = the(docs, "ServiceAccount");
        let ds: DaemonSet = the(docs, "DaemonSet");
        assert_eq!(
            binding.role_ref.name,
            role.metadata.name.clone().unwrap_or_default()
        );
        let subject = &binding.subjects.expect("subjects")[0];
        assert_eq!(Some(&subject.name), account.metadata.name.as_ref());
        assert_eq!(subject.namespace, account.metadata.namespace);
        let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
        assert_eq!(pod.service_account_name, account.metadata.name);
        assert_eq!(ds.metadata.namespace, account.metadata.namespace);
        assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    }
}

#[test]
fn the_kind_overlay_matches_its_cluster_config() {
    let text = std::fs::read_to_string(repo_path(KIND).join("cluster.yaml")).expect("cluster.yaml");
    let cluster = &documents(&text)[0];
    assert_eq!(cluster["kind"], "Cluster");
    assert_eq!(
        cluster["networking"]["kubeProxyMode"], "none",
        "kproxy replaces kube-proxy"
    );
    let docs = &kind_overlay().docs;
    let pod = pod_spec(docs);
    let agent = container(&pod, AGENT);
    let env = environment(agent, docs, "kind-worker");
    let args = expanded_args(agent, &env);
    assert_eq!(
        flag(&args, "cluster-cidr"),
        cluster["networking"]["podSubnet"].as_str(),
        "the pods' addresses are the cluster's own"
    );
    let cluster_name = cluster["name"].as_str().expect("a cluster name");
    assert_eq!(
        env.get("KUBERNETES_SERVICE_HOST").map(String::as_str),
        Some(format!("{cluster_name}-control-plane").as_str()),
        "the API server by its node's name, as kind's kubelets reach it"
    );
    assert_eq!(
        env.get("KUBERNETES_SERVICE_PORT").map(String::as_str),
        Some("6443")
    );
    assert_eq!(
        flag(&args, "attach"),
        Some("eth0,veth*"),
        "the node's link and the pods' veths"
    );
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        assert_eq!(
            c.image.as_deref(),
            Some("kproxy:dev"),
            "{}: what `kind load` loads",
            c.name
        );
        assert_eq!(c.image_pull_policy.as_deref(), Some("Never"), "{}", c.name);
    }
    // kind's nodes have no bpffs: one is mounted before the agent starts.
    let init: Vec<&str> = pod
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["bpffs", SYSCTLS]);
    let bpffs = container(&pod, "bpffs");
    assert!(
        bpffs
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/sys/fs/bpf"
                && m.mount_propagation.as_deref() == Some("Bidirectional")),
        "the mount reaches the node"
    );
}
