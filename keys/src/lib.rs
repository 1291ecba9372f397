//! `berth-keys` owns berth's users, their public keys and the trusted user
//! certificate authorities. It knows nothing of SSH sessions or Docker: the
//! SSH server asks it one question per key offer ("may this key or
//! certificate log in as this user, from this address, now, and with which
//! permissions?") and the CLI uses it to edit the store.
//!
//! - [`UserName`]: the validated user name, `[a-z_][a-z0-9_-]{0,31}`.
//! - [`KeyStore`]: `<state_dir>/users/<user>/authorized_keys`, atomic edits
//!   for the CLI and a metadata-checked cache for logins.
//! - [`KeyEntry`], [`KeyOptions`], [`HostPatterns`]: one authorized_keys line
//!   and its options, with OpenSSH semantics.
//! - [`AuthorizedKeys::authorize`]: the decision for a plain key.
//! - [`TrustedUserCas::authorize_certificate`]: the decision for a user
//!   certificate, with [`RevokedKeys`] for revocation.
//!
//! Keys are `russh::keys::ssh_key` types (the `ssh-key` crate re-exported by
//! russh), so the server can pass what russh hands it straight through.
//!
//! # On disk
//!
//! ```text
//! <state_dir>/users/                    0700
//! <state_dir>/users/.lock               flock taken by every edit
//! <state_dir>/users/<user>/             0700
//! <state_dir>/users/<user>/authorized_keys   0600, OpenSSH format
//! ```
//!
//! # Semantics worth knowing
//!
//! - Edits ([`KeyStore::add_keys`]) parse their input strictly; the daemon's
//!   view ([`KeyStore::authorized_keys`]) is lenient and skips broken lines
//!   with a warning. Lines berth does not change are written back byte for
//!   byte (CRLF becomes LF).
//! - A login for a user without a directory is
//!   [`StoreError::NoSuchUser`]; a user whose file is missing has no keys.
//! - `expiry-time` is read as UTC (OpenSSH uses the server's local time).
//! - `from=` matches the peer's address only; names are never resolved.
//! - Unknown options are kept and warned about but not enforced; the known
//!   options `cert-authority` and `verify-required`, which berth cannot
//!   honour, make their line refuse every login (fail closed).
//! - Accepted key types: see [`ACCEPTED_KEY_TYPES`]; DSA and certificates
//!   are refused in authorized_keys, RSA must have 1024-16384 bits. Whether a
//!   security-key signature carried the user-presence flag is for the SSH
//!   server to check.
//! - Certificates: an empty principals list is refused, SHA-1 RSA CA
//!   signatures are refused, unknown critical options are refused, absent
//!   extensions mean "not permitted". The revoked-keys format is documented
//!   on [`RevokedKeys`].

#![forbid(unsafe_code)]

mod authorized;
mod ca;
mod entry;
mod options;
mod store;
mod user;

pub use authorized::{AuthorizedKeys, Denied, Permissions};
pub use ca::{CaError, RevocationList, RevokedKeys, TrustedUserCas};
pub use entry::{
    ACCEPTED_KEY_TYPES, KeyEntry, LineError, MAX_LINE_LEN, MAX_RSA_BITS, MIN_RSA_BITS, ParseError,
    key_algorithm_allowed, parse_lenient, parse_strict,
};
pub use options::{HostPatterns, KeyOptions, OptionsError, parse_expiry_time};
pub use store::{AUTHORIZED_KEYS_FILE, KeyStore, MAX_FILE_LEN, StoreError};
pub use user::{InvalidUserName, MAX_USER_NAME_LEN, UserName};

/// The key types re-exported for convenience.
pub use russh::keys::ssh_key::{Certificate, Fingerprint, PublicKey};

#[cfg(test)]
mod tests;
