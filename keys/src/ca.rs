//! User certificate authorities: which CA keys are trusted
//! ([`TrustedUserCas`]), the revoked-keys list ([`RevokedKeys`]) and the
//! login decision for an OpenSSH user certificate.
//!
//! # Revoked-keys file format
//!
//! A text file, re-read whenever its metadata changes. Blank lines and lines
//! starting with `#` are ignored. Each other line is one of:
//!
//! | line                              | revokes |
//! |-----------------------------------|---------|
//! | `ssh-ed25519 AAAA… [comment]`     | that key: as a user key, as the key inside a certificate, and as a CA |
//! | `key: ssh-ed25519 AAAA…`          | the same (`ssh-keygen -k` spec syntax) |
//! | `sha256: ssh-ed25519 AAAA…`       | the same |
//! | `hash: SHA256:<base64>`           | the key with that fingerprint (as `ssh-keygen -l` prints it) |
//! | `serial: N` or `serial: N-M`      | certificates with that serial (range inclusive; decimal or `0x` hex) |
//! | `id: KEYID`                       | certificates with exactly that key id (`ssh-keygen -I`) |
//! | `ca: ssh-ed25519 AAAA…`           | (berth extension) scopes the following `serial:` and `id:` lines to certificates signed by that CA |
//!
//! `serial:` and `id:` lines before any `ca:` line apply to certificates
//! from every trusted CA. The plain key lines make the file compatible
//! with OpenSSH's text `RevokedKeys` file; the prefixed lines follow the
//! KRL specification that `ssh-keygen -k` reads (`sha1:` is not supported).
//! Binary KRLs (the output of `ssh-keygen -k`) are refused with an error.
//! An unreadable or broken file refuses every certificate (and, through
//! [`RevokedKeys::check_key`], every key) until it is fixed.

use std::fs::{self, File};
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Algorithm, Certificate, HashAlg, PublicKey};

use crate::authorized::{Denied, Permissions};
use crate::entry::{KeyEntry, LineError, classify, key_algorithm_allowed, parse_key, split_lines};
use crate::options::{KeyOptions, normalise, parse_cidr_list};
use crate::store::FileStamp;
use crate::user::UserName;

/// Largest CA or revoked-keys file read (4 MiB).
const MAX_LIST_LEN: u64 = 4 * 1024 * 1024;

/// Start of a binary OpenSSH KRL.
const KRL_MAGIC: &[u8] = b"SSHKRL\n\0";

/// A problem with a CA file or the revoked-keys file.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is larger than 4 MiB.
    #[error("{} is too large (more than 4 MiB)", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A line of a CA file is not a usable public key.
    #[error("{}: line {line}: {error}", path.display())]
    BadCaLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        error: LineError,
    },
    /// A CA line carries options other than `cert-authority`.
    #[error("{}: line {line}: options are not supported on CA lines (only 'cert-authority' is allowed)", path.display())]
    CaOptions {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// A CA file holds no key.
    #[error("{} holds no CA public key", path.display())]
    NoCaKeys {
        /// The file.
        path: PathBuf,
    },
    /// A line of the revoked-keys file is not understood.
    #[error("{}: line {line}: {why}", path.display())]
    BadRevokedLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// The revoked-keys file is a binary KRL.
    #[error(
        "{} is a binary KRL, which berth does not read; keep the revoked list as text: one public key, 'serial: N[-M]', 'id: KEYID' or 'hash: SHA256:…' per line",
        path.display()
    )]
    BinaryKrl {
        /// The file.
        path: PathBuf,
    },
}

fn read_list(path: &Path) -> Result<(FileStamp, Vec<u8>), CaError> {
    let io = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let stamp = FileStamp::of(&file.metadata().map_err(io)?);
    let mut bytes = Vec::new();
    file.take(MAX_LIST_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_LIST_LEN {
        return Err(CaError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok((stamp, bytes))
}

/// The parsed contents of a revoked-keys file (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    keys: Vec<KeyData>,
    fingerprints: Vec<String>,
    /// `(scope CA or any, first serial, last serial)`.
    serials: Vec<(Option<KeyData>, u64, u64)>,
    /// `(scope CA or any, key id)`.
    ids: Vec<(Option<KeyData>, String)>,
}

impl RevocationList {
    /// Parses a revoked-keys file's contents; `origin` names it in errors.
    pub fn parse(input: &[u8], origin: &Path) -> Result<RevocationList, CaError> {
        if input.starts_with(KRL_MAGIC) {
            return Err(CaError::BinaryKrl {
                path: origin.to_owned(),
            });
        }
        let mut list = RevocationList::default();
        let mut scope: Option<KeyData> = None;
        for (line, raw) in split_lines(input) {
            let bad = |why: String| CaError::BadRevokedLine {
                path: origin.to_owned(),
                line,
                why,
            };
            let text = match classify(raw) {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => return Err(bad(e.to_string())),
            };
            let key = |s: &str| {
                parse_key(s)
                    .map(|k| k.key_data().clone())
                    .map_err(|e| bad(e.to_string()))
            };
            let (tag, rest) = match text.split_once(':') {
                Some((tag, rest)) if !tag.contains([' ', '\t']) => {
                    (tag.to_ascii_lowercase(), rest.trim())
                }
                _ => (String::new(), text),
            };
            match tag.as_str() {
                "" => list.keys.push(key(rest)?),
                "key" | "sha256" => list.keys.push(key(rest)?),
                "ca" => scope = Some(key(rest)?),
                "hash" => {
                    if !rest.starts_with("SHA256:") || rest.len() < 8 {
                        return Err(bad(
                            "use 'hash: SHA256:<base64>' (only SHA-256 fingerprints)".into(),
                        ));
                    }
                    list.fingerprints.push(rest.to_owned());
                }
                "serial" => {
                    let (lo, hi) = match rest.split_once('-') {
                        Some((a, b)) => (parse_serial(a.trim()), parse_serial(b.trim())),
                        None => (parse_serial(rest), parse_serial(rest)),
                    };
                    match (lo, hi) {
                        (Some(lo), Some(hi)) if lo <= hi => {
                            list.serials.push((scope.clone(), lo, hi))
                        }
                        _ => {
                            return Err(bad(format!(
                                "bad serial '{rest}': use 'serial: N' or 'serial: N-M' with N <= M"
                            )));
                        }
                    }
                }
                "id" => {
                    if rest.is_empty() {
                        return Err(bad("empty key id".into()));
                    }
                    list.ids.push((scope.clone(), rest.to_owned()));
                }
                other => {
                    return Err(bad(format!(
                        "unsupported entry '{other}:' (supported: a public key, key:, sha256:, hash:, serial:, id:, ca:)"
                    )));
                }
            }
        }
        Ok(list)
    }

    /// Whether a plain key is revoked.
    pub fn is_key_revoked(&self, key: &KeyData) -> bool {
        self.keys.contains(key)
            || (!self.fingerprints.is_empty()
                && self
                    .fingerprints
                    .contains(&key.fingerprint(HashAlg::Sha256).to_string()))
    }

    /// Why `cert` is revoked, if it is: its key, its CA, its serial or its
    /// key id.
    pub fn certificate_revocation(&self, cert: &Certificate) -> Option<String> {
        let ca = cert.signature_key();
        let in_scope = |scope: &Option<KeyData>| scope.as_ref().is_none_or(|s| s == ca);
        if self.is_key_revoked(cert.public_key()) {
            Some("certificate key".to_owned())
        } else if self.is_key_revoked(ca) {
            Some("signing CA".to_owned())
        } else if self
            .serials
            .iter()
            .any(|(s, lo, hi)| in_scope(s) && (*lo..=*hi).contains(&cert.serial()))
        {
            Some(format!("serial {}", cert.serial()))
        } else if self
            .ids
            .iter()
            .any(|(s, id)| in_scope(s) && id == cert.key_id())
        {
            Some(format!("key id '{}'", cert.key_id()))
        } else {
            None
        }
    }
}

fn parse_serial(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// A revoked-keys file, re-read when its metadata (inode, size, mtime,
/// ctime) changes.
///
/// The format, one entry per line (`#` comments and blank lines ignored):
/// a public key, `key: <public key>` or `sha256: <public key>` (that key, as
/// user key, certificate key or CA), `hash: SHA256:<base64>` (by
/// fingerprint), `serial: N` / `serial: N-M` and `id: KEYID` (certificates),
/// and `ca: <public key>` which scopes the following `serial:`/`id:` lines to
/// one CA (a berth extension; before any `ca:` line they apply to all
/// trusted CAs). Binary KRLs are refused with [`CaError::BinaryKrl`].
#[derive(Debug)]
pub struct RevokedKeys {
    path: PathBuf,
    cache: Mutex<(FileStamp, Arc<RevocationList>)>,
}

impl RevokedKeys {
    /// Loads `path`; a missing, unreadable or malformed file is an error.
    pub fn load(path: &Path) -> Result<RevokedKeys, CaError> {
        let (stamp, bytes) = read_list(path)?;
        let list = RevocationList::parse(&bytes, path)?;
        Ok(RevokedKeys {
            path: path.to_owned(),
            cache: Mutex::new((stamp, Arc::new(list))),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current list, re-read if the file changed since last time.
    pub fn current(&self) -> Result<Arc<RevocationList>, CaError> {
        let meta = fs::metadata(&self.path).map_err(|source| CaError::Io {
            path: self.path.clone(),
            source,
        })?;
        {
            let cached = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cached.0 == FileStamp::of(&meta) {
                return Ok(cached.1.clone());
            }
        }
        let (stamp, bytes) = read_list(&self.path)?;
        let list = Arc::new(RevocationList::parse(&bytes, &self.path)?);
        *self.cache.lock().unwrap_or_else(|e| e.into_inner()) = (stamp, list.clone());
        Ok(list)
    }

    /// Refuses a plain key that is revoked, or every key if the file cannot
    /// be read (fail closed).
    pub fn check_key(&self, key: &PublicKey) -> Result<(), Denied> {
        let list = self
            .current()
            .map_err(|e| Denied::RevocationListUnavailable(e.to_string()))?;
        if list.is_key_revoked(key.key_data()) {
            return Err(Denied::Revoked("key".to_owned()));
        }
        Ok(())
    }
}

/// The trusted user CAs and the optional revoked-keys list.
#[derive(Debug)]
pub struct TrustedUserCas {
    cas: Vec<PublicKey>,
    revoked: Option<RevokedKeys>,
}

impl TrustedUserCas {
    /// Loads CA public keys from `ca_files` (one or more keys per file, in
    /// `.pub` / authorized_keys form; an optional `cert-authority` option is
    /// allowed and ignored) and the optional revoked-keys file.
    ///
    /// Any unreadable file, bad line or file without keys is an error, so a
    /// typo in the configuration stops the daemon instead of locking
    /// everyone out silently.
    pub fn load(
        ca_files: &[PathBuf],
        revoked_keys: Option<&Path>,
    ) -> Result<TrustedUserCas, CaError> {
        let mut cas = Vec::new();
        for path in ca_files {
            let (_, bytes) = read_list(path)?;
            let before = cas.len();
            for (line, raw) in split_lines(&bytes) {
                let bad = |error| CaError::BadCaLine {
                    path: path.clone(),
                    line,
                    error,
                };
                let Some(text) = classify(raw).map_err(bad)? else {
                    continue;
                };
                let entry = KeyEntry::parse(text).map_err(bad)?;
                let mut opts = entry.options().clone();
                opts.unsupported.retain(|o| o != "cert-authority");
                if opts != KeyOptions::default() {
                    return Err(CaError::CaOptions {
                        path: path.clone(),
                        line,
                    });
                }
                cas.push(entry.public_key().clone());
            }
            if cas.len() == before {
                return Err(CaError::NoCaKeys { path: path.clone() });
            }
        }
        let revoked = revoked_keys.map(RevokedKeys::load).transpose()?;
        Ok(TrustedUserCas { cas, revoked })
    }

    /// Trusts exactly `cas`, with an optional revoked-keys list.
    pub fn from_keys(cas: Vec<PublicKey>, revoked: Option<RevokedKeys>) -> TrustedUserCas {
        TrustedUserCas { cas, revoked }
    }

    /// The trusted CA keys.
    pub fn cas(&self) -> &[PublicKey] {
        &self.cas
    }

    /// The revoked-keys list, if configured (also usable for plain keys).
    pub fn revoked_keys(&self) -> Option<&RevokedKeys> {
        self.revoked.as_ref()
    }

    /// Decides whether `cert` lets `login` in from `peer` at `now`.
    ///
    /// Checks, in order: user certificate type; accepted key algorithm;
    /// signed by a trusted CA, not with SHA-1 RSA, and the signature
    /// verifies; `valid_after <= now < valid_before`; a non-empty principals
    /// list that contains `login`; not revoked; critical options
    /// (`source-address` must include `peer`, `force-command` becomes
    /// [`Permissions::command`], anything else is refused). Extensions map to
    /// permissions with OpenSSH semantics: absent means not permitted.
    ///
    /// The caller must separately check that the client proved possession
    /// of the certificate's key (russh does, by verifying the signature).
    pub fn authorize_certificate(
        &self,
        cert: &Certificate,
        login: &UserName,
        peer: IpAddr,
        now: SystemTime,
    ) -> Result<Permissions, Denied> {
        if !cert.cert_type().is_user() {
            return Err(Denied::NotAUserCertificate);
        }
        let key_alg = cert.public_key().algorithm();
        if !key_algorithm_allowed(&key_alg) || cert.public_key().is_certificate() {
            return Err(Denied::AlgorithmNotAllowed(key_alg.to_string()));
        }
        let ca_fp = cert.signature_key().fingerprint(HashAlg::Sha256);
        if !self
            .cas
            .iter()
            .any(|ca| ca.key_data() == cert.signature_key())
        {
            return Err(Denied::UntrustedCa(ca_fp.to_string()));
        }
        if cert.signature().algorithm() == (Algorithm::Rsa { hash: None }) {
            return Err(Denied::WeakSignature);
        }
        // Verify signature and CA at a time inside the window, so that a bad
        // signature is reported as such whatever the clock says.
        if cert.valid_after() >= cert.valid_before() {
            return Err(Denied::CertificateExpired);
        }
        if cert.validate_at(cert.valid_after(), [&ca_fp]).is_err() {
            return Err(Denied::BadSignature);
        }
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if now < cert.valid_after() {
            return Err(Denied::NotYetValid);
        }
        if now >= cert.valid_before() {
            return Err(Denied::CertificateExpired);
        }
        if cert.valid_principals().is_empty() {
            return Err(Denied::NoPrincipals);
        }
        if !cert.valid_principals().iter().any(|p| p == login.as_str()) {
            return Err(Denied::WrongPrincipal(login.to_string()));
        }
        if let Some(revoked) = &self.revoked {
            let list = revoked
                .current()
                .map_err(|e| Denied::RevocationListUnavailable(e.to_string()))?;
            if let Some(why) = list.certificate_revocation(cert) {
                return Err(Denied::Revoked(why));
            }
        }
        let mut command = None;
        for (name, value) in cert.critical_options().iter() {
            match name.as_str() {
                "force-command" => command = Some(value.clone()),
                "source-address" => {
                    let nets = parse_cidr_list(value)
                        .map_err(|e| Denied::BadCriticalOption(e.to_string()))?;
                    let peer = normalise(peer);
                    if !nets.iter().any(|n| n.contains(&peer)) {
                        return Err(Denied::SourceAddressMismatch { peer });
                    }
                }
                other => return Err(Denied::UnknownCriticalOption(other.to_owned())),
            }
        }
        let ext = cert.extensions();
        Ok(Permissions {
            port_forwarding: ext.contains_key("permit-port-forwarding"),
            pty: ext.contains_key("permit-pty"),
            agent_forwarding: ext.contains_key("permit-agent-forwarding"),
            x11_forwarding: ext.contains_key("permit-X11-forwarding"),
            command,
            permit_open: None,
        })
    }
}
