//! When the periodic drift check runs. It walks every service map on the agent's thread
//! (311 ms at 100,000 Services), and changes that arrive meanwhile wait for it: so a check
//! that falls due while changes are flowing waits for a quiet moment, when none has been
//! synced for `QUIET`, and runs at most a whole period late (a cluster that never stops
//! changing is still checked).

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// How long no change must have been synced before a due check runs.
pub const QUIET: Duration = Duration::from_secs(1);

/// When a check due since `due` runs, given the last change synced (`last_change`) and the
/// longest it may wait (`max_wait`, the period).
pub fn run_at(
    due: Instant,
    last_change: Option<Instant>,
    quiet: Duration,
    max_wait: Duration,
) -> Instant {
    let quiet_from = last_change.map_or(due, |at| due.max(at + quiet));
    quiet_from.min(due + max_wait)
}

/// The periodic check's clock.
pub struct DriftSchedule {
    /// Ticks once a period; `None`: checks only when asked.
    period: Option<(Interval, Duration)>,
    /// When the check fell due, until it runs.
    due: Option<Instant>,
    last_change: Option<Instant>,
}

impl DriftSchedule {
    /// A check a period from now, then every period (`None`: never by itself).
    pub fn new(period: Option<Duration>) -> Self {
        let period = period.map(|period| {
            let start = Instant::now() + period;
            let mut interval = tokio::time::interval_at(start, period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            (interval, period)
        });
        Self {
            period,
            due: None,
            last_change: None,
        }
    }

    /// A change was synced at `at`.
    pub fn changed(&mut self, at: Instant) {
        self.last_change = Some(at);
    }

    /// Resolves when a check is to run now; then call [`DriftSchedule::ran`]. Cancel-safe.
    pub async fn due(&mut self) {
        let Some((interval, period)) = &mut self.period else {
            return std::future::pending().await;
        };
        let due = match self.due {
            Some(due) => due,
            None => {
                interval.tick().await;
                *self.due.insert(Instant::now())
            }
        };
        let at = run_at(due, self.last_change, QUIET, *period);
        tokio::time::sleep_until(at).await;
    }

    /// The check ran: the next one falls due a whole period after it, however late it was.
    pub fn ran(&mut self) {
        self.due = None;
        if let Some((interval, _)) = &mut self.period {
            interval.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_check_waits_for_a_quiet_moment_at_most_a_period() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let start = Instant::now();
        let due = start + s(10);
        let period = s(60);
        for (last_change, want, why) in [
            (None, due, "nothing ever changed: at once"),
            (Some(start + s(5)), due, "quiet for long: at once"),
            (
                Some(start + ms(9_600)),
                due + ms(600),
                "quiet one second after the change",
            ),
            (Some(due + s(10)), due + s(11), "a change after it fell due"),
            (
                Some(due + s(59)),
                due + s(60),
                "changes all period: a period late",
            ),
            (Some(due + s(90)), due + s(60), "never later than a period"),
        ] {
            assert_eq!(run_at(due, last_change, QUIET, period), want, "{why}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_due_during_changes_runs_once_they_stop() {
        let period = Duration::from_mins(1);
        let mut schedule = DriftSchedule::new(Some(period));
        // Falls due a period in; changes every 100 ms from 59.5 s to 69.9 s.
        tokio::time::advance(Duration::from_millis(59_500)).await;
        let mut last_change = Instant::now();
        for _ in 0..105 {
            last_change = Instant::now();
            schedule.changed(last_change);
            let ran = tokio::time::timeout(Duration::from_millis(100), schedule.due()).await;
            assert!(ran.is_err(), "never while the changes flow");
        }
        tokio::time::timeout(Duration::from_secs(2), schedule.due())
            .await
            .expect("a quiet second after the last change");
        assert_eq!(Instant::now(), last_change + QUIET);
        schedule.ran();
        // The next a whole period after it.
        let early = tokio::time::timeout(Duration::from_millis(59_999), schedule.due()).await;
        assert!(early.is_err(), "not before a period");
        tokio::time::timeout(Duration::from_secs(1), schedule.due())
            .await
            .expect("a period after the last check");
    }
}
