//! The on-disk user and key store, `<state_dir>/users/<user>/authorized_keys`,
//! shared by the CLI (which edits it) and the daemon (which reads it on every
//! key offer, through a cache checked against the file's metadata).
//!
//! Every write replaces the file atomically (temporary file in the same
//! directory, fsync, rename, fsync of the directory) under an exclusive
//! `flock` on `users/.lock`, so concurrent CLI edits never lose each other's
//! changes and a login never sees a half-written file.

use std::collections::{HashMap, HashSet};
use std::fs::{self, DirBuilder, File, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::authorized::AuthorizedKeys;
use crate::entry::{KeyEntry, ParseError, classify, parse_lenient, parse_strict, split_lines};
use crate::user::UserName;

/// Name of each user's key file inside their directory.
pub const AUTHORIZED_KEYS_FILE: &str = "authorized_keys";

/// Largest authorized_keys file the store reads (4 MiB, thousands of keys).
pub const MAX_FILE_LEN: u64 = 4 * 1024 * 1024;

/// A failure of the key store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "create directory", …).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The user has no directory in the store.
    #[error("no such user '{0}'")]
    NoSuchUser(UserName),
    /// Key input was refused; nothing was changed.
    #[error("invalid key input, nothing was changed: {0}")]
    InvalidInput(#[from] ParseError),
    /// Key input held no key at all.
    #[error(
        "no public key found in the input; expected lines like 'ssh-ed25519 AAAAC3Nz… user@host' (a .pub file)"
    )]
    NoKeysInInput,
    /// `remove_keys` matched nothing.
    #[error(
        "user '{user}' has no key with fingerprint or comment '{selector}' (see `berth key list {user}`)"
    )]
    NoMatchingKey {
        /// The user whose keys were searched.
        user: UserName,
        /// The fingerprint or comment that was asked for.
        selector: String,
    },
    /// The authorized_keys file is larger than [`MAX_FILE_LEN`].
    #[error("{} is larger than {} bytes", path.display(), MAX_FILE_LEN)]
    FileTooLarge {
        /// The file.
        path: PathBuf,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// Identity and version of a file as far as metadata can tell: a rename-over
/// changes the inode, an in-place edit changes mtime/ctime and usually size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    pub(crate) fn of(meta: &Metadata) -> FileStamp {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

struct Cached {
    stamp: FileStamp,
    keys: Arc<AuthorizedKeys>,
}

/// The user and key store under `<state_dir>/users/`.
///
/// Layout: `users/` (0700), one directory per user `users/<user>/` (0700)
/// holding `authorized_keys` (0600) in OpenSSH format, readable and editable
/// by hand. Names in `users/` starting with `.` belong to the store (lock
/// file, temporary files) and are not users.
pub struct KeyStore {
    users_dir: PathBuf,
    cache: Mutex<HashMap<UserName, Cached>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("users_dir", &self.users_dir)
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// Opens the store in `state_dir`, creating `state_dir` and
    /// `state_dir/users` (mode 0700) if missing.
    pub fn open(state_dir: &Path) -> Result<KeyStore, StoreError> {
        let users_dir = state_dir.join("users");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&users_dir)
            .map_err(io_err("create directory", &users_dir))?;
        let meta = fs::metadata(&users_dir).map_err(io_err("inspect", &users_dir))?;
        if meta.mode() & 0o077 != 0 {
            tracing::warn!(
                path = %users_dir.display(),
                "users directory is accessible to group or others (mode {:o}); consider chmod 700",
                meta.mode() & 0o777
            );
        }
        Ok(KeyStore {
            users_dir,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// `<state_dir>/users`.
    pub fn users_dir(&self) -> &Path {
        &self.users_dir
    }

    /// `<state_dir>/users/<user>/authorized_keys`, whether or not it exists.
    pub fn authorized_keys_path(&self, user: &UserName) -> PathBuf {
        self.user_dir(user).join(AUTHORIZED_KEYS_FILE)
    }

    fn user_dir(&self, user: &UserName) -> PathBuf {
        self.users_dir.join(user.as_str())
    }

    /// Takes the store-wide write lock (released on drop).
    fn write_lock(&self) -> Result<File, StoreError> {
        let path = self.users_dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open lock file", &path))?;
        file.lock().map_err(io_err("lock", &path))?;
        Ok(file)
    }

    fn forget(&self, user: &UserName) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(user);
    }

    /// Whether `user` has a directory in the store.
    pub fn user_exists(&self, user: &UserName) -> bool {
        self.user_dir(user).is_dir()
    }

    /// Creates `user` with an empty authorized_keys. Returns `false` if the
    /// user already existed (nothing is changed then).
    pub fn add_user(&self, user: &UserName) -> Result<bool, StoreError> {
        let _lock = self.write_lock()?;
        self.ensure_user(user)
    }

    fn ensure_user(&self, user: &UserName) -> Result<bool, StoreError> {
        let dir = self.user_dir(user);
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {
                write_atomic(&dir, &dir.join(AUTHORIZED_KEYS_FILE), b"")?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(false),
            Err(e) => Err(io_err("create directory", &dir)(e)),
        }
    }

    /// Removes `user` and their keys. The directory is first renamed out of
    /// the way, so a concurrent login sees either the whole user or none.
    pub fn remove_user(&self, user: &UserName) -> Result<(), StoreError> {
        let _lock = self.write_lock()?;
        let dir = self.user_dir(user);
        if !dir.is_dir() {
            return Err(StoreError::NoSuchUser(user.clone()));
        }
        let graveyard = self
            .users_dir
            .join(format!(".removed-{}-{}", user, std::process::id()));
        fs::rename(&dir, &graveyard).map_err(io_err("rename", &dir))?;
        sync_dir(&self.users_dir)?;
        self.forget(user);
        fs::remove_dir_all(&graveyard).map_err(io_err("remove", &graveyard))
    }

    /// All users, sorted. Entries of `users/` that are not directories with
    /// valid user names are skipped with a warning (dot-files silently).
    pub fn list_users(&self) -> Result<Vec<UserName>, StoreError> {
        let dir = &self.users_dir;
        let mut users = Vec::new();
        for item in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let item = item.map_err(io_err("list", dir))?;
            let raw = item.file_name();
            let Some(name) = raw.to_str() else {
                tracing::warn!(dir = %dir.display(), "skipping non-UTF-8 entry {raw:?} in users directory");
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let user = match UserName::parse(name) {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "skipping users directory entry: {e}");
                    continue;
                }
            };
            if !item.path().is_dir() {
                tracing::warn!(dir = %dir.display(), "skipping '{name}' in users directory: not a directory");
                continue;
            }
            users.push(user);
        }
        users.sort();
        Ok(users)
    }

    /// Adds the keys in `input` (authorized_keys / `.pub` text) to `user`,
    /// creating the user if needed.
    ///
    /// The input is parsed strictly: any bad line is an error naming the line
    /// and nothing changes. CRLF line endings are accepted. Keys already on
    /// file (same key data) or repeated in the input are skipped. Returns the
    /// entries actually added. Input without any key is an error.
    pub fn add_keys(&self, user: &UserName, input: &[u8]) -> Result<Vec<KeyEntry>, StoreError> {
        let wanted = parse_strict(input)?;
        if wanted.is_empty() {
            return Err(StoreError::NoKeysInInput);
        }
        for entry in &wanted {
            for name in &entry.options().unknown {
                tracing::warn!(key = %entry.fingerprint(), "unknown option '{name}' kept but not enforced by berth");
            }
        }

        let _lock = self.write_lock()?;
        self.ensure_user(user)?;
        let path = self.authorized_keys_path(user);
        let current = read_limited(&path)?.unwrap_or_default();
        let (existing, _) = parse_lenient(&current);
        let mut seen: HashSet<_> = existing
            .iter()
            .map(|e| e.public_key().key_data().clone())
            .collect();
        let added: Vec<KeyEntry> = wanted
            .into_iter()
            .filter(|e| seen.insert(e.public_key().key_data().clone()))
            .collect();
        if added.is_empty() {
            return Ok(added);
        }

        let mut out = normalised_lines(&current);
        for entry in &added {
            out.extend_from_slice(entry.text().as_bytes());
            out.push(b'\n');
        }
        write_atomic(&self.user_dir(user), &path, &out)?;
        self.forget(user);
        Ok(added)
    }

    /// The usable keys of `user` (broken lines are skipped with a warning).
    pub fn list_keys(&self, user: &UserName) -> Result<Vec<KeyEntry>, StoreError> {
        Ok(self.authorized_keys(user)?.entries().to_vec())
    }

    /// Removes every key of `user` whose SHA-256 fingerprint (`SHA256:…`) or
    /// exact comment equals `selector`. Other lines, including comments,
    /// unknown options and broken lines, are kept byte for byte. Returns the
    /// removed entries; matching nothing is an error.
    pub fn remove_keys(
        &self,
        user: &UserName,
        selector: &str,
    ) -> Result<Vec<KeyEntry>, StoreError> {
        let _lock = self.write_lock()?;
        if !self.user_exists(user) {
            return Err(StoreError::NoSuchUser(user.clone()));
        }
        let path = self.authorized_keys_path(user);
        let current = read_limited(&path)?.unwrap_or_default();
        let mut removed = Vec::new();
        let mut out = Vec::with_capacity(current.len());
        for (_, line) in split_lines(&current) {
            let entry = classify(line)
                .ok()
                .flatten()
                .and_then(|text| KeyEntry::parse(text).ok());
            match entry {
                Some(e) if e.fingerprint().to_string() == selector || e.comment() == selector => {
                    removed.push(e)
                }
                _ => {
                    out.extend_from_slice(line);
                    out.push(b'\n');
                }
            }
        }
        if removed.is_empty() {
            return Err(StoreError::NoMatchingKey {
                user: user.clone(),
                selector: selector.to_owned(),
            });
        }
        write_atomic(&self.user_dir(user), &path, &out)?;
        self.forget(user);
        Ok(removed)
    }

    /// The keys a login of `user` may use: the hot path of authentication.
    ///
    /// The parsed file is cached per user and revalidated with one `stat`
    /// (device, inode, size, mtime and ctime with nanoseconds), so a burst of
    /// logins parses the file once, while CLI and hand edits are seen by the
    /// next login. The view is lenient: broken lines are skipped with a
    /// warning naming the file and line.
    ///
    /// A user without a directory is `Err(StoreError::NoSuchUser)`; a user
    /// whose authorized_keys file is missing has no keys (`Ok(empty)`).
    pub fn authorized_keys(&self, user: &UserName) -> Result<Arc<AuthorizedKeys>, StoreError> {
        let path = self.authorized_keys_path(user);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(user);
                return if self.user_exists(user) {
                    Ok(Arc::new(AuthorizedKeys::empty()))
                } else {
                    Err(StoreError::NoSuchUser(user.clone()))
                };
            }
            Err(e) => return Err(io_err("inspect", &path)(e)),
        };
        let stamp = FileStamp::of(&meta);
        if let Some(c) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            && c.stamp == stamp
        {
            return Ok(c.keys.clone());
        }

        // Stamp and contents come from the same open file, so a concurrent
        // rename-over can at worst cause one extra re-read later.
        let file = File::open(&path).map_err(io_err("open", &path))?;
        let stamp = FileStamp::of(&file.metadata().map_err(io_err("inspect", &path))?);
        let bytes = read_all_limited(file, &path)?;
        let keys = Arc::new(AuthorizedKeys::parse_lenient(
            &bytes,
            &path.display().to_string(),
        ));
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(
            user.clone(),
            Cached {
                stamp,
                keys: keys.clone(),
            },
        );
        Ok(keys)
    }
}

/// The file's lines with CRLF turned into LF and a final newline ensured.
fn normalised_lines(current: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(current.len() + 1);
    for (_, line) in split_lines(current) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// Reads `path` (at most [`MAX_FILE_LEN`] bytes); `None` if it does not exist.
fn read_limited(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    match File::open(path) {
        Ok(f) => read_all_limited(f, path).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("open", path)(e)),
    }
}

fn read_all_limited(file: File, path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read", path))?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(StoreError::FileTooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// Replaces `path` (in directory `dir`) with `contents`: temporary file
/// (mode 0600) in `dir`, fsync, rename over `path`, fsync `dir`. On error
/// the old file is untouched and the temporary file is removed.
pub(crate) fn write_atomic(dir: &Path, path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".authorized_keys.")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err("create a temporary file in", dir))?;
    tmp.write_all(contents)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io_err("write", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| io_err("replace", path)(e.error))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}
