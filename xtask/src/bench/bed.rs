//! One benchmark run's test bed: the reference topology built fresh for every mode and
//! repetition (so no netfilter or conntrack state of one mode leaks into the next), servers on
//! the backends, a private bpffs and a manifests directory.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use anyhow::Result;
use kproxy_testbed::{BpfFs, Topology, TopologyOptions};

use super::{
    cluster::{BACKEND_PORT, CHANGED_PORT, Family},
    server::{self, BenchServer},
};

/// Every service has these three endpoints.
const BACKENDS: usize = 3;

pub struct BenchBed {
    pub topo: Topology,
    pub bpffs: BpfFs,
    pub dir: tempfile::TempDir,
    /// The family the servers listen in (and the client reaches them and the Services in).
    family: Family,
    servers: Vec<BenchServer>,
}

impl BenchBed {
    /// A bed for IPv4 Services: IPv4 only, as the IPv4 figures were always measured.
    pub fn new() -> Result<Self> {
        Self::for_family(Family::Ipv4)
    }

    /// A bed for `family`'s Services: dual-stack for IPv6 (the node keeps its IPv4 link to
    /// the control plane), the servers listening in `family`.
    pub fn for_family(family: Family) -> Result<Self> {
        // Complete checksums from the client: the XDP mode needs them (a NIC delivers them),
        // and every mode pays the same for it.
        let topo = Topology::build(TopologyOptions {
            backends: BACKENDS,
            external: false,
            client_tx_checksum_offload: false,
            ipv6: family == Family::Ipv6,
        })?;
        tune(&topo)?;
        // The real section's selector Services (churn, the probe) are IPv4 in every bed, so
        // an IPv6 bed's backends serve IPv4 as well.
        let families: &[Family] = match family {
            Family::Ipv4 => &[Family::Ipv4],
            Family::Ipv6 => &[Family::Ipv6, Family::Ipv4],
        };
        let mut servers = Vec::new();
        let last = topo.backends.len() - 1;
        for &serving in families {
            for (i, ns) in topo.backends.iter().enumerate() {
                servers.push(server::start(
                    ns,
                    SocketAddr::new(serving.backend(i), BACKEND_PORT),
                )?);
            }
            servers.push(server::start(
                &topo.backends[last],
                SocketAddr::new(serving.backend(last), CHANGED_PORT),
            )?);
        }
        let dir = tempfile::Builder::new().prefix("kpt-bench-").tempdir()?;
        std::fs::create_dir(dir.path().join("manifests"))?;
        Ok(Self {
            topo,
            bpffs: BpfFs::new()?,
            dir,
            family,
            servers,
        })
    }

    /// The backends' addresses in the bed's family.
    pub fn backends(&self) -> Vec<IpAddr> {
        Self::backend_addresses(self.family)
    }

    /// The backends' addresses in `family`, the same in every bed.
    pub fn backend_addresses(family: Family) -> Vec<IpAddr> {
        (0..BACKENDS).map(|i| family.backend(i)).collect()
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
}

/// Settings for tens of thousands of short connections per second, inside the namespaces
/// only. The client already has `tcp_tw_reuse=1` and a wide `ip_local_port_range` (test bed).
///
/// Netfilter conntrack: the table size (`nf_conntrack_max`, 262144 here) can only be set in
/// the initial namespace, so instead the node keeps closed connections for 10 s rather than
/// 120 s (`nf_conntrack_tcp_timeout_time_wait`) — the same as kproxy's own close timeout — so
/// the table holds the rate without dropping. kproxy's conntrack is sized with `--ct-max`.
fn tune(topo: &Topology) -> Result<()> {
    topo.node.sysctls(&[
        ("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "10"),
        ("net.core.somaxconn", "4096"),
    ])?;
    for ns in &topo.backends {
        ns.sysctls(&[
            ("net.core.somaxconn", "4096"),
            ("net.ipv4.tcp_max_syn_backlog", "4096"),
            ("net.ipv4.tcp_tw_reuse", "1"),
        ])?;
    }
    Ok(())
}
