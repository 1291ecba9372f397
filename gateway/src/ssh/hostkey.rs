//! The gateway's host key: Ed25519, generated once, kept 0600 in the state
//! dir, so clients see the same fingerprint across restarts.

use std::path::{Path, PathBuf};

use russh::keys::ssh_key::{Algorithm, LineEnding};
use russh::keys::{HashAlg, PrivateKey};

/// File name of the host key inside the state dir.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// Why the host key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// The key file exists but cannot be used.
    #[error("cannot read host key {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A new key could not be written.
    #[error("cannot write host key {path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Loads the host key from `state_dir`, creating it on first use.
pub fn load_or_create(state_dir: &Path) -> Result<PrivateKey, HostKeyError> {
    let path = state_dir.join(HOST_KEY_FILE);
    if path.exists() {
        return PrivateKey::read_openssh_file(&path).map_err(|e| HostKeyError::Read {
            path: path.clone(),
            reason: e.to_string(),
        });
    }
    let write_err = |reason: String| HostKeyError::Write {
        path: path.clone(),
        reason,
    };
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .map_err(|e| write_err(e.to_string()))?;
    // Written under a temporary name and renamed, so a crash never leaves
    // a half-written key that would change the fingerprint next start.
    let tmp = state_dir.join(format!("{HOST_KEY_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    key.write_openssh_file(&tmp, LineEnding::LF)
        .map_err(|e| write_err(e.to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| write_err(e.to_string()))?;
    tracing::info!(
        fingerprint = %key.public_key().fingerprint(HashAlg::Sha256),
        path = %path.display(),
        "generated host key"
    );
    Ok(key)
}
