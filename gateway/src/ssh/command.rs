//! Recognises exec commands that berth serves itself instead of running
//! them in the host: `docker system dial-stdio`, as the docker CLI sends it
//! for `DOCKER_HOST=ssh://`.

/// Socket paths inside a host that mean "the host's Docker engine".
pub const DOCKER_SOCKET_PATHS: &[&str] = &[
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/berth/docker.sock",
];

/// True if `path` names the host's Docker socket.
pub fn is_docker_socket_path(path: &str) -> bool {
    DOCKER_SOCKET_PATHS.contains(&path)
}

/// What an exec request's command turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// `docker [--host=unix://SOCK] system dial-stdio` for the host's own socket.
    DialStdio,
    /// `docker … system dial-stdio` naming some other socket: refused.
    DialStdioElsewhere(String),
    /// Anything else: run by the user's shell in the host.
    Shell(String),
}

/// Classifies an exec request's command line (parsed as POSIX shell words).
pub fn classify(command: &str) -> Command {
    let Ok(words) = shell_words::split(command) else {
        return Command::Shell(command.to_string());
    };
    let mut words = words.iter().map(String::as_str);
    if words.next() != Some("docker") {
        return Command::Shell(command.to_string());
    }
    let mut host: Option<String> = None;
    let mut rest = Vec::new();
    while let Some(word) = words.next() {
        if let Some(value) = word.strip_prefix("--host=") {
            host = Some(value.to_string());
        } else if word == "--host" || word == "-H" {
            host = words.next().map(str::to_string);
        } else {
            rest.push(word);
        }
    }
    if rest != ["system", "dial-stdio"] {
        return Command::Shell(command.to_string());
    }
    match host {
        None => Command::DialStdio,
        Some(h) => match h.strip_prefix("unix://") {
            Some(path) if is_docker_socket_path(path) => Command::DialStdio,
            _ => Command::DialStdioElsewhere(h),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_docker_cli_forms_are_dial_stdio() {
        assert_eq!(classify("docker system dial-stdio"), Command::DialStdio);
        assert_eq!(
            classify("'docker' 'system' 'dial-stdio'"),
            Command::DialStdio
        );
        assert_eq!(
            classify("docker --host=unix:///var/run/docker.sock system dial-stdio"),
            Command::DialStdio
        );
        assert_eq!(
            classify("docker -H unix:///run/berth/docker.sock system dial-stdio"),
            Command::DialStdio
        );
    }

    #[test]
    fn other_sockets_are_refused() {
        assert_eq!(
            classify("docker --host=unix:///etc/passwd system dial-stdio"),
            Command::DialStdioElsewhere("unix:///etc/passwd".into())
        );
        assert!(matches!(
            classify("docker -H tcp://10.0.0.1:2375 system dial-stdio"),
            Command::DialStdioElsewhere(_)
        ));
    }

    #[test]
    fn everything_else_runs_in_the_shell() {
        assert_eq!(
            classify("docker info"),
            Command::Shell("docker info".into())
        );
        assert_eq!(
            classify("docker system dial-stdio; rm -rf /"),
            Command::Shell("docker system dial-stdio; rm -rf /".into())
        );
        assert_eq!(
            classify("echo 'unterminated"),
            Command::Shell("echo 'unterminated".into())
        );
    }
}
