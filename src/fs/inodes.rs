//! The inode table: numbers handed to the kernel for the lifetime of one mount, each naming
//! a node of the tree by a key that the core can resolve against the store.

use std::collections::HashMap;

use crate::store::BoxRef;

/// What an inode stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// The mount root.
    Root,
    /// `/<user>`.
    Home(i64),
    /// `/<user>/.ssh`.
    Ssh(i64),
    /// `/<user>/.ssh/authorized_keys`.
    Keys(i64),
    /// `/<user>/as2gateway`.
    Gateway(i64),
    /// A station folder.
    Station {
        /// Owner.
        user: i64,
        /// Station row.
        station: i64,
    },
    /// A partner folder (holding the production boxes and/or `test/`).
    Partner {
        /// Owner.
        user: i64,
        /// Station row.
        station: i64,
        /// Partner AS2 id.
        as2: String,
    },
    /// A partner's `test/` folder.
    Test {
        /// Owner.
        user: i64,
        /// Station row.
        station: i64,
        /// Partner AS2 id.
        as2: String,
    },
    /// A box folder.
    Box {
        /// Owner.
        user: i64,
        /// Which box.
        b: BoxRef,
    },
    /// A stored file or folder in a box.
    Entry {
        /// Owner.
        user: i64,
        /// Entry row.
        id: i64,
    },
    /// A file being written (not yet in the store).
    Draft {
        /// Owner.
        user: i64,
        /// Draft number.
        id: u64,
    },
}

impl Key {
    /// The user whose tree this node is in (`None` for the root).
    pub fn user(&self) -> Option<i64> {
        match self {
            Key::Root => None,
            Key::Home(u) | Key::Ssh(u) | Key::Keys(u) | Key::Gateway(u) => Some(*u),
            Key::Station { user, .. }
            | Key::Partner { user, .. }
            | Key::Test { user, .. }
            | Key::Box { user, .. }
            | Key::Entry { user, .. }
            | Key::Draft { user, .. } => Some(*user),
        }
    }
}

/// Bidirectional map between inode numbers and keys. Numbers are never reused while
/// mounted. A number lives while the kernel holds references to it (entry replies it
/// accepted, dropped by `forget`) or a listing handed it out; then it is forgotten, so
/// that listing large folders does not grow the table for the life of the mount.
#[derive(Debug)]
pub struct Inodes {
    by_ino: HashMap<u64, Node>,
    by_key: HashMap<Key, u64>,
    next: u64,
    shrunk: bool,
}

#[derive(Debug)]
struct Node {
    key: Key,
    /// The kernel's lookup count.
    lookups: u64,
    /// Open listings that name it.
    listings: u32,
}

/// The root's inode number (FUSE's fixed 1).
pub const ROOT_INO: u64 = 1;

impl Default for Inodes {
    fn default() -> Self {
        let mut t = Inodes {
            by_ino: HashMap::new(),
            by_key: HashMap::new(),
            next: ROOT_INO + 1,
            shrunk: false,
        };
        t.by_ino.insert(
            ROOT_INO,
            Node {
                key: Key::Root,
                lookups: 1,
                listings: 0,
            },
        );
        t.by_key.insert(Key::Root, ROOT_INO);
        t
    }
}

impl Inodes {
    /// The inode of `key`, allocating one the first time.
    pub fn ino(&mut self, key: Key) -> u64 {
        if let Some(&ino) = self.by_key.get(&key) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_ino.insert(
            ino,
            Node {
                key: key.clone(),
                lookups: 0,
                listings: 0,
            },
        );
        self.by_key.insert(key, ino);
        ino
    }

    /// The inode of `key`, if it has one (the kernel can know only those).
    pub fn find(&self, key: &Key) -> Option<u64> {
        self.by_key.get(key).copied()
    }

    /// The key of `ino`.
    pub fn key(&self, ino: u64) -> Option<Key> {
        self.by_ino.get(&ino).map(|n| n.key.clone())
    }

    /// How many inodes are known.
    pub fn len(&self) -> usize {
        self.by_ino.len()
    }

    /// The kernel took one more reference (it accepted an entry reply). False when `ino`
    /// is no longer known: a `forget` of the kernel's previous reference to it came in
    /// between finding the number and this call, so the entry must be looked up again
    /// (under a new number) rather than handed out unknown (the kernel would get ESTALE).
    pub fn remember(&mut self, ino: u64) -> bool {
        match self.by_ino.get_mut(&ino) {
            Some(n) => {
                n.lookups += 1;
                true
            }
            None => false,
        }
    }

    /// The kernel dropped `count` references; `busy` keeps the number even when none are
    /// left (an upload in progress is found by it).
    pub fn forget(&mut self, ino: u64, count: u64, busy: bool) {
        if let Some(n) = self.by_ino.get_mut(&ino) {
            n.lookups = n.lookups.saturating_sub(count);
        }
        if !busy {
            self.drop_if_unused(ino);
        }
    }

    /// A listing names `ino` until [`Inodes::unlist`].
    pub fn list(&mut self, ino: u64) {
        if let Some(n) = self.by_ino.get_mut(&ino) {
            n.listings += 1;
        }
    }

    /// A listing that named `ino` is closed.
    pub fn unlist(&mut self, ino: u64) {
        if let Some(n) = self.by_ino.get_mut(&ino) {
            n.listings = n.listings.saturating_sub(1);
        }
        self.drop_if_unused(ino);
    }

    /// Forgets `ino` if neither the kernel nor a listing refers to it.
    pub fn drop_if_unused(&mut self, ino: u64) {
        if ino == ROOT_INO {
            return;
        }
        if let Some(n) = self.by_ino.get(&ino) {
            if n.lookups == 0 && n.listings == 0 {
                let key = n.key.clone();
                self.by_ino.remove(&ino);
                if self.by_key.get(&key) == Some(&ino) {
                    self.by_key.remove(&key);
                }
                self.shrink_if_sparse();
            }
        }
    }

    /// Gives back the maps' room once most of it is empty (after a huge folder was
    /// listed and forgotten), so that memory follows what the kernel holds.
    fn shrink_if_sparse(&mut self) {
        const MIN_CAPACITY: usize = 4096;
        if self.by_ino.capacity() > MIN_CAPACITY && self.by_ino.len() * 4 < self.by_ino.capacity() {
            self.by_ino.shrink_to(self.by_ino.len() * 2);
            self.by_key.shrink_to(self.by_key.len() * 2);
            self.shrunk = true;
        }
    }

    /// Whether the maps gave memory back since the last call.
    pub fn take_shrunk(&mut self) -> bool {
        std::mem::take(&mut self.shrunk)
    }

    /// Points an existing inode at a new key (a draft that became an entry keeps its inode,
    /// so the kernel's open files and cached names stay valid).
    pub fn rekey(&mut self, ino: u64, key: Key) {
        let Some(node) = self.by_ino.get_mut(&ino) else {
            return;
        };
        let old = std::mem::replace(&mut node.key, key.clone());
        if self.by_key.get(&old) == Some(&ino) {
            self.by_key.remove(&old);
        }
        if let Some(other) = self.by_key.insert(key, ino) {
            if other != ino {
                self.by_ino.remove(&other);
            }
        }
    }

    /// Forgets a key that no longer exists.
    pub fn remove_key(&mut self, key: &Key) {
        if let Some(ino) = self.by_key.remove(key) {
            self.by_ino.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inodes_are_stable_and_rekeyable() {
        let mut t = Inodes::default();
        assert_eq!(t.key(ROOT_INO), Some(Key::Root));
        let a = t.ino(Key::Home(1));
        assert_eq!(t.ino(Key::Home(1)), a);
        let d = t.ino(Key::Draft { user: 1, id: 7 });
        t.rekey(d, Key::Entry { user: 1, id: 9 });
        assert_eq!(t.key(d), Some(Key::Entry { user: 1, id: 9 }));
        assert_eq!(t.ino(Key::Entry { user: 1, id: 9 }), d);
        assert_ne!(t.ino(Key::Draft { user: 1, id: 7 }), d);
    }

    #[test]
    fn an_inode_lives_while_the_kernel_or_a_listing_holds_it() {
        let mut t = Inodes::default();
        let a = t.ino(Key::Home(1));
        t.list(a);
        assert!(t.remember(a));
        assert!(t.remember(a));
        t.unlist(a);
        assert_eq!(t.key(a), Some(Key::Home(1)), "the kernel still holds it");
        t.forget(a, 1, false);
        assert_eq!(t.key(a), Some(Key::Home(1)), "one reference left");
        t.forget(a, 1, true);
        assert_eq!(t.key(a), Some(Key::Home(1)), "busy");
        t.forget(a, 0, false);
        assert_eq!(t.key(a), None);
        assert_eq!(t.find(&Key::Home(1)), None);
        let b = t.ino(Key::Home(1));
        assert_ne!(a, b, "numbers are not reused");
        t.list(b);
        t.unlist(b);
        assert_eq!(t.len(), 1, "only listed: gone with the listing");
        t.forget(ROOT_INO, 5, false);
        assert_eq!(t.key(ROOT_INO), Some(Key::Root));
    }

    #[test]
    fn a_number_forgotten_before_it_is_counted_is_not_counted() {
        let mut t = Inodes::default();
        let a = t.ino(Key::Home(1));
        assert!(t.remember(a));
        // The lookup finds `a`; the kernel's forget of its earlier reference comes first.
        let found = t.ino(Key::Home(1));
        t.forget(a, 1, false);
        assert!(
            !t.remember(found),
            "a dropped number must not be handed out"
        );
        let again = t.ino(Key::Home(1));
        assert_ne!(again, a, "looked up again, under a new number");
        assert!(t.remember(again));
    }
}
