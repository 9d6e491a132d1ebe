//! Command-line tools from PyPI that tests run, each installed at a pinned version into a
//! virtual environment of its own in the cache beside the built Kubernetes programs (outside
//! the clone, so every clone and CI run on a machine shares it), by the first test to need it.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::kubernetes::cache_root;

/// A program of a pinned PyPI package.
#[derive(Clone, Copy, Debug)]
pub struct PythonTool {
    pub package: &'static str,
    pub version: &'static str,
    /// The program the package installs into the environment's `bin/`.
    pub program: &'static str,
}

/// Validates Kubernetes objects against the API's OpenAPI schemas of a given release; its
/// version follows the newest release whose schemas it ships.
pub const KUBERNETES_VALIDATE: PythonTool = PythonTool {
    package: "kubernetes-validate",
    version: "1.37.0",
    program: "kubernetes-validate",
};

/// Written last, once the environment works: a half-made one (an interrupted run) is redone.
const COMPLETE_MARK: &str = ".complete";

impl PythonTool {
    /// The tool's environment: its own, keyed by package and version.
    pub fn venv(&self) -> PathBuf {
        cache_root().join(format!("python-{}-{}", self.package, self.version))
    }

    /// The path of the installed program, installing it first if needed (`python3 -m venv`,
    /// then pip from PyPI). Concurrent callers, in this process or others, wait for the
    /// first one's install instead of racing it.
    pub fn ensure(&self) -> Result<PathBuf> {
        let venv = self.venv();
        let program = venv.join("bin").join(self.program);
        if venv.join(COMPLETE_MARK).is_file() {
            return Ok(program);
        }
        std::fs::create_dir_all(cache_root())
            .with_context(|| format!("creating {}", cache_root().display()))?;
        let mut lock_name = venv.clone().into_os_string();
        lock_name.push(".lock");
        let lock_path = PathBuf::from(lock_name);
        let lock = File::create(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", lock_path.display()))?;
        if !venv.join(COMPLETE_MARK).is_file() {
            self.install(&venv)?;
        }
        Ok(program)
    }

    fn install(&self, venv: &Path) -> Result<()> {
        if venv.exists() {
            std::fs::remove_dir_all(venv)
                .with_context(|| format!("removing the incomplete {}", venv.display()))?;
        }
        run(Command::new("python3").arg("-m").arg("venv").arg(venv))
            .context("creating a Python virtual environment (python3 with its venv module)")?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("{}=={}", self.package, self.version)))
        .with_context(|| format!("installing {} {} from PyPI", self.package, self.version))?;
        run(Command::new(venv.join("bin").join(self.program)).arg("--help"))
            .with_context(|| format!("running the installed {}", self.program))?;
        std::fs::write(venv.join(COMPLETE_MARK), "")?;
        Ok(())
    }
}

/// Runs `command`, failing with its output if it fails.
fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
