//! berth: an SSH gateway that gives every user their own Docker host.
//!
//! `ssh alice@gateway` authenticates Alice by public key ([`berth_keys`]),
//! brings up her Docker-in-Docker host ([`hosts`]), and pumps her shell,
//! commands and Docker socket into it ([`proxy`]). [`ssh`] ties those
//! together; [`serve`] is the one entry point that `berth serve` and the
//! tests call.

#![forbid(unsafe_code)]

pub mod config;
pub mod hosts;
pub mod proxy;
pub mod ssh;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use berth_keys::{KeyStore, TrustedUserCas};

pub use config::Config;

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state directory could not be prepared.
    #[error("cannot use state dir {path}: {source}")]
    StateDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key store could not be opened.
    #[error(transparent)]
    Keys(#[from] berth_keys::StoreError),
    /// The trusted user CAs or the revoked-keys list could not be loaded.
    #[error(transparent)]
    UserCas(#[from] berth_keys::CaError),
    /// The Docker engine could not be used.
    #[error(transparent)]
    Hosts(#[from] hosts::HostError),
    /// The SSH server failed.
    #[error(transparent)]
    Serve(#[from] ssh::ServeError),
}

/// Creates the state dir (0700) if needed.
pub fn prepare_state_dir(path: &std::path::Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| Error::StateDir {
        path: path.into(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(err)
}

/// Runs the gateway until `shutdown` resolves. `on_listening` is told the
/// bound address (useful with port 0).
pub async fn serve(
    config: Config,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    prepare_state_dir(&config.state_dir)?;
    let keys = KeyStore::open(&config.state_dir)?;
    let user_cas =
        TrustedUserCas::load(&config.trusted_user_ca_keys, config.revoked_keys.as_deref())?;
    let engine = hosts::engine::for_gateway();
    let hosts = hosts::HostManager::connect(
        &engine,
        config.hosts.clone(),
        config.image.clone(),
        &config.state_dir,
    )
    .await?;
    if let Err(e) = hosts::engine::record(&config.state_dir, &engine) {
        tracing::warn!(
            "cannot record the engine in {} (the berth CLI will need DOCKER_HOST): {e}",
            config.state_dir.display()
        );
    }
    let _lifecycle = hosts.start_lifecycle().await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ssh::ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ssh::ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let gateway = Arc::new(ssh::Gateway {
        config,
        keys,
        user_cas,
        hosts,
    });
    tracing::info!(listen = %bound, "berth is serving SSH");
    on_listening(bound);
    ssh::serve(gateway, listener, shutdown).await?;
    Ok(())
}
