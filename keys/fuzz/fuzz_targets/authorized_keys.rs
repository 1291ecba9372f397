//! Arbitrary bytes into every parser of untrusted text in `berth-keys`:
//! the strict and lenient authorized_keys parsers, the options parser, the
//! address patterns, expiry times, user names and the revoked-keys list.
//! None may panic; the lenient view must never keep more keys than exist.

#![no_main]

use std::net::IpAddr;
use std::path::Path;
use std::time::SystemTime;

use berth_keys::{
    AuthorizedKeys, HostPatterns, KeyOptions, RevocationList, UserName, parse_expiry_time,
    parse_lenient, parse_strict,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let strict = parse_strict(data);
    let (lenient, _) = parse_lenient(data);
    if let Ok(strict) = &strict {
        // Whatever strict accepts, lenient accepts identically.
        assert_eq!(strict, &lenient);
    }
    let keys = AuthorizedKeys::parse_lenient(data, "fuzz");
    let peer: IpAddr = [10, 0, 0, 1].into();
    for entry in keys.entries() {
        let _ = keys.authorize(entry.public_key(), peer, SystemTime::now());
        let _ = entry.to_string();
    }

    let text = String::from_utf8_lossy(data);
    let _ = KeyOptions::parse(&text);
    if let Ok(patterns) = HostPatterns::parse(&text) {
        let _ = patterns.matches(peer);
        let _ = patterns.matches("fd00::1".parse().unwrap_or(peer));
    }
    let _ = parse_expiry_time(&text);
    let _ = UserName::parse(&text);
    let _ = RevocationList::parse(data, Path::new("fuzz"));
});
