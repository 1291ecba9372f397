//! Reaching a host's inner Docker socket without trusting the tenant.
//!
//! The inner dockerd creates `docker.sock` in a directory that the host
//! bind-mounts, so the tenant (root in their host) can replace it with a
//! symlink or another file. The socket is therefore opened with `O_PATH |
//! O_NOFOLLOW`, checked to be a socket, and connected through its
//! `/proc/self/fd` link: the connection reaches exactly the inode that was
//! checked, never a link target, with no window for a swap in between.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// Name of the inner dockerd's socket inside a host's run dir.
pub const SOCKET_NAME: &str = "docker.sock";

/// Why the inner socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Nothing there yet (dockerd still starting) or it went away.
    #[error("no Docker socket at {0} yet")]
    Missing(PathBuf),
    /// Something other than a socket sits where the socket should be.
    #[error("refusing {0}: not a socket (symlinks and other files are never followed)")]
    NotASocket(PathBuf),
    /// The socket exists but could not be connected or spoken to.
    #[error("Docker socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The inner engine answered, but not with 200 OK.
    #[error("inner dockerd answered /_ping with {0}")]
    NotReady(String),
}

/// Connects to `dir/docker.sock`, refusing anything that is not a socket.
pub async fn connect(dir: &Path) -> Result<UnixStream, SocketError> {
    connect_named(dir, SOCKET_NAME).await
}

/// Connects to the socket `dir/name`, refusing anything that is not a
/// socket (the same care as for the Docker socket).
pub async fn connect_named(dir: &Path, name: &str) -> Result<UnixStream, SocketError> {
    let path = dir.join(name);
    let handle = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(handle) => handle,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SocketError::Missing(path)),
        // O_PATH|O_NOFOLLOW opens a symlink itself (ELOOP only without O_PATH).
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(SocketError::NotASocket(path));
        }
        Err(source) => return Err(SocketError::Io { path, source }),
    };
    let meta = handle.metadata().map_err(|source| SocketError::Io {
        path: path.clone(),
        source,
    })?;
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket(path));
    }
    let via = format!("/proc/self/fd/{}", handle.as_raw_fd());
    let stream = UnixStream::connect(&via)
        .await
        .map_err(|source| SocketError::Io {
            path: path.clone(),
            source,
        })?;
    drop(handle);
    Ok(stream)
}

/// Asks the inner dockerd behind `dir/docker.sock` for `GET /_ping`.
pub async fn ping(dir: &Path, timeout: Duration) -> Result<(), SocketError> {
    let path = dir.join(SOCKET_NAME);
    let io_err = |source: io::Error| SocketError::Io {
        path: path.clone(),
        source,
    };
    let attempt = async {
        let stream = connect(dir).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| io_err(io::Error::other(e)))?;
        let driver = tokio::spawn(conn);
        let request = hyper::Request::get("/_ping")
            .header(hyper::header::HOST, "docker")
            .body(Empty::<Bytes>::new())
            .map_err(|e| io_err(io::Error::other(e)))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| io_err(io::Error::other(e)))?;
        driver.abort();
        if response.status() == hyper::StatusCode::OK {
            Ok(())
        } else {
            Err(SocketError::NotReady(response.status().to_string()))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(io_err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no answer to /_ping",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_symlink_in_place_of_the_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere.sock");
        let _listener = tokio::net::UnixListener::bind(&target).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(SOCKET_NAME)).unwrap();
        let err = connect(dir.path()).await.unwrap_err();
        assert!(matches!(err, SocketError::NotASocket(_)), "{err}");
    }

    #[tokio::test]
    async fn a_regular_file_in_place_of_the_socket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SOCKET_NAME), b"x").unwrap();
        let err = connect(dir.path()).await.unwrap_err();
        assert!(matches!(err, SocketError::NotASocket(_)), "{err}");
    }

    #[tokio::test]
    async fn a_real_socket_is_connected() {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::UnixListener::bind(dir.path().join(SOCKET_NAME)).unwrap();
        let (connected, accepted) = tokio::join!(connect(dir.path()), listener.accept());
        connected.unwrap();
        accepted.unwrap();
    }

    #[tokio::test]
    async fn a_missing_socket_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = connect(dir.path()).await.unwrap_err();
        assert!(matches!(err, SocketError::Missing(_)), "{err}");
    }
}
