//! Splices an SSH channel onto a stream socket (the inner Docker socket, or
//! a TCP connection into the host), honouring half-close both ways.
//!
//! russh hands every channel's incoming messages through one session loop,
//! and that loop waits whenever a channel's queue is full: a channel whose
//! queue is not drained stalls every other channel of the connection. So
//! the channel is read by its own task into a byte-bounded pipe, and a
//! second task writes the pipe into the socket at whatever pace the socket
//! takes. A socket that is slow to read only fills its own pipe; only past
//! [`PIPE_CAPACITY`] buffered bytes does it hold back the connection (russh
//! replenishes the client's window as data arrives, so there is no
//! per-channel flow control to lean on instead, and memory must stay bounded).

use std::sync::Arc;

use hyper::body::Bytes;
use russh::ChannelMsg;
use russh::server::Msg;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Bytes from the client one channel may hold while its socket catches up.
pub const PIPE_CAPACITY: usize = 16 * 1024 * 1024;

/// Read size from the socket towards the client.
const SOCKET_READ_SIZE: usize = 64 * 1024;

/// Pumps `channel` <-> `socket`.
///
/// Channel EOF (or close) shuts down the socket's write side; socket EOF
/// sends channel EOF. A forward (`exit_status` unset) is closed once both
/// directions are done, as sshd does. An exec channel (`exit_status` set,
/// for `docker system dial-stdio`) ends like that command: when the socket
/// is done, with EOF, the exit status and close, without waiting for the
/// client's EOF (which clients such as paramiko never send).
pub async fn splice<S>(
    channel: russh::Channel<Msg>,
    socket: S,
    exit_status: Option<u32>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (from_client, to_client) = channel.split();
    let (socket_read, socket_write) = tokio::io::split(socket);

    let (pipe_tx, pipe_rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(PIPE_CAPACITY));
    // The reader outlives the splice on purpose: it keeps draining the
    // channel's queue until russh drops the channel, whatever we do here.
    tokio::spawn(drain_channel(from_client, pipe_tx, budget));
    let upstream = tokio::spawn(write_socket(pipe_rx, socket_write));

    let downstream = async {
        let mut writer = to_client.make_writer();
        // 64 KiB reads: tokio::io::copy's 8 KiB turns a bulk transfer
        // (docker load/save) into many small SSH packets and wakeups.
        let mut socket_read = tokio::io::BufReader::with_capacity(SOCKET_READ_SIZE, socket_read);
        let copied = tokio::io::copy_buf(&mut socket_read, &mut writer).await;
        let _ = writer.flush().await;
        drop(writer);
        let _ = to_client.eof().await;
        copied.map(|_| ())
    };
    let down = downstream.await;
    let up = if exit_status.is_some() {
        upstream.abort();
        Ok(())
    } else {
        match upstream.await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        }
    };
    if let Some(status) = exit_status {
        let _ = to_client.exit_status(status).await;
    }
    let _ = to_client.close().await;
    up.and(down)
}

/// One message of client data on its way to the socket, holding its share
/// of the channel's pipe budget until written.
struct Chunk {
    data: Bytes,
    _budget: OwnedSemaphorePermit,
}

/// Moves the client's data from the channel queue into the pipe, and keeps
/// emptying the queue after EOF (or after the socket gave up) so the
/// session loop never waits on this channel.
async fn drain_channel(
    mut from_client: russh::ChannelReadHalf,
    pipe: mpsc::UnboundedSender<Chunk>,
    budget: Arc<Semaphore>,
) {
    let mut pipe = Some(pipe);
    while let Some(msg) = from_client.wait().await {
        match msg {
            ChannelMsg::Data { data } if !data.is_empty() => {
                let Some(sender) = pipe.as_ref() else {
                    continue;
                };
                // A packet is far smaller than the pipe, so this fits; waiting
                // here is the last-resort bound described in the module docs.
                let want = data.len().min(PIPE_CAPACITY) as u32;
                let Ok(permit) = budget.clone().acquire_many_owned(want).await else {
                    pipe = None;
                    continue;
                };
                if sender
                    .send(Chunk {
                        data,
                        _budget: permit,
                    })
                    .is_err()
                {
                    // The socket side is gone; discard what still comes.
                    pipe = None;
                }
            }
            // Dropping the sender is the EOF the writer passes on.
            ChannelMsg::Eof => pipe = None,
            ChannelMsg::Close => break,
            _ => {}
        }
    }
}

/// Writes the pipe into the socket, then shuts down the socket's write side.
async fn write_socket<W>(
    mut pipe: mpsc::UnboundedReceiver<Chunk>,
    mut socket: W,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    while let Some(chunk) = pipe.recv().await {
        socket.write_all(&chunk.data).await?;
    }
    socket.shutdown().await
}
