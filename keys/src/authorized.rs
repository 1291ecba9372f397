//! The login decision for plain public keys: a user's parsed authorized_keys
//! ([`AuthorizedKeys`]), what a login may do ([`Permissions`]) and why one is
//! refused ([`Denied`], also used for certificates).

use std::net::IpAddr;
use std::time::SystemTime;

use russh::keys::ssh_key::PublicKey;

use crate::entry::{KeyEntry, parse_lenient};

/// What an authorized login may do. The server ANDs these with its own
/// configuration (for example, agent forwarding stays off unless configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Local port forwarding (`direct-tcpip`, `direct-streamlocal`).
    pub port_forwarding: bool,
    /// Pseudo-terminal allocation.
    pub pty: bool,
    /// Agent forwarding.
    pub agent_forwarding: bool,
    /// X11 forwarding.
    pub x11_forwarding: bool,
    /// A forced command (`command=` or a certificate's `force-command`):
    /// every shell, exec or subsystem request runs this instead.
    pub command: Option<String>,
    /// `permitopen="host:port"` targets; `None` means no restriction beyond
    /// `port_forwarding`.
    pub permit_open: Option<Vec<String>>,
}

impl Permissions {
    /// Everything permitted, nothing forced.
    pub fn unrestricted() -> Permissions {
        Permissions {
            port_forwarding: true,
            pty: true,
            agent_forwarding: true,
            x11_forwarding: true,
            command: None,
            permit_open: None,
        }
    }
}

/// Why a key or certificate does not let a user in. Meant for the server's
/// log, not for the client (which only learns "denied").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The key is not in the user's authorized_keys.
    #[error("key is not in the user's authorized_keys")]
    NoSuchKey,
    /// `from=` does not accept the peer address.
    #[error("from= option does not allow {peer}")]
    FromMismatch {
        /// The peer address that was refused.
        peer: IpAddr,
    },
    /// The entry's `expiry-time` has passed.
    #[error("key expired (expiry-time)")]
    Expired,
    /// The entry carries an option berth cannot honour (fails closed).
    #[error("entry has option '{0}', which berth does not support")]
    UnsupportedOption(String),
    /// The key's algorithm is not accepted.
    #[error("key algorithm {0} is not accepted")]
    AlgorithmNotAllowed(String),
    /// A host certificate was offered for a user login.
    #[error("not a user certificate")]
    NotAUserCertificate,
    /// The certificate is signed by a key that is not a trusted user CA.
    #[error("certificate signed by untrusted CA {0}")]
    UntrustedCa(String),
    /// The certificate is signed with SHA-1 RSA (`ssh-rsa`), refused as by
    /// OpenSSH's default `CASignatureAlgorithms`.
    #[error("certificate signature uses SHA-1 (ssh-rsa); re-sign with rsa-sha2-256/512")]
    WeakSignature,
    /// The certificate's signature does not verify.
    #[error("certificate signature is invalid")]
    BadSignature,
    /// The certificate's validity has not started.
    #[error("certificate is not valid yet")]
    NotYetValid,
    /// The certificate's validity has ended.
    #[error("certificate has expired")]
    CertificateExpired,
    /// The certificate lists no principals (refused rather than "anyone").
    #[error("certificate has no principals")]
    NoPrincipals,
    /// The login name is not among the certificate's principals.
    #[error("certificate principals do not include '{0}'")]
    WrongPrincipal(String),
    /// The key, certificate or CA is in the revoked-keys list.
    #[error("revoked ({0})")]
    Revoked(String),
    /// The certificate's `source-address` does not include the peer.
    #[error("certificate source-address does not allow {peer}")]
    SourceAddressMismatch {
        /// The peer address that was refused.
        peer: IpAddr,
    },
    /// The certificate has a critical option berth does not understand.
    #[error("certificate has unsupported critical option '{0}'")]
    UnknownCriticalOption(String),
    /// A critical option is malformed.
    #[error("certificate critical option is malformed: {0}")]
    BadCriticalOption(String),
    /// The revoked-keys list cannot be read; every certificate is refused
    /// until it can.
    #[error("revoked-keys list unavailable: {0}")]
    RevocationListUnavailable(String),
}

/// A user's usable keys, parsed from their authorized_keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizedKeys {
    entries: Vec<KeyEntry>,
}

impl AuthorizedKeys {
    /// No keys at all.
    pub fn empty() -> AuthorizedKeys {
        AuthorizedKeys::default()
    }

    /// Wraps already-parsed entries.
    pub fn from_entries(entries: Vec<KeyEntry>) -> AuthorizedKeys {
        AuthorizedKeys { entries }
    }

    /// The daemon's lenient view of a file: every broken line is skipped
    /// with a `tracing` warning naming `origin` (a path, for the log) and the
    /// line number, and the good keys still count.
    pub fn parse_lenient(input: &[u8], origin: &str) -> AuthorizedKeys {
        let (entries, errors) = parse_lenient(input);
        for e in &errors {
            tracing::warn!(
                file = origin,
                line = e.line,
                "skipping authorized_keys line: {}",
                e.error
            );
        }
        for entry in &entries {
            for name in &entry.options().unknown {
                tracing::warn!(
                    file = origin,
                    key = %entry.fingerprint(),
                    "ignoring unknown authorized_keys option '{name}'"
                );
            }
        }
        AuthorizedKeys { entries }
    }

    /// The entries, in file order.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }

    /// Number of usable entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no usable entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Decides whether `key` may log in from `peer` at `now`.
    ///
    /// Keys are compared by key data only (not comment). Like sshd, every
    /// entry holding the key is tried in file order and the first whose
    /// options allow the login wins; if none does, the first refusal is
    /// returned.
    pub fn authorize(
        &self,
        key: &PublicKey,
        peer: IpAddr,
        now: SystemTime,
    ) -> Result<Permissions, Denied> {
        let mut first_refusal = None;
        for entry in self.entries.iter().filter(|e| e.same_key(key)) {
            match check_entry(entry, peer, now) {
                Ok(p) => return Ok(p),
                Err(d) => {
                    first_refusal.get_or_insert(d);
                }
            }
        }
        Err(first_refusal.unwrap_or(Denied::NoSuchKey))
    }
}

fn check_entry(entry: &KeyEntry, peer: IpAddr, now: SystemTime) -> Result<Permissions, Denied> {
    let o = entry.options();
    if let Some(name) = o.unsupported.first() {
        return Err(Denied::UnsupportedOption(name.clone()));
    }
    if let Some(from) = &o.from
        && !from.matches(peer)
    {
        return Err(Denied::FromMismatch { peer });
    }
    if let Some(expiry) = o.expiry_time
        && now > expiry
    {
        return Err(Denied::Expired);
    }
    Ok(Permissions {
        port_forwarding: o.port_forwarding,
        pty: o.pty,
        agent_forwarding: o.agent_forwarding,
        x11_forwarding: o.x11_forwarding,
        command: o.command.clone(),
        permit_open: o.permit_open.clone(),
    })
}
