//! The options field of an authorized_keys line (`from=`, `expiry-time=`,
//! `restrict`, `no-pty`, `command=` …) and the address patterns used by
//! `from=` and by certificates' `source-address`.
//!
//! Parsing follows sshd(8)'s AUTHORIZED_KEYS FILE FORMAT: option names are
//! case-insensitive, values are double-quoted with `\"` as the only escape,
//! options apply in order (so `restrict,pty` re-enables the pty).

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

/// A malformed options field or option value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// A `"` was opened and never closed.
    #[error("unterminated quoted string in options")]
    UnterminatedQuote,
    /// Something other than `,` or the end followed a quoted value.
    #[error("unexpected text after the quoted value of option '{0}'")]
    TextAfterQuote(String),
    /// An option that needs a value has none, or it is not quoted.
    #[error("option '{0}' needs a double-quoted value, e.g. {0}=\"…\"")]
    MissingValue(String),
    /// A flag option was given a value.
    #[error("option '{0}' takes no value")]
    UnexpectedValue(String),
    /// Two commas in a row, or a trailing comma.
    #[error("empty option in options list")]
    EmptyOption,
    /// An option that may only appear once appeared twice.
    #[error("option '{0}' given more than once")]
    Duplicate(String),
    /// `expiry-time` is not `YYYYMMDD[HHMM[SS]]`.
    #[error("bad expiry-time \"{0}\": use YYYYMMDD, YYYYMMDDHHMM or YYYYMMDDHHMMSS (UTC)")]
    BadExpiry(String),
    /// A pattern list (`from=`, `source-address`) is malformed.
    #[error("bad address pattern \"{pattern}\": {why}")]
    BadPattern {
        /// The offending element of the list.
        pattern: String,
        /// What is wrong with it.
        why: String,
    },
    /// `environment=` is not `NAME=value`.
    #[error("bad environment=\"{0}\": use NAME=value")]
    BadEnvironment(String),
    /// The options contain control characters.
    #[error("options contain control characters")]
    ControlCharacters,
}

/// The parsed options of one authorized_keys entry.
///
/// The flags hold the result of applying the options in order, starting from
/// everything permitted; the server should still AND them with its own
/// configuration (e.g. agent forwarding is off unless configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyOptions {
    /// `from="pattern-list"`: the peer address must match.
    pub from: Option<HostPatterns>,
    /// `expiry-time="YYYYMMDD[HHMM[SS]]"`, read as UTC (OpenSSH reads it in
    /// the server's local time; berth's server time is UTC). The key is
    /// refused after this instant. If given twice, the earlier one counts.
    pub expiry_time: Option<SystemTime>,
    /// Port forwarding (`no-port-forwarding`, `restrict`, `port-forwarding`).
    pub port_forwarding: bool,
    /// Pseudo-terminal allocation (`no-pty`, `restrict`, `pty`).
    pub pty: bool,
    /// Agent forwarding (`no-agent-forwarding`, `restrict`, `agent-forwarding`).
    pub agent_forwarding: bool,
    /// X11 forwarding (`no-X11-forwarding`, `restrict`, `X11-forwarding`).
    pub x11_forwarding: bool,
    /// `command="…"`: the command forced for every session of this key.
    pub command: Option<String>,
    /// `environment="NAME=value"` entries, in file order.
    pub environment: Vec<String>,
    /// `permitopen="host:port"` entries; `None` when there are none (no
    /// restriction beyond `port_forwarding`).
    pub permit_open: Option<Vec<String>>,
    /// Options berth recognises but cannot honour and that would restrict the
    /// key (`cert-authority`, `verify-required`): an entry carrying one of
    /// these never authorizes a login, so it fails closed.
    pub unsupported: Vec<String>,
    /// Option names berth does not know. They are kept in the file and
    /// reported, but otherwise ignored.
    pub unknown: Vec<String>,
}

impl Default for KeyOptions {
    fn default() -> Self {
        KeyOptions {
            from: None,
            expiry_time: None,
            port_forwarding: true,
            pty: true,
            agent_forwarding: true,
            x11_forwarding: true,
            command: None,
            environment: Vec::new(),
            permit_open: None,
            unsupported: Vec::new(),
            unknown: Vec::new(),
        }
    }
}

/// One `name` or `name="value"` item of an options field.
struct RawOption {
    name: String,
    value: Option<String>,
}

impl KeyOptions {
    /// Parses an options field (the text before the key type, without the
    /// separating whitespace). The empty string gives the defaults.
    pub fn parse(field: &str) -> Result<KeyOptions, OptionsError> {
        let mut opts = KeyOptions::default();
        if field.is_empty() {
            return Ok(opts);
        }
        if field.chars().any(char::is_control) {
            return Err(OptionsError::ControlCharacters);
        }
        for raw in split_options(field)? {
            opts.apply(raw)?;
        }
        Ok(opts)
    }

    fn apply(&mut self, raw: RawOption) -> Result<(), OptionsError> {
        let RawOption { name, value } = raw;
        let lower = name.to_ascii_lowercase();
        let flag = |v: &Option<String>| match v {
            Some(_) => Err(OptionsError::UnexpectedValue(name.clone())),
            None => Ok(()),
        };
        let needs = |v: Option<String>| v.ok_or_else(|| OptionsError::MissingValue(name.clone()));
        match lower.as_str() {
            "restrict" => {
                flag(&value)?;
                self.port_forwarding = false;
                self.pty = false;
                self.agent_forwarding = false;
                self.x11_forwarding = false;
            }
            "no-port-forwarding" | "port-forwarding" => {
                flag(&value)?;
                self.port_forwarding = !lower.starts_with("no-");
            }
            "no-pty" | "pty" => {
                flag(&value)?;
                self.pty = !lower.starts_with("no-");
            }
            "no-agent-forwarding" | "agent-forwarding" => {
                flag(&value)?;
                self.agent_forwarding = !lower.starts_with("no-");
            }
            "no-x11-forwarding" | "x11-forwarding" => {
                flag(&value)?;
                self.x11_forwarding = !lower.starts_with("no-");
            }
            // Meaningless here (no ~/.ssh/rc, no touch/PIN flag checks on
            // security-key signatures, no tun forwarding, no remote forwarding).
            "no-user-rc" | "user-rc" | "no-touch-required" => flag(&value)?,
            "tunnel" | "permitlisten" | "principals" => {
                needs(value)?;
            }
            "cert-authority" | "verify-required" => {
                flag(&value)?;
                self.unsupported.push(lower);
            }
            "command" => {
                let v = needs(value)?;
                if self.command.is_some() {
                    return Err(OptionsError::Duplicate(name));
                }
                self.command = Some(v);
            }
            "environment" => {
                let v = needs(value)?;
                match v.split_once('=') {
                    Some((n, _))
                        if !n.is_empty()
                            && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
                    {
                        self.environment.push(v)
                    }
                    _ => return Err(OptionsError::BadEnvironment(v)),
                }
            }
            "from" => {
                let v = needs(value)?;
                if self.from.is_some() {
                    return Err(OptionsError::Duplicate(name));
                }
                self.from = Some(HostPatterns::parse(&v)?);
            }
            "expiry-time" => {
                let v = needs(value)?;
                let t = parse_expiry_time(&v)?;
                self.expiry_time = Some(match self.expiry_time {
                    Some(old) if old < t => old,
                    _ => t,
                });
            }
            "permitopen" => {
                let v = needs(value)?;
                self.permit_open.get_or_insert_with(Vec::new).push(v);
            }
            _ => self.unknown.push(name),
        }
        Ok(())
    }
}

/// Splits an options field into its items, honouring quotes.
fn split_options(field: &str) -> Result<Vec<RawOption>, OptionsError> {
    let mut out = Vec::new();
    let mut rest = field;
    loop {
        let name_end = rest.find([',', '=']).unwrap_or(rest.len());
        let name = &rest[..name_end];
        if name.is_empty() {
            return Err(OptionsError::EmptyOption);
        }
        rest = &rest[name_end..];
        let mut value = None;
        if let Some(after_eq) = rest.strip_prefix('=') {
            let Some(quoted) = after_eq.strip_prefix('"') else {
                return Err(OptionsError::MissingValue(name.to_owned()));
            };
            let (v, after) = take_quoted(quoted)?;
            value = Some(v);
            rest = after;
            if !rest.is_empty() && !rest.starts_with(',') {
                return Err(OptionsError::TextAfterQuote(name.to_owned()));
            }
        }
        out.push(RawOption {
            name: name.to_owned(),
            value,
        });
        match rest.strip_prefix(',') {
            Some(r) => {
                if r.is_empty() {
                    return Err(OptionsError::EmptyOption);
                }
                rest = r;
            }
            None => return Ok(out),
        }
    }
}

/// Reads a quoted value whose opening quote is already consumed; returns the
/// dequoted value and the text after the closing quote.
fn take_quoted(s: &str) -> Result<(String, &str), OptionsError> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &s[i + 1..])),
            '\\' if s[i + 1..].starts_with('"') => {
                chars.next();
                value.push('"');
            }
            c => value.push(c),
        }
    }
    Err(OptionsError::UnterminatedQuote)
}

/// Finds where the options field of an authorized_keys line ends: the first
/// space or tab outside double quotes. Returns `(options, rest)`.
pub(crate) fn split_options_field(line: &str) -> Result<(&str, &str), OptionsError> {
    let bytes = line.as_bytes();
    let mut quoted = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted && bytes.get(i + 1) == Some(&b'"') => i += 1,
            b'"' => quoted = !quoted,
            b' ' | b'\t' if !quoted => return Ok((&line[..i], line[i..].trim_start())),
            _ => {}
        }
        i += 1;
    }
    if quoted {
        Err(OptionsError::UnterminatedQuote)
    } else {
        Ok((line, ""))
    }
}

/// Parses `YYYYMMDD[HHMM[SS]]` (optionally ending in `Z`) as a UTC instant.
pub fn parse_expiry_time(s: &str) -> Result<SystemTime, OptionsError> {
    let bad = || OptionsError::BadExpiry(s.to_owned());
    let digits = s.strip_suffix(['Z', 'z']).unwrap_or(s);
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, OptionsError> {
        match digits.get(r) {
            Some(d) if !d.is_empty() => d.parse().map_err(|_| bad()),
            _ => Ok(0),
        }
    };
    let year = i32::try_from(num(0..4)?).map_err(|_| bad())?;
    let month = u8::try_from(num(4..6)?).map_err(|_| bad())?;
    let day = u8::try_from(num(6..8)?).map_err(|_| bad())?;
    let (hour, minute, second) = (num(8..10)?, num(10..12)?, num(12..14)?);
    let month = time::Month::try_from(month).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(year, month, day).map_err(|_| bad())?;
    let clock = time::Time::from_hms(
        u8::try_from(hour).map_err(|_| bad())?,
        u8::try_from(minute).map_err(|_| bad())?,
        u8::try_from(second).map_err(|_| bad())?,
    )
    .map_err(|_| bad())?;
    let secs = time::PrimitiveDateTime::new(date, clock)
        .assume_utc()
        .unix_timestamp();
    let instant = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    instant.ok_or_else(bad)
}

/// One element of a [`HostPatterns`] list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// An address or CIDR block.
    Net(IpNet),
    /// A `*`/`?` wildcard matched against the textual address (lowercase).
    Glob(String),
}

/// An OpenSSH `from=` pattern list: comma-separated addresses, CIDR blocks
/// (IPv4 and IPv6) and `*`/`?` wildcards, each optionally negated with `!`.
///
/// A peer is accepted when some positive pattern matches and no negated one
/// does. berth does not resolve peer names (like sshd's default
/// `UseDNS no`), so host-name patterns such as `*.example.com` never match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPatterns {
    patterns: Vec<(bool, Pattern)>,
}

impl HostPatterns {
    /// Parses a pattern list such as `10.0.0.0/8,!10.1.2.3,192.168.*,::1`.
    ///
    /// CIDR blocks with bits set beyond the prefix (`10.0.0.1/8`) are refused,
    /// as by OpenSSH, so that a typo cannot silently widen the block.
    pub fn parse(list: &str) -> Result<HostPatterns, OptionsError> {
        let mut patterns = Vec::new();
        for element in list.split(',') {
            let bad = |why: &str| OptionsError::BadPattern {
                pattern: element.to_owned(),
                why: why.to_owned(),
            };
            let (negated, body) = match element.strip_prefix('!') {
                Some(b) => (true, b),
                None => (false, element),
            };
            if body.is_empty() {
                return Err(bad("empty pattern"));
            }
            if body.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad("contains whitespace"));
            }
            let pattern = if let Ok(addr) = body.parse::<IpAddr>() {
                Pattern::Net(IpNet::from(normalise(addr)))
            } else if body.contains('/') {
                let net: IpNet = body
                    .parse()
                    .map_err(|_| bad("not a valid CIDR block (e.g. 10.0.0.0/8, fd00::/8)"))?;
                if net.addr() != net.network() {
                    return Err(bad(&format!(
                        "host bits set beyond the prefix; did you mean {}?",
                        net.trunc()
                    )));
                }
                Pattern::Net(net)
            } else {
                Pattern::Glob(body.to_ascii_lowercase())
            };
            patterns.push((negated, pattern));
        }
        Ok(HostPatterns { patterns })
    }

    /// Whether `peer` is accepted by the list (see the type's docs).
    pub fn matches(&self, peer: IpAddr) -> bool {
        let peer = normalise(peer);
        let text = peer.to_string();
        let mut accepted = false;
        for (negated, pattern) in &self.patterns {
            let hit = match pattern {
                Pattern::Net(net) => net.contains(&peer),
                Pattern::Glob(glob) => glob_match(glob.as_bytes(), text.as_bytes()),
            };
            if hit && *negated {
                return false;
            }
            accepted |= hit;
        }
        accepted
    }
}

/// Parses a certificate `source-address` list: comma-separated addresses and
/// CIDR blocks only (no wildcards, no negation), as OpenSSH requires.
pub(crate) fn parse_cidr_list(list: &str) -> Result<Vec<IpNet>, OptionsError> {
    list.split(',')
        .map(|element| {
            let bad = |why: &str| OptionsError::BadPattern {
                pattern: element.to_owned(),
                why: why.to_owned(),
            };
            if let Ok(addr) = element.parse::<IpAddr>() {
                return Ok(IpNet::from(normalise(addr)));
            }
            let net: IpNet = element
                .parse()
                .map_err(|_| bad("not an address or CIDR block"))?;
            if net.addr() != net.network() {
                return Err(bad("host bits set beyond the prefix"));
            }
            Ok(net)
        })
        .collect()
}

/// Treats an IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, what a dual-stack
/// listener reports) as the IPv4 address it is.
pub(crate) fn normalise(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => addr,
        },
        v4 => v4,
    }
}

/// `*` matches any run (also empty), `?` any one character; case must
/// already be folded. Iterative with one backtrack point, so it is linear
/// in practice and never recurses.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_permit_everything() {
        let o = KeyOptions::parse("").unwrap();
        assert!(o.port_forwarding && o.pty && o.agent_forwarding && o.x11_forwarding);
        assert_eq!(o.command, None);
    }

    #[test]
    fn restrict_then_reenable_in_order() {
        let o = KeyOptions::parse("restrict,pty,port-forwarding").unwrap();
        assert!(o.pty && o.port_forwarding && !o.agent_forwarding && !o.x11_forwarding);
        let o = KeyOptions::parse("pty,restrict").unwrap();
        assert!(!o.pty);
        let o =
            KeyOptions::parse("no-pty,No-Port-Forwarding,no-agent-forwarding,no-X11-forwarding")
                .unwrap();
        assert!(!o.pty && !o.port_forwarding && !o.agent_forwarding && !o.x11_forwarding);
        let o = KeyOptions::parse("restrict,agent-forwarding,X11-forwarding").unwrap();
        assert!(o.agent_forwarding && o.x11_forwarding);
    }

    #[test]
    fn quoted_values_and_escapes() {
        let o = KeyOptions::parse(
            r#"command="echo \"a, b\" c",environment="A=b c",permitopen="h:1",permitopen="h:2""#,
        )
        .unwrap();
        assert_eq!(o.command.as_deref(), Some(r#"echo "a, b" c"#));
        assert_eq!(o.environment, vec!["A=b c".to_owned()]);
        assert_eq!(
            o.permit_open,
            Some(vec!["h:1".to_owned(), "h:2".to_owned()])
        );
    }

    #[test]
    fn unknown_options_are_kept_not_fatal() {
        let o = KeyOptions::parse(r#"frobnicate,zap="x",no-pty"#).unwrap();
        assert_eq!(o.unknown, vec!["frobnicate".to_owned(), "zap".to_owned()]);
        assert!(!o.pty);
    }

    #[test]
    fn malformed_options_are_errors() {
        for bad in [
            r#"command="x"#,
            r#"command=x"#,
            "command",
            "no-pty=\"x\"",
            "a,,b",
            "a,",
            r#"command="a"b"#,
            r#"command="a",command="b""#,
            r#"from="10.0.0.1/8""#,
            r#"from="10.0.0.0/33""#,
            r#"from="a b""#,
            r#"from="""#,
            r#"expiry-time="2020""#,
            r#"expiry-time="20201340""#,
            r#"environment="=x""#,
        ] {
            assert!(KeyOptions::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn cert_authority_and_verify_required_fail_closed() {
        let o = KeyOptions::parse("cert-authority,verify-required").unwrap();
        assert_eq!(o.unsupported, vec!["cert-authority", "verify-required"]);
    }

    #[test]
    fn expiry_time_is_utc() {
        let t = |s| {
            parse_expiry_time(s)
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(t("19700101"), 0);
        assert_eq!(t("20000101"), 946_684_800);
        assert_eq!(t("200001010001"), 946_684_860);
        assert_eq!(t("20000101000102"), 946_684_862);
        assert_eq!(t("20000101000102Z"), 946_684_862);
        assert!(parse_expiry_time("19690101").is_ok());
        for bad in [
            "",
            "2000010",
            "200001011",
            "20000230",
            "20000101246000",
            "2000-1-01",
            "+0000101",
        ] {
            assert!(parse_expiry_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn earliest_expiry_wins() {
        let o = KeyOptions::parse(r#"expiry-time="20300101",expiry-time="20250101""#).unwrap();
        assert_eq!(o.expiry_time, Some(parse_expiry_time("20250101").unwrap()));
    }

    #[test]
    fn from_ipv4_cidr_and_exact() {
        let p = HostPatterns::parse("10.0.0.0/8,192.168.1.7").unwrap();
        assert!(p.matches(ip("10.200.3.4")));
        assert!(p.matches(ip("192.168.1.7")));
        assert!(!p.matches(ip("192.168.1.8")));
        assert!(!p.matches(ip("11.0.0.1")));
        assert!(
            p.matches(ip("::ffff:10.1.1.1")),
            "v4-mapped peers count as v4"
        );
    }

    #[test]
    fn from_ipv6() {
        let p = HostPatterns::parse("fd00::/8,::1").unwrap();
        assert!(p.matches(ip("fd12::5")));
        assert!(p.matches(ip("::1")));
        assert!(!p.matches(ip("fe80::1")));
        assert!(!p.matches(ip("10.0.0.1")));
    }

    #[test]
    fn from_wildcards() {
        let p = HostPatterns::parse("192.168.*,10.0.0.?,FD00:*").unwrap();
        assert!(p.matches(ip("192.168.44.5")));
        assert!(p.matches(ip("10.0.0.7")));
        assert!(!p.matches(ip("10.0.0.17")));
        assert!(p.matches(ip("fd00::9")));
        assert!(!p.matches(ip("172.16.0.1")));
        assert!(
            !HostPatterns::parse("*.example.com")
                .unwrap()
                .matches(ip("1.2.3.4"))
        );
        assert!(HostPatterns::parse("*").unwrap().matches(ip("1.2.3.4")));
    }

    #[test]
    fn from_negation_denies() {
        let p = HostPatterns::parse("10.0.0.0/8,!10.6.6.6").unwrap();
        assert!(p.matches(ip("10.1.1.1")));
        assert!(!p.matches(ip("10.6.6.6")));
        // Negation alone never accepts.
        let p = HostPatterns::parse("!10.6.6.6").unwrap();
        assert!(!p.matches(ip("10.1.1.1")));
        // Order does not matter: a negated match denies.
        let p = HostPatterns::parse("!10.6.*,*").unwrap();
        assert!(!p.matches(ip("10.6.0.1")));
        assert!(p.matches(ip("10.7.0.1")));
    }

    #[test]
    fn glob_edge_cases() {
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a*b*c", b"axxbyyc"));
        assert!(!glob_match(b"a*b*c", b"axxbyy"));
        assert!(glob_match(b"**?", b"x"));
        assert!(!glob_match(b"?", b""));
        let long = vec![b'a'; 5000];
        assert!(!glob_match(b"*a*a*a*a*b", &long));
    }

    #[test]
    fn cidr_list_for_certificates() {
        let l = parse_cidr_list("10.0.0.0/8,::1").unwrap();
        assert_eq!(l.len(), 2);
        assert!(parse_cidr_list("10.*").is_err());
        assert!(parse_cidr_list("!10.0.0.1").is_err());
        assert!(parse_cidr_list("").is_err());
    }

    #[test]
    fn options_field_split() {
        assert_eq!(
            split_options_field(r#"command="a b",no-pty ssh-ed25519 AAAA c"#).unwrap(),
            (r#"command="a b",no-pty"#, "ssh-ed25519 AAAA c")
        );
        assert_eq!(
            split_options_field(r#"command="a \" b" k"#).unwrap(),
            (r#"command="a \" b""#, "k")
        );
        assert!(split_options_field(r#"command="a b k"#).is_err());
    }
}
