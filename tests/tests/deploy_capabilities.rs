//! The DaemonSet's security settings proven on the real agent: its `sysctls` init container
//! and then the agent run in the bed's node namespace as the container runtime would run
//! them: exactly the capabilities `deploy/kproxy.yaml` gives (in every set, the rest
//! dropped), no new privileges, `/proc/sys` read-only but for the init container's host path.
//! The agent then loads, attaches and serves a ClusterIP, and restarts onto its pins; without
//! any one of its capabilities, or without the init container, it fails. Not emulated: the
//! seccomp profile, a pid namespace, the image's read-only root, and the kubelet's
//! oom_score_adj (lowering a score needs SYS_RESOURCE, which this machine's root lacks; the
//! agent's attempt is logged and harmless).

mod deploy_support;
mod support;

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt::Write as _,
    net::{SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use deploy_support::{
    RENDERED_BASE, container, documents, environment, expanded_args, repo_path, volume_of,
};
use k8s_openapi::api::core::v1::{Container, PodSpec};
use kproxy_testbed::{
    LoggedProcess, TopologyOptions, require_privileges, tcp_request, topology::vip,
};
use serde_json::Value;
use support::agent::{Bed, TCP_PORT, kproxy_bin};

const NODE: &str = "node";
/// Linux's capabilities by number (linux/capability.h), as a container spec names them.
#[rustfmt::skip]
const CAPABILITIES: [&str; 41] = [
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
];
const TIMEOUT: Duration = Duration::from_secs(2);

/// The objects users apply, and the DaemonSet's pod among them.
fn manifest() -> (Vec<Value>, PodSpec) {
    let text = std::fs::read_to_string(repo_path(RENDERED_BASE)).expect("reading the manifest");
    let docs = documents(&text);
    let pod = deploy_support::pod_spec(&docs);
    (docs, pod)
}

/// What a container's security context leaves it: the capabilities it adds, the rest
/// dropped.
fn capabilities(c: &Container) -> Vec<String> {
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.clone())
        .unwrap_or_else(|| panic!("{}: capabilities", c.name));
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]), "{}", c.name);
    caps.add.unwrap_or_default()
}

/// The arguments of `unshare` that run `program args` as in a container: in a mount
/// namespace of its own where /proc/sys is read-only (as the runtime makes it for a container
/// that is not privileged), after bind-mounting each `(source, target)` of `binds` (the
/// container's host paths); with exactly `caps` in every capability set and no new
/// privileges (`allowPrivilegeEscalation: false`).
fn contained(
    binds: &[(&Path, &Path)],
    caps: &[String],
    program: &Path,
    args: &[String],
) -> Vec<OsString> {
    let mut script = String::from("set -e\n");
    for (source, target) in binds {
        let _ = writeln!(
            script,
            "mount --bind '{}' '{}'",
            source.display(),
            target.display()
        );
    }
    script += "mount --bind /proc/sys /proc/sys\nmount -o remount,bind,ro /proc/sys /proc/sys\n";
    script += "exec \"$@\"\n";
    let caps: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let mut wrapped: Vec<OsString> = ["--mount", "--propagation", "private", "/bin/sh", "-c"]
        .map(OsString::from)
        .to_vec();
    wrapped.push(script.into());
    wrapped.extend(
        [
            "container",
            "setpriv",
            "--nnp",
            "--inh-caps",
            &caps,
            "--ambient-caps",
            &caps,
        ]
        .map(OsString::from),
    );
    wrapped.extend(["--bounding-set", &caps, "--"].map(OsString::from));
    wrapped.push(program.into());
    wrapped.extend(args.iter().map(OsString::from));
    wrapped
}

/// Runs the `sysctls` init container's command in the node namespace, its host path
/// (the host's /proc/sys/net) bind-mounted where the container mounts it.
fn run_init_container(bed: &Bed, docs: &[Value], pod: &PodSpec) {
    let init = container(pod, "sysctls");
    let mount = &init.volume_mounts.as_ref().expect("mounts")[0];
    let volume = volume_of(pod, mount);
    let host_path = PathBuf::from(&volume.host_path.as_ref().expect("a host path").path);
    assert_eq!(host_path, Path::new("/proc/sys/net"));
    // Where the container sees it: a directory of the bed (nothing is created outside).
    let target = bed.dir.path().join("host-proc-sys-net");
    std::fs::create_dir_all(&target).expect("mount point");
    let command = init.command.as_ref().expect("a command");
    let mut args: Vec<String> = command[1..].to_vec();
    for arg in init.args.iter().flatten() {
        assert!(
            arg.contains(&mount.mount_path) || !arg.contains("/proc/sys"),
            "{arg}"
        );
        args.push(arg.replace(&mount.mount_path, &target.display().to_string()));
    }
    let mut env = environment(init, docs, NODE);
    env.insert("KPROXY_ATTACH".into(), bed.topo.node_ifaces().join(","));
    let wrapped = contained(
        &[(&host_path, &target)],
        &capabilities(init),
        Path::new(&command[0]),
        &args,
    );
    let output = bed
        .topo
        .node
        .command("unshare")
        .args(wrapped)
        .envs(&env)
        .output()
        .expect("running the init container");
    assert!(
        output.status.success(),
        "the init container failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Starts the agent as the DaemonSet's container, with `caps`, on the bed's interfaces and
/// manifests and pinning in its bpffs (under `pins`).
fn spawn_agent(
    bed: &Bed,
    docs: &[Value],
    pod: &PodSpec,
    caps: &[String],
    pins: &str,
) -> LoggedProcess {
    let agent = container(pod, "kproxy");
    let mut env = environment(agent, docs, NODE);
    env.insert("KPROXY_ATTACH".into(), bed.topo.node_ifaces().join(","));
    env.insert("NO_COLOR".into(), "1".into());
    let mut args: Vec<String> = expanded_args(agent, &env)
        .into_iter()
        .map(|a| match a.strip_prefix("--pin-dir=") {
            Some(_) => format!("--pin-dir={}", bed.bpffs.pin_path(pins).display()),
            None => a,
        })
        .collect();
    args.push(format!("--manifests={}", bed.manifests().display()));
    let wrapped = contained(&[], caps, &kproxy_bin(), &args);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let log = bed.dir.path().join(format!("agent-{pins}.log"));
    LoggedProcess::spawn(&bed.topo.node, Path::new("unshare"), &wrapped, &env, &log)
        .expect("starting the agent")
}

/// The capability sets of process `pid` (CapEff, CapPrm, ...), as masks.
fn process_capabilities(pid: u32) -> BTreeMap<String, u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .filter_map(|l| {
            let (key, value) = l.split_once(":\t")?;
            let set = key.strip_prefix("Cap")?;
            Some((set.to_owned(), u64::from_str_radix(value.trim(), 16).ok()?))
        })
        .collect()
}

fn mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| {
            let bit = CAPABILITIES
                .iter()
                .position(|known| known == c)
                .unwrap_or_else(|| panic!("unknown capability {c}"));
            1u64 << bit
        })
        .fold(0, |m, b| m | b)
}

fn web(bed: &Bed) {
    use support::manifests::{documents, service, slice};
    bed.write(
        "web.yaml",
        &documents(&[
            service("web", vip(10), &[("http", 80, "TCP")], None),
            slice(
                "web-1",
                "web",
                &[("http", TCP_PORT, "TCP")],
                &bed.backends(),
            ),
        ]),
    );
}

/// A connection to the ClusterIP is served by a backend, and the probes' endpoints answer.
fn serves(bed: &Bed) {
    let reply = tcp_request(&bed.topo.client, SocketAddrV4::new(vip(10), 80), TIMEOUT)
        .expect("a connection to the ClusterIP");
    assert!(bed.backends().contains(reply.backend.ip()), "{reply:?}");
    for path in ["/livez", "/readyz"] {
        let addr: SocketAddr = "127.0.0.1:10256".parse().expect("address");
        let response = kproxy_testbed::http::get(&bed.topo.node, addr, path).expect(path);
        assert_eq!(response.status, 200, "{path}: {}", response.body);
    }
}

#[test]
fn with_the_daemonsets_capabilities_the_agent_loads_attaches_and_serves() {
    if !require_privileges("with_the_daemonsets_capabilities_the_agent_loads_attaches_and_serves") {
        return;
    }
    let (docs, pod) = manifest();
    let caps = capabilities(container(&pod, "kproxy"));
    let bed = Bed::new(TopologyOptions::default());
    web(&bed);
    let lo = "net.ipv4.conf.lo.accept_local";
    assert_eq!(bed.topo.node.read_sysctl(lo).expect(lo), "0");
    run_init_container(&bed, &docs, &pod);
    for iface in bed
        .topo
        .node_ifaces()
        .iter()
        .map(String::as_str)
        .chain(["lo", "default"])
    {
        let key = format!("net.ipv4.conf.{iface}.accept_local");
        assert_eq!(bed.topo.node.read_sysctl(&key).expect(&key), "1", "{key}");
    }
    let localnet = "net.ipv4.conf.all.route_localnet";
    assert_eq!(bed.topo.node.read_sysctl(localnet).expect(localnet), "1");

    let mut agent = spawn_agent(&bed, &docs, &pod, &caps, "kproxy");
    agent
        .wait_for(" ready", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let sets = process_capabilities(agent.pid().expect("pid"));
    for set in ["Eff", "Prm", "Bnd", "Inh", "Amb"] {
        assert_eq!(sets[set], mask(&caps), "Cap{set} is exactly {caps:?}");
    }
    serves(&bed);
    let log = agent.log_text();
    assert!(
        !log.contains("ERROR") && !log.contains("Read-only"),
        "{log}"
    );

    // A rolling update: the next agent adopts the pinned datapath under the same settings.
    agent
        .terminate(Duration::from_secs(10))
        .expect("stopping the agent");
    let mut agent = spawn_agent(&bed, &docs, &pod, &caps, "kproxy");
    agent
        .wait_for(" ready", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        agent.log_text().contains("pinned=Adopted"),
        "{}",
        agent.log_text()
    );
    serves(&bed);
}

/// Starts the agent with `caps` and expects it to stop with an error, not become ready.
fn fails_to_start(bed: &Bed, docs: &[Value], pod: &PodSpec, caps: &[String], pins: &str) -> String {
    let mut agent = spawn_agent(bed, docs, pod, caps, pins);
    let outcome = agent.wait_for(" ready", Duration::from_secs(10));
    assert!(
        outcome.is_err(),
        "ready with only {caps:?}: {}",
        agent.log_text()
    );
    assert!(
        agent.check_running().is_err(),
        "with {caps:?} neither ready nor stopped: {}",
        agent.log_text()
    );
    let log = agent.log_text();
    let error = log.lines().find(|l| l.contains("ERROR"));
    error
        .unwrap_or_else(|| panic!("an error in {log}"))
        .to_owned()
}

#[test]
fn without_any_one_of_its_capabilities_the_agent_fails() {
    if !require_privileges("without_any_one_of_its_capabilities_the_agent_fails") {
        return;
    }
    let (docs, pod) = manifest();
    let caps = capabilities(container(&pod, "kproxy"));
    let bed = Bed::new(TopologyOptions::default());
    web(&bed);
    run_init_container(&bed, &docs, &pod);
    for (i, missing) in caps.iter().enumerate() {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let error = fails_to_start(&bed, &docs, &pod, &fewer, &format!("without-{i}"));
        assert!(
            error.contains("Operation not permitted") || error.contains("Permission denied"),
            "without {missing}: {error}"
        );
    }
}

#[test]
fn with_proc_sys_read_only_the_agent_needs_its_init_container() {
    if !require_privileges("with_proc_sys_read_only_the_agent_needs_its_init_container") {
        return;
    }
    let (docs, pod) = manifest();
    let caps = capabilities(container(&pod, "kproxy"));
    let bed = Bed::new(TopologyOptions::default());
    web(&bed);
    let error = fails_to_start(&bed, &docs, &pod, &caps, "kproxy");
    assert!(
        error.contains("/proc/sys/net") && error.contains("Read-only file system"),
        "{error}"
    );
}
