//! kube-proxy's flags that kproxy does not take as its own. Those that would change what
//! kube-proxy does are refused with the reason and what to do instead, rather than clap's
//! bare "unexpected argument": an operator moving a kube-proxy command line over learns what
//! changes. Those that ask for nothing kproxy does differently (`--proxy-mode`, client rate
//! limits) are accepted and dropped with a note in the log. (Flags that do apply are
//! kproxy's own, under kube-proxy's names.)

/// A kube-proxy flag kproxy refuses, and why.
const NOT_APPLICABLE: &[(&str, &str)] = &[
    (
        "ipvs-scheduler",
        "kproxy has no IPVS mode: its eBPF datapath balances round-robin, or by Maglev hashing with --lb-algorithm maglev",
    ),
    ("ipvs-sync-period", "kproxy has no IPVS mode"),
    ("ipvs-min-sync-period", "kproxy has no IPVS mode"),
    ("ipvs-exclude-cidrs", "kproxy has no IPVS mode"),
    ("ipvs-strict-arp", "kproxy has no IPVS mode"),
    (
        "ipvs-tcp-timeout",
        "kproxy has no IPVS mode: see --ct-tcp-established-timeout",
    ),
    (
        "ipvs-tcpfin-timeout",
        "kproxy has no IPVS mode: see --ct-tcp-close-timeout",
    ),
    (
        "ipvs-udp-timeout",
        "kproxy has no IPVS mode: see --ct-udp-timeout",
    ),
    (
        "iptables-masquerade-bit",
        "kproxy writes no iptables rules: its datapath masquerades without a packet mark",
    ),
    (
        "conntrack-max-per-core",
        "kproxy keeps its own conntrack table, sized by --ct-max, and leaves the kernel's alone",
    ),
    (
        "conntrack-min",
        "kproxy keeps its own conntrack table, sized by --ct-max, and leaves the kernel's alone",
    ),
    (
        "cleanup",
        "use `kproxy cleanup --kube-proxy-leftovers` to remove kube-proxy's rules, \
         `kproxy cleanup` to remove kproxy's datapath",
    ),
    (
        "init-only",
        "kproxy needs no separate privileged initialisation step",
    ),
    (
        "conntrack-tcp-timeout-close-wait",
        "kproxy keeps a half-closed TCP flow at --conntrack-tcp-timeout-established and \
         leaves the kernel's CLOSE_WAIT timeout alone",
    ),
    (
        "iptables-sync-period",
        "kproxy writes no iptables rules: it writes each change after --sync-debounce-ms",
    ),
    (
        "iptables-min-sync-period",
        "kproxy writes no iptables rules: it writes each change after --sync-debounce-ms",
    ),
    ("profiling", "kproxy serves no profiling endpoint"),
    (
        "feature-gates",
        "kube-proxy's feature gates do not apply to kproxy",
    ),
    (
        "write-config-to",
        "kproxy writes no configuration; it reads kube-proxy's with --config",
    ),
    (
        "healthz-port",
        "deprecated in kube-proxy: use --healthz-bind-address",
    ),
    (
        "metrics-port",
        "deprecated in kube-proxy: use --metrics-bind-address",
    ),
    ("show-hidden-metrics-for-version", "kproxy hides no metrics"),
];

/// How an accepted-and-ignored flag takes its value.
#[derive(Clone, Copy)]
enum Takes {
    /// `--flag value` or `--flag=value`.
    Value,
    /// A boolean: `--flag` or `--flag=false` (Go's flags never take a separate one).
    Bool,
}

/// kube-proxy flags accepted and ignored, each with why it asks for nothing kproxy does
/// differently.
const IGNORED: &[(&str, Takes, &str)] = &[
    (
        "proxy-mode",
        Takes::Value,
        "kube-proxy's choice of datapath; kproxy has one, eBPF",
    ),
    (
        "kube-api-qps",
        Takes::Value,
        "kproxy lists and watches each kind once; there is no request rate to limit",
    ),
    (
        "kube-api-burst",
        Takes::Value,
        "kproxy lists and watches each kind once; there is no request rate to limit",
    ),
    (
        "kube-api-content-type",
        Takes::Value,
        "kproxy chooses its own content types (protobuf where the API server offers it)",
    ),
    (
        "config-sync-period",
        Takes::Value,
        "kproxy's watches need no periodic resync",
    ),
    (
        "conntrack-tcp-be-liberal",
        Takes::Bool,
        "kproxy's conntrack never checks TCP windows; the kernel's is left alone",
    ),
];

/// A `kproxy run` command line with kube-proxy's ignored flags taken out.
#[derive(Debug, Default, PartialEq)]
pub struct Prepared {
    pub args: Vec<String>,
    /// One line per ignored flag, for the log.
    pub notes: Vec<String>,
}

/// Refuses inapplicable flags, and takes out the ignored ones with a note each.
pub fn prepare(args: &[String]) -> Result<Prepared, String> {
    reject_inapplicable(args.iter().map(String::as_str))?;
    let mut prepared = Prepared::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let flag = arg.strip_prefix("--").unwrap_or_default();
        let (name, inline) = flag
            .split_once('=')
            .map_or((flag, None), |(n, v)| (n, Some(v)));
        let Some((_, takes, why)) = IGNORED.iter().find(|(n, _, _)| *n == name) else {
            prepared.args.push(arg.clone());
            continue;
        };
        let value = match (inline, takes) {
            (Some(v), _) => v.to_owned(),
            (None, Takes::Bool) => "true".to_owned(),
            (None, Takes::Value) => rest
                .next()
                .cloned()
                .ok_or_else(|| format!("--{name} needs a value"))?,
        };
        prepared
            .notes
            .push(format!("--{name}={value} ignored: {why}"));
    }
    Ok(prepared)
}

/// `Err` with the reason if `args` (a `kproxy run` command line, without the program
/// name and subcommand) holds a kube-proxy flag that does not apply.
pub fn reject_inapplicable<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<(), String> {
    for arg in args {
        let Some(flag) = arg.strip_prefix("--") else {
            continue;
        };
        let name = flag.split_once('=').map_or(flag, |(name, _)| name);
        if let Some((_, why)) = NOT_APPLICABLE.iter().find(|(n, _)| *n == name) {
            return Err(format!(
                "--{name} is a kube-proxy flag that does not apply to kproxy: {why}; remove it"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn ignored_kube_proxy_flags_are_taken_out_with_a_note_each() {
        let prepared = prepare(&strings(&[
            "--node-name",
            "n",
            "--proxy-mode",
            "iptables",
            "--kube-api-qps=20",
            "--conntrack-tcp-be-liberal",
            "--attach",
            "eth0",
            "--config-sync-period",
            "15m0s",
        ]))
        .expect("accepted");
        assert_eq!(
            prepared.args,
            strings(&["--node-name", "n", "--attach", "eth0"])
        );
        assert_eq!(prepared.notes.len(), 4, "{:?}", prepared.notes);
        assert!(prepared.notes[0].starts_with("--proxy-mode=iptables ignored: "));
        assert!(prepared.notes[2].starts_with("--conntrack-tcp-be-liberal=true ignored"));
        assert_eq!(
            prepare(&strings(&["--kube-api-burst"])),
            Err("--kube-api-burst needs a value".into())
        );
        let err = prepare(&strings(&["--proxy-mode=ipvs", "--ipvs-scheduler=rr"]))
            .expect_err("refused before anything is taken out");
        assert!(err.contains("no IPVS mode"), "{err}");
    }

    #[test]
    fn inapplicable_kube_proxy_flags_are_refused_with_their_reason() {
        let cases: &[(&[&str], Option<&str>)] = &[
            (&["--node-name", "n"], None),
            (&["--ipvs-scheduler", "rr"], Some("no IPVS mode")),
            (
                &["--ipvs-scheduler=rr"],
                Some("--ipvs-scheduler is a kube-proxy flag"),
            ),
            (&["--conntrack-max-per-core", "0"], Some("--ct-max")),
            (&["--iptables-masquerade-bit=14"], Some("packet mark")),
            (&["--cleanup"], Some("kproxy cleanup")),
            // A value that happens to look like the name is a value.
            (&["--node-name", "ipvs-scheduler"], None),
        ];
        for (args, refused) in cases {
            let result = reject_inapplicable(args.iter().copied());
            match refused {
                None => assert_eq!(result, Ok(()), "{args:?}"),
                Some(why) => {
                    let err = result.expect_err("refused");
                    assert!(err.contains(why), "{args:?}: {err}");
                }
            }
        }
    }
}
