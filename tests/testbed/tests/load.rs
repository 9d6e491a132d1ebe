//! The load generator against who-am-I servers reached directly (no kproxy): every workload
//! runs, stops by itself, and a quiet bed shows no failure, stall or loss, so a failure in a
//! restart test is the datapath's, not the generator's.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use kproxy_testbed::{
    LoadConfig, Topology, TopologyOptions, load, require_privileges, tcp_server, udp_server,
};

#[test]
fn a_quiet_bed_shows_no_failure_stall_or_loss() {
    if !require_privileges("a_quiet_bed_shows_no_failure_stall_or_loss") {
        return;
    }
    let topo = Topology::build(TopologyOptions {
        backends: 1,
        ..TopologyOptions::default()
    })
    .expect("test bed");
    let backend = topo.backend_addr(0);
    let tcp = SocketAddrV4::new(backend, 8080);
    let udp = SocketAddrV4::new(backend, 5353);
    let _tcp_server = tcp_server(&topo.backends[0], tcp).expect("tcp server");
    let _udp_server = udp_server(&topo.backends[0], udp).expect("udp server");

    // Runs out by itself: nobody calls `finish` before its end.
    let run = load::start(
        &topo.client,
        LoadConfig {
            max_duration: Duration::from_millis(1500),
            ..LoadConfig::new(tcp, udp)
        },
    )
    .expect("starting the load");
    let waiting = Instant::now();
    while run.running() {
        assert!(
            waiting.elapsed() < Duration::from_secs(5),
            "the load ends by itself"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = run.finish().expect("load report");
    eprintln!("{}", report.summary());
    let total = report.total();
    assert!(!report.stopped_early);
    assert_eq!(report.ran_for, Duration::from_millis(1500));
    // 200/s for 1.5 s each, give or take the scheduling of a busy machine.
    assert!(total.connections_ok >= 200, "{total}");
    assert!(total.udp_sent >= 200, "{total}");
    assert!(total.exchanges >= 8 * 50, "{total}");
    assert_eq!(total.backends.keys().collect::<Vec<_>>(), vec![&tcp]);
    assert!(
        report.failed_connections().is_empty(),
        "{:?}",
        report.failed_connections()
    );
    assert!(
        report.session_failures.is_empty(),
        "{:?}",
        report.session_failures
    );
    assert!(
        report.lost_datagrams().is_empty(),
        "{:?}",
        report.lost_datagrams()
    );
    assert!(report.udp_failures.is_empty(), "{:?}", report.udp_failures);
    // Generous: only a generator that stopped pinging would exceed it on a quiet bed.
    assert!(total.max_gap < Duration::from_millis(500), "{total}");
}
