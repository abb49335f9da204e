//! Resolving the tree: names to nodes, nodes to attributes, folders to listings.

use super::core::{lock, Attr, Caller, DirItem, Errno, Kind, MailboxFs, Owner, Result, ENOENT};
use super::drafts::Draft;
use super::inodes::Key;
use super::paths::stale;
use crate::mailbox::tree_names::{GATEWAY_DIR, KEYS_FILE, SSH_DIR, TEST_DIR};
use crate::mailbox::{self, NodeClass};
use crate::store::{BoxKind, BoxRef, Entry};
use crate::timefmt::now_ms;

impl MailboxFs {
    pub(super) fn entry(&self, id: i64) -> Result<Entry> {
        let e = self.store.entry(id)?.ok_or(ENOENT)?;
        if mailbox::visible(&e, now_ms()) {
            Ok(e)
        } else {
            Err(ENOENT)
        }
    }

    /// The box and folder a directory key stands for, if it is a box or a folder in one.
    pub(super) fn box_dir(&self, key: &Key) -> Result<Option<(BoxRef, i64, Option<Entry>)>> {
        Ok(match key {
            Key::Box { b, .. } => Some((*b, 0, None)),
            Key::Entry { id, .. } => {
                let e = self.entry(*id)?;
                if !e.is_dir {
                    return Err(Errno::new(libc::ENOTDIR));
                }
                Some((e.boxref, e.id, Some(e)))
            }
            _ => None,
        })
    }

    pub(super) fn partner_ids(&self, user: i64, as2: &str) -> Result<(Option<i64>, Option<i64>)> {
        let prod = self.store.partner(user, as2, false)?.map(|p| p.id);
        let test = self.store.partner(user, as2, true)?.map(|p| p.id);
        Ok((prod, test))
    }

    pub(super) fn station_of(&self, user: i64, station: i64) -> Result<crate::store::Station> {
        self.store
            .station_by_id(station)?
            .filter(|s| s.user_id == user)
            .ok_or(ENOENT)
    }

    /// Whether the names in folder `ino` are fixed for the life of the mount: a user's home
    /// holds `.ssh` and `as2gateway`, `.ssh` holds `authorized_keys`, and nothing can be
    /// made there. A name absent there stays absent, so the kernel may remember that.
    pub(super) fn names_are_fixed(&self, ino: u64) -> bool {
        matches!(self.key(ino), Ok(Key::Home(_) | Key::Ssh(_)))
    }

    pub(super) fn child_key(&self, parent: &Key, name: &str) -> Result<Key> {
        match parent {
            Key::Root => {
                let u = self.store.user(name)?.ok_or(ENOENT)?;
                Ok(Key::Home(u.id))
            }
            Key::Home(u) => match name {
                SSH_DIR => Ok(Key::Ssh(*u)),
                GATEWAY_DIR => Ok(Key::Gateway(*u)),
                _ => Err(ENOENT),
            },
            Key::Ssh(u) if name == KEYS_FILE => Ok(Key::Keys(*u)),
            Key::Ssh(_) => Err(ENOENT),
            Key::Gateway(u) => {
                let s = self.store.station(name)?.filter(|s| s.user_id == *u);
                Ok(Key::Station {
                    user: *u,
                    station: s.ok_or(ENOENT)?.id,
                })
            }
            Key::Station { user, station } => {
                self.station_of(*user, *station)?;
                match self.partner_ids(*user, name)? {
                    (None, None) => Err(ENOENT),
                    _ => Ok(Key::Partner {
                        user: *user,
                        station: *station,
                        as2: name.to_owned(),
                    }),
                }
            }
            Key::Partner { user, station, as2 } | Key::Test { user, station, as2 } => {
                let (prod, test) = self.partner_ids(*user, as2)?;
                let in_test = matches!(parent, Key::Test { .. });
                if !in_test && name == TEST_DIR && test.is_some() {
                    return Ok(Key::Test {
                        user: *user,
                        station: *station,
                        as2: as2.clone(),
                    });
                }
                let partner = if in_test { test } else { prod };
                match (partner, BoxKind::from_name(name)) {
                    (Some(p), Some(kind)) => Ok(Key::Box {
                        user: *user,
                        b: BoxRef {
                            station_id: *station,
                            partner_id: p,
                            kind,
                        },
                    }),
                    _ => Err(ENOENT),
                }
            }
            Key::Box { .. } | Key::Entry { .. } => {
                let (b, folder, _) = self.box_dir(parent)?.ok_or(ENOENT)?;
                let user = parent.user().unwrap_or(0);
                if let Some(d) = self.find_draft(b, folder, name) {
                    return Ok(lock(&self.inodes)
                        .key(d.ino)
                        .unwrap_or(Key::Draft { user, id: 0 }));
                }
                let e = self.store.entry_by_name(b, folder, name)?.ok_or(ENOENT)?;
                if !mailbox::visible(&e, now_ms()) {
                    return Err(ENOENT);
                }
                Ok(Key::Entry { user, id: e.id })
            }
            _ => Err(Errno::new(libc::ENOTDIR)),
        }
    }

    pub(super) fn dir_attr(&self, ino: u64, class: NodeClass, o: &Owner, mtime_ms: i64) -> Attr {
        Attr {
            ino,
            kind: Kind::Dir,
            size: 0,
            mode: class.mode(),
            uid: if class.user_owned() { o.uid } else { 0 },
            gid: o.gid,
            mtime_ms,
            cacheable: true,
        }
    }

    pub(super) fn draft_attr(&self, d: &Draft, o: &Owner) -> Attr {
        Attr {
            ino: d.ino,
            kind: Kind::File,
            size: d.size(),
            mode: NodeClass::WritableFile.mode(),
            uid: o.uid,
            gid: o.gid,
            mtime_ms: d.mtime_ms(),
            cacheable: true,
        }
    }

    pub(super) fn entry_attr(&self, ino: u64, e: &Entry, o: &Owner) -> Attr {
        let class = mailbox::entry_class(e);
        Attr {
            ino,
            kind: if e.is_dir { Kind::Dir } else { Kind::File },
            size: e.size,
            mode: class.mode(),
            uid: o.uid,
            gid: o.gid,
            mtime_ms: e.mtime_ms,
            cacheable: true,
        }
    }

    /// Attributes of a node, checking that it still exists.
    pub(super) fn attr_of(&self, ino: u64, key: &Key, o: &Owner) -> Result<Attr> {
        if let Some(d) = self.draft(ino) {
            return Ok(self.draft_attr(&d, o));
        }
        let t = self.started_ms;
        match key {
            Key::Root => Ok(self.dir_attr(ino, NodeClass::Root, o, t)),
            Key::Home(u) | Key::Ssh(u) | Key::Gateway(u) => {
                let user = self.store.user_by_id(*u)?.ok_or(ENOENT)?;
                let class = if matches!(key, Key::Home(_)) {
                    NodeClass::UserHome
                } else {
                    NodeClass::Structure
                };
                Ok(self.dir_attr(ino, class, o, user.created_ms))
            }
            Key::Keys(u) => {
                let text = self.keys_text(*u)?;
                // Not cached: sshd must see a key the moment it is added.
                Ok(Attr {
                    ino,
                    kind: Kind::File,
                    size: text.len() as u64,
                    mode: NodeClass::KeysFile.mode(),
                    uid: 0,
                    gid: o.gid,
                    mtime_ms: t,
                    cacheable: false,
                })
            }
            Key::Station { user, station } => {
                let s = self.station_of(*user, *station)?;
                Ok(self.dir_attr(ino, NodeClass::Structure, o, s.created_ms))
            }
            Key::Partner { user, station, as2 } | Key::Test { user, station, as2 } => {
                self.station_of(*user, *station)?;
                let (prod, test) = self.partner_ids(*user, as2)?;
                let exists = match key {
                    Key::Test { .. } => test.is_some(),
                    _ => prod.is_some() || test.is_some(),
                };
                if !exists {
                    return Err(ENOENT);
                }
                Ok(self.dir_attr(ino, NodeClass::Structure, o, t))
            }
            Key::Box { user, b } => {
                self.station_of(*user, b.station_id)?;
                let p = self.store.partner_by_id(b.partner_id)?.ok_or(ENOENT)?;
                Ok(self.dir_attr(ino, NodeClass::Box(b.kind), o, p.created_ms))
            }
            Key::Entry { id, .. } => {
                let e = self.entry(*id).map_err(stale)?;
                Ok(self.entry_attr(ino, &e, o))
            }
            Key::Draft { .. } => Err(ENOENT),
        }
    }

    pub(super) fn keys_text(&self, user: i64) -> Result<Vec<u8>> {
        let mut text = String::new();
        for k in self.store.public_keys(user)? {
            text.push_str(k.trim_end());
            text.push('\n');
        }
        Ok(text.into_bytes())
    }

    /// Looks up `name` in folder `parent`.
    pub fn lookup(&self, c: &Caller, parent: u64, name: &str) -> Result<Attr> {
        let pkey = self.key(parent)?;
        let o = self.check_access(c, &pkey)?;
        let key = self.child_key(&pkey, name)?;
        // A user folder itself shows its owner and mode to everybody, as /home/<user> does
        // (the kernel then refuses everything inside it to other users by those bits).
        let o = match (&pkey, &key) {
            (Key::Root, Key::Home(u)) => self.owner(*u)?,
            _ => o,
        };
        let ino = self.ino(key.clone());
        let attr = self.attr_of(ino, &key, &o);
        if attr.is_err() {
            lock(&self.inodes).drop_if_unused(ino);
        }
        attr
    }

    /// `stat` of an inode.
    pub fn getattr(&self, c: &Caller, ino: u64) -> Result<Attr> {
        let key = self.key(ino)?;
        let o = match key {
            Key::Home(u) => self.owner(u)?,
            _ => self.check_access(c, &key)?,
        };
        self.attr_of(ino, &key, &o)
    }

    // ---- listing -------------------------------------------------------------------------

    /// The folder's items, each of whose inodes stays known until the listing is released
    /// (`Inodes::unlist` for every item).
    pub(super) fn list(&self, ino: u64, key: &Key, o: &Owner) -> Result<Vec<DirItem>> {
        let mut names: Vec<Key> = Vec::new();
        let mut items = Vec::new();
        let parent_attr = self.attr_of(ino, key, o)?;
        if parent_attr.kind != Kind::Dir {
            return Err(Errno::new(libc::ENOTDIR));
        }
        {
            let mut inodes = lock(&self.inodes);
            inodes.list(ino);
            inodes.list(ino);
        }
        items.push(DirItem {
            name: ".".into(),
            attr: parent_attr,
        });
        items.push(DirItem {
            name: "..".into(),
            attr: parent_attr,
        });
        match key {
            Key::Root => {
                for u in self.store.users()? {
                    let uo = Owner {
                        uid: u.uid,
                        gid: u.gid,
                        quota: u.quota,
                    };
                    let ino = self.listed_ino(Key::Home(u.id));
                    items.push(DirItem {
                        name: u.name.clone(),
                        attr: self.dir_attr(ino, NodeClass::UserHome, &uo, u.created_ms),
                    });
                }
                return Ok(items);
            }
            Key::Home(u) => {
                names.push(Key::Ssh(*u));
                names.push(Key::Gateway(*u));
            }
            Key::Ssh(u) => names.push(Key::Keys(*u)),
            Key::Gateway(u) => {
                for s in self.store.stations(Some(*u))? {
                    names.push(Key::Station {
                        user: *u,
                        station: s.id,
                    });
                }
            }
            Key::Station { user, station } => {
                let mut seen = std::collections::BTreeSet::new();
                for p in self.store.partners(Some(*user))? {
                    if seen.insert(p.as2_id.clone()) {
                        names.push(Key::Partner {
                            user: *user,
                            station: *station,
                            as2: p.as2_id,
                        });
                    }
                }
            }
            Key::Partner { user, station, as2 } | Key::Test { user, station, as2 } => {
                let (prod, test) = self.partner_ids(*user, as2)?;
                let in_test = matches!(key, Key::Test { .. });
                let partner = if in_test { test } else { prod };
                if let Some(p) = partner {
                    for kind in BoxKind::ALL {
                        names.push(Key::Box {
                            user: *user,
                            b: BoxRef {
                                station_id: *station,
                                partner_id: p,
                                kind,
                            },
                        });
                    }
                }
                if !in_test && test.is_some() {
                    names.push(Key::Test {
                        user: *user,
                        station: *station,
                        as2: as2.clone(),
                    });
                }
            }
            Key::Box { .. } | Key::Entry { .. } => {
                let (b, folder, _) = self.box_dir(key)?.ok_or(ENOENT)?;
                let user = key.user().unwrap_or(0);
                let drafts = self.drafts_in(b, folder);
                let now = now_ms();
                let shadowed: std::collections::HashSet<u64> =
                    drafts.iter().map(|d| d.ino).collect();
                for e in self.store.entries(b, folder)? {
                    if !mailbox::visible(&e, now) {
                        continue;
                    }
                    let key = Key::Entry { user, id: e.id };
                    if lock(&self.inodes)
                        .find(&key)
                        .is_some_and(|i| shadowed.contains(&i))
                    {
                        continue;
                    }
                    let ino = self.listed_ino(key);
                    items.push(DirItem {
                        name: e.name.clone(),
                        attr: self.entry_attr(ino, &e, o),
                    });
                }
                for d in drafts {
                    let name = d.name();
                    lock(&self.inodes).list(d.ino);
                    items.push(DirItem {
                        name,
                        attr: self.draft_attr(&d, o),
                    });
                }
                return Ok(items);
            }
            _ => return Err(Errno::new(libc::ENOTDIR)),
        }
        for k in names {
            let name = self.key_name(&k)?;
            let ino = self.listed_ino(k.clone());
            match self.attr_of(ino, &k, o) {
                Ok(attr) => items.push(DirItem { name, attr }),
                Err(_) => lock(&self.inodes).unlist(ino),
            }
        }
        Ok(items)
    }

    /// The inode of `key`, held by a listing from the moment it exists (a concurrent
    /// release of another listing must not drop it between the two).
    fn listed_ino(&self, key: Key) -> u64 {
        let mut inodes = lock(&self.inodes);
        let ino = inodes.ino(key);
        inodes.list(ino);
        ino
    }

    pub(super) fn key_name(&self, key: &Key) -> Result<String> {
        Ok(match key {
            Key::Ssh(_) => SSH_DIR.into(),
            Key::Keys(_) => KEYS_FILE.into(),
            Key::Gateway(_) => GATEWAY_DIR.into(),
            Key::Station { station, .. } => {
                self.store.station_by_id(*station)?.ok_or(ENOENT)?.as2_id
            }
            Key::Partner { as2, .. } => as2.clone(),
            Key::Test { .. } => TEST_DIR.into(),
            Key::Box { b, .. } => b.kind.name().into(),
            _ => return Err(ENOENT),
        })
    }
}
