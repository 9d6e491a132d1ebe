//! `kproxy cleanup`: detach from every interface and remove the pinned maps.

use std::path::Path;

use anyhow::Result;

use crate::dataplane::attach;

pub fn run(pin_dir: &Path) -> Result<()> {
    let removed = attach::remove_all(pin_dir)?;
    println!(
        "removed {removed} pinned objects under {}",
        pin_dir.display()
    );
    Ok(())
}
