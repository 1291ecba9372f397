//! Tests across modules: parsing, the store, authorization and certificates
//! (with fixtures made by the real `ssh-keygen`).

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use russh::keys::ssh_key::HashAlg;

use crate::*;

const ED_ALICE: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAXrbOc9P+5+D1nis3VI7JNmuS7CpQK/OBBnnVVdjYmT alice@laptop";
const ED_BOB: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ4ni+9uv82GUQQIzR14u0RAM5tQndLi0+n7flLmm6fF bob@desk";
const P256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBPTEnupLvSybD9xamsqRB8FmVp9GKsrMKzHTAfW5e1/xTZCg6ajrAiCtTPiBY1qkemRfTh1H3w9XQotPxhlE0io= p256";
const P384: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBN0YN6su4V+CG2TyJk8cAtcK4aL380TsX4zvlFs1XmfcZWcWgcvhseFbTM9RQCFcPjEnSv573O4Du0P0vncn/2nwnemkPRB+cF6U2zj12iopP9q2Z0G9TDlG0P1S70Iy5g== p384";
const P521: &str = "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBAEfivr+EN9bgrttJS1+2hChi3GmCqbXOBTYwGBIS+D99jGXIEXdQZMji/0GAbO4FAkkEMObrWde6Ab1dtVwp9cboQAkTjGwbNuDf7P2ZtGUTNtKO0ZVjD+7gxZX4428WhNDcrROu7n84ZU8Kmq+4ja1ZWow6VvsZy3IqwPo94FnMSxgWw== p521";
const RSA: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDoFIa1qHyTnzDdTui7abIfX5g291cgB/t878yysF3q6439NNqvwDAd66Kqk9DfpXrEaGeRg4MONvfqm+sWfRuR0PGSbZqajAWkn6hscphO53VieZ3iSO++PelZOhcP6LWg5gbQAkBEO4+nQPEG25DiT+p+CkZAM9BCBYPaX3vgT7jK+zXJvuTFAp2OBAw+v48PERcjw5Af62/cO50b/bZvcFMRukOVOcZU2N4ZVTsn7o3T8Vohk7rJNtaGg2v0yAMHu6FwBGLSIg8KtcOv3h78pY9OJnBFn+BmK27AWXJmBasnWq4TOTGfVM3nm7GHhhkbVfrKaX3In+ldPrvYDVnn rsa";
const SK_ED: &str = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAICFo/k5LU8863u66YC9eUO2170QduohPURkQnbLa/dczAAAABHNzaDo= user@example.com";
const SK_ECDSA: &str = "sk-ecdsa-sha2-nistp256@openssh.com AAAAInNrLWVjZHNhLXNoYTItbmlzdHAyNTZAb3BlbnNzaC5jb20AAAAIbmlzdHAyNTYAAABBBIELQJ2DgvaX1yQlKFokfWM2suuaCFI2qp0eJodHyg6O4ifxc3XpRKd1OS8dNYQtE/YjdXSrA+AOnMF5ns2Nkx4AAAAEc3NoOg== user@example.com";
const DSA: &str = "ssh-dss AAAAB3NzaC1kc3MAAACBAKbZGSHG1Tb8bfBVbkMvKzXpl4TCPrWFFQh2ua5msBJRVJHJ+OIKUI1QZ5w0KclN0Bz4hEHT8xhwSqy8cgrfhTeCzCUxkhi1+FaLrz5y4B9CiBvyUcT6WaCdUpi25I/a3aQ7Fq/e7cvAlmaO8HzwaxoKq0Oh3QvW6ep3WgfYM1AAAAAVAO1rbO+ahtGcQbdEZGiKU7LLb8q9AAAAgC5jCbm7wyKbWL3KCpaXNhcjWwEJUamWNwtAOcHBpe9F6HaVXaYDwL8E68tyWvPhwyjOZqFFvvGQ7U5j/eddtUhbgGCz6DPPZ2KYRLKdlWP0UWv+qIg+fqbfeXTQ1O7Kk/fO+TSZfAiClQaQEzv2tdRUOKcDR9MozaN/qIbjTY2IAAAAgF+nxVWZZ4L1aFNNB56QsfpFCpbeVlL8oh4sT6NYu0wM3VmxPpoCN1kBRwHIhhRmwTRZLpwv2OGvy61EIE8vf4Lsao9c6tXjB4wDGkgSkRIdH3aW6LwmqlQaXLZBvQNqxakCxxJwMpeQlI0tLnRqH+Y0qIJwAqb8Jn9XalJnTEX ssh-dss";

const NOW_PEER: &str = "10.1.2.3";

fn peer(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn user(s: &str) -> UserName {
    UserName::parse(s).unwrap()
}

fn key(line: &str) -> PublicKey {
    KeyEntry::parse(line).unwrap().public_key().clone()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn err_of(line: &str) -> LineError {
    parse_strict(line.as_bytes()).unwrap_err().error
}

// ---------------------------------------------------------------- parsing

#[test]
fn every_accepted_key_type_parses() {
    for line in [ED_ALICE, P256, P384, P521, RSA, SK_ED, SK_ECDSA] {
        let e = KeyEntry::parse(line).unwrap();
        assert!(key_algorithm_allowed(&e.public_key().algorithm()));
        assert_eq!(e.text(), line);
    }
    let e = KeyEntry::parse(ED_ALICE).unwrap();
    assert_eq!(e.comment(), "alice@laptop");
    assert_eq!(
        e.fingerprint().to_string(),
        e.public_key().fingerprint(HashAlg::Sha256).to_string()
    );
    assert!(e.fingerprint().to_string().starts_with("SHA256:"));
    assert_eq!(
        e.to_string(),
        format!("{} ssh-ed25519 alice@laptop", e.fingerprint())
    );
}

#[test]
fn comments_with_spaces_and_hashes_are_kept() {
    let e = KeyEntry::parse(&format!("{ED_ALICE} on the # train")).unwrap();
    assert_eq!(e.comment(), "alice@laptop on the # train");
    let e = KeyEntry::parse(&ED_ALICE.replace(' ', "\t")).unwrap();
    assert_eq!(e.comment(), "alice@laptop");
}

#[test]
fn options_before_the_key() {
    let line = format!(r#"command="echo hi there",from="10.0.0.0/8",no-pty {ED_ALICE}"#);
    let e = KeyEntry::parse(&line).unwrap();
    assert_eq!(e.options().command.as_deref(), Some("echo hi there"));
    assert!(!e.options().pty);
    assert_eq!(e.comment(), "alice@laptop");
    assert_eq!(
        e.options_text(),
        r#"command="echo hi there",from="10.0.0.0/8",no-pty"#
    );
    assert!(
        e.to_string()
            .ends_with(r#"alice@laptop [command="echo hi there",from="10.0.0.0/8",no-pty]"#)
    );
    let e = KeyEntry::parse(&format!("restrict {ED_ALICE}")).unwrap();
    assert!(!e.options().port_forwarding);
}

#[test]
fn bad_base64_is_refused() {
    let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAXrbOc9P+5+D1nis3VI7JNmuS7CpQK/OBBnnVVd!YmT x";
    assert_eq!(err_of(line), LineError::BadBase64);
    let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAXrbOc9P+5+D1nis3VI7JNmuS7CpQK/OBBnnVVdjYm x";
    assert_eq!(err_of(line), LineError::BadBase64);
    assert_eq!(err_of("ssh-ed25519 AAAA=AAA"), LineError::BadBase64);
}

#[test]
fn truncated_key_is_refused() {
    let data = ED_ALICE.split(' ').nth(1).unwrap();
    let line = format!("ssh-ed25519 {}", &data[..40]);
    assert!(
        matches!(err_of(&line), LineError::BadKeyData(_)),
        "{:?}",
        err_of(&line)
    );
    let rsa = RSA.split(' ').nth(1).unwrap();
    let line = format!("ssh-rsa {}", &rsa[..200]);
    assert!(matches!(err_of(&line), LineError::BadKeyData(_)));
}

#[test]
fn unknown_and_refused_key_types() {
    let data = ED_ALICE.split(' ').nth(1).unwrap();
    assert_eq!(
        err_of(&format!("ssh-foo {data} x")),
        LineError::UnknownKeyType("ssh-foo".into())
    );
    assert_eq!(
        err_of(&format!("foo@example.com {data}")),
        LineError::UnknownKeyType("foo@example.com".into())
    );
    assert_eq!(
        err_of(&format!("no-pty ssh-foo {data}")),
        LineError::UnknownKeyType("ssh-foo".into())
    );
    assert!(matches!(err_of(DSA), LineError::RefusedKeyType { .. }));
    assert!(matches!(
        err_of(&format!("ssh-ed25519-cert-v01@openssh.com {data}")),
        LineError::RefusedKeyType { .. }
    ));
    // The text says RSA but the data is Ed25519.
    assert_eq!(
        err_of(&format!("ssh-rsa {data}")),
        LineError::TypeMismatch("ssh-rsa".into())
    );
    assert_eq!(
        err_of("ssh-ed25519"),
        LineError::MissingKeyData("ssh-ed25519".into())
    );
    assert_eq!(err_of("no-pty,command=\"x\""), LineError::MissingKey);
}

#[test]
fn megabyte_line_is_refused() {
    let line = format!("ssh-ed25519 {}", "A".repeat(1 << 20));
    assert!(matches!(err_of(&line), LineError::TooLong { .. }));
    let (good, bad) = parse_lenient(format!("{line}\n{ED_ALICE}\n").as_bytes());
    assert_eq!(good.len(), 1);
    assert_eq!(bad[0].line, 1);
}

#[test]
fn binary_junk_is_refused() {
    let junk: &[u8] = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x03\0>\0";
    let e = parse_strict(junk).unwrap_err();
    assert_eq!(e.line, 1);
    assert_eq!(e.error, LineError::ControlCharacters);
    let e = parse_strict(b"ssh-ed25519 \xff\xfe\xfd").unwrap_err();
    assert_eq!(e.error, LineError::NotUtf8);
    let e =
        parse_strict(b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n")
            .unwrap_err();
    assert_eq!(e.line, 1);
}

#[test]
fn crlf_files_are_accepted() {
    let text = format!("# keys\r\n{ED_ALICE}\r\n\r\n{ED_BOB}\r\n");
    let entries = parse_strict(text.as_bytes()).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].comment(), "bob@desk");
}

#[test]
fn strict_errors_name_the_line() {
    let text = format!("# comment\n{ED_ALICE}\n\nssh-ed25519 !!!!\n{ED_BOB}\n");
    let e = parse_strict(text.as_bytes()).unwrap_err();
    assert_eq!(e.line, 4);
    assert_eq!(e.to_string(), "line 4: key data is not valid base64");
}

#[test]
fn lenient_skips_bad_lines_and_keeps_good_ones() {
    let text = format!("{ED_ALICE}\ngarbage here\nfrom=\"10.0.0.1/8\" {ED_BOB}\n{P256}\n");
    let keys = AuthorizedKeys::parse_lenient(text.as_bytes(), "test");
    assert_eq!(keys.len(), 2);
    let (_, errors) = parse_lenient(text.as_bytes());
    assert_eq!(
        errors.iter().map(|e| e.line).collect::<Vec<_>>(),
        vec![2, 3]
    );
}

// ---------------------------------------------------------- authorization

#[test]
fn authorize_compares_key_data_not_comment() {
    let keys = AuthorizedKeys::parse_lenient(ED_ALICE.as_bytes(), "t");
    let mut offered = key(ED_ALICE);
    offered.set_comment("something else");
    let p = keys
        .authorize(&offered, peer(NOW_PEER), SystemTime::now())
        .unwrap();
    assert_eq!(p, Permissions::unrestricted());
    assert_eq!(
        keys.authorize(&key(ED_BOB), peer(NOW_PEER), SystemTime::now()),
        Err(Denied::NoSuchKey)
    );
}

#[test]
fn authorize_enforces_from_patterns() {
    let text = format!("from=\"10.0.0.0/8,!10.6.6.6,fd00::/8,192.168.1.*\" {ED_ALICE}");
    let keys = AuthorizedKeys::parse_lenient(text.as_bytes(), "t");
    let k = key(ED_ALICE);
    let now = SystemTime::now();
    for ok in ["10.1.2.3", "fd00::1", "192.168.1.200", "::ffff:10.9.9.9"] {
        assert!(keys.authorize(&k, peer(ok), now).is_ok(), "{ok}");
    }
    for bad in ["10.6.6.6", "11.0.0.1", "fe80::1", "192.168.2.1"] {
        assert_eq!(
            keys.authorize(&k, peer(bad), now),
            Err(Denied::FromMismatch { peer: peer(bad) }),
            "{bad}"
        );
    }
}

#[test]
fn authorize_enforces_expiry_time() {
    let now = SystemTime::now();
    let past = format!("expiry-time=\"20200101\" {ED_ALICE}");
    let keys = AuthorizedKeys::parse_lenient(past.as_bytes(), "t");
    assert_eq!(
        keys.authorize(&key(ED_ALICE), peer(NOW_PEER), now),
        Err(Denied::Expired)
    );
    let future = format!("expiry-time=\"29991231235959\" {ED_ALICE}");
    let keys = AuthorizedKeys::parse_lenient(future.as_bytes(), "t");
    assert!(keys.authorize(&key(ED_ALICE), peer(NOW_PEER), now).is_ok());
    // The boundary: still valid at the instant itself, refused a second later.
    let at = parse_expiry_time("20300101").unwrap();
    let text = format!("expiry-time=\"20300101\" {ED_ALICE}");
    let keys = AuthorizedKeys::parse_lenient(text.as_bytes(), "t");
    assert!(keys.authorize(&key(ED_ALICE), peer(NOW_PEER), at).is_ok());
    assert!(
        keys.authorize(&key(ED_ALICE), peer(NOW_PEER), at + Duration::from_secs(1))
            .is_err()
    );
}

#[test]
fn authorize_maps_options_to_permissions() {
    let text = format!("restrict,pty,command=\"docker ps\",permitopen=\"localhost:80\" {ED_ALICE}");
    let keys = AuthorizedKeys::parse_lenient(text.as_bytes(), "t");
    let p = keys
        .authorize(&key(ED_ALICE), peer(NOW_PEER), SystemTime::now())
        .unwrap();
    assert_eq!(
        p,
        Permissions {
            port_forwarding: false,
            pty: true,
            agent_forwarding: false,
            x11_forwarding: false,
            command: Some("docker ps".into()),
            permit_open: Some(vec!["localhost:80".into()]),
        }
    );
}

#[test]
fn a_later_line_for_the_same_key_can_still_allow() {
    let text = format!("from=\"192.0.2.1\" {ED_ALICE}\nno-pty {ED_ALICE}\n");
    let keys = AuthorizedKeys::parse_lenient(text.as_bytes(), "t");
    let p = keys
        .authorize(&key(ED_ALICE), peer(NOW_PEER), SystemTime::now())
        .unwrap();
    assert!(!p.pty);
}

#[test]
fn cert_authority_lines_never_authorize_a_plain_key() {
    let text = format!("cert-authority {ED_ALICE}");
    let keys = AuthorizedKeys::parse_lenient(text.as_bytes(), "t");
    assert_eq!(
        keys.authorize(&key(ED_ALICE), peer(NOW_PEER), SystemTime::now()),
        Err(Denied::UnsupportedOption("cert-authority".into()))
    );
}

// ------------------------------------------------------------------ store

fn store() -> (tempfile::TempDir, KeyStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = KeyStore::open(&dir.path().join("state")).unwrap();
    (dir, store)
}

fn no_temp_files(store: &KeyStore) {
    for user in fs::read_dir(store.users_dir()).unwrap() {
        let path = user.unwrap().path();
        if path.is_dir() {
            for f in fs::read_dir(&path).unwrap() {
                let name = f.unwrap().file_name().into_string().unwrap();
                assert!(!name.ends_with(".tmp"), "left over {name}");
            }
        }
    }
}

#[test]
fn open_creates_a_private_users_directory() {
    let (_dir, store) = store();
    assert!(store.users_dir().is_dir());
    assert_eq!(mode(store.users_dir()), 0o700);
}

#[test]
fn users_are_added_listed_and_removed() {
    let (_dir, store) = store();
    assert!(store.add_user(&user("bob")).unwrap());
    assert!(store.add_user(&user("alice")).unwrap());
    assert!(!store.add_user(&user("alice")).unwrap());
    assert!(store.user_exists(&user("alice")));
    assert_eq!(
        store.list_users().unwrap(),
        vec![user("alice"), user("bob")]
    );
    let dir = store.users_dir().join("alice");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("authorized_keys")), 0o600);

    store.remove_user(&user("bob")).unwrap();
    assert!(!store.user_exists(&user("bob")));
    assert!(matches!(
        store.remove_user(&user("bob")),
        Err(StoreError::NoSuchUser(_))
    ));
    assert_eq!(store.list_users().unwrap(), vec![user("alice")]);
    assert_eq!(
        StoreError::NoSuchUser(user("bob")).to_string(),
        "no such user 'bob'"
    );
}

#[test]
fn list_users_skips_invalid_names() {
    let (_dir, store) = store();
    store.add_user(&user("carol")).unwrap();
    for bad in ["Alice", "a b", "1x", "ünï"] {
        fs::create_dir(store.users_dir().join(bad)).unwrap();
    }
    fs::write(store.users_dir().join("dave"), "not a directory").unwrap();
    assert_eq!(store.list_users().unwrap(), vec![user("carol")]);
}

#[test]
fn add_keys_creates_the_user_and_returns_what_was_added() {
    let (_dir, store) = store();
    let alice = user("alice");
    let input = format!("{ED_ALICE}\n{P256}\n");
    let added = store.add_keys(&alice, input.as_bytes()).unwrap();
    assert_eq!(added.len(), 2);
    assert!(store.user_exists(&alice));
    let path = store.authorized_keys_path(&alice);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(fs::read_to_string(&path).unwrap(), input);
    assert_eq!(store.list_keys(&alice).unwrap().len(), 2);
    no_temp_files(&store);
}

#[test]
fn duplicate_keys_are_ignored() {
    let (_dir, store) = store();
    let alice = user("alice");
    store.add_keys(&alice, ED_ALICE.as_bytes()).unwrap();
    // Same key with another comment, twice in the input, plus one new key.
    let input = format!(
        "{}\n{ED_BOB}\n{ED_BOB}\n",
        ED_ALICE.replace("alice@laptop", "other")
    );
    let added = store.add_keys(&alice, input.as_bytes()).unwrap();
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].comment(), "bob@desk");
    assert!(
        store
            .add_keys(&alice, ED_BOB.as_bytes())
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.list_keys(&alice).unwrap().len(), 2);
}

#[test]
fn bad_input_changes_nothing() {
    let (_dir, store) = store();
    let alice = user("alice");
    store.add_keys(&alice, ED_ALICE.as_bytes()).unwrap();
    let path = store.authorized_keys_path(&alice);
    let before = fs::read(&path).unwrap();
    let input = format!("{ED_BOB}\n{P256}\nssh-ed25519 AAAA!!!!\n");
    let err = store.add_keys(&alice, input.as_bytes()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid key input, nothing was changed: line 3: key data is not valid base64"
    );
    assert_eq!(fs::read(&path).unwrap(), before);
    // A new user is not created by refused input either.
    assert!(store.add_keys(&user("bob"), b"\0\0\0").is_err());
    assert!(!store.user_exists(&user("bob")));
    assert!(matches!(
        store.add_keys(&alice, b"# only a comment\n\n"),
        Err(StoreError::NoKeysInInput)
    ));
}

#[test]
fn remove_keys_by_fingerprint_or_comment_keeps_everything_else() {
    let (_dir, store) = store();
    let alice = user("alice");
    store.add_user(&alice).unwrap();
    let path = store.authorized_keys_path(&alice);
    let hand_edited = format!(
        "# Alice's keys\r\nfrobnicate,no-pty {ED_ALICE}\r\nthis line is broken\r\n{P256}\r\n{ED_BOB}\r\n"
    );
    fs::write(&path, &hand_edited).unwrap();

    let fp = KeyEntry::parse(P256).unwrap().fingerprint().to_string();
    let removed = store.remove_keys(&alice, &fp).unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        format!("# Alice's keys\nfrobnicate,no-pty {ED_ALICE}\nthis line is broken\n{ED_BOB}\n")
    );
    let removed = store.remove_keys(&alice, "bob@desk").unwrap();
    assert_eq!(removed[0].comment(), "bob@desk");
    let err = store.remove_keys(&alice, "nobody").unwrap_err();
    assert!(matches!(err, StoreError::NoMatchingKey { .. }), "{err}");
    // The unknown option survives a rewrite through add_keys too.
    store.add_keys(&alice, P384.as_bytes()).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains(&format!("frobnicate,no-pty {ED_ALICE}\n")));
    assert!(text.contains("this line is broken\n"));
    assert!(matches!(
        store.remove_keys(&user("zed"), "x"),
        Err(StoreError::NoSuchUser(_))
    ));
    no_temp_files(&store);
}

#[test]
fn concurrent_edits_lose_nothing() {
    let (_dir, store) = store();
    let store = Arc::new(store);
    let threads: Vec<_> = [ED_ALICE, ED_BOB, P256, P384, P521, RSA, SK_ED, SK_ECDSA]
        .into_iter()
        .map(|line| {
            let store = store.clone();
            std::thread::spawn(move || store.add_keys(&user("alice"), line.as_bytes()).unwrap())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().len(), 1);
    }
    assert_eq!(store.list_keys(&user("alice")).unwrap().len(), 8);
}

#[test]
fn failed_atomic_write_leaves_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("authorized_keys");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("keep"), "old").unwrap();
    // Renaming a file over a non-empty directory fails.
    assert!(store::write_atomic(dir.path(), &target, b"new").is_err());
    assert_eq!(fs::read_to_string(target.join("keep")).unwrap(), "old");
    let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "temporary file was not cleaned up");
}

#[test]
fn login_lookup_is_cached_until_the_file_changes() {
    let (_dir, store) = store();
    let alice = user("alice");
    store.add_keys(&alice, ED_ALICE.as_bytes()).unwrap();
    let a = store.authorized_keys(&alice).unwrap();
    let b = store.authorized_keys(&alice).unwrap();
    assert!(
        Arc::ptr_eq(&a, &b),
        "second lookup should come from the cache"
    );

    // CLI edit.
    store.add_keys(&alice, ED_BOB.as_bytes()).unwrap();
    let c = store.authorized_keys(&alice).unwrap();
    assert_eq!(c.len(), 2);

    // Hand edit in place, same size, then the mtime bumped.
    let path = store.authorized_keys_path(&alice);
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("bob@desk", "bob@lapt");
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    use std::io::Write;
    (&f).write_all(text.as_bytes()).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    let d = store.authorized_keys(&alice).unwrap();
    assert!(!Arc::ptr_eq(&c, &d));
    assert_eq!(d.entries()[1].comment(), "bob@lapt");

    // A broken line added by hand is skipped; the good keys still work.
    fs::write(&path, format!("{text}oops not a key\n")).unwrap();
    let e = store.authorized_keys(&alice).unwrap();
    assert_eq!(e.len(), 2);
    assert!(
        e.authorize(&key(ED_BOB), peer(NOW_PEER), SystemTime::now())
            .is_ok()
    );
}

#[test]
fn login_lookup_for_missing_users_and_files() {
    let (_dir, store) = store();
    assert!(matches!(
        store.authorized_keys(&user("ghost")),
        Err(StoreError::NoSuchUser(_))
    ));
    let alice = user("alice");
    store.add_user(&alice).unwrap();
    fs::remove_file(store.authorized_keys_path(&alice)).unwrap();
    assert!(store.authorized_keys(&alice).unwrap().is_empty());
    store.remove_user(&alice).unwrap();
    assert!(store.authorized_keys(&alice).is_err());
}

// ----------------------------------------------------------- certificates

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        pki.keygen(&["-t", "ed25519", "-f", "ca"]);
        pki.keygen(&["-t", "ed25519", "-f", "other_ca"]);
        pki.keygen(&["-t", "ed25519", "-f", "user"]);
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn keygen(&self, args: &[&str]) {
        let out = Command::new("ssh-keygen")
            .arg("-q")
            .args(["-N", ""])
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("ssh-keygen must be installed for the certificate tests");
        assert!(
            out.status.success(),
            "ssh-keygen {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Signs a fresh copy of the user key with `ca` and extra arguments.
    fn sign(&self, ca: &str, args: &[&str]) -> Certificate {
        let pubkey = self.path("user.pub");
        let copy = self.path("signme.pub");
        fs::copy(&pubkey, &copy).unwrap();
        let _ = fs::remove_file(self.path("signme-cert.pub"));
        let mut full = vec!["-s", ca];
        full.extend_from_slice(args);
        full.push("signme.pub");
        let out = Command::new("ssh-keygen")
            .arg("-q")
            .args(&full)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = fs::read_to_string(self.path("signme-cert.pub")).unwrap();
        Certificate::from_openssh(&text).unwrap()
    }

    fn trust(&self, revoked: Option<&str>) -> TrustedUserCas {
        let revoked = revoked.map(|text| {
            let p = self.path("revoked");
            fs::write(&p, text).unwrap();
            p
        });
        TrustedUserCas::load(&[self.path("ca.pub")], revoked.as_deref()).unwrap()
    }

    fn pubkey(&self, name: &str) -> String {
        fs::read_to_string(self.path(name)).unwrap()
    }
}

fn check(cas: &TrustedUserCas, cert: &Certificate, login: &str) -> Result<Permissions, Denied> {
    cas.authorize_certificate(cert, &user(login), peer(NOW_PEER), SystemTime::now())
}

#[test]
fn a_valid_certificate_logs_in_with_its_extensions() {
    let pki = Pki::new();
    let cas = pki.trust(None);
    let cert = pki.sign(
        "ca",
        &["-I", "alice-laptop", "-n", "alice,admin", "-V", "+1h"],
    );
    let p = check(&cas, &cert, "alice").unwrap();
    assert_eq!(
        p,
        Permissions::unrestricted(),
        "ssh-keygen's default extensions permit everything"
    );
    assert!(check(&cas, &cert, "admin").is_ok());

    let cert = pki.sign(
        "ca",
        &["-I", "x", "-n", "alice", "-O", "clear", "-O", "permit-pty"],
    );
    let p = check(&cas, &cert, "alice").unwrap();
    assert!(p.pty && !p.port_forwarding && !p.agent_forwarding && !p.x11_forwarding);
}

#[test]
fn certificate_time_window_is_enforced() {
    let pki = Pki::new();
    let cas = pki.trust(None);
    let expired = pki.sign("ca", &["-I", "x", "-n", "alice", "-V", "-2h:-1h"]);
    assert_eq!(
        check(&cas, &expired, "alice"),
        Err(Denied::CertificateExpired)
    );
    let early = pki.sign("ca", &["-I", "x", "-n", "alice", "-V", "+1h:+2h"]);
    assert_eq!(check(&cas, &early, "alice"), Err(Denied::NotYetValid));
}

#[test]
fn certificate_principals_must_name_the_login() {
    let pki = Pki::new();
    let cas = pki.trust(None);
    let bob = pki.sign("ca", &["-I", "x", "-n", "bob"]);
    assert_eq!(
        check(&cas, &bob, "alice"),
        Err(Denied::WrongPrincipal("alice".into()))
    );
    let anyone = pki.sign("ca", &["-I", "x"]);
    assert_eq!(check(&cas, &anyone, "alice"), Err(Denied::NoPrincipals));
}

#[test]
fn certificate_must_come_from_a_trusted_ca_with_a_good_signature() {
    let pki = Pki::new();
    let cas = pki.trust(None);
    let foreign = pki.sign("other_ca", &["-I", "x", "-n", "alice"]);
    assert!(matches!(
        check(&cas, &foreign, "alice"),
        Err(Denied::UntrustedCa(_))
    ));

    let host = pki.sign("ca", &["-h", "-I", "x", "-n", "alice"]);
    assert_eq!(
        check(&cas, &host, "alice"),
        Err(Denied::NotAUserCertificate)
    );

    // Tamper with the key id after signing.
    let cert = pki.sign("ca", &["-I", "tamper-me", "-n", "alice"]);
    let mut bytes = cert.to_bytes().unwrap();
    let at = bytes.windows(9).position(|w| w == b"tamper-me").unwrap();
    bytes[at] = b'T';
    let forged = Certificate::from_bytes(&bytes).unwrap();
    assert_eq!(forged.key_id(), "Tamper-me");
    assert_eq!(check(&cas, &forged, "alice"), Err(Denied::BadSignature));
}

#[test]
fn sha1_rsa_ca_signatures_are_refused() {
    let pki = Pki::new();
    pki.keygen(&["-t", "rsa", "-b", "2048", "-f", "rsa_ca"]);
    let cas = TrustedUserCas::load(&[pki.path("rsa_ca.pub")], None).unwrap();
    let sha1 = pki.sign("rsa_ca", &["-t", "ssh-rsa", "-I", "x", "-n", "alice"]);
    assert_eq!(check(&cas, &sha1, "alice"), Err(Denied::WeakSignature));
    let sha512 = pki.sign("rsa_ca", &["-t", "rsa-sha2-512", "-I", "x", "-n", "alice"]);
    assert!(check(&cas, &sha512, "alice").is_ok());
}

#[test]
fn certificate_critical_options() {
    let pki = Pki::new();
    let cas = pki.trust(None);
    let cert = pki.sign(
        "ca",
        &[
            "-I",
            "x",
            "-n",
            "alice",
            "-O",
            "source-address=10.0.0.0/8,::1",
        ],
    );
    assert!(check(&cas, &cert, "alice").is_ok());
    assert_eq!(
        cas.authorize_certificate(
            &cert,
            &user("alice"),
            peer("192.168.0.1"),
            SystemTime::now()
        ),
        Err(Denied::SourceAddressMismatch {
            peer: peer("192.168.0.1")
        })
    );
    let cert = pki.sign(
        "ca",
        &["-I", "x", "-n", "alice", "-O", "force-command=docker ps"],
    );
    assert_eq!(
        check(&cas, &cert, "alice").unwrap().command.as_deref(),
        Some("docker ps")
    );
    let cert = pki.sign("ca", &["-I", "x", "-n", "alice", "-O", "critical:frob=1"]);
    assert_eq!(
        check(&cas, &cert, "alice"),
        Err(Denied::UnknownCriticalOption("frob".into()))
    );
}

#[test]
fn revoked_certificates_are_refused() {
    let pki = Pki::new();
    let cert = pki.sign("ca", &["-I", "laptop", "-n", "alice", "-z", "42"]);
    let revoked = |text: &str| check(&pki.trust(Some(text)), &cert, "alice");

    assert!(revoked("# nothing yet\n").is_ok());
    assert_eq!(
        revoked("serial: 42\n"),
        Err(Denied::Revoked("serial 42".into()))
    );
    assert!(revoked("serial: 40-50\n").is_err());
    assert!(revoked("serial: 0x2a\n").is_err());
    assert!(revoked("serial: 43\nserial: 1-41\n").is_ok());
    assert_eq!(
        revoked("id: laptop\n"),
        Err(Denied::Revoked("key id 'laptop'".into()))
    );
    assert!(revoked("id: laptop2\n").is_ok());
    assert_eq!(
        revoked(&pki.pubkey("user.pub")),
        Err(Denied::Revoked("certificate key".into()))
    );
    assert_eq!(
        revoked(&format!("key: {}", pki.pubkey("ca.pub"))),
        Err(Denied::Revoked("signing CA".into()))
    );
    let fp = key(pki.pubkey("user.pub").trim()).fingerprint(HashAlg::Sha256);
    assert!(revoked(&format!("hash: {fp}\n")).is_err());
    // Scoped to another CA: does not apply.
    assert!(
        revoked(&format!(
            "ca: {}serial: 42\nid: laptop\n",
            pki.pubkey("other_ca.pub")
        ))
        .is_ok()
    );
    assert!(revoked(&format!("ca: {}serial: 42\n", pki.pubkey("ca.pub"))).is_err());
}

#[test]
fn revoked_list_is_reread_when_it_changes() {
    let pki = Pki::new();
    let cas = pki.trust(Some("\n"));
    let cert = pki.sign("ca", &["-I", "laptop", "-n", "alice", "-z", "7"]);
    assert!(check(&cas, &cert, "alice").is_ok());
    fs::write(pki.path("revoked"), "serial: 7\n").unwrap();
    assert!(matches!(
        check(&cas, &cert, "alice"),
        Err(Denied::Revoked(_))
    ));
    // A broken list fails closed.
    fs::write(pki.path("revoked"), "what is this\n").unwrap();
    assert!(matches!(
        check(&cas, &cert, "alice"),
        Err(Denied::RevocationListUnavailable(_))
    ));
    fs::remove_file(pki.path("revoked")).unwrap();
    assert!(matches!(
        check(&cas, &cert, "alice"),
        Err(Denied::RevocationListUnavailable(_))
    ));
    // The same file also serves plain keys.
    fs::write(pki.path("revoked"), pki.pubkey("user.pub")).unwrap();
    let revoked = cas.revoked_keys().unwrap();
    assert!(
        revoked
            .check_key(&key(pki.pubkey("user.pub").trim()))
            .is_err()
    );
    assert!(revoked.check_key(&key(ED_ALICE)).is_ok());
}

#[test]
fn binary_krl_is_refused_with_a_clear_error() {
    let pki = Pki::new();
    fs::write(pki.path("spec"), "serial: 1-5\n").unwrap();
    let out = Command::new("ssh-keygen")
        .args(["-k", "-f", "krl", "-s", "ca.pub", "spec"])
        .current_dir(pki.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = TrustedUserCas::load(&[pki.path("ca.pub")], Some(&pki.path("krl"))).unwrap_err();
    assert!(matches!(err, CaError::BinaryKrl { .. }));
    assert!(err.to_string().contains("binary KRL"), "{err}");
}

#[test]
fn ca_files_are_checked_when_loaded() {
    let pki = Pki::new();
    let both = pki.path("cas");
    fs::write(
        &both,
        format!(
            "# two CAs\n{}\ncert-authority {}",
            pki.pubkey("ca.pub"),
            pki.pubkey("other_ca.pub")
        ),
    )
    .unwrap();
    let cas = TrustedUserCas::load(std::slice::from_ref(&both), None).unwrap();
    assert_eq!(cas.cas().len(), 2);
    let cert = pki.sign("other_ca", &["-I", "x", "-n", "alice"]);
    assert!(check(&cas, &cert, "alice").is_ok());

    fs::write(&both, "# nothing\n").unwrap();
    assert!(matches!(
        TrustedUserCas::load(std::slice::from_ref(&both), None),
        Err(CaError::NoCaKeys { .. })
    ));
    fs::write(&both, "ssh-ed25519 AAAA!!\n").unwrap();
    assert!(matches!(
        TrustedUserCas::load(std::slice::from_ref(&both), None),
        Err(CaError::BadCaLine { line: 1, .. })
    ));
    fs::write(
        &both,
        format!("from=\"10.0.0.0/8\" {}", pki.pubkey("ca.pub")),
    )
    .unwrap();
    assert!(matches!(
        TrustedUserCas::load(std::slice::from_ref(&both), None),
        Err(CaError::CaOptions { .. })
    ));
    assert!(matches!(
        TrustedUserCas::load(&[pki.path("missing.pub")], None),
        Err(CaError::Io { .. })
    ));
    fs::write(pki.path("revoked"), "frob: 1\n").unwrap();
    assert!(matches!(
        TrustedUserCas::load(&[pki.path("ca.pub")], Some(&pki.path("revoked"))),
        Err(CaError::BadRevokedLine { line: 1, .. })
    ));
}

// --------------------------------------------------------------- robustness

/// A small deterministic generator, so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Feeds a few thousand mutated lines to every parser: none may panic.
#[test]
fn mutated_lines_never_panic() {
    let seeds = [
        ED_ALICE.to_owned(),
        RSA.to_owned(),
        P521.to_owned(),
        SK_ECDSA.to_owned(),
        format!(
            r#"restrict,command="a \"b\" c",from="10.0.0.0/8,!1.2.3.4,fd00::/8,*",expiry-time="20300101" {ED_BOB}"#
        ),
        "serial: 1-5".to_owned(),
        "hash: SHA256:abc".to_owned(),
    ];
    let alphabet = b" \t,=\"\\!*?/:-#\r\n\0\xffAaZz09+";
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..4000 {
        let mut line = seeds[round % seeds.len()].as_bytes().to_vec();
        for _ in 0..=rng.below(6) {
            let at = rng.below(line.len() + 1);
            match rng.below(5) {
                0 if at < line.len() => {
                    line.remove(at);
                }
                1 => line.insert(at, alphabet[rng.below(alphabet.len())]),
                2 if at < line.len() => line[at] ^= 1 << rng.below(8),
                3 => line.truncate(at),
                _ => {
                    let from = rng.below(line.len());
                    let chunk: Vec<u8> = line[from..].iter().take(rng.below(16)).copied().collect();
                    line.splice(at..at, chunk);
                }
            }
        }
        let _ = parse_strict(&line);
        let keys = AuthorizedKeys::parse_lenient(&line, "fuzz");
        let _ = keys.authorize(&key(ED_BOB), peer("10.0.0.1"), SystemTime::now());
        let text = String::from_utf8_lossy(&line);
        let _ = KeyOptions::parse(&text);
        let _ = HostPatterns::parse(&text).map(|p| p.matches(peer("::1")));
        let _ = parse_expiry_time(&text);
        let _ = UserName::parse(&text);
        let _ = RevocationList::parse(&line, Path::new("fuzz"));
    }
}
