//! Who is using which host right now: the count of open sessions, execs and
//! forwards per user, and when each user's host was last in use.
//!
//! The daemon keeps the counts in memory (idle stop reads them) and mirrors
//! them to `<state>/sessions/<user>` so that the admin CLI, a separate
//! process, can tell whether a host has live sessions before purging it.
//! That directory is not bind-mounted into any host, so a tenant cannot
//! forge it. Each record names the daemon process (pid and start time); a
//! record left by a daemon that is gone counts as no sessions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_keys::UserName;

/// Directory under the state dir holding one session record per user.
pub const SESSIONS_DIR: &str = "sessions";

#[derive(Debug)]
struct Entry {
    active: usize,
    last: Instant,
    last_unix: u64,
    /// An idle stop for this host is under way.
    stopping: bool,
}

/// In-memory session counts, mirrored to the state dir.
#[derive(Debug)]
pub struct Activity {
    dir: PathBuf,
    me: ProcessId,
    users: Mutex<HashMap<UserName, Entry>>,
}

/// Keeps a user's host counted as in use while it lives.
#[must_use = "the host counts as in use only while the guard lives"]
pub struct ActivityGuard {
    activity: Arc<Activity>,
    user: UserName,
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.activity.leave(&self.user);
    }
}

impl Activity {
    /// Tracks activity, mirroring it under `state_dir/sessions`.
    pub fn new(state_dir: &Path) -> Activity {
        Activity {
            dir: state_dir.join(SESSIONS_DIR),
            me: ProcessId::current().unwrap_or(ProcessId { pid: 0, start: 0 }),
            users: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserName, Entry>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one more session, exec or forward of `user` until the guard drops.
    pub fn enter(self: &Arc<Self>, user: &UserName) -> ActivityGuard {
        let mut users = self.lock();
        let entry = users.entry(user.clone()).or_insert_with(Entry::new);
        entry.active += 1;
        entry.touch();
        self.mirror(user, entry);
        ActivityGuard {
            activity: self.clone(),
            user: user.clone(),
        }
    }

    fn leave(&self, user: &UserName) {
        let mut users = self.lock();
        if let Some(entry) = users.get_mut(user) {
            entry.active = entry.active.saturating_sub(1);
            entry.touch();
            self.mirror(user, entry);
        }
    }

    /// Starts the idle clock of a host found running (at adoption), unless
    /// it is tracked already.
    pub fn track(&self, user: &UserName) {
        self.lock().entry(user.clone()).or_insert_with(Entry::new);
    }

    /// Users with no session for at least `timeout` and no stop under way;
    /// marks them as being stopped.
    pub fn take_idle(&self, timeout: Duration) -> Vec<UserName> {
        let mut users = self.lock();
        users
            .iter_mut()
            .filter(|(_, e)| e.active == 0 && !e.stopping && e.last.elapsed() >= timeout)
            .map(|(user, e)| {
                e.stopping = true;
                user.clone()
            })
            .collect()
    }

    /// True while `user` has had no session for `timeout`.
    pub fn is_idle(&self, user: &UserName, timeout: Duration) -> bool {
        self.lock()
            .get(user)
            .is_some_and(|e| e.active == 0 && e.last.elapsed() >= timeout)
    }

    /// Ends an idle stop: an unused host is no longer tracked (it is stopped;
    /// the next session tracks it again).
    pub fn stop_done(&self, user: &UserName, stopped: bool) {
        let mut users = self.lock();
        if let Some(entry) = users.get_mut(user) {
            entry.stopping = false;
            if stopped && entry.active == 0 {
                users.remove(user);
            }
        }
    }

    /// Sessions of `user` counted by this daemon.
    pub fn active(&self, user: &UserName) -> usize {
        self.lock().get(user).map_or(0, |e| e.active)
    }

    /// Writes the user's record (write to a temporary file, then rename, so
    /// a reader never sees half a record). Failing to write only costs the
    /// CLI its view, so it is logged, not fatal.
    fn mirror(&self, user: &UserName, entry: &Entry) {
        let record = SessionRecord {
            daemon: self.me,
            sessions: entry.active,
            last_active_unix: entry.last_unix,
        };
        let path = self.dir.join(user.as_str());
        let tmp = self.dir.join(format!(".{user}.tmp"));
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&tmp, record.to_line()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::debug!("cannot write {}: {e}", path.display());
        }
    }
}

impl Entry {
    fn new() -> Entry {
        let mut entry = Entry {
            active: 0,
            last: Instant::now(),
            last_unix: 0,
            stopping: false,
        };
        entry.touch();
        entry
    }

    fn touch(&mut self) {
        self.last = Instant::now();
        self.last_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
    }
}

/// A process, told apart from a later one that reuses its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pid: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    start: u64,
}

impl ProcessId {
    fn current() -> Option<ProcessId> {
        let pid = std::process::id();
        Some(ProcessId {
            pid,
            start: start_time(pid)?,
        })
    }

    /// True while this process runs.
    pub fn is_alive(&self) -> bool {
        self.pid != 0 && start_time(self.pid) == Some(self.start)
    }
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // fields from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// What a daemon last wrote about a user's sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The daemon that wrote it.
    pub daemon: ProcessId,
    /// Open sessions, execs and forwards.
    pub sessions: usize,
    /// When the host was last entered or left (seconds since the epoch).
    pub last_active_unix: u64,
}

impl SessionRecord {
    fn to_line(&self) -> String {
        format!(
            "pid={} start={} sessions={} last_active={}\n",
            self.daemon.pid, self.daemon.start, self.sessions, self.last_active_unix
        )
    }

    fn parse(line: &str) -> Option<SessionRecord> {
        let mut fields = HashMap::new();
        for word in line.split_whitespace() {
            let (k, v) = word.split_once('=')?;
            fields.insert(k, v.parse::<u64>().ok()?);
        }
        Some(SessionRecord {
            daemon: ProcessId {
                pid: u32::try_from(*fields.get("pid")?).ok()?,
                start: *fields.get("start")?,
            },
            sessions: usize::try_from(*fields.get("sessions")?).ok()?,
            last_active_unix: *fields.get("last_active")?,
        })
    }

    /// Reads `user`'s record under `state_dir`, if a daemon wrote one.
    pub fn read(state_dir: &Path, user: &UserName) -> Option<SessionRecord> {
        let text =
            std::fs::read_to_string(state_dir.join(SESSIONS_DIR).join(user.as_str())).ok()?;
        SessionRecord::parse(&text)
    }

    /// Sessions that are live now: none when the daemon that counted them is gone.
    pub fn live_sessions(&self) -> usize {
        if self.daemon.is_alive() {
            self.sessions
        } else {
            0
        }
    }

    /// When the host was last entered or left.
    pub fn last_active(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.last_active_unix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserName {
        UserName::parse("alice").unwrap()
    }

    #[test]
    fn a_guard_counts_a_session_until_it_drops() {
        let dir = tempfile::tempdir().unwrap();
        let activity = Arc::new(Activity::new(dir.path()));
        let guard = activity.enter(&alice());
        let second = activity.enter(&alice());
        assert_eq!(activity.active(&alice()), 2);
        let record = SessionRecord::read(dir.path(), &alice()).unwrap();
        assert_eq!(record.live_sessions(), 2);
        drop(guard);
        drop(second);
        assert_eq!(activity.active(&alice()), 0);
        let record = SessionRecord::read(dir.path(), &alice()).unwrap();
        assert_eq!(record.live_sessions(), 0);
    }

    #[test]
    fn only_hosts_without_sessions_for_the_timeout_are_idle() {
        let dir = tempfile::tempdir().unwrap();
        let activity = Arc::new(Activity::new(dir.path()));
        let bob = UserName::parse("bob").unwrap();
        let _busy = activity.enter(&alice());
        activity.track(&bob);
        assert!(activity.take_idle(Duration::from_secs(3600)).is_empty());
        assert_eq!(activity.take_idle(Duration::ZERO), vec![bob.clone()]);
        // Once taken, a host is not handed out again while its stop runs.
        assert!(activity.take_idle(Duration::ZERO).is_empty());
        activity.stop_done(&bob, true);
        assert!(!activity.is_idle(&bob, Duration::ZERO));
    }

    #[test]
    fn a_record_from_a_dead_daemon_counts_no_sessions() {
        let record = SessionRecord {
            daemon: ProcessId {
                pid: std::process::id(),
                start: 1,
            },
            sessions: 3,
            last_active_unix: 0,
        };
        let parsed = SessionRecord::parse(&record.to_line()).unwrap();
        assert_eq!(parsed, record);
        assert_eq!(parsed.live_sessions(), 0);
    }
}
