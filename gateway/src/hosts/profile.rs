//! The privileges a host container gets so that its nested dockerd works.

use bollard::models::HostConfig;

use crate::config::SecurityProfile;

/// A profile with `auto` resolved to what the engine accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// `--privileged`.
    Privileged,
    /// Every capability the engine can grant, no seccomp/apparmor, all devices.
    Explicit,
    /// Nothing extra (a sandboxing runtime provides what dockerd needs).
    Unprivileged,
}

impl Resolved {
    /// The first profile to try for a configured one.
    pub fn first_choice(profile: SecurityProfile) -> Resolved {
        match profile {
            SecurityProfile::Auto | SecurityProfile::Privileged => Resolved::Privileged,
            SecurityProfile::Explicit => Resolved::Explicit,
            SecurityProfile::Unprivileged => Resolved::Unprivileged,
        }
    }

    /// Adds this profile's settings to a container's host config.
    pub fn apply(self, host: &mut HostConfig) {
        match self {
            Resolved::Privileged => host.privileged = Some(true),
            Resolved::Explicit => {
                // SYS_RESOURCE is the capability engines in restricted
                // sandboxes most often lack; asking for it makes `--cap-add
                // ALL` fail there. dockerd runs without it.
                host.cap_add = Some(vec!["ALL".into()]);
                host.cap_drop = Some(vec!["SYS_RESOURCE".into()]);
                host.security_opt = Some(vec![
                    "seccomp=unconfined".into(),
                    "apparmor=unconfined".into(),
                ]);
                // `--security-opt systempaths=unconfined` is the CLI's
                // spelling of these two empty lists.
                host.masked_paths = Some(Vec::new());
                host.readonly_paths = Some(Vec::new());
                host.device_cgroup_rules = Some(vec!["a *:* rwm".into()]);
                host.binds
                    .get_or_insert_with(Vec::new)
                    .push("/sys/fs/cgroup:/sys/fs/cgroup:rw".into());
            }
            Resolved::Unprivileged => {}
        }
    }
}

/// True when a start failure means the engine cannot grant `--privileged`.
pub fn is_privilege_refusal(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("unable to apply caps") || m.contains("apply caps")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_explicit_profile_drops_only_sys_resource() {
        let mut host = HostConfig::default();
        Resolved::Explicit.apply(&mut host);
        assert_eq!(host.privileged, None);
        assert_eq!(host.cap_drop, Some(vec!["SYS_RESOURCE".to_string()]));
        assert!(host.binds.unwrap()[0].starts_with("/sys/fs/cgroup:"));
    }

    #[test]
    fn the_caps_error_is_recognised() {
        assert!(is_privilege_refusal(
            "OCI runtime create failed: unable to apply caps: operation not permitted"
        ));
        assert!(!is_privilege_refusal("no such image"));
    }
}
