//! User names: the one vocabulary shared by the store, the SSH login and the
//! names of a user's Docker objects, so it is kept deliberately small.

use std::fmt;

/// Longest accepted user name (the classic Unix login limit).
pub const MAX_USER_NAME_LEN: usize = 32;

/// A validated berth user name: `[a-z_][a-z0-9_-]{0,31}`.
///
/// The rule keeps names safe as path components (`users/<name>/`), as parts
/// of container and volume names (`berth-<name>`) and as SSH login names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(String);

/// A string that is not a valid [`UserName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid user name '{shown}': use 1-32 of a-z, 0-9, '_' and '-', starting with a letter or '_'"
)]
pub struct InvalidUserName {
    /// The refused input, shortened and with control characters escaped so
    /// it is safe to print.
    shown: String,
}

impl UserName {
    /// Checks `name` against `[a-z_][a-z0-9_-]{0,31}`.
    pub fn parse(name: &str) -> Result<UserName, InvalidUserName> {
        let bytes = name.as_bytes();
        let first_ok = matches!(bytes.first(), Some(b'a'..=b'z' | b'_'));
        let rest_ok = bytes
            .iter()
            .skip(1)
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
        if first_ok && rest_ok && bytes.len() <= MAX_USER_NAME_LEN {
            Ok(UserName(name.to_owned()))
        } else {
            let mut shown: String = name
                .chars()
                .take(40)
                .collect::<String>()
                .escape_debug()
                .to_string();
            if name.chars().count() > 40 {
                shown.push('…');
            }
            Err(InvalidUserName { shown })
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for UserName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for UserName {
    type Err = InvalidUserName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        UserName::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["alice", "_svc", "a", "bob-2", "a_b-c9", &"a".repeat(32)] {
            assert_eq!(UserName::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn refuses_everything_else() {
        let long = "a".repeat(200);
        for name in [
            "",
            "../x",
            "Alice",
            "a b",
            "1abc",
            "-x",
            "a/b",
            "a.b",
            "é",
            "ａ",
            "a\0",
            "a\n",
            &long,
            &"a".repeat(33),
        ] {
            let err = UserName::parse(name).unwrap_err();
            assert!(err.to_string().starts_with("invalid user name '"), "{err}");
        }
    }

    #[test]
    fn error_message_says_what_is_allowed() {
        let err = UserName::parse("../x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid user name '../x': use 1-32 of a-z, 0-9, '_' and '-', starting with a letter or '_'"
        );
        let err = UserName::parse(&"x".repeat(200)).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }
}
