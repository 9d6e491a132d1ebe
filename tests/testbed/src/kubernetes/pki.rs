//! The certificates and keys of a test-bed control plane, made with the `openssl` command:
//! a CA, the API server's serving certificate, client certificates (identities RBAC knows:
//! the admin in `system:masters`, the controller manager, kube-proxy) and the service-account
//! signing key. ECDSA P-256 throughout: quick to make, accepted by Go and by rustls.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// A client identity: the certificate's common name is the user, its organizations the groups.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    /// File stem of `<stem>.crt` and `<stem>.key`.
    pub stem: &'static str,
    pub user: &'static str,
    pub groups: &'static [&'static str],
}

/// Cluster administrator (kubectl, the tests' own client).
pub const ADMIN: Identity = Identity {
    stem: "admin",
    user: "kubernetes-admin",
    groups: &["system:masters"],
};
/// kube-controller-manager; RBAC's bootstrap policy binds this user.
pub const CONTROLLER_MANAGER: Identity = Identity {
    stem: "controller-manager",
    user: "system:kube-controller-manager",
    groups: &[],
};
/// kube-proxy; bound to `system:node-proxier` by RBAC's bootstrap policy.
pub const KUBE_PROXY: Identity = Identity {
    stem: "kube-proxy",
    user: "system:kube-proxy",
    groups: &[],
};

/// The files of one control plane's PKI, in one directory.
#[derive(Clone, Debug)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// Makes a CA, a serving certificate for `server_ips` (and the in-cluster names of the
    /// `kubernetes` Service), the client identities above and the service-account key pair.
    pub fn create(dir: &Path, server_ips: &[IpAddr]) -> Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "30",
            "-subj",
            "/CN=kproxy-testbed-ca",
        ])?;
        let mut names: Vec<String> = server_ips.iter().map(|ip| format!("IP:{ip}")).collect();
        names.extend(
            [
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ]
            .map(|n| format!("DNS:{n}")),
        );
        pki.leaf(
            "apiserver",
            "/CN=kube-apiserver",
            &format!(
                "extendedKeyUsage=serverAuth\nsubjectAltName={}\n",
                names.join(",")
            ),
        )?;
        for id in [ADMIN, CONTROLLER_MANAGER, KUBE_PROXY] {
            let mut parts: Vec<String> = id.groups.iter().map(|g| format!("O={g}")).collect();
            parts.push(format!("CN={}", id.user));
            let subject = format!("/{}", parts.join("/"));
            pki.leaf(id.stem, &subject, "extendedKeyUsage=clientAuth\n")?;
        }
        pki.openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sa.key",
        ])?;
        pki.openssl(&["ec", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        Ok(pki)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn ca(&self) -> PathBuf {
        self.path("ca.crt")
    }

    /// `(certificate, key)` of a client identity.
    pub fn client(&self, id: Identity) -> (PathBuf, PathBuf) {
        (
            self.path(&format!("{}.crt", id.stem)),
            self.path(&format!("{}.key", id.stem)),
        )
    }

    /// A key and a certificate signed by the CA, with `extensions` (an `-extfile` body).
    fn leaf(&self, stem: &str, subject: &str, extensions: &str) -> Result<()> {
        let ext = format!("{stem}.ext");
        std::fs::write(
            self.path(&ext),
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n{extensions}"
            ),
        )?;
        let (key, csr, crt) = (
            format!("{stem}.key"),
            format!("{stem}.csr"),
            format!("{stem}.crt"),
        );
        self.openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            subject,
        ])?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ])
    }

    fn openssl(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .context("running openssl (Debian package openssl)")?;
        if !out.status.success() {
            bail!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}
