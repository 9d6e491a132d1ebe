//! Probes that time programming from the outside, the same way for every proxy: real
//! connections from the client namespace, one request line, one reply from a backend's
//! who-am-I server. A VIP nothing serves yet fails fast (the node has no route for it: ICMP
//! net unreachable; a Service without endpoints is rejected), so polling costs little.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, SocketAddrV4, TcpStream},
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
/// Pause between polling rounds.
const POLL_PAUSE: Duration = Duration::from_millis(1);

/// One request through `target` from the calling thread's namespace: the reply line.
fn ask(target: SocketAddrV4) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(target), ATTEMPT_TIMEOUT)?;
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
    targets: Vec<SocketAddrV4>,
    timeout: Duration,
) -> Result<Duration> {
    let started = proxy.started;
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let poller = bed.topo.client.spawn("probe-all", move || {
        let mut pending = targets;
        while !pending.is_empty() && !stopped.load(Ordering::Relaxed) {
            pending.retain(|t| ask(*t).is_err());
            std::thread::sleep(POLL_PAUSE);
        }
        (pending, started.elapsed())
    })?;
    let result = loop {
        if poller.is_finished() {
            break Ok(());
        }
        if let Err(e) = proxy.check_running() {
            break Err(e);
        }
        if started.elapsed() > timeout {
            break Err(anyhow::anyhow!(
                "not every sampled Service answered within {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    stop.store(true, Ordering::Relaxed);
    let (pending, took) = poller
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
        .context("probing from the client namespace")?;
    result?;
    if !pending.is_empty() {
        bail!("{} sampled Services never answered", pending.len());
    }
    Ok(took)
}

/// The Services probed for "every Service answers": the last created, the first, and
/// `sample` spread evenly between (all of them when there are fewer).
pub fn sample(frontends: &[SocketAddrV4], sample: usize) -> Vec<SocketAddrV4> {
    let n = frontends.len();
    if n <= sample + 2 {
        return frontends.to_vec();
    }
    let mut picked: Vec<SocketAddrV4> = (0..=sample + 1)
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
    let pod_ip = *bed.backends().last().context("no backends")?;
    let target = PROBE.frontend();
    let mut took = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        PROBE.set_ready(plane, 0, pod_ip, false, SystemTime::now())?;
        poll(
            &bed.topo.client,
            proxy,
            target,
            Duration::from_secs(10),
            std::io::Result::is_err,
        )
        .context("the probe Service kept answering after its pod stopped being Ready")?;
        std::thread::sleep(Duration::from_millis(1_200));
        let started = Instant::now();
        PROBE.set_ready(plane, 0, pod_ip, true, SystemTime::now())?;
        let reply = poll(
            &bed.topo.client,
            proxy,
            target,
            Duration::from_secs(10),
            std::io::Result::is_ok,
        )
        .context("the probe Service's new endpoint never answered")?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let reply = reply.unwrap_or_default();
        // The poll only stops on a reply.
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
    target: SocketAddrV4,
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
    let outcome = poller
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
        .context("probing from the client namespace")?;
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
        let all: Vec<SocketAddrV4> = (0..1000u16)
            .map(|i| SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 0), i))
            .collect();
        let picked = sample(&all, 8);
        assert_eq!(picked.len(), 10);
        assert_eq!(picked.first(), all.first());
        assert_eq!(picked.last(), all.last());
        assert_eq!(picked[1].port(), 111);
        assert_eq!(sample(&all[..5], 8), all[..5]);
    }
}
