//! Which Docker engine berth talks to.
//!
//! The gateway uses `DOCKER_HOST`, or the default socket, and writes what it
//! uses to `<state>/engine`; the `berth` CLI then reaches the same engine
//! from any shell, without `DOCKER_HOST` (which, when set, still wins).

use std::io;
use std::path::Path;

/// The engine Docker's own clients use when `DOCKER_HOST` is unset.
pub const DEFAULT_ENGINE: &str = "unix:///var/run/docker.sock";

/// File in the state dir naming the gateway's engine.
const ENGINE_FILE: &str = "engine";

/// `DOCKER_HOST` when set and not empty.
fn from_env() -> Option<String> {
    std::env::var("DOCKER_HOST")
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The engine `berth serve` uses: `DOCKER_HOST`, else the default socket.
pub fn for_gateway() -> String {
    from_env().unwrap_or_else(|| DEFAULT_ENGINE.to_string())
}

/// The engine the CLI uses with the state dir `state_dir`: `DOCKER_HOST`,
/// else the one the gateway recorded there, else the default socket.
pub fn for_cli(state_dir: &Path) -> String {
    known_for_cli(state_dir).unwrap_or_else(|| DEFAULT_ENGINE.to_string())
}

/// The engine the CLI can be sure is the gateway's: `DOCKER_HOST`, or the
/// one recorded in `state_dir`; `None` before any gateway ran there.
pub fn known_for_cli(state_dir: &Path) -> Option<String> {
    from_env().or_else(|| recorded(state_dir))
}

/// The engine the gateway recorded in `state_dir`, if any.
pub fn recorded(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(state_dir.join(ENGINE_FILE))
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|engine| !engine.is_empty())
}

/// Records `engine` as the gateway's in `state_dir` (written whole, then
/// renamed into place, so a reader never sees half of it).
pub fn record(state_dir: &Path, engine: &str) -> io::Result<()> {
    let staging = state_dir.join(format!("{ENGINE_FILE}.new"));
    std::fs::write(&staging, format!("{engine}\n"))?;
    std::fs::rename(&staging, state_dir.join(ENGINE_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_engine_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(recorded(dir.path()), None);
        record(dir.path(), "unix:///run/e/docker.sock").unwrap();
        assert_eq!(
            recorded(dir.path()).as_deref(),
            Some("unix:///run/e/docker.sock")
        );
        record(dir.path(), "tcp://10.0.0.1:2375").unwrap();
        assert_eq!(recorded(dir.path()).as_deref(), Some("tcp://10.0.0.1:2375"));
    }

    #[test]
    fn an_empty_record_is_no_record() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ENGINE_FILE), "\n").unwrap();
        assert_eq!(recorded(dir.path()), None);
    }
}
