//! A bounded load generator for restart and upgrade tests: from inside a namespace (the
//! client's) it runs three workloads against Service VIPs at once and records every failure,
//! stall and lost reply with its time, so a test can tell which moment of a restart hurt.
//!
//! - new TCP connections at a fixed rate: connect, one request line, the reply, a normal close;
//! - long-lived TCP sessions, each a request/response ping-pong every few milliseconds: resets,
//!   errors and the longest gap between two successful exchanges (a stall);
//! - a UDP stream of sequence-numbered requests on one flow: replies lost (none within the
//!   timeout), each with the time its request was sent.
//!
//! Each workload runs on its own thread (a single-threaded tokio runtime inside the namespace),
//! so a hiccup of one does not delay the others. The load stops by itself after
//! `max_duration`; [`LoadRun::finish`] stops it sooner and returns the [`LoadReport`].

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddrV4;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio::time::{MissedTickBehavior, interval, sleep_until, timeout};

use crate::netns::Netns;
use crate::servers::{Reply, SeqReply, set_recverr};

/// What TCP requests send; the who-am-I servers answer any line.
const REQUEST: &[u8] = b"ping\n";
/// Longest reply accepted (`seq=<n> backend=<ip:port> peer=<ip:port>\n` is about 60 bytes).
const MAX_REPLY: usize = 256;

/// What load to generate, and what counts as a failure.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The TCP target of new connections and sessions (a Service VIP:port).
    pub tcp: SocketAddrV4,
    /// The UDP target of the request stream (a Service VIP:port).
    pub udp: SocketAddrV4,
    /// The load stops by itself after this long, even if nobody calls `finish`.
    pub max_duration: Duration,
    /// New TCP connections started per second.
    pub connection_rate: u32,
    /// Long-lived TCP sessions kept open for the whole run.
    pub sessions: usize,
    /// How often each session sends a request.
    pub ping_interval: Duration,
    /// UDP requests sent per second.
    pub udp_rate: u32,
    /// A new connection (connect to reply), a session exchange or a UDP reply that takes
    /// longer than this has failed (a dropped SYN is retransmitted after 1 s, so 1 s catches it).
    pub timeout: Duration,
}

impl LoadConfig {
    /// 200 new connections/s, 8 sessions pinging every 10 ms, 200 UDP requests/s, failures
    /// after 1 s, at most 60 s.
    pub fn new(tcp: SocketAddrV4, udp: SocketAddrV4) -> LoadConfig {
        LoadConfig {
            tcp,
            udp,
            max_duration: Duration::from_mins(1),
            connection_rate: 200,
            sessions: 8,
            ping_interval: Duration::from_millis(10),
            udp_rate: 200,
            timeout: Duration::from_secs(1),
        }
    }
}

/// One new TCP connection.
#[derive(Debug, Clone)]
pub struct Connection {
    /// When it was started, since the load started.
    pub at: Duration,
    /// Connect to reply (to the failure, for a failed one).
    pub took: Duration,
    /// The backend that answered, or what went wrong.
    pub result: Result<SocketAddrV4, String>,
}

/// One successful request/response on a long-lived session.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    /// When the reply arrived, since the load started.
    pub at: Duration,
    pub session: usize,
    /// Since the previous successful exchange of the same connection: at least the ping
    /// interval; more means the flow (or the client) stalled.
    pub gap: Duration,
    /// Request to reply.
    pub rtt: Duration,
}

/// One request of the UDP stream.
#[derive(Debug, Clone, Copy)]
pub struct Datagram {
    /// When it was sent, since the load started.
    pub at: Duration,
    /// Request to reply; `None` when no reply came (a reply after the timeout counts as lost).
    pub rtt: Option<Duration>,
}

impl Datagram {
    fn lost(&self, timeout: Duration) -> bool {
        self.rtt.is_none_or(|rtt| rtt > timeout)
    }
}

/// Something that went wrong at a moment of the run.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Since the load started.
    pub at: Duration,
    pub what: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", secs(self.at), self.what)
    }
}

/// A load in progress.
pub struct LoadRun {
    started: Instant,
    config: LoadConfig,
    stop: Arc<AtomicBool>,
    connections: JoinHandle<io::Result<io::Result<Vec<Connection>>>>,
    sessions: JoinHandle<io::Result<io::Result<SessionRecord>>>,
    udp: JoinHandle<io::Result<io::Result<UdpRecord>>>,
}

/// Starts the three workloads from inside `ns`, now.
pub fn start(ns: &Netns, config: LoadConfig) -> Result<LoadRun> {
    ensure!(
        config.connection_rate > 0 && config.udp_rate > 0 && config.sessions > 0,
        "every workload needs a rate or a session count above zero: {config:?}"
    );
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clock = Clock {
        started,
        deadline: started + config.max_duration,
        stop: stop.clone(),
    };
    let connections = {
        let (config, clock) = (config.clone(), clock.clone());
        ns.spawn("load-connections", move || {
            block_on(new_connections(&config, &clock))
        })?
    };
    let sessions = {
        let (config, clock) = (config.clone(), clock.clone());
        ns.spawn("load-sessions", move || block_on(sessions(&config, &clock)))?
    };
    let udp = {
        let config = config.clone();
        ns.spawn("load-udp", move || block_on(udp_stream(&config, &clock)))?
    };
    Ok(LoadRun {
        started,
        config,
        stop,
        connections,
        sessions,
        udp,
    })
}

impl LoadRun {
    /// Time since the load started: the clock of every time in the report, for marking
    /// phases of a test on the same scale.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the load still runs (it ends by itself after `max_duration`).
    pub fn running(&self) -> bool {
        self.elapsed() < self.config.max_duration
    }

    /// Stops starting new requests, waits for those in flight (at most the timeout), and
    /// returns what happened.
    pub fn finish(self) -> Result<LoadReport> {
        let stopped_at = self.elapsed();
        self.stop.store(true, Ordering::Relaxed);
        let connections = join(self.connections, "new connections")?;
        let sessions = join(self.sessions, "sessions")?;
        let udp = join(self.udp, "UDP stream")?;
        Ok(LoadReport {
            ran_for: stopped_at.min(self.config.max_duration),
            stopped_early: stopped_at < self.config.max_duration,
            config: self.config,
            connections,
            exchanges: sessions.exchanges,
            session_failures: sessions.failures,
            max_lag: sessions.max_lag,
            datagrams: udp.datagrams,
            udp_failures: udp.failures,
        })
    }
}

fn join<T>(thread: JoinHandle<io::Result<io::Result<T>>>, what: &str) -> Result<T> {
    thread
        .join()
        .map_err(|_| anyhow!("the {what} workload panicked"))?
        .with_context(|| format!("entering the namespace for the {what} workload"))?
        .with_context(|| format!("the {what} workload failed"))
}

/// What a run did, event by event; [`LoadReport::figures`] sums up any window of it.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub config: LoadConfig,
    /// How long requests were started.
    pub ran_for: Duration,
    /// Whether `finish` stopped the load before `max_duration` (else it ran out by itself,
    /// and the later part of a test ran without load).
    pub stopped_early: bool,
    pub connections: Vec<Connection>,
    /// Every successful session exchange (after the first of each connection).
    pub exchanges: Vec<Exchange>,
    /// Session resets, errors and timeouts (the session reconnects after each).
    pub session_failures: Vec<Failure>,
    /// The longest a session's timer fired late: how long the load generator itself was not
    /// scheduled. A stall no longer than this may be the client's, not the network's.
    pub max_lag: Duration,
    /// Indexed by sequence number.
    pub datagrams: Vec<Datagram>,
    /// Errors of the UDP socket (an ICMP error for the flow, say).
    pub udp_failures: Vec<Failure>,
}

impl LoadReport {
    /// New connections that failed, with when they were started.
    pub fn failed_connections(&self) -> Vec<Failure> {
        self.connections
            .iter()
            .filter_map(|c| {
                c.result.as_ref().err().map(|e| Failure {
                    at: c.at,
                    what: format!("{e} (after {})", ms(c.took)),
                })
            })
            .collect()
    }

    /// Session exchanges whose gap exceeded `threshold`, longest first.
    pub fn stalls(&self, threshold: Duration) -> Vec<Exchange> {
        let mut stalls: Vec<Exchange> = self
            .exchanges
            .iter()
            .filter(|e| e.gap > threshold)
            .copied()
            .collect();
        stalls.sort_by_key(|e| std::cmp::Reverse(e.gap));
        stalls
    }

    /// Send times of the UDP requests that got no reply within the timeout.
    pub fn lost_datagrams(&self) -> Vec<Duration> {
        self.datagrams
            .iter()
            .filter(|d| d.lost(self.config.timeout))
            .map(|d| d.at)
            .collect()
    }

    /// The figures of events in `window` (times since the load started): connections and
    /// datagrams by when they were sent, exchanges and failures by when they completed.
    pub fn figures(&self, window: Range<Duration>) -> Figures {
        let inside = |at: &Duration| window.contains(at);
        let mut f = Figures {
            window: window.start..window.end.min(self.ran_for),
            ..Figures::default()
        };
        for c in self.connections.iter().filter(|c| inside(&c.at)) {
            match &c.result {
                Ok(backend) => {
                    f.connections_ok += 1;
                    f.connect_max = f.connect_max.max(c.took);
                    *f.backends.entry(*backend).or_default() += 1;
                }
                Err(_) => f.connections_failed += 1,
            }
        }
        for e in self.exchanges.iter().filter(|e| inside(&e.at)) {
            f.exchanges += 1;
            f.max_gap = f.max_gap.max(e.gap);
        }
        f.session_failures = self
            .session_failures
            .iter()
            .filter(|x| inside(&x.at))
            .count();
        for d in self.datagrams.iter().filter(|d| inside(&d.at)) {
            f.udp_sent += 1;
            if d.lost(self.config.timeout) {
                f.udp_lost += 1;
            } else if let Some(rtt) = d.rtt {
                f.udp_max_rtt = f.udp_max_rtt.max(rtt);
            }
        }
        f.udp_failures = self.udp_failures.iter().filter(|x| inside(&x.at)).count();
        f
    }

    /// The figures of the whole run.
    pub fn total(&self) -> Figures {
        self.figures(Duration::ZERO..Duration::MAX)
    }

    /// One line for humans: the figures of the whole run.
    pub fn summary(&self) -> String {
        self.total().to_string()
    }
}

/// Counts and extremes of a window of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    pub window: Range<Duration>,
    pub connections_ok: usize,
    pub connections_failed: usize,
    /// The slowest successful connection, connect to reply.
    pub connect_max: Duration,
    /// Successful new connections per backend that answered.
    pub backends: BTreeMap<SocketAddrV4, usize>,
    pub exchanges: usize,
    /// Session resets, errors and timeouts.
    pub session_failures: usize,
    /// The longest gap between two successful exchanges of one session.
    pub max_gap: Duration,
    pub udp_sent: usize,
    pub udp_lost: usize,
    pub udp_failures: usize,
    pub udp_max_rtt: Duration,
}

impl Figures {
    /// No failed connection, session failure, lost reply or UDP error, and no session gap
    /// above `max_gap`.
    pub fn clean(&self, max_gap: Duration) -> bool {
        self.connections_failed == 0
            && self.session_failures == 0
            && self.udp_lost == 0
            && self.udp_failures == 0
            && self.max_gap <= max_gap
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spread: Vec<String> = self.backends.values().map(ToString::to_string).collect();
        write!(
            f,
            "{}–{}: new TCP {} ok / {} failed (max {}, per backend {}); sessions {} exchanges / \
             {} failed, max gap {}; UDP {} sent / {} lost / {} errors (max rtt {})",
            secs(self.window.start),
            secs(self.window.end),
            self.connections_ok,
            self.connections_failed,
            ms(self.connect_max),
            if spread.is_empty() {
                "-".to_owned()
            } else {
                spread.join("/")
            },
            self.exchanges,
            self.session_failures,
            ms(self.max_gap),
            self.udp_sent,
            self.udp_lost,
            self.udp_failures,
            ms(self.udp_max_rtt),
        )
    }
}

/// `1.234 s`
pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// `12.3 ms`
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// When the load started, when it must end, and the caller's stop.
#[derive(Debug, Clone)]
struct Clock {
    started: Instant,
    deadline: Instant,
    stop: Arc<AtomicBool>,
}

impl Clock {
    fn since_start(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.started)
    }

    fn over(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

/// Runs `work` on a single-threaded runtime on this thread (which has entered the namespace,
/// so every socket the workload makes is in it).
fn block_on<T>(work: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

/// Period of a rate per second.
fn period(per_second: u32) -> Duration {
    Duration::from_secs(1) / per_second
}

fn describe(e: &io::Error) -> String {
    format!("{:?}: {e}", e.kind())
}

/// Reads one reply line (newline included) from `stream`.
async fn read_line(stream: &mut TcpStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut buf = [0u8; MAX_REPLY];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection before replying",
            ));
        }
        line.extend_from_slice(&buf[..n]);
        if line.ends_with(b"\n") {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if line.len() > MAX_REPLY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"));
        }
    }
}

/// One request on `stream` and its who-am-I reply.
async fn exchange(stream: &mut TcpStream) -> io::Result<Reply> {
    stream.write_all(REQUEST).await?;
    Reply::parse(&read_line(stream).await?)
}

/// `f` within `limit`, a timeout being an error like any other.
async fn within<T>(limit: Duration, f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    timeout(limit, f).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("nothing within {}", ms(limit)),
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// New connections at a fixed rate.

async fn new_connections(config: &LoadConfig, clock: &Clock) -> io::Result<Vec<Connection>> {
    let mut ticker = interval(period(config.connection_rate));
    // After a hiccup of this thread the rate resumes; no burst makes up for lost ticks.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut in_flight = JoinSet::new();
    let mut done = Vec::new();
    loop {
        ticker.tick().await;
        if clock.over() {
            break;
        }
        let (target, limit, clock) = (config.tcp, config.timeout, clock.clone());
        in_flight.spawn(async move { one_connection(target, limit, &clock).await });
        while let Some(finished) = in_flight.try_join_next() {
            done.push(finished.map_err(io::Error::other)?);
        }
    }
    while let Some(finished) = in_flight.join_next().await {
        done.push(finished.map_err(io::Error::other)?);
    }
    done.sort_by_key(|c| c.at);
    Ok(done)
}

async fn one_connection(target: SocketAddrV4, limit: Duration, clock: &Clock) -> Connection {
    let begun = Instant::now();
    let result = within(limit, async {
        let mut stream = TcpStream::connect(target).await?;
        stream.set_nodelay(true)?;
        let reply = exchange(&mut stream).await?;
        // The whole reply was read, so closing sends a FIN (unread data would make it an RST).
        drop(stream);
        Ok(reply.backend)
    })
    .await;
    let took = begun.elapsed();
    // An answer in the very poll the timer fired in still came too late.
    let result = match result {
        Ok(_) if took > limit => Err(format!("answered only after {}", ms(took))),
        other => other.map_err(|e| describe(&e)),
    };
    Connection {
        at: clock.since_start(begun),
        took,
        result,
    }
}

// ---------------------------------------------------------------------------------------------
// Long-lived sessions.

#[derive(Default)]
struct SessionRecord {
    exchanges: Vec<Exchange>,
    failures: Vec<Failure>,
    max_lag: Duration,
}

async fn sessions(config: &LoadConfig, clock: &Clock) -> io::Result<SessionRecord> {
    let mut all = JoinSet::new();
    for session in 0..config.sessions {
        let (config, clock) = (config.clone(), clock.clone());
        all.spawn(async move { one_session(session, &config, &clock).await });
    }
    let mut record = SessionRecord::default();
    while let Some(finished) = all.join_next().await {
        let one = finished.map_err(io::Error::other)?;
        record.exchanges.extend(one.exchanges);
        record.failures.extend(one.failures);
        record.max_lag = record.max_lag.max(one.max_lag);
    }
    record.exchanges.sort_by_key(|e| e.at);
    record.failures.sort_by_key(|f| f.at);
    Ok(record)
}

/// Pings every `ping_interval` on one connection for the whole run; after a failure it
/// records it and connects again (the gap is measured within one connection only).
async fn one_session(session: usize, config: &LoadConfig, clock: &Clock) -> SessionRecord {
    let mut record = SessionRecord::default();
    let mut ticker = interval(config.ping_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The connection, the backend it reached first and its last successful exchange.
    let mut current: Option<(TcpStream, Option<SocketAddrV4>, Option<Instant>)> = None;
    // When the previous round's work ended: a tick due before that is late because of the
    // work (a slow exchange), not because the thread was not scheduled.
    let mut idle_since = Instant::now();
    loop {
        let scheduled = ticker.tick().await.into_std().max(idle_since);
        record.max_lag = record
            .max_lag
            .max(Instant::now().saturating_duration_since(scheduled));
        if clock.over() {
            break;
        }
        let fail = |record: &mut SessionRecord, what: String| {
            record.failures.push(Failure {
                at: clock.since_start(Instant::now()),
                what: format!("session {session}: {what}"),
            });
        };
        let Some((stream, first_backend, last_ok)) = &mut current else {
            match within(config.timeout, TcpStream::connect(config.tcp)).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    current = Some((stream, None, None));
                }
                Err(e) => fail(&mut record, format!("connect: {}", describe(&e))),
            }
            idle_since = Instant::now();
            continue;
        };
        let sent = Instant::now();
        match within(config.timeout, exchange(stream)).await {
            Ok(reply) => {
                let now = Instant::now();
                if first_backend.is_some_and(|b| b != reply.backend) {
                    fail(
                        &mut record,
                        format!(
                            "answered by {} after {}",
                            reply.backend,
                            first_backend.map_or_else(String::new, |b| b.to_string())
                        ),
                    );
                }
                first_backend.get_or_insert(reply.backend);
                if let Some(previous) = last_ok.replace(now) {
                    record.exchanges.push(Exchange {
                        at: clock.since_start(now),
                        session,
                        gap: now - previous,
                        rtt: now - sent,
                    });
                }
            }
            Err(e) => {
                fail(&mut record, describe(&e));
                current = None;
            }
        }
        idle_since = Instant::now();
    }
    record
}

// ---------------------------------------------------------------------------------------------
// The UDP stream.

#[derive(Default)]
struct UdpRecord {
    datagrams: Vec<Datagram>,
    failures: Vec<Failure>,
}

async fn udp_stream(config: &LoadConfig, clock: &Clock) -> io::Result<UdpRecord> {
    let socket = UdpSocket::bind("0.0.0.0:0").await?;
    set_recverr::<SocketAddrV4>(&socket)?;
    // Connected: only replies from the VIP itself are delivered, and ICMP errors about the
    // flow fail the next receive instead of going unnoticed.
    socket.connect(config.udp).await?;
    let mut record = UdpRecord::default();
    let mut sent_at: Vec<Instant> = Vec::new();
    let mut ticker = interval(period(config.udp_rate));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut buf = [0u8; MAX_REPLY];
    // Set when sending ends: replies are awaited until then.
    let mut drain_until: Option<tokio::time::Instant> = None;
    let fail = |record: &mut UdpRecord, what: String| {
        record.failures.push(Failure {
            at: clock.since_start(Instant::now()),
            what,
        });
    };
    // Requests sent and not answered yet.
    let mut unanswered = 0usize;
    loop {
        if drain_until.is_some() && unanswered == 0 {
            break;
        }
        tokio::select! {
            _ = ticker.tick(), if drain_until.is_none() => {
                if clock.over() {
                    drain_until = Some(tokio::time::Instant::now() + config.timeout);
                    continue;
                }
                let seq = record.datagrams.len() as u64;
                let now = Instant::now();
                sent_at.push(now);
                record.datagrams.push(Datagram { at: clock.since_start(now), rtt: None });
                unanswered += 1;
                if let Err(e) = socket.send(SeqReply::request(seq).as_bytes()).await {
                    fail(&mut record, format!("send seq={seq}: {}", describe(&e)));
                }
            }
            received = socket.recv(&mut buf) => {
                let now = Instant::now();
                match received {
                    Ok(n) => match SeqReply::parse(&String::from_utf8_lossy(&buf[..n])) {
                        Ok(answer) => {
                            let index = usize::try_from(answer.seq).ok();
                            match index.and_then(|i| Some((record.datagrams.get_mut(i)?, sent_at[i]))) {
                                Some((datagram, sent)) if datagram.rtt.is_none() => {
                                    datagram.rtt = Some(now - sent);
                                    unanswered -= 1;
                                }
                                Some(_) => fail(&mut record, format!("a second reply to seq={}", answer.seq)),
                                None => fail(&mut record, format!("a reply to seq={} never sent", answer.seq)),
                            }
                        }
                        Err(e) => fail(&mut record, describe(&e)),
                    },
                    Err(e) => fail(&mut record, format!("receive: {}", describe(&e))),
                }
            }
            () = sleep_until(drain_until.unwrap_or_else(tokio::time::Instant::now)), if drain_until.is_some() => break,
        }
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn report() -> LoadReport {
        let target = "198.19.0.10:80".parse().unwrap();
        let backend: SocketAddrV4 = "198.18.2.2:8080".parse().unwrap();
        LoadReport {
            config: LoadConfig::new(target, target),
            ran_for: at(3000),
            stopped_early: true,
            connections: vec![
                Connection {
                    at: at(100),
                    took: at(2),
                    result: Ok(backend),
                },
                Connection {
                    at: at(1500),
                    took: at(1000),
                    result: Err("TimedOut".into()),
                },
            ],
            exchanges: vec![
                Exchange {
                    at: at(200),
                    session: 0,
                    gap: at(10),
                    rtt: at(1),
                },
                Exchange {
                    at: at(1600),
                    session: 1,
                    gap: at(250),
                    rtt: at(240),
                },
            ],
            session_failures: vec![],
            max_lag: at(3),
            datagrams: vec![
                Datagram {
                    at: at(300),
                    rtt: Some(at(1)),
                },
                Datagram {
                    at: at(1700),
                    rtt: None,
                },
                Datagram {
                    at: at(1800),
                    rtt: Some(at(1200)),
                },
            ],
            udp_failures: vec![],
        }
    }

    #[test]
    fn figures_count_events_of_their_window() {
        let r = report();
        let early = r.figures(at(0)..at(1000));
        assert_eq!((early.connections_ok, early.connections_failed), (1, 0));
        assert_eq!(early.max_gap, at(10));
        assert_eq!((early.udp_sent, early.udp_lost), (1, 0));
        assert!(early.clean(at(100)));
        let late = r.figures(at(1000)..at(2000));
        assert_eq!((late.connections_ok, late.connections_failed), (0, 1));
        assert_eq!(late.max_gap, at(250));
        // A reply after the timeout is as good as lost.
        assert_eq!((late.udp_sent, late.udp_lost), (2, 2));
        assert!(!late.clean(at(100)));
        let total = r.total();
        assert_eq!(total.window, at(0)..at(3000));
        assert_eq!(total.backends.values().sum::<usize>(), 1);
    }

    #[test]
    fn failures_stalls_and_losses_keep_their_times() {
        let r = report();
        let failed = r.failed_connections();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].at, at(1500));
        let stalls = r.stalls(at(100));
        assert_eq!(stalls.len(), 1);
        assert_eq!((stalls[0].at, stalls[0].session), (at(1600), 1));
        assert_eq!(r.lost_datagrams(), vec![at(1700), at(1800)]);
        assert!(r.summary().contains("1 ok / 1 failed"), "{}", r.summary());
    }
}
