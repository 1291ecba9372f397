//! Which environment variables a client may set in its session.

/// Names no client may set, whatever the config says: they change what
/// runs (PATH, loader and shell hooks) or where docker talks (DOCKER_*).
pub fn is_forbidden(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "PATH",
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "PROMPT_COMMAND",
        "IFS",
        "HOME",
        "SHELL",
        "USER",
        "LOGNAME",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PERL5LIB",
        "PERL5OPT",
        "NODE_OPTIONS",
        "GCONV_PATH",
        "HOSTALIASES",
        "*",
    ];
    const PREFIXES: &[&str] = &["LD_", "DOCKER_", "BASH_FUNC_", "GLIBC_", "MALLOC_"];
    let bare = name.trim_end_matches('*');
    EXACT.contains(&name)
        || PREFIXES
            .iter()
            .any(|p| name.starts_with(p) || (!bare.is_empty() && p.starts_with(bare)))
}

/// True if `name` may be set by a client under `allow` (entries ending in
/// `*` match a prefix).
pub fn is_allowed(name: &str, allow: &[String]) -> bool {
    if name.is_empty() || name.contains('=') || name.contains('\0') || is_forbidden(name) {
        return false;
    }
    allow.iter().any(|pattern| match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Vec<String> {
        crate::config::SshConfig::default().env_allow
    }

    #[test]
    fn locale_and_terminal_variables_pass() {
        for name in ["LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM", "COLORTERM"] {
            assert!(is_allowed(name, &defaults()), "{name}");
        }
    }

    #[test]
    fn dangerous_variables_never_pass_even_when_allowed() {
        let everything = vec!["*".to_string(), "LD_*".into(), "PATH".into()];
        for name in [
            "PATH",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "DOCKER_HOST",
            "BASH_ENV",
        ] {
            assert!(!is_allowed(name, &everything), "{name}");
        }
    }

    #[test]
    fn unlisted_variables_do_not_pass() {
        assert!(!is_allowed("FOO", &defaults()));
        assert!(!is_allowed("LANG=x", &defaults()));
    }

    #[test]
    fn wide_patterns_are_forbidden_in_config() {
        assert!(is_forbidden("*"));
        assert!(is_forbidden("L*"));
        assert!(is_forbidden("DOCKER_*"));
        assert!(!is_forbidden("LC_*"));
    }
}
