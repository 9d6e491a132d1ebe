//! The external section's test bed: the LAN topology (an external client, node1 running the
//! datapath under test, node2 holding the backends), who-am-I servers and UDP sinks on the
//! backends, the NodePort services as Kubernetes objects, and interface counters.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::OwnedFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use kproxy_testbed::{BpfFs, LanNode, LanOptions, LanTopology, Netns, topology::LEAF_IFACE};
use socket2::{Domain, Protocol, Socket, Type};

use super::super::{
    cluster::{self, BACKEND_PORT, NAMESPACE},
    server::{self, BenchServer},
};

/// Backends of both services, all on node2.
pub const REMOTE_BACKENDS: usize = 3;
/// The NodePorts the external client reaches on node1's NIC.
pub const TCP_NODE_PORT: u16 = 30_080;
pub const UDP_NODE_PORT: u16 = 30_053;
/// Where the backends' UDP sinks listen.
pub const UDP_BACKEND_PORT: u16 = 5353;
/// The services' cluster IPs, apart from the ClusterIP section's 198.19.0.x range.
const TCP_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 1);
const UDP_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 128, 2);
/// The backends' node, as their endpoints say (`nodeName`).
const BACKEND_NODE: LanNode = LanNode::Node2;
/// The smallest receive buffer the kernel allows: a sink holds a few datagrams, then the
/// kernel drops what arrives at the socket (no ICMP, no copy to user space).
const SINK_RCVBUF: usize = 2048;

pub struct ExtBed {
    // Servers first: they hold sockets in the pods' namespaces, which go with the topology.
    servers: Vec<BenchServer>,
    /// Bound UDP sockets nobody reads, held for their drop: without them every datagram
    /// would draw an ICMP port unreachable (the bed does not rate-limit ICMP), doubling the
    /// traffic under test.
    _sinks: Vec<OwnedFd>,
    pub topo: LanTopology,
    pub bpffs: BpfFs,
    pub dir: tempfile::TempDir,
}

impl ExtBed {
    pub fn new() -> Result<Self> {
        // Complete checksums towards node1's NIC, as from a real NIC: kproxy's XDP and the
        // bare forwarder need them, and every mode pays the same for it.
        let topo = LanTopology::build(LanOptions {
            local_backends: 0,
            remote_backends: REMOTE_BACKENDS,
            local_clients: 0,
            lan_tx_checksum_offload: false,
            ext_pod_routes: false,
        })?;
        tune(&topo)?;
        let mut servers = Vec::new();
        let mut sinks = Vec::new();
        for pod in &topo.remote_backends {
            servers.push(server::start(
                &pod.ns,
                SocketAddrV4::new(pod.addr(), BACKEND_PORT).into(),
            )?);
            sinks.push(udp_sink(
                &pod.ns,
                SocketAddrV4::new(pod.addr(), UDP_BACKEND_PORT),
            )?);
        }
        let dir = tempfile::Builder::new()
            .prefix("kpt-bench-ext-")
            .tempdir()?;
        std::fs::create_dir(dir.path().join("manifests"))?;
        Ok(Self {
            servers,
            _sinks: sinks,
            topo,
            bpffs: BpfFs::new()?,
            dir,
        })
    }

    /// Connections the backends' servers accepted so far.
    pub fn accepted(&self) -> u64 {
        self.servers.iter().map(BenchServer::accepted).sum()
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.pin_path("kproxy")
    }

    /// Node1, where the datapath under test runs.
    pub fn node(&self) -> &Netns {
        &self.topo.node1
    }

    /// The backends' own addresses: TCP servers, UDP sinks.
    pub fn backends(&self) -> (Vec<SocketAddrV4>, Vec<SocketAddrV4>) {
        let addrs = self.topo.remote_backend_addrs();
        (
            addrs
                .iter()
                .map(|a| SocketAddrV4::new(*a, BACKEND_PORT))
                .collect(),
            addrs
                .iter()
                .map(|a| SocketAddrV4::new(*a, UDP_BACKEND_PORT))
                .collect(),
        )
    }

    /// Makes node1 resolve its neighbours on the LAN (node2 and the client) by sending each
    /// a datagram, as a node that has talked to its peers has them, and waits until it has.
    /// Only with `--warm-neighbours`: kproxy's XDP fast path needs the next hop's entry (its
    /// fallback for a missing one fails for masqueraded packets, which the section's notes
    /// show without this).
    pub fn warm_neighbours(&self) -> Result<()> {
        let peers = [LanNode::Node2.nic_addr(), self.topo.ext_addr()];
        self.node()
            .run(move || -> std::io::Result<()> {
                let socket = UdpSocket::bind("0.0.0.0:0")?;
                for peer in peers {
                    // The discard port: nothing answers but ICMP, which is harmless here.
                    socket.send_to(b"neighbour", SocketAddrV4::new(peer, 9))?;
                }
                Ok(())
            })?
            .context("sending to node1's neighbours")?;
        let nic = self.topo.nic_iface();
        let deadline = Instant::now() + Duration::from_secs(2);
        for peer in peers {
            loop {
                let out = self
                    .node()
                    .command("ip")
                    .args(["neigh", "show", "to", &peer.to_string(), "dev", nic])
                    .output()?;
                let text = String::from_utf8_lossy(&out.stdout);
                if text.contains("lladdr") {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("node1 did not resolve its neighbour {peer}: {text:?}");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Packets sent by the external client's interface so far.
    pub fn sent(&self) -> Result<u64> {
        Ok(iface_packets(&self.topo.ext, LEAF_IFACE)?.tx)
    }

    /// Packets the backends' interfaces received so far, summed.
    pub fn delivered(&self) -> Result<u64> {
        let mut sum = 0;
        for pod in &self.topo.remote_backends {
            sum += iface_packets(&pod.ns, LEAF_IFACE)?.rx;
        }
        Ok(sum)
    }
}

/// The NodePorts on node1's NIC address: TCP, UDP.
pub fn node_ports() -> (SocketAddrV4, SocketAddrV4) {
    let nic = LanNode::Node1.nic_addr();
    (
        SocketAddrV4::new(nic, TCP_NODE_PORT),
        SocketAddrV4::new(nic, UDP_NODE_PORT),
    )
}

/// Settings for tens of thousands of new connections per second, as the ClusterIP section's
/// bed has them (see `bed::tune`): node1 keeps closed connections 10 s in netfilter's
/// conntrack (for the netfilter modes), the backends take deep accept queues.
fn tune(topo: &LanTopology) -> Result<()> {
    topo.node1.sysctls(&[
        ("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "10"),
        ("net.core.somaxconn", "4096"),
    ])?;
    for pod in &topo.remote_backends {
        pod.ns.sysctls(&[
            ("net.core.somaxconn", "4096"),
            ("net.ipv4.tcp_max_syn_backlog", "4096"),
        ])?;
    }
    Ok(())
}

fn udp_sink(ns: &Netns, addr: SocketAddrV4) -> Result<OwnedFd> {
    ns.run(move || -> std::io::Result<OwnedFd> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_recv_buffer_size(SINK_RCVBUF)?;
        socket.bind(&addr.into())?;
        Ok(socket.into())
    })?
    .with_context(|| format!("binding the UDP sink {addr} in netns {}", ns.name()))
}

/// An interface's packet counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packets {
    pub rx: u64,
    pub tx: u64,
}

/// The packet counters of `iface` in `ns`, as the kernel keeps them.
pub fn iface_packets(ns: &Netns, iface: &str) -> Result<Packets> {
    // /proc/thread-self/net is the calling thread's namespace (/proc/self/net would be the
    // process's).
    let text = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))?
        .context("reading /proc/thread-self/net/dev")?;
    parse_net_dev(&text, iface)
        .with_context(|| format!("no interface {iface} in netns {}", ns.name()))
}

/// Packets received and sent by `iface` in the text of `/proc/net/dev`: after `name:` come
/// 8 receive fields (bytes, packets, …) and 8 transmit fields (bytes, packets, …).
fn parse_net_dev(text: &str, iface: &str) -> Option<Packets> {
    text.lines().find_map(|line| {
        let (name, fields) = line.split_once(':')?;
        if name.trim() != iface {
            return None;
        }
        let fields: Vec<u64> = fields
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        Some(Packets {
            rx: *fields.get(1)?,
            tx: *fields.get(9)?,
        })
    })
}

/// The two NodePort services (TCP and UDP, externalTrafficPolicy Cluster) with the
/// backends as endpoints on node2, as Kubernetes objects.
pub fn objects(backends: &[Ipv4Addr]) -> (Vec<Service>, Vec<EndpointSlice>) {
    let tcp = (
        "ext-tcp",
        TCP_VIP,
        "TCP",
        "http",
        80,
        TCP_NODE_PORT,
        BACKEND_PORT,
    );
    let udp = (
        "ext-udp",
        UDP_VIP,
        "UDP",
        "dns",
        53,
        UDP_NODE_PORT,
        UDP_BACKEND_PORT,
    );
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for (name, vip, protocol, port_name, port, node_port, backend_port) in [tcp, udp] {
        services.push(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(NAMESPACE.into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("NodePort".into()),
                cluster_ip: Some(vip.to_string()),
                cluster_ips: Some(vec![vip.to_string()]),
                external_traffic_policy: Some("Cluster".into()),
                ports: Some(vec![ServicePort {
                    name: Some(port_name.into()),
                    port,
                    node_port: Some(i32::from(node_port)),
                    protocol: Some(protocol.into()),
                    target_port: Some(IntOrString::String(port_name.into())),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        });
        slices.push(EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: backends
                .iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    node_name: Some(BACKEND_NODE.name().into()),
                    ..Endpoint::default()
                })
                .collect(),
            metadata: ObjectMeta {
                name: Some(format!("{name}-1")),
                namespace: Some(NAMESPACE.into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/service-name".into(),
                    name.into(),
                )])),
                ..ObjectMeta::default()
            },
            ports: Some(vec![EndpointPort {
                name: Some(port_name.into()),
                port: Some(i32::from(backend_port)),
                protocol: Some(protocol.into()),
                app_protocol: None,
            }]),
        });
    }
    (services, slices)
}

/// Writes [`objects`] for kproxy into the bed's manifests directory.
pub fn write_manifests(bed: &ExtBed, services: &[Service], slices: &[EndpointSlice]) -> Result<()> {
    let mut items = Vec::new();
    for svc in services {
        items.push(cluster::with_type(svc, "v1", "Service")?);
    }
    for slice in slices {
        items.push(cluster::with_type(
            slice,
            "discovery.k8s.io/v1",
            "EndpointSlice",
        )?);
    }
    cluster::write_list(&bed.manifests().join("external.json"), &items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::rules;

    #[test]
    fn reads_interface_counters() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
                    face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n  \
                    eth0: 9876543  123456    0    7    0     0          0         0  5555555   65432    0    0    0     0       0          0\n";
        assert_eq!(
            parse_net_dev(text, "eth0"),
            Some(Packets {
                rx: 123_456,
                tx: 65_432
            })
        );
        assert_eq!(parse_net_dev(text, "lo"), Some(Packets { rx: 0, tx: 0 }));
        assert_eq!(parse_net_dev(text, "eth1"), None);
    }

    #[test]
    fn objects_are_node_ports_kube_proxy_reads_with_remote_endpoints() {
        let backends = [Ipv4Addr::new(198, 18, 21, 2), Ipv4Addr::new(198, 18, 21, 3)];
        let (services, slices) = objects(&backends);
        let ports = rules::service_ports(&services, &slices);
        let summary: Vec<(String, u16, Option<u16>, usize)> = ports
            .iter()
            .map(|p| {
                (
                    p.service_port_name(),
                    p.port,
                    p.node_port,
                    p.endpoints.len(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("bench/ext-tcp:http".to_owned(), 80, Some(TCP_NODE_PORT), 2),
                ("bench/ext-udp:dns".to_owned(), 53, Some(UDP_NODE_PORT), 2),
            ]
        );
        assert_eq!(
            ports[1].endpoints[0],
            SocketAddrV4::new(backends[0], UDP_BACKEND_PORT)
        );
        assert!(slices.iter().all(|s| {
            s.endpoints
                .iter()
                .all(|e| e.node_name.as_deref() == Some("node2"))
        }));
    }
}
