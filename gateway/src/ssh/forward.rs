//! Decides where a local forward may go: `direct-tcpip` (`ssh -L
//! PORT:HOST:HOSTPORT`) into the user's own host, `direct-streamlocal` to
//! the host's Docker socket. Pure decisions, made in the handler without
//! waiting on anything; the connecting is done by the channel's task.

use berth_keys::{Permissions, UserName};

use super::command;

/// Where an accepted `direct-tcpip` forward connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpTarget {
    /// A port of the user's own host (`localhost`, `127.0.0.1`, `::1`, or
    /// the host's own name): reached at the host's address on its network,
    /// where the ports its inner containers publish listen.
    Host {
        /// The port.
        port: u16,
    },
    /// A destination the operator allowed in `ssh.tcp_forward_allow`,
    /// connected from the gateway.
    Allowed {
        /// Name or address, as the client sent it.
        host: String,
        /// The port.
        port: u16,
    },
}

/// Why a forward was refused; the text goes to the client and the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The key carries `no-port-forwarding` or `restrict`.
    #[error("port forwarding is disabled for this key (no-port-forwarding or restrict)")]
    KeyForbids,
    /// The key's `permitopen=` list does not name the target.
    #[error("{0} is not in this key's permitopen list")]
    NotPermitted(String),
    /// The target is outside the user's host.
    #[error("{0} is outside your host; forwards reach only localhost (your host) and its ports")]
    OutsideHost(String),
    /// Port 0 or beyond 65535.
    #[error("invalid port {0}")]
    BadPort(u32),
    /// A socket path other than the Docker socket.
    #[error("only your host's Docker socket can be forwarded (/var/run/docker.sock), not {0}")]
    NotTheDockerSocket(String),
}

/// Decides a `direct-tcpip` request for `host:port` by `user`.
///
/// `allowed` holds the operator's extra `HOST:PORT` patterns
/// (`ssh.tcp_forward_allow`); `*` matches any port.
pub fn decide_tcp(
    user: &UserName,
    permissions: &Permissions,
    allowed: &[String],
    host: &str,
    port: u32,
) -> Result<TcpTarget, Refusal> {
    if !permissions.port_forwarding {
        return Err(Refusal::KeyForbids);
    }
    let target = display(host, port);
    let Ok(port16) = u16::try_from(port) else {
        return Err(Refusal::BadPort(port));
    };
    if port16 == 0 {
        return Err(Refusal::BadPort(port));
    }
    if let Some(permit_open) = &permissions.permit_open
        && !permit_open.iter().any(|p| pattern_matches(p, host, port16))
    {
        return Err(Refusal::NotPermitted(target));
    }
    if names_the_host(user, host) {
        return Ok(TcpTarget::Host { port: port16 });
    }
    if allowed.iter().any(|p| pattern_matches(p, host, port16)) {
        return Ok(TcpTarget::Allowed {
            host: unbracket(host).to_string(),
            port: port16,
        });
    }
    Err(Refusal::OutsideHost(target))
}

/// Decides a `direct-streamlocal` request for `path`.
pub fn decide_socket(permissions: &Permissions, path: &str) -> Result<(), Refusal> {
    if !permissions.port_forwarding {
        return Err(Refusal::KeyForbids);
    }
    if !command::is_docker_socket_path(path) {
        return Err(Refusal::NotTheDockerSocket(path.to_string()));
    }
    Ok(())
}

/// True if `host` means the user's own host: loopback (inside the host, as
/// sshd on it would read it) or the host's own names.
fn names_the_host(user: &UserName, host: &str) -> bool {
    let host = unbracket(host).trim_end_matches('.');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return ip.is_loopback();
    }
    host.eq_ignore_ascii_case("localhost")
        || host.eq_ignore_ascii_case(user.as_str())
        || host.eq_ignore_ascii_case(&format!("berth-{user}"))
}

/// OpenSSH `permitopen` matching: `HOST:PORT`, `[V6]:PORT`, `*` for any
/// port (or any host); hosts compared literally, never resolved.
fn pattern_matches(pattern: &str, host: &str, port: u16) -> bool {
    let Some((p_host, p_port)) = pattern.rsplit_once(':') else {
        return false;
    };
    let port_ok = p_port == "*" || p_port.parse::<u16>().is_ok_and(|p| p == port);
    let p_host = unbracket(p_host);
    let host_ok = p_host == "*" || p_host.eq_ignore_ascii_case(unbracket(host));
    port_ok && host_ok
}

fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn display(host: &str, port: u32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserName {
        UserName::parse("alice").unwrap()
    }

    fn all() -> Permissions {
        Permissions::unrestricted()
    }

    #[test]
    fn loopback_and_the_hosts_own_names_mean_the_host() {
        for host in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "127.0.0.1",
            "127.3.4.5",
            "::1",
            "[::1]",
            "alice",
            "berth-alice",
        ] {
            assert_eq!(
                decide_tcp(&alice(), &all(), &[], host, 8080),
                Ok(TcpTarget::Host { port: 8080 }),
                "{host}"
            );
        }
    }

    #[test]
    fn everything_else_is_outside_the_host() {
        for host in [
            "bob",
            "berth-bob",
            "172.17.0.1",
            "10.0.0.5",
            "example.com",
            "0.0.0.0",
            "localhost.example.com",
        ] {
            assert!(
                matches!(
                    decide_tcp(&alice(), &all(), &[], host, 80),
                    Err(Refusal::OutsideHost(_))
                ),
                "{host}"
            );
        }
    }

    #[test]
    fn the_operator_can_allow_more() {
        let allowed = ["registry.internal:5000".to_string(), "10.0.0.5:*".into()];
        assert_eq!(
            decide_tcp(&alice(), &all(), &allowed, "registry.internal", 5000),
            Ok(TcpTarget::Allowed {
                host: "registry.internal".into(),
                port: 5000
            })
        );
        assert!(decide_tcp(&alice(), &all(), &allowed, "10.0.0.5", 22).is_ok());
        assert!(decide_tcp(&alice(), &all(), &allowed, "registry.internal", 5001).is_err());
    }

    #[test]
    fn no_port_forwarding_refuses_every_forward() {
        let mut p = all();
        p.port_forwarding = false;
        assert_eq!(
            decide_tcp(&alice(), &p, &[], "localhost", 80),
            Err(Refusal::KeyForbids)
        );
        assert_eq!(
            decide_socket(&p, "/var/run/docker.sock"),
            Err(Refusal::KeyForbids)
        );
    }

    #[test]
    fn permitopen_limits_targets_literally() {
        let mut p = all();
        p.permit_open = Some(vec!["localhost:8080".into(), "[::1]:*".into()]);
        assert!(decide_tcp(&alice(), &p, &[], "localhost", 8080).is_ok());
        assert!(decide_tcp(&alice(), &p, &[], "::1", 9).is_ok());
        assert_eq!(
            decide_tcp(&alice(), &p, &[], "127.0.0.1", 8080),
            Err(Refusal::NotPermitted("127.0.0.1:8080".into()))
        );
        assert!(decide_tcp(&alice(), &p, &[], "localhost", 8081).is_err());
    }

    #[test]
    fn bad_ports_are_refused() {
        assert_eq!(
            decide_tcp(&alice(), &all(), &[], "localhost", 0),
            Err(Refusal::BadPort(0))
        );
        assert_eq!(
            decide_tcp(&alice(), &all(), &[], "localhost", 70000),
            Err(Refusal::BadPort(70000))
        );
    }

    #[test]
    fn only_the_docker_socket_paths_can_be_forwarded() {
        for path in [
            "/var/run/docker.sock",
            "/run/docker.sock",
            "/run/berth/docker.sock",
        ] {
            assert_eq!(decide_socket(&all(), path), Ok(()), "{path}");
        }
        for path in [
            "/run/containerd/containerd.sock",
            "/var/run/../run/docker.sock",
            "/tmp/docker.sock",
        ] {
            assert!(decide_socket(&all(), path).is_err(), "{path}");
        }
    }
}
