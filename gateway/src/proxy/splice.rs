//! Splices an SSH channel onto a stream socket (the inner Docker socket),
//! honouring half-close both ways.

use russh::ChannelMsg;
use russh::server::Msg;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Pumps `channel` <-> `socket` until both directions are done.
///
/// Channel EOF shuts down the socket's write side; socket EOF sends channel
/// EOF. When `exit_status` is set (exec channels, as for `docker system
/// dial-stdio`), it is sent before the channel is closed.
pub async fn splice<S>(
    channel: russh::Channel<Msg>,
    socket: S,
    exit_status: Option<u32>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut from_client, to_client) = channel.split();
    let (mut socket_read, mut socket_write) = tokio::io::split(socket);

    let upstream = async {
        while let Some(msg) = from_client.wait().await {
            match msg {
                ChannelMsg::Data { data } => socket_write.write_all(&data).await?,
                ChannelMsg::Eof | ChannelMsg::Close => break,
                _ => {}
            }
        }
        socket_write.shutdown().await
    };
    let downstream = async {
        let mut writer = to_client.make_writer();
        tokio::io::copy(&mut socket_read, &mut writer).await?;
        writer.flush().await?;
        drop(writer);
        let _ = to_client.eof().await;
        std::io::Result::Ok(())
    };
    let (up, down) = tokio::join!(upstream, downstream);
    if let Some(status) = exit_status {
        let _ = to_client.exit_status(status).await;
    }
    let _ = to_client.close().await;
    up.and(down)
}
