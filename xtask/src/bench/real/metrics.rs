//! Prometheus histograms as the proxies expose them on `/metrics`: read one family's buckets
//! (summed over its label sets, e.g. kube-proxy's `ip_family`), subtract an earlier scrape to
//! get what happened within a window, and estimate quantiles as PromQL's
//! `histogram_quantile` does (linear within the bucket that holds the rank).

use anyhow::{Result, bail};
use kproxy_testbed::Netns;

/// The metrics address of either proxy inside the node namespace (only one runs at a time).
pub const METRICS_ADDR: &str = "127.0.0.1:10249";

/// One histogram: cumulative counts per upper bound (ascending, `+Inf` last), and the sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
    pub count: f64,
    pub sum: f64,
}

/// A quantile estimate; `above` when the rank falls in the `+Inf` bucket (the value is then
/// the highest finite bound: the truth is larger). `bucket` is the upper bound of the bucket
/// holding the rank: all the histogram knows for sure (interpolation assumes observations
/// spread evenly within a bucket, which kube-proxy's 250 ms-wide first bucket makes a guess).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantile {
    pub seconds: f64,
    pub above: bool,
    pub bucket: f64,
}

impl Histogram {
    /// The family `name` in the text exposition `text`; `None` if it has no samples.
    pub fn parse(text: &str, name: &str) -> Option<Histogram> {
        let bucket = format!("{name}_bucket");
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        let (mut count, mut sum, mut seen) = (0.0, 0.0, false);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let metric = series.split('{').next().unwrap_or(series);
            if metric == bucket {
                let Some(le) = label(series, "le") else {
                    continue;
                };
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                // Bounds are compared as the same text parsed the same way: exact equality is meant.
                match buckets.iter_mut().find(|(b, _)| b.total_cmp(&le).is_eq()) {
                    Some((_, c)) => *c += value,
                    None => buckets.push((le, value)),
                }
                seen = true;
            } else if metric == format!("{name}_count") {
                count += value;
            } else if metric == format!("{name}_sum") {
                sum += value;
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        seen.then_some(Histogram {
            buckets,
            count,
            sum,
        })
    }

    /// What was observed since `before` (an earlier scrape of the same process).
    pub fn since(&self, before: Option<&Histogram>) -> Histogram {
        let Some(before) = before else {
            return self.clone();
        };
        let earlier = |le: f64| {
            before
                .buckets
                .iter()
                .find(|(b, _)| b.total_cmp(&le).is_eq())
                .map_or(0.0, |(_, c)| *c)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(le, c)| (le, c - earlier(le)))
                .collect(),
            count: self.count - before.count,
            sum: self.sum - before.sum,
        }
    }

    /// The `q` quantile (0..=1), `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<Quantile> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, cumulative) in &self.buckets {
            if cumulative >= rank {
                if le.is_infinite() {
                    return Some(Quantile {
                        seconds: lower.0,
                        above: true,
                        bucket: le,
                    });
                }
                let within = cumulative - lower.1;
                let fraction = if within > 0.0 {
                    (rank - lower.1) / within
                } else {
                    1.0
                };
                return Some(Quantile {
                    seconds: lower.0 + (le - lower.0) * fraction,
                    above: false,
                    bucket: le,
                });
            }
            lower = (le, cumulative);
        }
        None
    }
}

/// The value of label `key` in a series `name{a="x",key="y"}`.
fn label<'a>(series: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("{key}=\"");
    let start = series.find(&pattern)? + pattern.len();
    let rest = &series[start..];
    Some(&rest[..rest.find('"')?])
}

/// `GET /metrics` from the proxy in `ns`.
pub fn scrape(ns: &Netns) -> Result<String> {
    let response = kproxy_testbed::http::get(ns, METRICS_ADDR.parse()?, "/metrics")?;
    if response.status != 200 {
        bail!("GET {METRICS_ADDR}/metrics answered {}", response.status);
    }
    Ok(response.body)
}

/// What a Prometheus scrape of the proxy in `ns` costs: the median time of `rounds` scrapes
/// (ms, the whole HTTP exchange) and the size of the last one (bytes).
pub fn scrape_cost(ns: &Netns, rounds: usize) -> Result<(f64, usize)> {
    let mut times = Vec::with_capacity(rounds);
    let mut size = 0;
    for _ in 0..rounds {
        let started = std::time::Instant::now();
        size = scrape(ns)?.len();
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = times.get(rounds / 2).copied().unwrap_or_default();
    Ok((median, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBE_PROXY: &str = r#"# HELP kubeproxy_sync_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency
# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.001"} 0
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.002"} 2
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.004"} 6
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="+Inf"} 10
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv4"} 0.05
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 10
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv6",le="0.001"} 1
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv6",le="0.002"} 1
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv6",le="0.004"} 1
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv6",le="+Inf"} 1
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv6"} 0.0005
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv6"} 1
kubeproxy_sync_full_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="+Inf"} 1
"#;

    #[test]
    fn families_sum_their_label_sets_and_stay_apart_from_similar_names() {
        let h = Histogram::parse(KUBE_PROXY, "kubeproxy_sync_proxy_rules_duration_seconds")
            .expect("histogram");
        assert_eq!(
            h.buckets,
            [
                (0.001, 1.0),
                (0.002, 3.0),
                (0.004, 7.0),
                (f64::INFINITY, 11.0)
            ]
        );
        assert_eq!((h.count, h.sum), (11.0, 0.0505));
        assert!(Histogram::parse(KUBE_PROXY, "kubeproxy_missing").is_none());
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_of_the_rank() {
        let h = Histogram {
            buckets: vec![
                (0.01, 50.0),
                (0.1, 90.0),
                (1.0, 100.0),
                (f64::INFINITY, 100.0),
            ],
            count: 100.0,
            sum: 3.0,
        };
        let q = |q: f64| h.quantile(q).expect("observations");
        // Rank 50 is the top of the first bucket, whose lower bound is 0.
        assert!((q(0.5).seconds - 0.01).abs() < 1e-12);
        assert!((q(0.25).seconds - 0.005).abs() < 1e-12);
        // Rank 99 is 9/10 of the way through the (0.1, 1] bucket.
        assert!((q(0.99).seconds - 0.91).abs() < 1e-12);
        assert!((q(0.99).bucket - 1.0).abs() < 1e-12);
        let over = Histogram {
            buckets: vec![(0.25, 1.0), (f64::INFINITY, 4.0)],
            count: 4.0,
            sum: 9.0,
        };
        assert_eq!(
            over.quantile(0.99),
            Some(Quantile {
                seconds: 0.25,
                above: true,
                bucket: f64::INFINITY,
            })
        );
    }

    #[test]
    fn a_window_is_the_difference_of_two_scrapes() {
        let before = Histogram {
            buckets: vec![(0.01, 5.0), (f64::INFINITY, 6.0)],
            count: 6.0,
            sum: 1.0,
        };
        let after = Histogram {
            buckets: vec![(0.01, 5.0), (f64::INFINITY, 9.0)],
            count: 9.0,
            sum: 4.0,
        };
        let window = after.since(Some(&before));
        assert_eq!(window.buckets, [(0.01, 0.0), (f64::INFINITY, 3.0)]);
        assert!((window.count - 3.0).abs() < 1e-9);
        assert!(window.since(None).quantile(0.5).is_some_and(|q| q.above));
        let nothing = before.since(Some(&before));
        assert_eq!(nothing.quantile(0.5), None);
    }
}
