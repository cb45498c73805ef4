//! The ACME state that must survive a restart: the account and the certificates, plus a lock
//! so that two processes sharing the state do not order at once.
//!
//! [`CertificateStore`] is a trait so that several Myelin instances can later share one store
//! (a database they already run); [`FileStore`] keeps it in a directory:
//! ```text
//! state_dir/                      0700
//!   lock                          held (flock) while an order runs
//!   accounts/<ca-host>.json       0600  account ID and key for one CA
//!   certificates/<id>.pem         0600  chain, then private key: one file, replaced atomically
//!   certificates/<id>.json        0600  which CA issued it, for which names, when
//! ```
//! Every file is written to a temporary name, fsynced, renamed over the old one, and the directory
//! fsynced: a crash leaves the old file or the new one, never half of either.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::AcmeError;

/// A certificate as stored: PEM chain followed by the PEM private key, and what we know of it.
#[derive(Clone, Debug)]
pub struct StoredCertificate {
    pub pem: String,
    pub meta: CertificateMeta,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateMeta {
    /// Directory URL of the CA that issued it.
    pub directory_url: String,
    pub names: Vec<String>,
    /// Unix seconds.
    pub issued_at: u64,
}

/// Held while an order runs; dropping it releases the lock.
pub trait StoreLock: Send {}

/// Where accounts and certificates are kept.
pub trait CertificateStore: Send + Sync + std::fmt::Debug {
    /// The serialized account credentials for a CA, if any.
    fn load_account(&self, directory_url: &str) -> Result<Option<Vec<u8>>, AcmeError>;
    fn save_account(&self, directory_url: &str, credentials: &[u8]) -> Result<(), AcmeError>;
    fn load_certificate(&self, id: &str) -> Result<Option<StoredCertificate>, AcmeError>;
    fn save_certificate(&self, id: &str, cert: &StoredCertificate) -> Result<(), AcmeError>;
    /// Takes the ordering lock if nobody holds it; `None` when another process does.
    fn try_lock(&self) -> Result<Option<Box<dyn StoreLock>>, AcmeError>;
    /// Where the state lives, for messages.
    fn describe(&self) -> String;
}

/// The state in a local directory.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
}

struct FileLock(#[allow(dead_code)] File);
impl StoreLock for FileLock {}

impl FileStore {
    /// Opens (creating it if needed) the state directory, mode 0700.
    pub fn open(dir: &Path) -> Result<FileStore, AcmeError> {
        for d in [
            dir.to_path_buf(),
            dir.join("accounts"),
            dir.join("certificates"),
        ] {
            std::fs::create_dir_all(&d)
                .map_err(|e| AcmeError::io(&d, "cannot create the ACME state directory", e))?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| AcmeError::io(&d, "cannot set mode 0700", e))?;
        }
        // Fail now, not at the first order, if we cannot write here.
        let probe = dir.join(".write-test");
        write_atomic(&probe, b"")?;
        let _ = std::fs::remove_file(&probe);
        Ok(FileStore {
            dir: dir.to_path_buf(),
        })
    }

    fn account_path(&self, directory_url: &str) -> PathBuf {
        self.dir
            .join("accounts")
            .join(format!("{}.json", file_stem(directory_url)))
    }

    fn cert_path(&self, id: &str, ext: &str) -> PathBuf {
        self.dir
            .join("certificates")
            .join(format!("{}.{ext}", file_stem(id)))
    }
}

impl CertificateStore for FileStore {
    fn load_account(&self, directory_url: &str) -> Result<Option<Vec<u8>>, AcmeError> {
        read_optional(&self.account_path(directory_url))
    }

    fn save_account(&self, directory_url: &str, credentials: &[u8]) -> Result<(), AcmeError> {
        write_atomic(&self.account_path(directory_url), credentials)
    }

    fn load_certificate(&self, id: &str) -> Result<Option<StoredCertificate>, AcmeError> {
        let pem_path = self.cert_path(id, "pem");
        let Some(pem) = read_optional(&pem_path)? else {
            return Ok(None);
        };
        let pem = String::from_utf8(pem).map_err(|_| AcmeError::BadFile {
            path: pem_path.clone(),
            reason: "not PEM text".into(),
        })?;
        let meta = read_optional(&self.cert_path(id, "json"))?
            .and_then(|m| serde_json::from_slice::<CertificateMeta>(&m).ok())
            .unwrap_or_default();
        Ok(Some(StoredCertificate { pem, meta }))
    }

    fn save_certificate(&self, id: &str, cert: &StoredCertificate) -> Result<(), AcmeError> {
        write_atomic(&self.cert_path(id, "pem"), cert.pem.as_bytes())?;
        let meta = serde_json::to_vec_pretty(&cert.meta)
            .map_err(|e| AcmeError::Certificate(format!("metadata: {e}")))?;
        write_atomic(&self.cert_path(id, "json"), &meta)
    }

    fn try_lock(&self) -> Result<Option<Box<dyn StoreLock>>, AcmeError> {
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| AcmeError::io(&path, "cannot open the lock file", e))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(FileLock(file)))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(AcmeError::io(&path, "cannot lock", e)),
        }
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }
}

/// A file name for a certificate ID or CA URL: letters, digits, `.`, `-`, `_` only
/// (`*.example.com` → `_wildcard_.example.com`).
fn file_stem(s: &str) -> String {
    let s = s
        .trim_start_matches("https://")
        .replace("*", "_wildcard_")
        .replace('/', "_");
    let stem: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    stem.trim_start_matches('.').to_string()
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, AcmeError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AcmeError::io(path, "cannot read", e)),
    }
}

/// Writes `data` to `path` atomically: temporary file (mode 0600), fsync, rename, fsync the directory.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), AcmeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| AcmeError::io(&tmp, "cannot create", e))?;
        f.write_all(data)
            .map_err(|e| AcmeError::io(&tmp, "cannot write", e))?;
        f.sync_all()
            .map_err(|e| AcmeError::io(&tmp, "cannot fsync", e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| AcmeError::io(path, "cannot replace", e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| AcmeError::io(dir, "cannot fsync the directory", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "myelin-acme-store-{}-{name}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_modes_and_lock() {
        let dir = temp_dir("rt");
        let store = FileStore::open(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);

        assert!(store.load_certificate("*.a.test").unwrap().is_none());
        let cert = StoredCertificate {
            pem: "PEM".into(),
            meta: CertificateMeta {
                directory_url: "https://ca/dir".into(),
                names: vec!["*.a.test".into()],
                issued_at: 5,
            },
        };
        store.save_certificate("*.a.test", &cert).unwrap();
        let back = store.load_certificate("*.a.test").unwrap().unwrap();
        assert_eq!(back.pem, "PEM");
        assert_eq!(back.meta, cert.meta);
        let pem = dir.join("certificates/_wildcard_.a.test.pem");
        assert_eq!(mode(&pem), 0o600);

        store.save_account("https://ca/dir", b"{}").unwrap();
        assert_eq!(mode(&dir.join("accounts/ca_dir.json")), 0o600);
        assert_eq!(
            store.load_account("https://ca/dir").unwrap().unwrap(),
            b"{}"
        );

        // no temporary files left behind
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("certificates"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());

        let held = store.try_lock().unwrap().expect("free lock");
        let other = FileStore::open(&dir).unwrap();
        assert!(other.try_lock().unwrap().is_none(), "second holder refused");
        drop(held);
        assert!(other.try_lock().unwrap().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stems_are_safe() {
        assert_eq!(file_stem("*.Example.com"), "_wildcard_.example.com");
        assert_eq!(
            file_stem("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(file_stem("../../etc"), "_.._etc");
    }
}
