//! Prompt ACKs while a connection logs in.
//!
//! OpenSSH's client leaves Nagle on until a session turns interactive, so
//! during the handshake a small packet (e.g. KEX_ECDH_INIT right after
//! KEXINIT) waits for the ACK of the one before. Linux may delay that ACK
//! by up to 40 ms when the server has nothing to send back, which made
//! about half of all logins 40 ms slower. So the first reads of every
//! connection re-arm TCP_QUICKACK (which the kernel clears on its own);
//! bulk transfers later are left to the kernel's defaults.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Reads after which the connection is left to the kernel's ACK policy;
/// a login takes about twenty.
const QUICK_READS: u32 = 64;

/// A TCP stream that acknowledges promptly during its first reads.
pub struct QuickAck {
    inner: TcpStream,
    reads_left: u32,
}

impl QuickAck {
    /// Wraps an accepted connection.
    pub fn new(inner: TcpStream) -> QuickAck {
        let stream = QuickAck {
            inner,
            reads_left: QUICK_READS,
        };
        stream.arm();
        stream
    }

    fn arm(&self) {
        let _ = socket2::SockRef::from(&self.inner).set_tcp_quickack(true);
    }
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.reads_left > 0
            && matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() > before
        {
            self.reads_left -= 1;
            self.arm();
        }
        polled
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
