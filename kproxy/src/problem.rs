//! Problems with input: what was wrong, where, and which object was skipped because of it.
//! Bad input never stops the agent; it is reported, counted and skipped.

use std::fmt;

/// What kind of problem (a metrics label, stable snake_case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProblemKind {
    /// A file could not be read.
    Read,
    /// A document is not valid YAML/JSON or does not match its kind's schema.
    Parse,
    /// A document of a kind kproxy does not handle.
    UnknownKind,
    /// A Service field kproxy cannot use (address, port, protocol, ...).
    InvalidService,
    /// An EndpointSlice field kproxy cannot use.
    InvalidEndpoint,
    /// An EndpointSlice labelled for a Service that does not exist. Normal for a moment while
    /// a Service is deleted (its slices go a little later); lasting, a wrong label.
    OrphanSlice,
    /// Two services claim the same VIP, port and protocol.
    Conflict,
    /// Writing the datapath failed (for example a full map).
    Datapath,
}

impl ProblemKind {
    pub const ALL: [ProblemKind; 8] = [
        Self::Read,
        Self::Parse,
        Self::UnknownKind,
        Self::InvalidService,
        Self::InvalidEndpoint,
        Self::OrphanSlice,
        Self::Conflict,
        Self::Datapath,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Parse => "parse",
            Self::UnknownKind => "unknown_kind",
            Self::InvalidService => "invalid_service",
            Self::InvalidEndpoint => "invalid_endpoint",
            Self::OrphanSlice => "orphan_slice",
            Self::Conflict => "conflict",
            Self::Datapath => "datapath",
        }
    }
}

/// One reported problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The object, e.g. `Service default/web`, when known.
    pub object: Option<String>,
    /// Where it came from, e.g. `deploy/examples/web.yaml (document 2)`, when known.
    pub origin: Option<String>,
    pub message: String,
}

impl Problem {
    pub fn new(kind: ProblemKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            object: None,
            origin: None,
            message: message.into(),
        }
    }

    #[must_use]
    pub fn object(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }

    #[must_use]
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        write!(f, "{} ({})", self.message, self.kind.label())
    }
}

/// What a failed datapath write means for an operator. A full map (the kernel answers
/// `E2BIG`) is named with the flag that sizes it; other errors are shown with their causes.
pub fn datapath_error(e: &anyhow::Error) -> String {
    let full = e.chain().any(|cause| {
        let errno = cause
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .or_else(|| match cause.downcast_ref::<aya::maps::MapError>() {
                Some(aya::maps::MapError::SyscallError(s)) => s.io_error.raw_os_error(),
                _ => None,
            });
        errno == Some(libc::E2BIG)
    });
    // Map writes carry the map's name as their outermost context.
    let map = e.to_string();
    let flag = match map.as_str() {
        "KP_SERVICES" | "KP_SERVICES6" | "KP_VIPS" | "KP_VIPS6" => Some("--max-services"),
        "KP_BACKENDS" | "KP_BACKENDS6" | "KP_SLOTS" => Some("--max-backends"),
        _ => None,
    };
    match (full, flag) {
        (true, Some(flag)) => format!("{map} is full (raise {flag})"),
        (true, None) => format!("{map} is full"),
        (false, _) => format!("{e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::datapath_error;

    #[test]
    fn full_maps_are_named_with_the_flag_that_sizes_them() {
        let e2big = || std::io::Error::from_raw_os_error(libc::E2BIG);
        let cases = [
            (
                anyhow::Error::from(e2big()).context("KP_BACKENDS"),
                "KP_BACKENDS is full (raise --max-backends)",
            ),
            (
                anyhow::Error::from(e2big()).context("KP_SLOTS"),
                "KP_SLOTS is full (raise --max-backends)",
            ),
            (
                anyhow::Error::from(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_elem",
                    io_error: e2big(),
                }))
                .context("KP_SERVICES"),
                "KP_SERVICES is full (raise --max-services)",
            ),
            (
                anyhow::Error::from(e2big()).context("KP_VIPS6"),
                "KP_VIPS6 is full (raise --max-services)",
            ),
            (
                anyhow::Error::from(e2big()).context("KP_BACKENDS6"),
                "KP_BACKENDS6 is full (raise --max-backends)",
            ),
            (
                anyhow::Error::from(std::io::Error::from_raw_os_error(libc::EPERM))
                    .context("KP_SERVICES"),
                "KP_SERVICES: Operation not permitted (os error 1)",
            ),
        ];
        for (error, want) in cases {
            assert_eq!(datapath_error(&error), want);
        }
    }
}
