//! etcd, kube-apiserver and kube-controller-manager running inside a bed's node namespace,
//! on its loopback (each bed has its own, so fixed ports never collide), torn down on drop.
//!
//! The API server runs as a cluster's would: TLS with client certificates, the Node and RBAC
//! authorizers, NodeRestriction, service-account tokens signed by its own key. The controller
//! manager runs the controllers a proxy's input depends on (EndpointSlice, EndpointSlice
//! mirroring, namespace, service account), each under its own service account as kubeadm runs
//! them. There is no kubelet and no scheduler: tests create pods bound to a node and set their
//! status themselves ([`super::objects`]).

use std::{
    fmt::Write as _,
    fs::File,
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::Value;

use super::{
    objects::Kinds,
    pki::{self, Identity, Pki},
    program,
};
use crate::{LoggedProcess, Netns};

/// The API server's port on the namespace's loopback and on the advertised address.
pub const APISERVER_PORT: u16 = 6443;
const ETCD_CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2379);
const ETCD_PEER_URL: &str = "http://127.0.0.1:2380";
/// The Service ClusterIP ranges, dual-stack: TESTBED.md's IPv4 range (primary: its first
/// address is the `kubernetes` Service's) and the IPv6 VIPs' (`topology::vip6`), so a Service
/// of either family or both can be created (the benchmark's IPv6 row).
pub const SERVICE_CIDR: &str = "198.19.0.0/16,2001:db8:ffff::/108";
/// The controllers a proxy's input depends on (kube-controller-manager's names).
const CONTROLLERS: &str = "endpointslice-controller,endpointslice-mirroring-controller,\
                           namespace-controller,serviceaccount-controller";
/// The proxies' requests (kproxy's service account, kube-proxy's user) are audited at the
/// Metadata level: tests read which verbs on which resources they used, and the answers.
const AUDIT_POLICY: &str = "audit-policy.yaml";
const AUDIT_LOG: &str = "audit.log";
const AUDIT_POLICY_TEXT: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: [\"system:serviceaccount:kube-system:kproxy\", \"system:kube-proxy\"]
- level: None
";
/// A cold API server on two busy cores takes several seconds; a broken one never gets there.
const START_TIMEOUT: Duration = Duration::from_mins(2);

/// A running control plane; dropping it stops every process (their logs stay in `dir`).
pub struct ControlPlane {
    dir: PathBuf,
    pki: Pki,
    advertise: Ipv4Addr,
    etcd: Option<LoggedProcess>,
    /// Behind a lock so a test can restart it while other threads use the control plane.
    apiserver: Mutex<Option<LoggedProcess>>,
    controller_manager: Option<LoggedProcess>,
    runtime: tokio::runtime::Runtime,
    client: Client,
    pub(super) kinds: Kinds,
}

impl ControlPlane {
    /// Starts the control plane in `ns`, keeping its data, certificates and logs under `dir`;
    /// `advertise` is the node address the API server announces (the `kubernetes` Service's
    /// endpoint). Returns once the API server is ready and the controllers run.
    pub fn start(ns: &Netns, dir: &Path, advertise: Ipv4Addr) -> Result<ControlPlane> {
        let pki = Pki::create(
            &dir.join("pki"),
            &[IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(advertise)],
        )?;
        let runtime = runtime_in(ns)?;
        std::fs::write(dir.join(AUDIT_POLICY), AUDIT_POLICY_TEXT)?;
        for id in [pki::ADMIN, pki::CONTROLLER_MANAGER, pki::KUBE_PROXY] {
            write_cert_kubeconfig(&pki, &kubeconfig_path(dir, id), id)?;
        }
        let client = connect(&runtime, &kubeconfig_path(dir, pki::ADMIN))?;
        let etcd = start_etcd(ns, dir)?;
        let mut plane = ControlPlane {
            dir: dir.to_path_buf(),
            pki,
            advertise,
            etcd: Some(etcd),
            apiserver: Mutex::new(None),
            controller_manager: None,
            runtime,
            client,
            kinds: Kinds::default(),
        };
        plane.start_apiserver(ns)?;
        plane.start_controller_manager(ns)?;
        Ok(plane)
    }

    /// The administrator's client (group `system:masters`).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A client reading `kubeconfig` (a token kubeconfig from [`Self::token_kubeconfig`], say).
    pub fn connect(&self, kubeconfig: &Path) -> Result<Client> {
        connect(&self.runtime, kubeconfig)
    }

    /// Runs `future` on the control plane's runtime, whose threads are in the bed's node
    /// namespace (the only place the API server can be reached), and returns its output.
    pub fn run<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> T {
        match self.runtime.block_on(self.runtime.spawn(future)) {
            Ok(output) => output,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("control-plane task: {e}"),
        }
    }

    /// `https://127.0.0.1:6443`: the API server as the node's own processes reach it.
    pub fn url() -> String {
        format!("https://127.0.0.1:{APISERVER_PORT}")
    }

    pub fn advertise_address(&self) -> Ipv4Addr {
        self.advertise
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// The kubeconfig of a certificate identity (admin, controller manager, kube-proxy).
    pub fn kubeconfig(&self, id: Identity) -> PathBuf {
        kubeconfig_path(&self.dir, id)
    }

    /// Asks the API server for a token of service account `namespace/name` (TokenRequest, as
    /// the kubelet does for a pod) and writes a kubeconfig using it to `path`.
    pub fn token_kubeconfig(&self, namespace: &str, name: &str, path: &Path) -> Result<PathBuf> {
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client(), namespace);
        let (ns, sa) = (namespace.to_owned(), name.to_owned());
        let request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600}
        });
        let response: Value = self
            .run(async move {
                accounts
                    .create_subresource(
                        "token",
                        &sa,
                        &kube::api::PostParams::default(),
                        serde_json::to_vec(&request)?,
                    )
                    .await
                    .map_err(anyhow::Error::from)
            })
            .with_context(|| format!("requesting a token of service account {ns}/{name}"))?;
        let token = response["status"]["token"]
            .as_str()
            .context("TokenRequest returned no token")?;
        let user = format!("    token: {token}\n");
        let user_name = format!("system:serviceaccount:{namespace}:{name}");
        write_kubeconfig(&self.pki, path, &user_name, &user)?;
        Ok(path.to_path_buf())
    }

    /// Starts kube-apiserver and waits until it is ready (`/readyz`).
    pub fn start_apiserver(&self, ns: &Netns) -> Result<()> {
        let p = |file: &str| self.pki.path(file).display().to_string();
        let args = [
            format!("--etcd-servers=http://{ETCD_CLIENT}"),
            "--bind-address=0.0.0.0".into(),
            format!("--secure-port={APISERVER_PORT}"),
            format!("--advertise-address={}", self.advertise),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            // As kubeadm and kind run it: privileged containers allowed (the kind overlay's
            // bpffs init container is one); the default refuses them.
            "--allow-privileged=true".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            format!("--cert-dir={}", self.dir.join("apiserver-certs").display()),
            "--profiling=false".into(),
            format!(
                "--audit-policy-file={}",
                self.dir.join(AUDIT_POLICY).display()
            ),
            format!("--audit-log-path={}", self.dir.join(AUDIT_LOG).display()),
            // A graceful stop closes the watches within 2 s (clients reconnect elsewhere)
            // instead of waiting the full minute of the request timeout for them.
            "--shutdown-watch-termination-grace-period=2s".into(),
            "--shutdown-send-retry-after=true".into(),
        ];
        let log = self.dir.join("kube-apiserver.log");
        let process = LoggedProcess::spawn(ns, &program("kube-apiserver")?, &args, &[], &log)?;
        *self.apiserver() = Some(process);
        self.wait_ready()
    }

    /// Stops kube-apiserver (SIGTERM, as a rolling restart does); the rest keeps running.
    pub fn stop_apiserver(&self) -> Result<()> {
        let process = self
            .apiserver()
            .take()
            .context("the API server is not running")?;
        process.terminate(Duration::from_secs(30))?;
        Ok(())
    }

    fn apiserver(&self) -> MutexGuard<'_, Option<LoggedProcess>> {
        self.apiserver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_ready(&self) -> Result<()> {
        let started = Instant::now();
        loop {
            let client = self.client();
            let ready = self.run(async move {
                let request = http::Request::get("/readyz").body(Vec::new())?;
                Ok::<_, anyhow::Error>(client.request_text(request).await? == "ok")
            });
            if ready.unwrap_or(false) {
                return Ok(());
            }
            if let Some(process) = self.apiserver().as_mut() {
                process.check_running()?;
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "kube-apiserver not ready after {START_TIMEOUT:?}; its log: {}",
                    self.dir.join("kube-apiserver.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_controller_manager(&mut self, ns: &Netns) -> Result<()> {
        let args = [
            format!(
                "--kubeconfig={}",
                self.kubeconfig(pki::CONTROLLER_MANAGER).display()
            ),
            format!("--controllers={CONTROLLERS}"),
            "--use-service-account-credentials=true".into(),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
        ];
        let log = self.dir.join("kube-controller-manager.log");
        let mut process =
            LoggedProcess::spawn(ns, &program("kube-controller-manager")?, &args, &[], &log)?;
        // The service-account controller creating `default` in `default` shows the
        // controllers have synced; pods cannot be created before it exists.
        let accounts: Api<ServiceAccount> = Api::namespaced(self.client(), "default");
        let started = Instant::now();
        loop {
            let accounts = accounts.clone();
            if self
                .run(async move { accounts.get_opt("default").await })
                .is_ok_and(|sa| sa.is_some())
            {
                break;
            }
            process.check_running()?;
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "kube-controller-manager made no default service account: {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.controller_manager = Some(process);
        Ok(())
    }

    /// Stops kube-controller-manager (SIGSTOP) until the returned guard drops (SIGCONT).
    /// Tens of thousands of Services appearing at once keep its EndpointSlice controller
    /// busy for many minutes (over 5 at 100,000, on both CPUs), and a proxy measured
    /// meanwhile shares the machine with that work; a proxy's own programming and the
    /// connections through it need none of it.
    pub fn pause_controllers(&self) -> Result<Paused<'_>> {
        let pid = self
            .controller_manager
            .as_ref()
            .and_then(LoggedProcess::pid)
            .context("kube-controller-manager is not running")?;
        self.pause(vec![pid])
    }

    /// The API server's CPU time so far (user and system), seconds.
    pub fn apiserver_cpu_seconds(&self) -> Result<f64> {
        crate::process::cpu_seconds(self.apiserver_pid()?)
            .map(|(own, _)| own)
            .context("reading kube-apiserver's CPU time")
    }

    /// Stops the API server and etcd (SIGSTOP) until the returned guard drops (SIGCONT, etcd
    /// first). For a measure of the machine's CPU time that nothing of the control plane's
    /// own (its timers, its lease renewals) may blur; the proxies' watches wait meanwhile.
    pub fn pause_servers(&self) -> Result<Paused<'_>> {
        let apiserver = self.apiserver_pid()?;
        let etcd = self
            .etcd
            .as_ref()
            .and_then(LoggedProcess::pid)
            .context("etcd is not running")?;
        self.pause(vec![apiserver, etcd])
    }

    fn apiserver_pid(&self) -> Result<u32> {
        self.apiserver
            .lock()
            .map_err(|_| anyhow::anyhow!("the API server's lock is poisoned"))?
            .as_ref()
            .and_then(LoggedProcess::pid)
            .context("kube-apiserver is not running")
    }

    /// Stops `pids` in order; the guard continues them in the reverse order.
    fn pause(&self, pids: Vec<u32>) -> Result<Paused<'_>> {
        let mut paused = Paused {
            pids: Vec::new(),
            _plane: self,
        };
        for pid in pids {
            signal(pid, libc::SIGSTOP)?;
            paused.pids.push(pid);
        }
        Ok(paused)
    }

    /// Compacts etcd's history up to its current revision (what the API server does every
    /// five minutes): watches resuming from an older resourceVersion then get `410 Gone`.
    /// Returns the revision compacted at.
    pub fn compact_etcd(&self, ns: &Netns) -> Result<u64> {
        let range = etcd_post(ns, "/v3/kv/range", r#"{"key":"AA==","limit":1}"#)?;
        let revision: u64 = range["header"]["revision"]
            .as_str()
            .context("etcd range response without a revision")?
            .parse()?;
        etcd_post(
            ns,
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{revision}","physical":true}}"#),
        )?;
        Ok(revision)
    }

    /// The audit events (`audit.k8s.io/v1` Event objects, Metadata level) of requests made
    /// by `user` so far, in order; every API server run appends to the same log.
    pub fn audit_events(&self, user: &str) -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(self.dir.join(AUDIT_LOG))?;
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| event["user"]["username"] == user)
            .collect())
    }

    /// The last lines of every log, for a failing test's output.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            let text =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            let _ = writeln!(
                out,
                "--- {name} (last {} lines) ---\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
        out
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(25));
        }
        // The controller manager and the API server before etcd, as a node shuts down.
        drop(self.controller_manager.take());
        drop(self.apiserver().take());
        drop(self.etcd.take());
    }
}

fn kubeconfig_path(dir: &Path, id: Identity) -> PathBuf {
    dir.join(format!("{}.kubeconfig", id.stem))
}

fn write_cert_kubeconfig(pki: &Pki, path: &Path, id: Identity) -> Result<()> {
    let (cert, key) = pki.client(id);
    let user = format!(
        "    client-certificate: {}\n    client-key: {}\n",
        cert.display(),
        key.display()
    );
    write_kubeconfig(pki, path, id.user, &user)
}

/// A kubeconfig for the API server at `127.0.0.1`, trusting the bed's CA, as `user` with
/// `credentials` (the lines under `user:`).
fn write_kubeconfig(pki: &Pki, path: &Path, user: &str, credentials: &str) -> Result<()> {
    let mut text = String::new();
    writeln!(
        text,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    \
         server: https://127.0.0.1:{APISERVER_PORT}\n    certificate-authority: {}\n\
         users:\n- name: {user}\n  user:\n{credentials}contexts:\n- name: testbed\n  \
         context:\n    cluster: testbed\n    user: {user}\n    namespace: default\n\
         current-context: testbed",
        pki.ca().display()
    )?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn connect(runtime: &tokio::runtime::Runtime, kubeconfig: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let task = runtime.spawn(async move {
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok::<_, anyhow::Error>(Client::try_from(config)?)
    });
    runtime.block_on(task)?
}

/// A multi-threaded runtime whose every thread enters `ns` first, so sockets its tasks make
/// (the kube client's connections) live in the bed, wherever the caller runs.
fn runtime_in(ns: &Netns) -> Result<tokio::runtime::Runtime> {
    let file = Arc::new(File::open(ns.path()).with_context(|| format!("opening {}", ns.name()))?);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .on_thread_start(move || {
            // SAFETY: setns on a valid namespace descriptor changes only the calling thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "entering the bed's namespace: {}",
                std::io::Error::last_os_error()
            );
        })
        .build()
        .context("building the control plane's runtime")
}

/// Processes of the control plane stopped by [`ControlPlane::pause_controllers`] or
/// [`ControlPlane::pause_servers`]; continued when this drops.
pub struct Paused<'a> {
    pids: Vec<u32>,
    _plane: &'a ControlPlane,
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        for pid in self.pids.iter().rev() {
            if let Err(e) = signal(*pid, libc::SIGCONT) {
                eprintln!("continuing process {pid} of the control plane: {e:#}");
            }
        }
    }
}

/// Sends `sig` to process `pid`.
fn signal(pid: u32, sig: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    // SAFETY: kill has no memory preconditions; the pid is a child this process started.
    if unsafe { libc::kill(pid, sig) } != 0 {
        bail!("signal {sig} to {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn start_etcd(ns: &Netns, dir: &Path) -> Result<LoggedProcess> {
    let client_url = format!("http://{ETCD_CLIENT}");
    let args = [
        "--name=testbed".into(),
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={ETCD_PEER_URL}"),
        format!("--initial-advertise-peer-urls={ETCD_PEER_URL}"),
        format!("--initial-cluster=testbed={ETCD_PEER_URL}"),
        // A test bed's data is thrown away: no fsync keeps writes from waiting on the disk.
        "--unsafe-no-fsync".into(),
        "--log-level=warn".into(),
    ];
    let mut process =
        LoggedProcess::spawn(ns, &program("etcd")?, &args, &[], &dir.join("etcd.log"))?;
    let started = Instant::now();
    while !etcd_get(ns, "/health").is_ok_and(|body| body.contains("\"true\"")) {
        process.check_running()?;
        if started.elapsed() > START_TIMEOUT {
            bail!("etcd not healthy after {START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(process)
}

fn etcd_get(ns: &Netns, path: &str) -> Result<String> {
    etcd_http(ns, format!("GET {path} HTTP/1.0\r\n\r\n"))
}

/// A call of etcd's JSON gateway (`/v3/...`), inside the namespace.
pub(super) fn etcd_post(ns: &Netns, path: &str, body: &str) -> Result<Value> {
    let response = etcd_http(
        ns,
        format!(
            "POST {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )?;
    serde_json::from_str(&response).with_context(|| format!("etcd {path}: {response}"))
}

/// One HTTP/1.0 exchange with etcd's client port; returns the body of a 200 response.
fn etcd_http(ns: &Netns, request: String) -> Result<String> {
    let response = crate::http::exchange(ns, ETCD_CLIENT, request)?;
    if response.status != 200 {
        bail!("etcd answered {}: {}", response.status, response.body);
    }
    Ok(response.body)
}
