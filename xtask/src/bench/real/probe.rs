//! Probes that time programming from the outside, the same way for every proxy: real
//! connections from the client namespace, one request line, one reply from a backend's
//! who-am-I server. A VIP nothing serves yet is refused (the node has no route for it: ICMP
//! net unreachable; a Service without endpoints is rejected), or, once the kernel's ICMP rate
//! limit is reached, its SYN is dropped without a word: so attempts at a target overlap
//! rather than wait for each other.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use kproxy_testbed::Netns;

use super::{
    super::{bed::BenchBed, cluster::CHANGED_PORT},
    objects::PROBE,
    plane::Plane,
    proxy::RunningProxy,
};

/// One attempt's bound: a SYN that meets nothing is retried rather than waited for.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);
/// Pause between polling rounds (waiting for a Service to refuse).
const POLL_PAUSE: Duration = Duration::from_millis(1);
/// Time between attempts at one target while waiting for its first reply. Attempts overlap:
/// the kernel rate-limits the ICMP errors that refuse an unserved VIP (a few per second per
/// client), so an attempt may meet a silent drop and wait out its timeout, and a next attempt
/// held back until then would put the figures in steps of it.
const NEW_ENDPOINT_SPACING: Duration = Duration::from_millis(2);
/// The same for "every Service answers", per sampled Service: coarser, as 64 targets are
/// polled at once and the poll must not take the CPU from the proxy it times.
const ALL_ANSWER_SPACING: Duration = Duration::from_millis(20);
/// How long one change may take to show: kube-proxy's iptables mode syncs tens of thousands of
/// Services in tens of seconds.
const PROBE_TIMEOUT: Duration = Duration::from_mins(2);

/// One request through `target` from the calling thread's namespace: the reply line.
fn ask(target: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&target, ATTEMPT_TIMEOUT)?;
    stream.set_read_timeout(Some(ATTEMPT_TIMEOUT))?;
    stream.write_all(b"probe\n")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line)
}

/// Polls `targets` from the client namespace until each has answered once, while the proxy
/// keeps running; returns the time from the proxy's start until the last one answered.
pub fn all_answer(
    bed: &BenchBed,
    proxy: &mut RunningProxy,
    targets: Vec<SocketAddr>,
    timeout: Duration,
) -> Result<Duration> {
    let started = proxy.started;
    let deadline = started + timeout;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let poller = bed.topo.client.spawn("probe-all", move || {
        // Threads spawned here stay in the client's namespace.
        std::thread::scope(|scope| {
            let polls: Vec<_> = targets
                .iter()
                .map(|&target| {
                    let stopped = &stopped;
                    scope.spawn(move || {
                        first_reply(target, ALL_ANSWER_SPACING, deadline, stopped).map(|(_, at)| at)
                    })
                })
                .collect();
            polls
                .into_iter()
                .map(|p| p.join().ok().flatten())
                .collect::<Vec<Option<Instant>>>()
        })
    })?;
    let result = watch(proxy, &poller, deadline, &stop);
    let answered = joined(poller)?;
    result.map_err(|e| {
        e.context(format!(
            "not every sampled Service answered within {timeout:?}"
        ))
    })?;
    let pending = answered.iter().filter(|a| a.is_none()).count();
    if pending > 0 {
        bail!("{pending} sampled Services never answered within {timeout:?}");
    }
    let last = answered.into_iter().flatten().max().context("no targets")?;
    Ok(last - started)
}

/// Asks `target` every `spacing` from the calling thread's namespace, attempts overlapping,
/// until one gets a reply (returned, with when it came), `stop` is set or `deadline` passes.
fn first_reply(
    target: SocketAddr,
    spacing: Duration,
    deadline: Instant,
    stop: &AtomicBool,
) -> Option<(String, Instant)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        loop {
            // Returning leaves the attempts still in flight to end within their timeout;
            // the scope waits for them.
            if let Ok(found) = rx.try_recv() {
                return Some(found);
            }
            if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
                return None;
            }
            let tx = tx.clone();
            scope.spawn(move || {
                if let Ok(reply) = ask(target) {
                    let _ = tx.send((reply, Instant::now()));
                }
            });
            std::thread::sleep(spacing);
        }
    })
}

/// What a probe thread in the client namespace returned.
fn joined<T>(poller: std::thread::JoinHandle<std::io::Result<T>>) -> Result<T> {
    poller
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
        .context("probing from the client namespace")
}

/// Waits for `poller` while checking that the proxy runs; sets `stop` (ending the poll) when
/// it does not, or at `deadline`.
fn watch<T>(
    proxy: &mut RunningProxy,
    poller: &std::thread::JoinHandle<T>,
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<()> {
    let result = loop {
        if poller.is_finished() {
            break Ok(());
        }
        if let Err(e) = proxy.check_running() {
            break Err(e);
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!("timed out"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, Ordering::Relaxed);
    result
}

/// The Services probed for "every Service answers": the last created, the first, and
/// `sample` spread evenly between (all of them when there are fewer).
pub fn sample(frontends: &[SocketAddr], sample: usize) -> Vec<SocketAddr> {
    let n = frontends.len();
    if n <= sample + 2 {
        return frontends.to_vec();
    }
    let mut picked: Vec<SocketAddr> = (0..=sample + 1)
        .map(|k| frontends[k * (n - 1) / (sample + 1)])
        .collect();
    picked.dedup();
    picked
}

/// The independent probe of one endpoint change: the probe Service's only pod (on the
/// CHANGED_PORT server, in no other Service) turns Ready; the time from the status write
/// until the first connection that server answers, for each of `rounds`, in ms.
///
/// Each round starts from a quiet cluster: the pod is made not Ready, the Service seen
/// refusing, then a pause longer than kube-proxy's default 1 s minimum between syncs, so
/// what is timed is one isolated change, not the rate limiter (the churn window measures
/// changes that come faster).
pub fn new_endpoint(
    plane: &Plane,
    bed: &BenchBed,
    proxy: &mut RunningProxy,
    rounds: usize,
) -> Result<Vec<f64>> {
    let pod_ip = *super::objects::selector_pod_ips()
        .last()
        .context("no backends")?;
    let target = PROBE.frontend();
    let mut took = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        PROBE.set_ready(plane, 0, pod_ip, false, SystemTime::now())?;
        poll(
            &bed.topo.client,
            proxy,
            target,
            PROBE_TIMEOUT,
            std::io::Result::is_err,
        )
        .context("the probe Service kept answering after its pod stopped being Ready")?;
        std::thread::sleep(Duration::from_millis(1_200));
        let started = Instant::now();
        PROBE.set_ready(plane, 0, pod_ip, true, SystemTime::now())?;
        let deadline = started + PROBE_TIMEOUT;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let poller = bed.topo.client.spawn("probe-one", move || {
            first_reply(target, NEW_ENDPOINT_SPACING, deadline, &stopped)
        })?;
        let result = watch(proxy, &poller, deadline, &stop);
        let found = joined(poller)?;
        result.context("waiting for the probe Service's new endpoint")?;
        let (reply, at) = found.context("the probe Service's new endpoint never answered")?;
        let ms = (at - started).as_secs_f64() * 1e3;
        if !reply.contains(&format!(":{CHANGED_PORT} ")) {
            bail!("the probe Service was answered by another server: {reply:?}");
        }
        took.push(ms);
    }
    PROBE.set_ready(plane, 0, pod_ip, false, SystemTime::now())?;
    Ok(took)
}

/// Asks `target` from `ns` every millisecond or so until `done` holds for the outcome;
/// returns the reply then, if it was one.
fn poll(
    ns: &Netns,
    proxy: &mut RunningProxy,
    target: SocketAddr,
    timeout: Duration,
    done: fn(&std::io::Result<String>) -> bool,
) -> Result<Option<String>> {
    let started = Instant::now();
    let poller = ns.spawn("probe-one", move || {
        loop {
            let outcome = ask(target);
            if done(&outcome) || started.elapsed() > timeout {
                return outcome;
            }
            std::thread::sleep(POLL_PAUSE);
        }
    })?;
    while !poller.is_finished() {
        proxy.check_running()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let outcome = joined(poller)?;
    if !done(&outcome) {
        bail!("{target}: still {outcome:?} after {timeout:?}");
    }
    Ok(outcome.ok())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn the_sample_has_the_first_and_last_and_spreads_between() {
        let all: Vec<SocketAddr> = (0..1000u16)
            .map(|i| SocketAddr::new(Ipv4Addr::new(198, 19, 0, 0).into(), i))
            .collect();
        let picked = sample(&all, 8);
        assert_eq!(picked.len(), 10);
        assert_eq!(picked.first(), all.first());
        assert_eq!(picked.last(), all.last());
        assert_eq!(picked[1].port(), 111);
        assert_eq!(sample(&all[..5], 8), all[..5]);
    }
}
