//! The healthCheckNodePort servers (`kproxy::healthcheck`) on real sockets, in a network
//! namespace of their own: what a load balancer's probes see as local endpoints come and go,
//! as ports come and go, when the proxy falls behind, when a port is taken, and which
//! addresses are listened on.

mod support;

use std::{
    collections::BTreeMap,
    io::{self, BufRead, BufReader, ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use kproxy::{
    healthcheck::{ALL_ADDRESSES, HealthCheckMetrics, HealthCheckServers, ServiceHealth},
    http::Health,
};
use kproxy_testbed::{Netns, Topology, require_privileges};
use prometheus_client::registry::Registry;
use serde_json::json;
use support::http::sample;

/// The node's address on its veth (the namespace also has 127.0.0.1 on `lo`).
const NODE_IP: &str = "198.18.0.1";
const LOOPBACK: &str = "127.0.0.1";
/// Longest wait for a server that should answer at once.
const PATIENCE: Duration = Duration::from_secs(5);
/// How long a change may wait unprogrammed before the proxy is unhealthy, in these tests.
const HEALTHZ_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs `test` on a thread inside a namespace of its own (deleted afterwards) that has `lo`
/// and a veth with `NODE_IP`; nothing listens in the machine's namespace.
fn in_namespace(test: &str, f: impl FnOnce() + Send + 'static) {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    if !require_privileges(&format!("health_check_node_port::{test}")) {
        return;
    }
    Topology::sweep_leftovers();
    let name = format!(
        "kpt-{}-hc{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let ns = Netns::create(&name).expect("a namespace");
    ns.ip_batch(&[
        "link add hc0 type veth peer name hc1".to_owned(),
        format!("addr add {NODE_IP}/24 dev hc0"),
        "link set hc0 up".to_owned(),
        "link set hc1 up".to_owned(),
    ])
    .expect("the namespace's veth");
    ns.run(f).expect("entering the namespace");
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("an IP"), port)
}

// ---------------------------------------------------------------------------------------------
// The node: the servers as the agent holds them, with its health and metrics.

struct Node {
    // Fields drop in order: the servers stop before their runtime goes.
    servers: HealthCheckServers,
    health: Arc<Health>,
    registry: Registry,
    runtime: tokio::runtime::Runtime,
}

impl Node {
    /// Servers listening on `bind` (created on this thread: inside the test's namespace).
    fn new(bind: &[IpAddr]) -> Node {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let mut registry = Registry::with_prefix("kproxy");
        let metrics = HealthCheckMetrics::new(&mut registry);
        let health = Arc::new(Health::new(HEALTHZ_TIMEOUT));
        Node {
            servers: HealthCheckServers::new(bind.to_vec(), Arc::clone(&health), metrics),
            health,
            registry,
            runtime,
        }
    }

    /// Syncs to `wanted`: (port, Service name in namespace `ns`, local endpoints).
    fn sync(&mut self, wanted: &[(u16, &str, usize)]) {
        let wanted: BTreeMap<u16, ServiceHealth> = wanted
            .iter()
            .map(|&(port, name, local_endpoints)| {
                let health = ServiceHealth {
                    namespace: "ns".into(),
                    name: name.into(),
                    local_endpoints,
                };
                (port, health)
            })
            .collect();
        self.runtime.block_on(self.servers.sync(&wanted));
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("metrics");
        sample(&text, name)
    }

    fn serving(&self) -> Vec<u16> {
        self.servers.serving().collect()
    }

    fn failing(&self) -> Vec<u16> {
        self.servers.failing().collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The probe: HTTP/1.1 GETs, on a keep-alive connection or a new one.

#[derive(Debug)]
struct Answer {
    status: u16,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, PATIENCE)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    fn get(&mut self, path: &str) -> io::Result<Answer> {
        write!(
            self.reader.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n"
        )?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| io::Error::other(format!("not an HTTP status line: {line:?}")))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| io::Error::other(format!("not a header: {line:?}")))?;
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no content-length in {headers:?}")))?;
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8(body).map_err(io::Error::other)?,
        })
    }

    /// Waits until the server closes the connection.
    fn wait_closed(&mut self) -> io::Result<()> {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn get(addr: SocketAddr, path: &str) -> io::Result<Answer> {
    Conn::open(addr)?.get(path)
}

/// Asserts kube-proxy's answer: the status, its three headers and its body.
#[track_caller]
fn check(answer: &Answer, status: u16, name: &str, endpoints: usize, proxy_healthy: bool) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(
        answer.header("content-type"),
        ["application/json"],
        "{answer:?}"
    );
    assert_eq!(
        answer.header("x-content-type-options"),
        ["nosniff"],
        "{answer:?}"
    );
    assert_eq!(
        answer.header("x-load-balancing-endpoint-weight"),
        [endpoints.to_string()],
        "{answer:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&answer.body).expect("a JSON body");
    assert_eq!(
        body,
        json!({
            "service": { "namespace": "ns", "name": name },
            "localEndpoints": endpoints,
            "serviceProxyHealthy": proxy_healthy,
        })
    );
}

#[track_caller]
fn refused(addr: SocketAddr) {
    let err = get(addr, "/").expect_err("nothing listens");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{addr}: {err}");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn answers_follow_local_endpoints_and_proxy_health() {
    in_namespace("answers_follow_local_endpoints_and_proxy_health", || {
        let mut node = Node::new(&ALL_ADDRESSES);
        node.sync(&[(30001, "web", 0)]);
        let answer = get(addr(LOOPBACK, 30001), "/healthz").expect("a probe");
        check(&answer, 503, "web", 0, true);
        assert_eq!(
            answer.body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"ns\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 0,\n\t\"serviceProxyHealthy\": true\n}",
            "kube-proxy's layout"
        );

        // Every address of the node; one connection kept across the syncs shows the listener
        // and its connections are left alone while the answers follow the counts at once.
        let mut probe = Conn::open(addr(NODE_IP, 30001)).expect("the node address");
        check(&probe.get("/").expect("a probe"), 503, "web", 0, true);
        node.sync(&[(30001, "web", 18)]);
        check(&probe.get("/any/path?x=1").unwrap(), 200, "web", 18, true);
        node.sync(&[(30001, "web", 0)]);
        check(&probe.get("/").unwrap(), 503, "web", 0, true);
        node.sync(&[(30001, "web", 11)]);
        check(&probe.get("/").unwrap(), 200, "web", 11, true);

        // The proxy falls behind (a change waits past the timeout): every port answers 503,
        // the count is still reported; it catches up: 200 again.
        let late = Instant::now()
            .checked_sub(2 * HEALTHZ_TIMEOUT)
            .expect("an instant in the past");
        node.health.queued(late);
        check(&probe.get("/").unwrap(), 503, "web", 11, false);
        node.health.programmed(true);
        check(&probe.get("/").unwrap(), 200, "web", 11, true);

        // Another Service takes the port over (the first one deleted in the same sync).
        node.sync(&[(30001, "api", 2)]);
        check(&probe.get("/").unwrap(), 200, "api", 2, true);
        assert_eq!(node.metric("kproxy_health_check_node_ports"), Some(1.0));
        assert_eq!(
            node.metric("kproxy_health_check_node_ports_failing"),
            Some(0.0)
        );
    });
}

#[test]
fn ports_open_and_close_with_their_services() {
    in_namespace("ports_open_and_close_with_their_services", || {
        let mut node = Node::new(&ALL_ADDRESSES);
        node.sync(&[(30001, "a", 1), (30002, "b", 2), (30003, "c", 3)]);
        for (port, name, n) in [(30001, "a", 1), (30002, "b", 2), (30003, "c", 3)] {
            check(&get(addr(LOOPBACK, port), "/").unwrap(), 200, name, n, true);
        }
        let mut kept = Conn::open(addr(LOOPBACK, 30002)).unwrap();
        check(&kept.get("/").unwrap(), 200, "b", 2, true);
        let mut closing = Conn::open(addr(LOOPBACK, 30003)).unwrap();
        check(&closing.get("/").unwrap(), 200, "c", 3, true);

        node.sync(&[(30002, "b", 5), (30004, "d", 0)]);
        assert_eq!(node.serving(), [30002, 30004]);
        refused(addr(LOOPBACK, 30001));
        refused(addr(LOOPBACK, 30003));
        closing
            .wait_closed()
            .expect("an open probe connection of a closed port is closed");
        check(&kept.get("/").unwrap(), 200, "b", 5, true);
        check(&get(addr(LOOPBACK, 30004), "/").unwrap(), 503, "d", 0, true);
        assert_eq!(node.metric("kproxy_health_check_node_ports"), Some(2.0));

        // A closed port is free as soon as sync returns: opened again at once.
        node.sync(&[(30001, "a", 1), (30002, "b", 5), (30004, "d", 0)]);
        assert_eq!(node.failing(), Vec::<u16>::new());
        check(&get(addr(LOOPBACK, 30001), "/").unwrap(), 200, "a", 1, true);

        node.sync(&[]);
        for port in [30001, 30002, 30004] {
            refused(addr(LOOPBACK, port));
        }
        assert_eq!(node.metric("kproxy_health_check_node_ports"), Some(0.0));
    });
}

#[test]
fn a_port_in_use_is_reported_and_retried() {
    in_namespace("a_port_in_use_is_reported_and_retried", || {
        let taken = TcpListener::bind(addr("0.0.0.0", 30005)).expect("another server's port");
        let mut node = Node::new(&ALL_ADDRESSES);
        let wanted = [(30005, "web", 1), (30006, "api", 1)];
        node.sync(&wanted);
        assert_eq!(node.failing(), [30005]);
        assert_eq!(node.serving(), [30006]);
        check(
            &get(addr(LOOPBACK, 30006), "/").unwrap(),
            200,
            "api",
            1,
            true,
        );
        let failures = r#"kproxy_health_check_node_port_bind_failures_total{port="30005"}"#;
        assert_eq!(node.metric(failures), Some(1.0));
        assert_eq!(
            node.metric("kproxy_health_check_node_ports_failing"),
            Some(1.0)
        );
        assert_eq!(node.metric("kproxy_health_check_node_ports"), Some(1.0));

        node.sync(&wanted);
        assert_eq!(node.metric(failures), Some(2.0), "retried at the next sync");
        assert_eq!(node.failing(), [30005]);

        drop(taken);
        node.sync(&wanted);
        assert_eq!(node.failing(), Vec::<u16>::new());
        assert_eq!(node.serving(), [30005, 30006]);
        check(
            &get(addr(LOOPBACK, 30005), "/").unwrap(),
            200,
            "web",
            1,
            true,
        );
        check(
            &get(addr(LOOPBACK, 30006), "/").unwrap(),
            200,
            "api",
            1,
            true,
        );
        assert_eq!(node.metric(failures), Some(2.0));
        assert_eq!(
            node.metric("kproxy_health_check_node_ports_failing"),
            Some(0.0)
        );
        assert_eq!(node.metric("kproxy_health_check_node_ports"), Some(2.0));
    });
}

#[test]
fn listens_on_every_bind_address_or_none() {
    in_namespace("listens_on_every_bind_address_or_none", || {
        let loopback: IpAddr = LOOPBACK.parse().unwrap();
        let node_ip: IpAddr = NODE_IP.parse().unwrap();

        // Only the bind addresses.
        let mut only = Node::new(&[node_ip]);
        only.sync(&[(30007, "web", 1)]);
        check(
            &get(addr(NODE_IP, 30007), "/").unwrap(),
            200,
            "web",
            1,
            true,
        );
        refused(addr(LOOPBACK, 30007));

        let mut node = Node::new(&[loopback, node_ip]);
        node.sync(&[(30008, "web", 1)]);
        for ip in [LOOPBACK, NODE_IP] {
            check(&get(addr(ip, 30008), "/").unwrap(), 200, "web", 1, true);
        }

        // One of the addresses is taken: the port is not served on the other either (kube-proxy
        // closes what it opened), and is retried whole.
        let taken = TcpListener::bind(addr(NODE_IP, 30009)).expect("another server's port");
        node.sync(&[(30008, "web", 1), (30009, "api", 3)]);
        assert_eq!(node.failing(), [30009]);
        refused(addr(LOOPBACK, 30009));
        drop(taken);
        node.sync(&[(30008, "web", 1), (30009, "api", 3)]);
        assert_eq!(node.failing(), Vec::<u16>::new());
        for ip in [LOOPBACK, NODE_IP] {
            check(&get(addr(ip, 30009), "/").unwrap(), 200, "api", 3, true);
        }
    });
}
