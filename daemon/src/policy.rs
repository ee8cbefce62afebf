//! Access control: who may do what to which names.
//!
//! Decisions rest on the peer's credentials as the kernel reports them for
//! the socket (`SO_PEERCRED` and `SO_PEERGROUPS`, captured at connect),
//! never on anything the client says. The rules, first match wins:
//!
//! 1. fetch, stat, list and status: anyone who can reach the socket;
//! 2. publish and remove, any name: root, the daemon's own uid, configured
//!    publisher users, members of a configured publisher group;
//! 3. publish and remove under the user prefix (`user/<uid>/` by default):
//!    the user whose uid it names;
//! 4. everything else is refused, and the refusal names the rule.

use crate::config::PolicyConfig;
use std::fmt;

/// What the kernel told us about a connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid={} uid={} gid={}", self.pid, self.uid, self.gid)
    }
}

/// Operations that change the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Publish,
    Remove,
}

impl fmt::Display for Write {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Write::Publish => "publish",
            Write::Remove => "remove",
        })
    }
}

/// The access rules in force, with names already resolved to ids.
#[derive(Debug, Clone)]
pub struct Policy {
    daemon_uid: u32,
    publisher_uids: Vec<u32>,
    publisher_gids: Vec<u32>,
    /// Contains `{uid}`; empty when per-user prefixes are off.
    user_prefix: String,
}

impl Policy {
    /// Resolve user and group names through the system databases. Names
    /// that do not exist are reported and skipped, so a missing group does
    /// not keep the service from starting.
    pub fn from_config(config: &PolicyConfig) -> (Policy, Vec<String>) {
        let mut warnings = Vec::new();
        let mut resolve = |items: &[String], db: &str, what: &str| -> Vec<u32> {
            items
                .iter()
                .filter_map(|item| {
                    let id = item.parse().ok().or_else(|| lookup_id(db, item));
                    if id.is_none() {
                        warnings.push(format!("{what} '{item}' does not exist; ignoring it"));
                    }
                    id
                })
                .collect()
        };
        let publisher_uids = resolve(&config.publisher_users, "/etc/passwd", "publisher user");
        let publisher_gids = resolve(&config.publisher_groups, "/etc/group", "publisher group");
        let policy = Policy {
            daemon_uid: rustix::process::geteuid().as_raw(),
            publisher_uids,
            publisher_gids,
            user_prefix: config.user_prefix.clone(),
        };
        (policy, warnings)
    }

    /// Is `peer` a publisher: root, the daemon's uid, a publisher user or a
    /// member of a publisher group? Publishers may write any name and are
    /// held to the total budget only, not to per-uid budgets.
    pub fn is_publisher(&self, peer: &Peer) -> bool {
        peer.uid == 0
            || peer.uid == self.daemon_uid
            || self.publisher_uids.contains(&peer.uid)
            || self
                .publisher_gids
                .iter()
                .any(|gid| *gid == peer.gid || peer.groups.contains(gid))
    }

    /// May `peer` publish or remove `name`? The error says which rule
    /// refused and what would be allowed.
    pub fn check_write(&self, peer: &Peer, action: Write, name: &str) -> Result<(), String> {
        if self.is_publisher(peer) {
            return Ok(());
        }
        let own = self.user_prefix_for(peer.uid);
        if let Some(prefix) = &own {
            if name.starts_with(prefix.as_str()) {
                return Ok(());
            }
        }
        let allowed = match own {
            Some(prefix) => format!("uid {} may {action} only under '{prefix}'", peer.uid),
            None => format!("uid {} may not {action}", peer.uid),
        };
        Err(format!(
            "{action} of '{name}' denied by rule 'publishers': only root, the daemon's uid, \
             publisher_users and members of publisher_groups may {action} any name; {allowed}"
        ))
    }

    fn user_prefix_for(&self, uid: u32) -> Option<String> {
        (!self.user_prefix.is_empty()).then(|| self.user_prefix.replace("{uid}", &uid.to_string()))
    }
}

/// The numeric id of `name` in a colon-separated database such as
/// /etc/passwd or /etc/group (name in field 1, id in field 3).
fn lookup_id(database: &str, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(database).ok()?;
    text.lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() > 2 && fields[0] == name)
        .and_then(|fields| fields[2].parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            daemon_uid: 500,
            publisher_uids: vec![700],
            publisher_gids: vec![42],
            user_prefix: "user/{uid}/".into(),
        }
    }

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            pid: 1,
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn publishers_may_write_anything() {
        let p = policy();
        for who in [
            peer(0, 0, &[]),
            peer(500, 1, &[]),
            peer(700, 1, &[]),
            peer(1, 42, &[]),
            peer(1, 1, &[42]),
        ] {
            assert_eq!(
                p.check_write(&who, Write::Publish, "shared/x"),
                Ok(()),
                "{who}"
            );
        }
    }

    #[test]
    fn others_only_under_their_prefix() {
        let p = policy();
        let user = peer(1001, 1001, &[100]);
        assert_eq!(p.check_write(&user, Write::Publish, "user/1001/x"), Ok(()));
        let err = p
            .check_write(&user, Write::Remove, "user/1002/x")
            .unwrap_err();
        assert!(err.contains("only under 'user/1001/'"), "{err}");
        assert!(p
            .check_write(&user, Write::Publish, "user/10010/x")
            .is_err());
        assert!(p.check_write(&user, Write::Publish, "shared/x").is_err());
        let closed = Policy {
            user_prefix: String::new(),
            ..policy()
        };
        assert!(closed
            .check_write(&user, Write::Publish, "user/1001/x")
            .is_err());
    }

    #[test]
    fn names_resolve_through_the_databases() {
        assert_eq!(lookup_id("/etc/passwd", "root"), Some(0));
        assert_eq!(lookup_id("/etc/group", "root"), Some(0));
        let (policy, warnings) = Policy::from_config(&PolicyConfig {
            publisher_groups: vec!["no-such-group-memseal".into(), "0".into()],
            publisher_users: vec![],
            user_prefix: "u/{uid}/".into(),
        });
        assert_eq!(policy.publisher_gids, [0]);
        assert_eq!(warnings.len(), 1);
    }
}
