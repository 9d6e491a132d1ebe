//! What a failed list or watch means for the agent: most failures are retried as they are,
//! but a refused permission needs an operator, and a watch that cannot resume needs a
//! relist that the list+watch stream does not do by itself.

use kube::runtime::watcher;

/// Why a list or watch failed, as far as the agent acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// HTTP 403: kproxy's service account may not `verb` the resource. Retried (right
    /// after an API server starts, its authorizer briefly refuses everything), but only an
    /// operator fixes a role that lacks the verb.
    Forbidden { verb: &'static str },
    /// HTTP 410 in answer to a watch request: the history it would resume from was
    /// compacted. The list+watch stream retries the same resourceVersion (as kube-runtime
    /// 2.0.1's watcher does, forever); client-go relists, and so must kproxy (it restarts
    /// the stream).
    GoneAtWatchStart,
    /// Anything else (unreachable server, dropped stream, `410 Gone` as a watch event, which
    /// the stream answers with a relist itself): retried with backoff.
    Other,
}

impl Failure {
    pub fn of(error: &watcher::Error) -> Failure {
        use watcher::Error as E;
        let code = |e: &kube::Error| match e {
            kube::Error::Api(status) => Some(status.code),
            _ => None,
        };
        match error {
            E::InitialListFailed(e) if code(e) == Some(403) => Failure::Forbidden { verb: "list" },
            E::WatchStartFailed(e) | E::WatchFailed(e) if code(e) == Some(403) => {
                Failure::Forbidden { verb: "watch" }
            }
            E::WatchError(status) if status.code == 403 => Failure::Forbidden { verb: "watch" },
            // kube-client hands a refused watch's HTTP status to the watcher as the stream's
            // first item, so the stream reports it as a failed stream, not a failed start.
            E::WatchStartFailed(e) | E::WatchFailed(e) if code(e) == Some(410) => {
                Failure::GoneAtWatchStart
            }
            _ => Failure::Other,
        }
    }

    /// The metric label.
    pub const fn reason(self) -> &'static str {
        match self {
            Failure::Forbidden { .. } => Self::REASONS[0],
            Failure::GoneAtWatchStart => Self::REASONS[1],
            Failure::Other => Self::REASONS[2],
        }
    }

    /// Every `reason` label.
    pub const REASONS: [&'static str; 3] = ["forbidden", "gone", "other"];
}

#[cfg(test)]
mod tests {
    use kube::core::ErrorResponse;

    use super::*;

    fn status(code: u16) -> ErrorResponse {
        ErrorResponse {
            status: "Failure".into(),
            message: String::new(),
            reason: String::new(),
            code,
        }
    }

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(status(code))
    }

    #[test]
    fn failures_are_classified_by_request_and_status() {
        use watcher::Error as E;
        let cases = [
            (
                E::InitialListFailed(api(403)),
                Failure::Forbidden { verb: "list" },
            ),
            (
                E::WatchStartFailed(api(403)),
                Failure::Forbidden { verb: "watch" },
            ),
            (
                E::WatchFailed(api(403)),
                Failure::Forbidden { verb: "watch" },
            ),
            (
                E::WatchError(status(403)),
                Failure::Forbidden { verb: "watch" },
            ),
            (E::WatchStartFailed(api(410)), Failure::GoneAtWatchStart),
            (E::WatchFailed(api(410)), Failure::GoneAtWatchStart),
            // the stream relists after these itself.
            (E::WatchError(status(410)), Failure::Other),
            (E::InitialListFailed(api(410)), Failure::Other),
            (E::InitialListFailed(api(500)), Failure::Other),
            (E::WatchStartFailed(api(429)), Failure::Other),
            (E::NoResourceVersion, Failure::Other),
        ];
        for (error, want) in cases {
            assert_eq!(Failure::of(&error), want, "{error}");
        }
    }
}
