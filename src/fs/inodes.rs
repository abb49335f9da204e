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
/// mounted.
#[derive(Debug)]
pub struct Inodes {
    by_ino: HashMap<u64, Key>,
    by_key: HashMap<Key, u64>,
    next: u64,
}

/// The root's inode number (FUSE's fixed 1).
pub const ROOT_INO: u64 = 1;

impl Default for Inodes {
    fn default() -> Self {
        let mut t = Inodes {
            by_ino: HashMap::new(),
            by_key: HashMap::new(),
            next: ROOT_INO + 1,
        };
        t.by_ino.insert(ROOT_INO, Key::Root);
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
        self.by_ino.insert(ino, key.clone());
        self.by_key.insert(key, ino);
        ino
    }

    /// The inode of `key`, if it has one (the kernel can know only those).
    pub fn find(&self, key: &Key) -> Option<u64> {
        self.by_key.get(key).copied()
    }

    /// The key of `ino`.
    pub fn key(&self, ino: u64) -> Option<Key> {
        self.by_ino.get(&ino).cloned()
    }

    /// Points an existing inode at a new key (a draft that became an entry keeps its inode,
    /// so the kernel's open files and cached names stay valid).
    pub fn rekey(&mut self, ino: u64, key: Key) {
        if let Some(old) = self.by_ino.insert(ino, key.clone()) {
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
}
