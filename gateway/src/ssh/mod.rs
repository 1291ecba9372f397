//! The SSH front door: accepts connections, authenticates users by public
//! key, and turns each channel into work on the user's host.
//!
//! The russh `Handler` ([`handler`]) only decides (auth, accept/refuse,
//! request replies); slow work — provisioning, engine calls, byte pumps —
//! runs in a task per channel ([`session`]).

pub mod command;
pub mod env;
pub mod forward;
mod handler;
pub mod hostkey;
mod quickack;
mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_keys::{KeyStore, TrustedUserCas};
use russh::MethodKind;
use russh::MethodSet;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::config::Config;
use crate::hosts::HostManager;

/// What every connection shares.
pub struct Gateway {
    /// The running configuration.
    pub config: Config,
    /// Users and their keys.
    pub keys: KeyStore,
    /// Trusted user CAs (possibly none) and the revoked-keys list.
    pub user_cas: TrustedUserCas,
    /// Users' hosts.
    pub hosts: HostManager,
}

/// Why the SSH server stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The host key could not be loaded or created.
    #[error(transparent)]
    HostKey(#[from] hostkey::HostKeyError),
}

fn russh_config(gateway: &Gateway, host_key: russh::keys::PrivateKey) -> russh::server::Config {
    russh::server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        // OpenSSH probes "none" first, and offers keys one by one: only a
        // final failure is worth slowing down.
        auth_rejection_time: Duration::from_millis(200),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        nodelay: true,
        keepalive_interval: Some(gateway.config.ssh.keepalive_interval).filter(|d| !d.is_zero()),
        inactivity_timeout: None,
        window_size: 8 * 1024 * 1024,
        maximum_packet_size: 65535,
        event_buffer_size: 100,
        channel_buffer_size: 256,
        preferred: russh::Preferred {
            // russh's default list lacks aes128-gcm, which OpenSSH offers.
            cipher: std::borrow::Cow::Borrowed(&[
                russh::cipher::CHACHA20_POLY1305,
                russh::cipher::AES_256_GCM,
                russh::cipher::AES_128_GCM,
                russh::cipher::AES_256_CTR,
                russh::cipher::AES_192_CTR,
                russh::cipher::AES_128_CTR,
            ]),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Serves SSH on `listener` until `shutdown` resolves.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let host_key = hostkey::load_or_create(&gateway.config.state_dir)?;
    let config = Arc::new(russh_config(&gateway, host_key));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let span = tracing::info_span!("conn", %peer, user = tracing::field::Empty);
        let handler = handler::ConnectionHandler::new(gateway.clone(), peer, span.clone());
        let config = config.clone();
        tokio::spawn(
            async move {
                let stream = quickack::QuickAck::new(stream);
                match russh::server::run_stream(config, stream, handler).await {
                    Ok(session) => {
                        if let Err(e) = session.await {
                            tracing::debug!("connection ended: {e}");
                        }
                    }
                    Err(e) => tracing::debug!("handshake failed: {e}"),
                }
            }
            .instrument(span),
        );
    }
}
