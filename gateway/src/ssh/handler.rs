//! The russh handler of one connection: authentication and quick
//! decisions only. Anything slow is handed to a per-channel task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use berth_keys::{Permissions, UserName};
use russh::keys::PublicKey;
use russh::keys::ssh_key::Algorithm;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use tracing::Instrument;

use super::{Gateway, command, env, session};

/// Who logged in on a connection, and what their key allows.
#[derive(Debug, Clone)]
pub struct Login {
    /// The user.
    pub user: UserName,
    /// What the key's options allow.
    pub permissions: Permissions,
}

/// Per-connection handler.
pub struct ConnectionHandler {
    gateway: Arc<Gateway>,
    peer: SocketAddr,
    span: tracing::Span,
    login: Option<Login>,
}

impl ConnectionHandler {
    pub fn new(gateway: Arc<Gateway>, peer: SocketAddr, span: tracing::Span) -> Self {
        ConnectionHandler {
            gateway,
            peer,
            span,
            login: None,
        }
    }

    /// The one key check behind both the offer and the signed request, so
    /// an accepted offer can never stand in for a login.
    fn check_key(&self, user: &str, key: &PublicKey, algorithm: &Algorithm) -> Option<Login> {
        if *algorithm == (Algorithm::Rsa { hash: None }) {
            tracing::info!(user, "refused ssh-rsa (SHA-1) signature");
            return None;
        }
        // An invalid name never reaches the disk or the engine.
        let user = match UserName::parse(user) {
            Ok(user) => user,
            Err(e) => {
                tracing::info!("refused login: {e}");
                return None;
            }
        };
        let keys = match self.gateway.keys.authorized_keys(&user) {
            Ok(keys) => keys,
            Err(e) => {
                tracing::info!(%user, "refused login: {e}");
                return None;
            }
        };
        match keys.authorize(key, self.peer.ip(), SystemTime::now()) {
            Ok(permissions) => Some(Login { user, permissions }),
            Err(denied) => {
                tracing::info!(%user, "refused key: {denied}");
                None
            }
        }
    }
}

fn reject() -> Auth {
    Auth::reject()
}

impl russh::server::Handler for ConnectionHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(
            match self.check_key(user, offer.public_key, offer.algorithm) {
                Some(_) => Auth::Accept,
                None => reject(),
            },
        )
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.check_key(user, key.public_key, key.algorithm) {
            Some(login) => {
                self.span.record("user", login.user.as_str());
                tracing::info!(
                    fingerprint = %key.public_key.fingerprint(Default::default()),
                    "logged in"
                );
                self.login = Some(login);
                Ok(Auth::Accept)
            }
            None => Ok(reject()),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(login) = self.login.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let gateway = self.gateway.clone();
        tokio::spawn(
            async move {
                reply.accept().await;
                session::run(gateway, login, channel).await;
            }
            .instrument(self.span.clone()),
        );
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(login) = self.login.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        if !login.permissions.port_forwarding || !command::is_docker_socket_path(socket_path) {
            tracing::info!(socket_path, "refused socket forward");
            let gateway_reply = reply;
            tokio::spawn(async move {
                gateway_reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
            });
            return Ok(());
        }
        let gateway = self.gateway.clone();
        tokio::spawn(
            async move {
                session::forward_docker_socket(gateway, login, channel, reply).await;
            }
            .instrument(self.span.clone()),
        );
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match &self.login {
            Some(login) if login.permissions.pty => session.channel_success(channel),
            _ => session.channel_failure(channel),
        }
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if env::is_allowed(name, &self.gateway.config.ssh.env_allow) {
            session.channel_success(channel)
        } else {
            tracing::debug!(name, "refused env");
            session.channel_failure(channel)
        }
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == session::SFTP_SUBSYSTEM {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!("refused X11 forwarding");
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::info!("refused agent forwarding");
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::info!(address, port = *port, "refused remote forwarding");
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::info!(socket_path, "refused remote socket forwarding");
        Ok(false)
    }
}
