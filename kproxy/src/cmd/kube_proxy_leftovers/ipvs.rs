//! What kube-proxy's IPVS mode leaves besides its iptables chains and ip sets: IPVS virtual
//! servers and the `kube-ipvs0` dummy interface their addresses are bound to
//! (pkg/proxy/ipvs/cleanup.go).
//!
//! kube-proxy's cleanup flushes every virtual server whenever the kernel has IPVS. Here they
//! are flushed only when `kube-ipvs0` shows that kube-proxy's IPVS mode ran (it makes that
//! interface on every sync), so a load balancer of someone else's (keepalived, say) on a
//! node that never ran that mode stays. The interface goes last, so a failed flush leaves
//! that evidence for the next run. Without IPVS in the kernel there is nothing to flush.

use std::path::Path;

use netlink_packet_route::link::InfoKind;

use super::{Outcome, link, note, tools};

/// The kernel's table of virtual servers, present when IPVS is loaded.
pub const PROC_IP_VS: &str = "/proc/net/ip_vs";
/// kube-proxy's dummy interface (`defaultDummyDevice`).
const DUMMY: &str = "kube-ipvs0";

/// Whether the kernel has IPVS loaded, so `ipvsadm` may be needed.
pub fn in_kernel() -> bool {
    Path::new(PROC_IP_VS).exists()
}

/// The number of virtual servers in `/proc/net/ip_vs`: one line each, starting with its
/// protocol (`TCP  0A600001:01BB rr`), its real servers on the `->` lines below it.
pub fn virtual_servers(proc_ip_vs: &str) -> usize {
    proc_ip_vs
        .lines()
        .filter(|line| {
            matches!(
                line.split_whitespace().next(),
                Some("TCP" | "UDP" | "SCTP" | "FWM")
            )
        })
        .count()
}

pub fn clean(outcome: &mut Outcome) {
    let dummy = match link::find(DUMMY) {
        Ok(found) => found,
        Err(e) => return outcome.failed(anyhow::Error::from(e).context(format!("IPVS: {DUMMY}"))),
    };
    let kube_proxy_ran = dummy
        .as_ref()
        .is_some_and(|d| d.kind == Some(InfoKind::Dummy));
    let flushed = flush_virtual_servers(kube_proxy_ran, outcome);
    match dummy {
        None => note(&format!("IPVS: no {DUMMY} interface")),
        Some(other) if !kube_proxy_ran => note(&format!(
            "IPVS: {DUMMY} left alone: a {} interface, not kube-proxy's dummy",
            other
                .kind
                .map_or_else(|| "physical".to_owned(), |k| k.to_string())
        )),
        Some(_) if !flushed => note(&format!(
            "IPVS: {DUMMY} kept until its virtual servers are flushed"
        )),
        Some(ours) => match link::delete(ours.index) {
            Ok(()) => outcome.removed(1, &format!("IPVS: deleted interface {DUMMY}")),
            Err(e) => {
                outcome.failed(anyhow::Error::from(e).context(format!("IPVS: deleting {DUMMY}")));
            }
        },
    }
}

/// Flushes the virtual servers if IPVS is there and they are kube-proxy's; whether none is
/// left of kube-proxy's.
fn flush_virtual_servers(kube_proxy_ran: bool, outcome: &mut Outcome) -> bool {
    let table = match std::fs::read_to_string(PROC_IP_VS) {
        Ok(table) => table,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            note(&format!(
                "IPVS: not in this kernel (no {PROC_IP_VS}): no virtual servers to remove"
            ));
            return true;
        }
        Err(e) => {
            outcome.failed(anyhow::Error::from(e).context(format!("IPVS: reading {PROC_IP_VS}")));
            return false;
        }
    };
    match virtual_servers(&table) {
        0 => note("IPVS: no virtual servers"),
        n if !kube_proxy_ran => note(&format!(
            "IPVS: {n} virtual servers left alone: there is no {DUMMY}, so kube-proxy's IPVS \
             mode did not make them"
        )),
        n => match tools::output("ipvsadm", &["--clear"]) {
            Ok(_) => outcome.removed(n, &format!("IPVS: removed {n} virtual servers")),
            Err(e) => {
                outcome.failed(e.context("IPVS: flushing the virtual servers"));
                return false;
            }
        },
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_servers_are_counted_without_their_real_servers() {
        let table = "IP Virtual Server version 1.2.1 (size=4096)\n\
                     Prot LocalAddress:Port Scheduler Flags\n  \
                     -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n\
                     TCP  C6130001:01BB rr\n  \
                     -> C6120202:1F90      Masq    1      0          0\n  \
                     -> C6120302:1F90      Masq    1      0          0\n\
                     UDP  C613000A:0035 rr\n\
                     TCP  [2001:0db8:0000:0000:0000:0000:0000:0001]:0050 rr\n\
                     FWM  00000001 wrr\n";
        assert_eq!(virtual_servers(table), 4);
        let empty = "IP Virtual Server version 1.2.1 (size=4096)\n\
                     Prot LocalAddress:Port Scheduler Flags\n  \
                     -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n";
        assert_eq!(virtual_servers(empty), 0);
    }
}
