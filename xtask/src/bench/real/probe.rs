//! Probes that time programming from the outside, the same way for every proxy: real
//! connections from the client namespace, one request line, one reply from a backend's
//! who-am-I server. A VIP nothing serves yet is refused (the node has no route for it: ICMP
//! net unreachable; a Service without endpoints is rejected), or, once the kernel's ICMP rate
//! limit is reached, its SYN is dropped without a word: so attempts at a target overlap
//! rather than wait for each other.
//!
//! Attempts are tasks of one single-threaded runtime on one thread, not a thread each: while
//! a proxy starts, 64 Services are asked 50 times a second, and a thread per attempt took
//! about a quarter of the bench machine's two CPUs (perf of a 100,000-Service start: 2.9 CPU
//! seconds of 13) from the proxy it was timing.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt},
    task::JoinSet,
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
        // The runtime and its sockets belong to this thread, in the client's namespace.
        on_one_thread(async move {
            let mut polls = JoinSet::new();
            for (i, target) in targets.into_iter().enumerate() {
                let stopped = Arc::clone(&stopped);
                polls.spawn(async move {
                    let reply = first_reply(target, ALL_ANSWER_SPACING, deadline, &stopped);
                    (i, reply.await.map(|(_, at)| at))
                });
            }
            let mut answered = vec![None; polls.len()];
            while let Some(poll) = polls.join_next().await {
                if let Ok((i, at)) = poll {
                    answered[i] = at;
                }
            }
            answered
        })
    })?;
    let result = watch(proxy, &poller, deadline, &stop);
    let answered = joined(poller)??;
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

/// One request through `target` from the calling thread's namespace, as a task (attempts
/// of one poll overlap without a thread each): the reply line, with when it came.
async fn ask(target: SocketAddr) -> std::io::Result<(String, Instant)> {
    let timed_out = |_| std::io::Error::from(std::io::ErrorKind::TimedOut);
    let mut stream = tokio::time::timeout(ATTEMPT_TIMEOUT, tokio::net::TcpStream::connect(target))
        .await
        .map_err(timed_out)??;
    let exchange = async {
        stream.write_all(b"probe\n").await?;
        let mut line = String::new();
        tokio::io::BufReader::new(&mut stream)
            .read_line(&mut line)
            .await?;
        Ok::<_, std::io::Error>(line)
    };
    let line = tokio::time::timeout(ATTEMPT_TIMEOUT, exchange)
        .await
        .map_err(timed_out)??;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok((line, Instant::now()))
}

/// Asks `target` every `spacing` from the calling thread's namespace, attempts overlapping,
/// until one gets a reply (returned, with when it came), `stop` is set or `deadline` passes.
/// Attempts still in flight then are dropped.
async fn first_reply(
    target: SocketAddr,
    spacing: Duration,
    deadline: Instant,
    stop: &AtomicBool,
) -> Option<(String, Instant)> {
    let mut attempts = JoinSet::new();
    let mut due = tokio::time::interval(spacing);
    due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = due.tick() => {
                if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
                    return None;
                }
                attempts.spawn(ask(target));
            }
            Some(attempt) = attempts.join_next() => {
                if let Ok(Ok(found)) = attempt {
                    return Some(found);
                }
            }
        }
    }
}

/// Runs `work` to its end on a single-threaded runtime of the calling thread.
fn on_one_thread<T>(work: impl std::future::Future<Output = T>) -> std::io::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    Ok(runtime.block_on(work))
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
            on_one_thread(first_reply(
                target,
                NEW_ENDPOINT_SPACING,
                deadline,
                &stopped,
            ))
        })?;
        let result = watch(proxy, &poller, deadline, &stop);
        let found = joined(poller)??;
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
        on_one_thread(async move {
            loop {
                let outcome = ask(target).await.map(|(reply, _)| reply);
                if done(&outcome) || started.elapsed() > timeout {
                    return outcome;
                }
                tokio::time::sleep(POLL_PAUSE).await;
            }
        })
    })?;
    while !poller.is_finished() {
        proxy.check_running()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let outcome = joined(poller)??;
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
