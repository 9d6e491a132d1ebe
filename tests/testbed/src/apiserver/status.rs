//! `Status` objects, the body of every error the API server returns (and of watch ERROR events).

use serde_json::{Value, json};

/// A failed `Status` with the HTTP code, machine-readable reason and message.
pub fn failure(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// What a watch from `requested` gets once history up to `compacted` is forgotten; the
/// message is the real watch cache's ("too old resource version: %d (%d)").
pub fn expired(requested: u64, compacted: u64) -> Value {
    failure(
        410,
        "Expired",
        &format!("too old resource version: {requested} ({compacted})"),
    )
}
