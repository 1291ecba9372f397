//! The russh handler of one connection: authentication and quick
//! decisions only. Anything slow is handed to a per-channel task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use berth_keys::{Certificate, Denied, Permissions, UserName};
use russh::keys::PublicKey;
use russh::keys::ssh_key::Algorithm;
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure};
use tracing::Instrument;

use super::{Gateway, env, forward, session};
use crate::proxy::exec::InputBacklog;

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
    /// Session input received but not yet taken by commands; it decides
    /// the windows granted (see `adjust_window`).
    input_backlog: Arc<InputBacklog>,
    full_window: u32,
}

impl ConnectionHandler {
    pub fn new(gateway: Arc<Gateway>, peer: SocketAddr, span: tracing::Span) -> Self {
        ConnectionHandler {
            gateway,
            peer,
            span,
            login: None,
            input_backlog: Arc::default(),
            full_window: 0,
        }
    }

    /// The one key check behind both the offer and the signed request, so
    /// an accepted offer can never stand in for a login.
    fn check_key(&self, user: &str, key: &PublicKey, algorithm: &Algorithm) -> Option<Login> {
        let user = self.login_name(user, algorithm)?;
        if let Err(denied) = self.not_revoked(key) {
            tracing::info!(%user, "refused key: {denied}");
            return None;
        }
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
                tracing::debug!(%user, "key not accepted: {denied}");
                None
            }
        }
    }

    /// The login name, if it is a valid user name and the signature
    /// algorithm is acceptable. An invalid name never reaches the disk or
    /// the engine.
    fn login_name(&self, user: &str, algorithm: &Algorithm) -> Option<UserName> {
        if *algorithm == (Algorithm::Rsa { hash: None }) {
            tracing::info!(user, "refused ssh-rsa (SHA-1) signature");
            return None;
        }
        match UserName::parse(user) {
            Ok(user) => Some(user),
            Err(e) => {
                tracing::info!("refused login: {e}");
                None
            }
        }
    }

    fn not_revoked(&self, key: &PublicKey) -> Result<(), Denied> {
        match self.gateway.user_cas.revoked_keys() {
            Some(revoked) => revoked.check_key(key),
            None => Ok(()),
        }
    }

    fn logged_in(&mut self, login: Login, what: &str) -> Auth {
        self.span.record("user", login.user.as_str());
        tracing::info!("logged in with {what}");
        self.login = Some(login);
        Auth::Accept
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
        if self
            .check_key(user, offer.public_key, offer.algorithm)
            .is_some()
        {
            return Ok(Auth::Accept);
        }
        // russh shows a certificate's offer as its bare key, so with user
        // CAs configured a key not on file may still carry a certificate:
        // let the client prove possession, then `auth_openssh_certificate`
        // decides. A plain key not on file still fails in `auth_publickey`.
        let may_be_certificate = !self.gateway.user_cas.cas().is_empty()
            && self.login_name(user, offer.algorithm).is_some()
            && self.not_revoked(offer.public_key).is_ok();
        Ok(if may_be_certificate {
            Auth::Accept
        } else {
            reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.check_key(user, key.public_key, key.algorithm) {
            Some(login) => {
                let what = format!("key {}", key.public_key.fingerprint(Default::default()));
                Ok(self.logged_in(login, &what))
            }
            None => {
                tracing::info!(user, "refused key: not on file for this user");
                Ok(reject())
            }
        }
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        let Ok(login_name) = UserName::parse(user) else {
            tracing::info!(user, "refused certificate: invalid user name");
            return Ok(reject());
        };
        let decision = self.gateway.user_cas.authorize_certificate(
            certificate,
            &login_name,
            self.peer.ip(),
            SystemTime::now(),
        );
        match decision {
            Ok(permissions) => {
                let what = format!(
                    "certificate '{}' serial {}",
                    certificate.key_id(),
                    certificate.serial()
                );
                let login = Login {
                    user: login_name,
                    permissions,
                };
                Ok(self.logged_in(login, &what))
            }
            Err(denied) => {
                tracing::info!(
                    user,
                    key_id = certificate.key_id(),
                    "refused certificate: {denied}"
                );
                Ok(reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(login) = self.login.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let gateway = self.gateway.clone();
        let handle = session.handle();
        let backlog = self.input_backlog.clone();
        tokio::spawn(
            async move {
                reply.accept().await;
                session::run(gateway, login, channel, handle, backlog).await;
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
            refuse_forward(reply, "not logged in").await;
            return Ok(());
        };
        if let Err(refusal) = forward::decide_socket(&login.permissions, socket_path) {
            tracing::info!(socket_path, "refused socket forward: {refusal}");
            refuse_forward(reply, &refusal.to_string()).await;
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

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(login) = self.login.clone() else {
            refuse_forward(reply, "not logged in").await;
            return Ok(());
        };
        let decision = forward::decide_tcp(
            &login.user,
            &login.permissions,
            &self.gateway.config.ssh.tcp_forward_allow,
            host_to_connect,
            port_to_connect,
        );
        let target = match decision {
            Ok(target) => target,
            Err(refusal) => {
                tracing::info!(
                    host = host_to_connect,
                    port = port_to_connect,
                    "refused port forward: {refusal}"
                );
                refuse_forward(reply, &refusal.to_string()).await;
                return Ok(());
            }
        };
        let gateway = self.gateway.clone();
        tokio::spawn(
            async move {
                session::forward_tcp(gateway, login, channel, reply, target).await;
            }
            .instrument(self.span.clone()),
        );
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!("refused x11 channel");
        refuse_forward(reply, "X11 forwarding is not offered").await;
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(
            host = host_to_connect,
            port = port_to_connect,
            "refused forwarded-tcpip channel"
        );
        refuse_forward(reply, "remote forwarding is not offered").await;
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

    /// russh re-grants a channel's window as data arrives, not as commands
    /// consume it; while commands lag behind, grant token windows, so
    /// clients wait instead of the gateway buffering (or stalling).
    fn adjust_window(&mut self, _channel: ChannelId, current: u32) -> u32 {
        // The first call brings the configured window; ours may be smaller.
        self.full_window = self.full_window.max(current);
        self.input_backlog.window(self.full_window)
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
        // `ssh -R` would open a listener somewhere on the gateway's side;
        // berth's only door is SSH, so there is none to offer.
        tracing::info!(
            address,
            port = *port,
            "refused remote forwarding (-R): not offered by berth"
        );
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        tracing::info!(
            socket_path,
            "refused remote socket forwarding (-R): not offered by berth"
        );
        Ok(false)
    }
}

/// Refuses a channel open, telling the client why (OpenSSH prints the
/// text after "open failed: administratively prohibited:").
async fn refuse_forward(reply: ChannelOpenHandle, why: &str) {
    reply
        .reject(ChannelOpenFailure::Other {
            code: ChannelOpenFailure::AdministrativelyProhibited.code(),
            reason: format!("berth: {why}"),
        })
        .await;
}
