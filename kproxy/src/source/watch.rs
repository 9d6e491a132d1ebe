//! Watching the manifests path: a notification whenever something under it may have changed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Keeps the watch alive; drop it to stop.
pub struct ManifestWatch {
    _watcher: notify::RecommendedWatcher,
}

/// Sends `()` on `tx` when files under `path` change. A file is watched through its directory,
/// so editors that save by renaming a new file over the old one are seen too.
pub fn watch(path: &Path, tx: mpsc::UnboundedSender<()>) -> Result<ManifestWatch> {
    let dir: PathBuf = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })
    .context("creating a file watcher")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    Ok(ManifestWatch { _watcher: watcher })
}
