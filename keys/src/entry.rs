//! One line of an authorized_keys file: `[options] keytype base64 [comment]`,
//! parsed strictly (every problem is an error naming the line) or leniently
//! (broken lines are reported and skipped).

use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{self, Algorithm, Fingerprint, HashAlg, PublicKey};

use crate::options::{KeyOptions, OptionsError, split_options_field};

/// Longest accepted line, in bytes. The largest RSA key OpenSSH makes
/// (16384 bits) with a long options field fits easily.
pub const MAX_LINE_LEN: usize = 16 * 1024;

/// Smallest RSA modulus accepted, in bits (OpenSSH's `RequiredRSASize`).
pub const MIN_RSA_BITS: u32 = 1024;
/// Largest RSA modulus accepted, in bits (OpenSSH's limit).
pub const MAX_RSA_BITS: u32 = 16384;

/// Key types accepted in authorized_keys files, as written in the file.
pub const ACCEPTED_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Whether berth accepts user keys (and CA keys) of this algorithm: Ed25519,
/// ECDSA on NIST P-256/384/521, RSA and the FIDO security-key variants of
/// Ed25519 and ECDSA P-256. DSA and unknown algorithms are refused.
///
/// Which RSA *signature* hash a client may use (no SHA-1 `ssh-rsa`) is the
/// server's decision, not this function's.
pub fn key_algorithm_allowed(algorithm: &Algorithm) -> bool {
    matches!(
        algorithm,
        Algorithm::Ed25519
            | Algorithm::Ecdsa { .. }
            | Algorithm::Rsa { .. }
            | Algorithm::SkEd25519
            | Algorithm::SkEcdsaSha2NistP256
    )
}

/// Why one line could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// The line is longer than [`MAX_LINE_LEN`].
    #[error("line too long ({len} bytes; at most {max})", max = MAX_LINE_LEN)]
    TooLong {
        /// Length of the line in bytes.
        len: usize,
    },
    /// The line is not UTF-8 text.
    #[error("not UTF-8 text (is this a binary file or a private key?)")]
    NotUtf8,
    /// The line contains control characters other than tab.
    #[error("contains control characters (is this a binary file?)")]
    ControlCharacters,
    /// The options field is malformed.
    #[error("{0}")]
    Options(#[from] OptionsError),
    /// There are options but no key after them.
    #[error("no public key after the options")]
    MissingKey,
    /// The key type is not one berth knows.
    #[error(
        "unknown key type '{0}' (expected one of: ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa, sk-ssh-ed25519@openssh.com, sk-ecdsa-sha2-nistp256@openssh.com)"
    )]
    UnknownKeyType(String),
    /// The key type is known but not accepted.
    #[error("key type '{key_type}' is not accepted: {why}")]
    RefusedKeyType {
        /// The key type as written.
        key_type: String,
        /// Why it is refused and what to do instead.
        why: &'static str,
    },
    /// The key type is not followed by any key data.
    #[error("key type '{0}' is not followed by base64 key data")]
    MissingKeyData(String),
    /// The key data is not valid base64.
    #[error("key data is not valid base64")]
    BadBase64,
    /// The key data decodes but is cut short or corrupt.
    #[error("key data is truncated or corrupt ({0})")]
    BadKeyData(String),
    /// The text says one key type and the data holds another.
    #[error("key type '{0}' does not match the type inside the key data")]
    TypeMismatch(String),
    /// An RSA key outside the accepted sizes.
    #[error("RSA key of {0} bits is not accepted (use {min}-{max} bits)", min = MIN_RSA_BITS, max = MAX_RSA_BITS)]
    RsaSize(u32),
}

/// A [`LineError`] together with the 1-based line it happened on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct ParseError {
    /// 1-based line number in the input.
    pub line: usize,
    /// What is wrong with that line.
    pub error: LineError,
}

/// One public key with its options, as written on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    text: String,
    options_field: String,
    options: KeyOptions,
    key: PublicKey,
}

impl KeyEntry {
    /// Parses one line (without its line ending) strictly.
    ///
    /// Blank and comment lines are an error here ([`LineError::MissingKey`]);
    /// use [`parse_strict`] for whole files.
    pub fn parse(line: &str) -> Result<KeyEntry, LineError> {
        check_text(line.as_bytes())?;
        let text = line.trim();
        if text.is_empty() || text.starts_with('#') {
            return Err(LineError::MissingKey);
        }
        parse_entry(text)
    }

    /// The public key, with the line's comment as its comment.
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }

    /// The key's SHA-256 fingerprint (`SHA256:…`, as `ssh-keygen -l` shows).
    pub fn fingerprint(&self) -> Fingerprint {
        self.key.fingerprint(HashAlg::Sha256)
    }

    /// The comment after the key, or `""`.
    pub fn comment(&self) -> &str {
        self.key.comment().as_str_lossy()
    }

    /// The parsed options.
    pub fn options(&self) -> &KeyOptions {
        &self.options
    }

    /// The line as written (trimmed, without line ending); this is what the
    /// store writes back, so hand-written options survive unchanged.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The options field as written (`""` when there is none).
    pub fn options_text(&self) -> &str {
        &self.options_field
    }

    /// Whether `other` is the same key, ignoring comment and options.
    pub fn same_key(&self, other: &PublicKey) -> bool {
        self.key.key_data() == other.key_data()
    }
}

/// One line for listings: `SHA256:… keytype comment`, then the options as
/// written, if any, in square brackets.
impl std::fmt::Display for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.fingerprint(), self.key.algorithm())?;
        if !self.comment().is_empty() {
            write!(f, " {}", self.comment())?;
        }
        if !self.options_field.is_empty() {
            write!(f, " [{}]", self.options_field)?;
        }
        Ok(())
    }
}

/// Parses a whole authorized_keys text strictly: every non-blank,
/// non-comment line must be a valid entry, or the first bad line is returned.
/// Lines may end in LF or CRLF.
pub fn parse_strict(input: &[u8]) -> Result<Vec<KeyEntry>, ParseError> {
    let mut entries = Vec::new();
    for (number, line) in split_lines(input) {
        match classify(line) {
            Ok(Some(text)) => entries.push(parse_entry(text).map_err(|error| ParseError {
                line: number,
                error,
            })?),
            Ok(None) => {}
            Err(error) => {
                return Err(ParseError {
                    line: number,
                    error,
                });
            }
        }
    }
    Ok(entries)
}

/// Parses a whole authorized_keys text leniently: good lines become entries,
/// bad lines are returned as errors beside them for the caller to report.
pub fn parse_lenient(input: &[u8]) -> (Vec<KeyEntry>, Vec<ParseError>) {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (number, line) in split_lines(input) {
        match classify(line).and_then(|t| t.map(parse_entry).transpose()) {
            Ok(Some(entry)) => entries.push(entry),
            Ok(None) => {}
            Err(error) => errors.push(ParseError {
                line: number,
                error,
            }),
        }
    }
    (entries, errors)
}

/// Splits into `(1-based number, line)` pairs, dropping a final `\r`.
pub(crate) fn split_lines(input: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let input = input.strip_suffix(b"\n").unwrap_or(input);
    let empty = input.is_empty();
    input
        .split(|&b| b == b'\n')
        .filter(move |_| !empty)
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
}

/// `Ok(None)` for blank and comment lines, `Ok(Some(trimmed))` for lines that
/// should hold a key.
pub(crate) fn classify(line: &[u8]) -> Result<Option<&str>, LineError> {
    let text = check_text(line)?.trim();
    if text.is_empty() || text.starts_with('#') {
        Ok(None)
    } else {
        Ok(Some(text))
    }
}

fn check_text(line: &[u8]) -> Result<&str, LineError> {
    if line.len() > MAX_LINE_LEN {
        return Err(LineError::TooLong { len: line.len() });
    }
    let text = std::str::from_utf8(line).map_err(|_| LineError::NotUtf8)?;
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(LineError::ControlCharacters);
    }
    Ok(text)
}

fn is_key_type_word(word: &str) -> bool {
    ACCEPTED_KEY_TYPES.contains(&word)
        || word == "ssh-dss"
        || word.ends_with("-cert-v01@openssh.com")
}

fn first_word(s: &str) -> &str {
    s.split([' ', '\t']).next().unwrap_or("")
}

/// Parses a trimmed, non-empty, non-comment line.
fn parse_entry(text: &str) -> Result<KeyEntry, LineError> {
    let first = first_word(text);
    let (options_field, options, key_part) = if is_key_type_word(first) {
        ("", KeyOptions::default(), text)
    } else {
        let (field, rest) = split_options_field(text)?;
        if rest.is_empty() {
            // A lone word: more likely a mangled key than an options field.
            return Err(if field.contains(['=', ',']) {
                LineError::MissingKey
            } else {
                LineError::UnknownKeyType(field.to_owned())
            });
        }
        let next = first_word(rest);
        if !is_key_type_word(next) && !field.contains(['=', ',', '"']) && looks_like_base64(next) {
            // `foo AAAA… comment`: an unknown key type, not an option.
            return Err(LineError::UnknownKeyType(field.to_owned()));
        }
        (field, KeyOptions::parse(field)?, rest)
    };
    let key = parse_key(key_part)?;
    Ok(KeyEntry {
        text: text.to_owned(),
        options_field: options_field.to_owned(),
        options,
        key,
    })
}

fn looks_like_base64(word: &str) -> bool {
    word.len() >= 16
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

/// Parses `keytype base64 [comment]`.
pub(crate) fn parse_key(key_part: &str) -> Result<PublicKey, LineError> {
    let key_part = key_part.trim();
    let (key_type, rest) = key_part.split_once([' ', '\t']).unwrap_or((key_part, ""));
    let rest = rest.trim_start();
    let (data, comment) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
    let comment = comment.trim();

    if key_type == "ssh-dss" {
        return Err(LineError::RefusedKeyType {
            key_type: key_type.to_owned(),
            why: "DSA keys are insecure and no longer supported by OpenSSH; make an Ed25519 key with `ssh-keygen -t ed25519`",
        });
    }
    if key_type.ends_with("-cert-v01@openssh.com") {
        return Err(LineError::RefusedKeyType {
            key_type: key_type.to_owned(),
            why: "a certificate is not a key; add the plain public key, or trust the CA that signed it (--trusted-user-ca)",
        });
    }
    if !ACCEPTED_KEY_TYPES.contains(&key_type) {
        return Err(LineError::UnknownKeyType(key_type.to_owned()));
    }
    if data.is_empty() {
        return Err(LineError::MissingKeyData(key_type.to_owned()));
    }
    if data.len() % 4 != 0
        || !looks_like_base64(data)
        || data.trim_end_matches('=').contains('=')
        || data.len() - data.trim_end_matches('=').len() > 2
    {
        return Err(LineError::BadBase64);
    }
    let mut key =
        PublicKey::from_openssh(&format!("{key_type} {data}")).map_err(map_key_error(key_type))?;
    if !key_algorithm_allowed(&key.algorithm()) {
        return Err(LineError::TypeMismatch(key_type.to_owned()));
    }
    if let KeyData::Rsa(rsa) = key.key_data() {
        let bits = rsa.key_size();
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(LineError::RsaSize(bits));
        }
    }
    key.set_comment(comment);
    Ok(key)
}

fn map_key_error(key_type: &str) -> impl FnOnce(ssh_key::Error) -> LineError + '_ {
    move |e| match e {
        ssh_key::Error::Encoding(ssh_key::encoding::Error::Base64(_)) => LineError::BadBase64,
        ssh_key::Error::AlgorithmUnknown => LineError::TypeMismatch(key_type.to_owned()),
        ssh_key::Error::Encoding(
            ssh_key::encoding::Error::Length | ssh_key::encoding::Error::Overflow,
        ) => LineError::BadKeyData("data ends early".to_owned()),
        ssh_key::Error::Encoding(ssh_key::encoding::Error::TrailingData { remaining }) => {
            LineError::BadKeyData(format!("{remaining} unexpected bytes after the key"))
        }
        other => LineError::BadKeyData(other.to_string()),
    }
}
