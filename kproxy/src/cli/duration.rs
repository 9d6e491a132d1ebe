//! Durations as kube-proxy takes them: Go's syntax (`24h0m0s`, `1h`, `1.5h`, `300ms`, `0`),
//! parsed by a port of Go's `time.ParseDuration`. kproxy's own timeout flags took whole
//! seconds before they took kube-proxy's names, so a bare number still means seconds.

use std::{fmt, str::FromStr, time::Duration};

/// A flag's duration: read by `parse_or_seconds`, shown as Go prints it (clap's defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl FromStr for GoDuration {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        parse_or_seconds(text).map(GoDuration)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format(self.0))
    }
}

/// A Go duration, never negative (`Err` says what is wrong with `text`).
pub fn parse(text: &str) -> Result<Duration, String> {
    let ns = go_parse_duration::parse_duration(text)
        .map_err(|_| format!("{text:?} is not a duration (e.g. 30s, 1h0m0s, 1.5h, 300ms)"))?;
    u64::try_from(ns)
        .map(Duration::from_nanos)
        .map_err(|_| format!("{text:?} is negative"))
}

/// A Go duration, or a bare number of seconds (kproxy's older flags).
pub fn parse_or_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => parse(text),
    }
}

/// `value` as Go prints it (`24h0m0s`, `30s`, `1.5s`), for defaults and messages.
pub fn format(value: Duration) -> String {
    let secs = value.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let frac = value.subsec_nanos();
    let seconds = if frac == 0 {
        format!("{s}s")
    } else {
        let digits = format!("{frac:09}");
        format!("{s}.{}s", digits.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => seconds,
        (0, _) => format!("{m}m{seconds}"),
        _ => format!("{h}h{m}m{seconds}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_durations_and_bare_seconds() {
        let cases: &[(&str, Result<u64, &str>)] = &[
            ("24h0m0s", Ok(86_400_000)),
            ("1h", Ok(3_600_000)),
            ("1.5h", Ok(5_400_000)),
            ("2h22m", Ok(8_520_000)),
            ("300ms", Ok(300)),
            ("0", Ok(0)),
            ("0s", Ok(0)),
            ("-1s", Err("negative")),
            ("10", Err("not a duration")),
            ("1 hour", Err("not a duration")),
            ("", Err("not a duration")),
        ];
        for (text, want) in cases {
            match (parse(text), want) {
                (Ok(got), Ok(ms)) => assert_eq!(got, Duration::from_millis(*ms), "{text}"),
                (Err(e), Err(part)) => assert!(e.contains(part), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(parse_or_seconds("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_or_seconds("10m"), Ok(Duration::from_mins(10)));
    }

    #[test]
    fn prints_like_go() {
        for (value, text) in [
            (Duration::from_hours(24), "24h0m0s"),
            (Duration::from_hours(1), "1h0m0s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(format(value), text);
            assert_eq!(parse(text), Ok(value), "round trip of {text}");
        }
    }
}
