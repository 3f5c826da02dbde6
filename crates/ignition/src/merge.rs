//! Merging two configs with Ignition's semantics for the subset clusterform writes:
//! units by name (set fields of the later config win, drop-ins by name), files,
//! directories and links by path (the later entry replaces the earlier one), users by
//! name (SSH keys and groups appended without duplicates). `ignition.version` stays.

use crate::types::{Config, Passwd, Storage, Systemd, Unit, User};

/// Merge `extra` over `base` and return the result. Entries only in `base` keep their
/// place; entries only in `extra` are appended in `extra`'s order.
pub fn merge(base: Config, extra: Config) -> Config {
    let Config {
        ignition,
        passwd,
        storage,
        systemd,
    } = base;
    Config {
        ignition,
        passwd: merge_opt(passwd, extra.passwd, merge_passwd),
        storage: merge_opt(storage, extra.storage, merge_storage),
        systemd: merge_opt(systemd, extra.systemd, merge_systemd),
    }
}

fn merge_opt<T>(a: Option<T>, b: Option<T>, f: fn(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Merge lists keyed by `key`: a matching entry is combined with `combine`, new ones
/// are appended.
fn merge_keyed<T>(
    mut base: Vec<T>,
    extra: Vec<T>,
    key: fn(&T) -> &str,
    combine: fn(T, T) -> T,
) -> Vec<T> {
    for item in extra {
        match base.iter().position(|b| key(b) == key(&item)) {
            Some(i) => {
                let old = base.remove(i);
                base.insert(i, combine(old, item));
            }
            None => base.push(item),
        }
    }
    base
}

fn replace<T>(_old: T, new: T) -> T {
    new
}

fn merge_passwd(a: Passwd, b: Passwd) -> Passwd {
    Passwd {
        users: merge_keyed(a.users, b.users, |u| &u.name, merge_user),
    }
}

fn append_unique(mut a: Vec<String>, b: Vec<String>) -> Vec<String> {
    for x in b {
        if !a.contains(&x) {
            a.push(x);
        }
    }
    a
}

fn merge_user(a: User, b: User) -> User {
    User {
        groups: append_unique(a.groups, b.groups),
        name: a.name,
        ssh_authorized_keys: append_unique(a.ssh_authorized_keys, b.ssh_authorized_keys),
    }
}

fn merge_storage(a: Storage, b: Storage) -> Storage {
    Storage {
        directories: merge_keyed(a.directories, b.directories, |d| &d.path, replace),
        files: merge_keyed(a.files, b.files, |f| &f.path, replace),
        links: merge_keyed(a.links, b.links, |l| &l.path, replace),
    }
}

fn merge_systemd(a: Systemd, b: Systemd) -> Systemd {
    Systemd {
        units: merge_keyed(a.units, b.units, |u| &u.name, merge_unit),
    }
}

fn merge_unit(a: Unit, b: Unit) -> Unit {
    Unit {
        contents: b.contents.or(a.contents),
        dropins: merge_keyed(
            a.dropins,
            b.dropins,
            |d| &d.name,
            |x, y| crate::types::Dropin {
                contents: y.contents.or(x.contents),
                name: x.name,
            },
        ),
        enabled: b.enabled.or(a.enabled),
        mask: b.mask.or(a.mask),
        name: a.name,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::types::{Dropin, File, Ignition, Link};

    fn cfg() -> Config {
        Config {
            ignition: Ignition {
                version: "3.3.0".into(),
            },
            ..Config::default()
        }
    }

    #[test]
    fn units_merge_by_name_with_dropins() {
        let mut a = cfg();
        a.systemd = Some(Systemd {
            units: vec![
                Unit {
                    name: "a.service".into(),
                    enabled: Some(true),
                    contents: Some("A".into()),
                    dropins: vec![Dropin {
                        name: "10.conf".into(),
                        contents: Some("x".into()),
                    }],
                    ..Unit::default()
                },
                Unit {
                    name: "b.service".into(),
                    mask: Some(true),
                    ..Unit::default()
                },
            ],
        });
        let mut b = cfg();
        b.ignition.version = "9.9.9".into();
        b.systemd = Some(Systemd {
            units: vec![
                Unit {
                    name: "c.service".into(),
                    ..Unit::default()
                },
                Unit {
                    name: "a.service".into(),
                    enabled: Some(false),
                    dropins: vec![
                        Dropin {
                            name: "10.conf".into(),
                            contents: Some("y".into()),
                        },
                        Dropin {
                            name: "20.conf".into(),
                            contents: None,
                        },
                    ],
                    ..Unit::default()
                },
            ],
        });
        let m = merge(a, b);
        assert_eq!(m.ignition.version, "3.3.0");
        let units = m.systemd.unwrap().units;
        assert_eq!(
            units.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
            ["a.service", "b.service", "c.service"]
        );
        assert_eq!(units[0].enabled, Some(false));
        assert_eq!(units[0].contents.as_deref(), Some("A"));
        assert_eq!(units[0].dropins.len(), 2);
        assert_eq!(units[0].dropins[0].contents.as_deref(), Some("y"));
        assert_eq!(units[1].mask, Some(true));
    }

    #[test]
    fn files_replaced_by_path_users_keys_appended() {
        let mut a = cfg();
        a.storage = Some(Storage {
            files: vec![
                File {
                    path: "/etc/hostname".into(),
                    mode: Some(420),
                    overwrite: Some(true),
                    ..File::default()
                },
                File {
                    path: "/etc/x".into(),
                    ..File::default()
                },
            ],
            ..Storage::default()
        });
        a.passwd = Some(Passwd {
            users: vec![User {
                name: "core".into(),
                ssh_authorized_keys: vec!["k1".into(), "k2".into()],
                ..User::default()
            }],
        });
        let mut b = cfg();
        b.storage = Some(Storage {
            files: vec![File {
                path: "/etc/hostname".into(),
                mode: Some(384),
                ..File::default()
            }],
            links: vec![Link {
                path: "/l".into(),
                target: "/t".into(),
                ..Link::default()
            }],
            ..Storage::default()
        });
        b.passwd = Some(Passwd {
            users: vec![
                User {
                    name: "core".into(),
                    ssh_authorized_keys: vec!["k2".into(), "k3".into()],
                    groups: vec!["docker".into()],
                },
                User {
                    name: "ops".into(),
                    ..User::default()
                },
            ],
        });
        let m = merge(a, b);
        let st = m.storage.unwrap();
        assert_eq!(st.files[0].mode, Some(384));
        assert_eq!(
            st.files[0].overwrite, None,
            "extra replaces the whole entry"
        );
        assert_eq!(st.files[1].path, "/etc/x");
        assert_eq!(st.links.len(), 1);
        let users = m.passwd.unwrap().users;
        assert_eq!(users[0].ssh_authorized_keys, ["k1", "k2", "k3"]);
        assert_eq!(users[0].groups, ["docker"]);
        assert_eq!(users[1].name, "ops");
    }

    #[test]
    fn missing_sections_taken_from_either_side() {
        let mut b = cfg();
        b.systemd = Some(Systemd::default());
        let m = merge(cfg(), b.clone());
        assert_eq!(m.systemd, b.systemd);
        assert_eq!(merge(b.clone(), cfg()).systemd, b.systemd);
    }
}
