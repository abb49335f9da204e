//! Property tests of the filesystem core against a reference model of one outbox: random
//! sequences of uploads, renames and deletions must leave the listing, the contents and the
//! queued messages exactly as the model says. No kernel involved, so they run anywhere.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::core::{Caller, Kind, MailboxFs, RenameMode};
use crate::config::Config;
use crate::store::{InboxLayout, Store};

const UID: u32 = 4242;

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Closed under a temporary name: writable, not sent.
    Held,
    /// Picked up: read-only, part of a queued message.
    Sent,
}

#[derive(Debug, Default)]
struct Model {
    files: BTreeMap<String, (Vec<u8>, State)>,
    /// Contents of the queued messages, in order.
    queued: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone)]
enum Op {
    Upload(usize, Vec<u8>),
    Rename(usize, usize),
    Unlink(usize),
}

const NAMES: [&str; 6] = ["a.edi", "b.xml", "c.edi.filepart", "d.part", ".e", "f.TMP"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0..NAMES.len(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(n, d)| Op::Upload(n, d)),
        (0..NAMES.len(), 0..NAMES.len()).prop_map(|(a, b)| Op::Rename(a, b)),
        (0..NAMES.len()).prop_map(Op::Unlink),
    ]
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    fs: MailboxFs,
    outbox: u64,
    c: Caller,
}

fn fixture() -> Fixture {
    fixture_with_quota(None)
}

fn fixture_with_quota(quota: Option<u64>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::init(dir.path()).unwrap());
    let u = store.add_user("modeluser", UID, UID, quota).unwrap();
    store
        .add_station(u.id, "ST", InboxLayout::PerMessage)
        .unwrap();
    store.add_partner(u.id, "PA", false, None).unwrap();
    let mut config = Config::default();
    config.outbox.linger_secs = 3600.0;
    let fs = MailboxFs::new(store.clone(), config);
    let c = Caller {
        uid: UID,
        gid: UID,
        pid: std::process::id(),
    };
    let mut ino = fs.root();
    for part in ["modeluser", "as2gateway", "ST", "PA", "outbox"] {
        ino = fs.lookup(&c, ino, part).unwrap().ino;
        // As the kernel does with an entry it keeps.
        fs.remember(ino);
    }
    Fixture {
        _dir: dir,
        store,
        fs,
        outbox: ino,
        c,
    }
}

fn is_temp(name: &str) -> bool {
    crate::names::is_temp_name(name)
}

impl Fixture {
    fn upload(&self, name: &str, data: &[u8]) -> Result<(), i32> {
        let (_, fh) = self
            .fs
            .create(&self.c, self.outbox, name, true)
            .map_err(|e| e.code)?;
        if !data.is_empty() {
            self.fs.write(fh, 0, data).map_err(|e| e.code)?;
        }
        let r = self.fs.flush(&self.c, fh).map_err(|e| e.code);
        self.fs.release(&self.c, fh);
        r
    }

    fn read(&self, name: &str) -> Vec<u8> {
        let a = self.fs.lookup(&self.c, self.outbox, name).unwrap();
        let fh = self.fs.open(&self.c, a.ino, false, false).unwrap();
        let data = self.fs.read(fh, 0, 1 << 20).unwrap();
        self.fs.release(&self.c, fh);
        data
    }

    fn listing(&self) -> Vec<(String, bool)> {
        let fh = self.fs.opendir(&self.c, self.outbox).unwrap();
        let items = self.fs.dir_items(fh).unwrap();
        self.fs.release(&self.c, fh);
        let mut v: Vec<(String, bool)> = items
            .iter()
            .filter(|i| i.name != "." && i.name != "..")
            .map(|i| {
                assert_eq!(i.attr.kind, Kind::File);
                (i.name.clone(), i.attr.mode & 0o200 != 0)
            })
            .collect();
        v.sort();
        v
    }
}

fn apply(model: &mut Model, op: &Op) -> Result<(), i32> {
    match op {
        Op::Upload(n, data) => {
            let name = NAMES[*n].to_owned();
            if let Some((_, State::Sent)) = model.files.get(&name) {
                return Err(libc::EACCES);
            }
            if is_temp(&name) {
                model.files.insert(name, (data.clone(), State::Held));
            } else {
                model.queued.push((name.clone(), data.clone()));
                model.files.insert(name, (data.clone(), State::Sent));
            }
            Ok(())
        }
        Op::Rename(a, b) => {
            let (from, to) = (NAMES[*a].to_owned(), NAMES[*b].to_owned());
            let Some((data, state)) = model.files.get(&from).cloned() else {
                return Err(libc::ENOENT);
            };
            if from == to {
                return Ok(());
            }
            if state == State::Sent {
                return Err(libc::EACCES);
            }
            if let Some((_, State::Sent)) = model.files.get(&to) {
                return Err(libc::EACCES);
            }
            model.files.remove(&from);
            if is_temp(&to) {
                model.files.insert(to, (data, State::Held));
            } else {
                model.queued.push((to.clone(), data.clone()));
                model.files.insert(to, (data, State::Sent));
            }
            Ok(())
        }
        Op::Unlink(n) => match model.files.remove(NAMES[*n]) {
            Some(_) => Ok(()),
            None => Err(libc::ENOENT),
        },
    }
}

fn run(f: &Fixture, op: &Op) -> Result<(), i32> {
    match op {
        Op::Upload(n, data) => f.upload(NAMES[*n], data),
        Op::Rename(a, b) => {
            f.fs.rename(
                &f.c,
                f.outbox,
                NAMES[*a],
                f.outbox,
                NAMES[*b],
                RenameMode::Replace,
            )
            .map_err(|e| e.code)
        }
        Op::Unlink(n) => f.fs.unlink(&f.c, f.outbox, NAMES[*n]).map_err(|e| e.code),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn outbox_matches_the_model(ops in proptest::collection::vec(op(), 1..25)) {
        let f = fixture();
        let mut model = Model::default();
        for op in &ops {
            let expected = apply(&mut model, op);
            let got = run(&f, op);
            prop_assert_eq!(got, expected, "{:?}", op);
            let want: Vec<(String, bool)> = model
                .files
                .iter()
                .map(|(n, (_, s))| (n.clone(), *s == State::Held))
                .collect();
            prop_assert_eq!(f.listing(), want);
            for (name, (data, _)) in &model.files {
                prop_assert_eq!(&f.read(name), data, "content of {}", name);
            }
        }
        let mut messages = f.store.messages(None, 1000).unwrap();
        messages.reverse();
        prop_assert_eq!(messages.len(), model.queued.len());
        for (m, (name, data)) in messages.iter().zip(&model.queued) {
            prop_assert_eq!(m.state, crate::store::MessageState::Queued);
            prop_assert_eq!(&m.files[0].name, name);
            prop_assert_eq!(&m.files[0].sha256, &crate::store::sha256_hex(data));
        }
    }
}

#[test]
fn other_users_get_eacces_inside_a_tree_even_for_stat() {
    let f = fixture();
    let stranger = Caller {
        uid: UID + 1,
        gid: UID + 1,
        pid: std::process::id(),
    };
    assert_eq!(
        f.fs.getattr(&stranger, f.outbox).unwrap_err().code,
        libc::EACCES
    );
    // The user folder itself is visible (as /home/<user> is); nothing in it is.
    let home = f.fs.lookup(&stranger, f.fs.root(), "modeluser").unwrap();
    assert_eq!((home.uid, home.mode), (0, 0o750));
    assert_eq!(
        f.fs.lookup(&stranger, home.ino, "as2gateway")
            .unwrap_err()
            .code,
        libc::EACCES
    );
    assert_eq!(
        f.fs.opendir(&stranger, home.ino).unwrap_err().code,
        libc::EACCES
    );
}

#[test]
fn quota_refuses_the_write_and_discards_the_upload() {
    let f = fixture_with_quota(Some(100));
    let (_, fh) = f.fs.create(&f.c, f.outbox, "big.edi", true).unwrap();
    assert_eq!(
        f.fs.write(fh, 0, &[0u8; 101]).unwrap_err().code,
        libc::EDQUOT
    );
    assert_eq!(f.fs.flush(&f.c, fh).unwrap_err().code, libc::EDQUOT);
    f.fs.release(&f.c, fh);
    assert!(f.listing().is_empty());
    assert!(f.store.messages(None, 10).unwrap().is_empty());
    let s = f.fs.statfs(&f.c, f.outbox).unwrap();
    assert_eq!(s.blocks, 1);
}
