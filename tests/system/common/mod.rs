//! Harness for the black-box filesystem tests (`tests/fs_*.rs`).
//!
//! Every test gets a [`Fixture`]: its own state folder, config file and mount point under
//! the root-owned `/srv/as2box-test/<unique>/`, its own system users, and a running
//! `as2box mount`. Dropping the fixture (also on panic) stops the mount, unmounts, removes
//! the users and the folders.
//!
//! These tests need root and `/dev/fuse`, and run when `AS2BOX_SYSTEM_TESTS=1` (the rule
//! in skip.rs): then a missing prerequisite is a failure; without it each test prints a
//! `skipping ...` line and passes.
//!
//! File system operations run *as the mailbox user* with real syscalls: [`as_user`] runs a
//! closure in a thread whose credentials (uid, gid, groups) were switched with raw
//! syscalls, which on Linux change only the calling thread.

#![allow(dead_code)]

pub mod ops;
pub mod spawner;

pub mod as2;
pub mod daemon;
pub mod gate;
pub mod skip;
pub mod sshd;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Where the fixtures live: root-owned, 0755, not under /tmp (sshd refuses chroots there).
pub const TEST_ROOT: &str = "/srv/as2box-test";

/// How long one file system operation run through [`Fixture::as_user`] may take before the
/// harness declares the mount hung, kills it (which fails the pending requests) and panics.
pub const OP_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a CLI command may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// `useradd`/`userdel` lock /etc/passwd; tests run in parallel threads, so serialise the
/// commands that create or remove system accounts within this process.
static ACCOUNT_LOCK: Mutex<()> = Mutex::new(());

static COUNTER: AtomicU64 = AtomicU64::new(0);

// ---------------------------------------------------------------------------------------
// Prerequisites
// ---------------------------------------------------------------------------------------

/// True when the system tests run (the rule in [`skip`]); then a missing prerequisite of
/// the mount tests fails the test.
pub fn system_tests_enabled(test: &str) -> bool {
    if !skip::system_tests_on(test) {
        return false;
    }
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("not running as root");
    }
    if !Path::new("/dev/fuse").exists() {
        missing.push("/dev/fuse is missing");
    }
    // Looked up, not run: a fork here would flush other tests' open files (gate.rs).
    if !["/usr/sbin/useradd", "/sbin/useradd"]
        .iter()
        .any(|p| Path::new(p).exists())
    {
        missing.push("useradd is not installed");
    }
    if !missing.is_empty() {
        panic!(
            "AS2BOX_SYSTEM_TESTS is set but {test} cannot run: {}",
            missing.join(", ")
        );
    }
    true
}

// ---------------------------------------------------------------------------------------
// Settings (the config file)
// ---------------------------------------------------------------------------------------

/// The config keys the tests set; rendered to TOML for `--config`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub linger_secs: f64,
    pub batch_quiet_secs: f64,
    pub max_files: Option<u64>,
    pub max_bytes: Option<u64>,
    pub files_hours: Option<f64>,
    pub sweep_secs: Option<f64>,
    /// The state folder on a tmpfs of its own: for tests that need many files fast and
    /// test no durability (fsync costs nothing there).
    pub state_on_tmpfs: bool,
    /// `[mount] passthrough = "off"`: file data through the mount process even where the
    /// kernel offers passthrough (also forced for every test by `AS2BOX_TEST_PASSTHROUGH=off`).
    pub passthrough_off: bool,
}

/// The `[mount]` line that `AS2BOX_TEST_PASSTHROUGH=off` adds to every test's settings, so
/// that the whole suite can be run once over the path through the mount.
pub fn passthrough_override() -> &'static str {
    match std::env::var("AS2BOX_TEST_PASSTHROUGH").as_deref() {
        Ok("off") => "passthrough = \"off\"\n",
        _ => "",
    }
}

impl Default for Settings {
    /// Short enough for tests, long enough that "right after close" is unambiguous.
    fn default() -> Self {
        Settings {
            linger_secs: 10.0,
            batch_quiet_secs: 60.0,
            max_files: None,
            max_bytes: None,
            files_hours: None,
            sweep_secs: None,
            state_on_tmpfs: false,
            passthrough_off: false,
        }
    }
}

impl Settings {
    pub fn toml(&self) -> String {
        let mut s = String::from("[outbox]\n");
        s += &format!("linger_secs = {:?}\n", self.linger_secs);
        s += &format!("batch_quiet_secs = {:?}\n", self.batch_quiet_secs);
        if let Some(v) = self.max_files {
            s += &format!("max_files = {v}\n");
        }
        if let Some(v) = self.max_bytes {
            s += &format!("max_bytes = {v}\n");
        }
        let passthrough = if self.passthrough_off {
            "passthrough = \"off\"\n"
        } else {
            passthrough_override()
        };
        if !passthrough.is_empty() {
            s += "\n[mount]\n";
            s += passthrough;
        }
        if self.files_hours.is_some() || self.sweep_secs.is_some() {
            s += "\n[retention]\n";
            if let Some(v) = self.files_hours {
                s += &format!("files_hours = {v:?}\n");
            }
            if let Some(v) = self.sweep_secs {
                s += &format!("sweep_secs = {v:?}\n");
            }
        }
        s
    }
}

// ---------------------------------------------------------------------------------------
// Users, mailboxes, messages
// ---------------------------------------------------------------------------------------

/// A mailbox user and the system account behind it.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// One station/partner pair of a user, with the paths of its boxes in the mount.
#[derive(Clone, Debug)]
pub struct Mailbox {
    pub user: User,
    pub station: String,
    pub partner: String,
    pub test: bool,
    /// `MNT/<user>/as2gateway/<station>/<partner>` (without `test/`).
    pub partner_dir: PathBuf,
}

impl Mailbox {
    /// The folder holding the three boxes: the partner folder or its `test/`.
    pub fn boxes_dir(&self) -> PathBuf {
        if self.test {
            self.partner_dir.join("test")
        } else {
            self.partner_dir.clone()
        }
    }
    pub fn outbox(&self) -> PathBuf {
        self.boxes_dir().join("outbox")
    }
    pub fn inbox(&self) -> PathBuf {
        self.boxes_dir().join("inbox")
    }
    pub fn failed(&self) -> PathBuf {
        self.boxes_dir().join("failed")
    }
}

/// One entry of `as2box messages list --json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Message {
    pub id: i64,
    pub direction: String,
    pub user: String,
    pub station: String,
    pub partner: String,
    pub test: bool,
    pub name: String,
    pub state: String,
    pub detail: Option<String>,
    pub files: Vec<MessageFile>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct MessageFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

// ---------------------------------------------------------------------------------------
// The fixture
// ---------------------------------------------------------------------------------------

pub struct Fixture {
    /// Name of the test (for messages).
    pub test: String,
    /// `/srv/as2box-test/<unique>`
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    pub config: PathBuf,
    pub mnt: PathBuf,
    pub settings: Settings,
    /// pid of the mount process (a child of the spawn helper).
    mount: Mutex<Option<u32>>,
    /// pid of the running mount process (0 when none) and its FUSE connection, for the
    /// hang watchdog.
    mount_pid: Arc<Watch>,
    users: Mutex<Vec<String>>,
    mount_count: AtomicU64,
    /// Keeps tests that fork directly out while this one has descriptors on its mount; the
    /// last field, so that it is released after the teardown in `Drop`.
    _gate: gate::Pass,
}

impl Fixture {
    /// Creates the folders and config, runs `as2box init` and mounts.
    pub fn new(test: &str, settings: Settings) -> Fixture {
        let fx = Fixture::new_unmounted(test, settings);
        fx.mount();
        fx
    }

    /// Like [`Fixture::new`] but without mounting (for tests that prepare the store first).
    pub fn new_unmounted(test: &str, settings: Settings) -> Fixture {
        let gate = gate::enter(gate::Kind::MountDescriptors);
        // The spawn helper must exist before any test opens a file on a mount.
        spawner::start();
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep_stale_fixtures);

        make_root_dir(Path::new(TEST_ROOT));
        let unique = format!(
            "{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            random_hex(4)
        );
        let dir = Path::new(TEST_ROOT).join(unique);
        make_root_dir(&dir);
        std::fs::write(dir.join("owner.pid"), std::process::id().to_string()).unwrap();
        std::fs::write(dir.join("test-name"), test).unwrap();
        let state_dir = dir.join("state");
        std::fs::create_dir(&state_dir).unwrap();
        std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        if settings.state_on_tmpfs {
            let o = Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    "mode=0700,size=4g",
                    "as2box-test-state",
                ])
                .arg(&state_dir)
                .output()
                .unwrap();
            assert!(o.status.success(), "mount tmpfs: {o:?}");
        }
        let mnt = dir.join("mnt");
        make_root_dir(&mnt);
        make_root_dir(&dir.join("src"));
        let config = dir.join("as2box.toml");
        std::fs::write(&config, settings.toml()).unwrap();

        let fx = Fixture {
            test: test.to_string(),
            dir,
            state_dir,
            config,
            mnt,
            settings,
            mount: Mutex::new(None),
            mount_pid: Arc::new(Watch::default()),
            users: Mutex::new(Vec::new()),
            mount_count: AtomicU64::new(0),
            _gate: gate,
        };
        fx.cli_ok(&["init"]);
        fx
    }

    /// Rewrites the config file (the mount reads it at start: remount to apply).
    pub fn write_settings(&self, settings: &Settings) {
        std::fs::write(&self.config, settings.toml()).unwrap();
    }

    // ----- the CLI -----

    /// `as2box --state-dir .. --config .. ARGS`, with a timeout; returns the output.
    pub fn cli<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let mut all = vec![
            bin().to_string(),
            "--state-dir".into(),
            self.state_dir.to_string_lossy().into_owned(),
            "--config".into(),
            self.config.to_string_lossy().into_owned(),
        ];
        all.extend(
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned()),
        );
        run(&all, &self.env(), None, CLI_TIMEOUT)
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "AS2BOX_STATE_DIR".into(),
                self.state_dir.to_string_lossy().into_owned(),
            ),
            (
                "AS2BOX_CONFIG".into(),
                self.config.to_string_lossy().into_owned(),
            ),
            (
                "RUST_LOG".into(),
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            ),
        ]
    }

    /// Runs the CLI and panics (with its output) unless it succeeds; returns stdout.
    #[track_caller]
    pub fn cli_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.cli(args);
        if !out.status.success() {
            panic!(
                "`as2box {}` failed ({}):\nstdout: {}\nstderr: {}",
                describe(args),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI and parses its stdout as JSON.
    #[track_caller]
    pub fn cli_json<S: AsRef<OsStr>>(&self, args: &[S]) -> serde_json::Value {
        let out = self.cli_ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!(
                "`as2box {}` printed no valid JSON ({e}):\n{out}",
                describe(args)
            )
        })
    }

    /// `as2box messages list --json`.
    #[track_caller]
    pub fn messages(&self) -> Vec<Message> {
        let out = self.cli_ok(&["messages", "list", "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!("`as2box messages list --json` printed unexpected JSON ({e}):\n{out}")
        })
    }

    /// Outgoing messages of one user.
    #[track_caller]
    pub fn out_messages(&self, user: &User) -> Vec<Message> {
        self.messages()
            .into_iter()
            .filter(|m| m.direction == "out" && m.user == user.name)
            .collect()
    }

    /// Adds a user (and its system account) with an optional quota.
    #[track_caller]
    pub fn add_user(&self, quota: Option<u64>) -> User {
        let name = format!("t{}", &random_hex(4)[..7]);
        {
            let _lock = ACCOUNT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            // Record first: a failed `user add` may still have left an account behind.
            self.users.lock().unwrap().push(name.clone());
            let users = self.users.lock().unwrap().join("\n");
            std::fs::write(self.dir.join("users"), users).unwrap();
            let mut args = vec!["user".to_string(), "add".into(), name.clone()];
            if let Some(q) = quota {
                args.push("--quota".into());
                args.push(q.to_string());
            }
            self.cli_ok(&args);
        }
        let (uid, gid) = passwd_ids(&name)
            .unwrap_or_else(|| panic!("`as2box user add {name}` created no system account"));
        User { name, uid, gid }
    }

    /// Adds a station (random id unless given) to a user.
    #[track_caller]
    pub fn add_station(&self, user: &User, layout: Option<&str>) -> String {
        let id = format!("ST{}", random_hex(3).to_uppercase());
        let mut args = vec!["station", "add", "--user", &user.name, &id];
        if let Some(l) = layout {
            args.push("--inbox-layout");
            args.push(l);
        }
        self.cli_ok(&args);
        id
    }

    /// Adds a partner of the given id and type to a user.
    #[track_caller]
    pub fn add_partner_id(&self, user: &User, id: &str, test: bool) {
        let mut args = vec!["partner", "add", "--user", &user.name, id];
        if test {
            args.push("--test");
        }
        args.push("--url");
        args.push("http://127.0.0.1:9/as2");
        self.cli_ok(&args);
    }

    /// Adds a partner with a random id.
    #[track_caller]
    pub fn add_partner(&self, user: &User, test: bool) -> String {
        let id = format!("PA{}", random_hex(3).to_uppercase());
        self.add_partner_id(user, &id, test);
        id
    }

    /// User + station + production partner: the common case.
    #[track_caller]
    pub fn mailbox(&self) -> Mailbox {
        self.mailbox_with(None, None, false)
    }

    /// User (optionally with quota) + station (optionally with a layout) + partner.
    #[track_caller]
    pub fn mailbox_with(&self, quota: Option<u64>, layout: Option<&str>, test: bool) -> Mailbox {
        let user = self.add_user(quota);
        let station = self.add_station(&user, layout);
        let partner = self.add_partner(&user, test);
        self.mailbox_of(&user, &station, &partner, test)
    }

    /// `as2box partner set` for `mb`'s partner with `flags`.
    #[track_caller]
    pub fn partner_set(&self, mb: &Mailbox, flags: &[&str]) {
        let mut args = vec!["partner", "set", "--user", &mb.user.name, &mb.partner];
        if mb.test {
            args.push("--test");
        }
        args.extend_from_slice(flags);
        self.cli_ok(&args);
    }

    pub fn mailbox_of(&self, user: &User, station: &str, partner: &str, test: bool) -> Mailbox {
        Mailbox {
            user: user.clone(),
            station: station.to_string(),
            partner: partner.to_string(),
            test,
            partner_dir: self
                .mnt
                .join(&user.name)
                .join("as2gateway")
                .join(station)
                .join(partner),
        }
    }

    /// Paths of a user's tree.
    pub fn user_dir(&self, user: &User) -> PathBuf {
        self.mnt.join(&user.name)
    }

    /// `as2box deliver` of `files` (name, content) into the mailbox's inbox. Each file is
    /// written under a safe name in the fixture's `src/` folder and named with `--name`.
    #[track_caller]
    pub fn deliver(&self, mb: &Mailbox, files: &[(&str, &[u8])]) {
        let out = self.try_deliver(mb, files);
        if !out.status.success() {
            panic!(
                "`as2box deliver` of {:?} failed ({}):\nstdout: {}\nstderr: {}",
                files.iter().map(|f| f.0).collect::<Vec<_>>(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    pub fn try_deliver(&self, mb: &Mailbox, files: &[(&str, &[u8])]) -> Output {
        let src = self.dir.join("src").join(random_hex(6));
        std::fs::create_dir(&src).unwrap();
        let mut args: Vec<std::ffi::OsString> = vec![
            "deliver".into(),
            "--user".into(),
            mb.user.name.clone().into(),
            "--station".into(),
            mb.station.clone().into(),
            "--partner".into(),
            mb.partner.clone().into(),
        ];
        if mb.test {
            args.push("--test".into());
        }
        let mut paths = Vec::new();
        for (i, (name, data)) in files.iter().enumerate() {
            let p = src.join(format!("file{i}"));
            std::fs::write(&p, data).unwrap();
            paths.push(p);
            args.push("--name".into());
            args.push((*name).into());
        }
        for p in paths {
            args.push(p.into());
        }
        self.cli(&args)
    }

    // ----- the mount -----

    /// Spawns `as2box mount MNT` and waits until the kernel lists the mount.
    #[track_caller]
    pub fn mount(&self) {
        let n = self.mount_count.fetch_add(1, Ordering::SeqCst);
        let log_path = self.dir.join(format!("mount{n}.log"));
        let args = vec![
            bin().to_string(),
            "--state-dir".into(),
            self.state_dir.to_string_lossy().into_owned(),
            "--config".into(),
            self.config.to_string_lossy().into_owned(),
            "mount".into(),
            self.mnt.to_string_lossy().into_owned(),
        ];
        let pid = spawner::call(spawner::Request::Spawn {
            args,
            env: self.env(),
            ids: None,
            log: log_path.to_string_lossy().into_owned(),
        })
        .pid;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Listed and answering: a dead mount stays listed (and may answer stat from
            // the kernel's cache) but fails readdir with ENOTCONN.
            if is_mounted(&self.mnt) && std::fs::read_dir(&self.mnt).is_ok() {
                break;
            }
            let w = wait_pid(pid, Duration::ZERO);
            if w.exited {
                panic!(
                    "`as2box mount {}` exited ({}) before mounting; its log:\n{}",
                    self.mnt.display(),
                    w.status(),
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                wait_pid(pid, Duration::from_secs(10));
                panic!(
                    "`as2box mount {}` did not mount within 30 s; its log:\n{}",
                    self.mnt.display(),
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.mount_pid.pid.store(pid as i32, Ordering::SeqCst);
        self.mount_pid
            .conn
            .store(fuse_connection(&self.mnt).unwrap_or(0), Ordering::SeqCst);
        *self.mount.lock().unwrap() = Some(pid);
    }

    /// pid of the running mount process.
    pub fn mount_pid(&self) -> Option<u32> {
        *self.mount.lock().unwrap()
    }

    /// The log of the latest mount process.
    pub fn mount_log(&self) -> String {
        let n = self.mount_count.load(Ordering::SeqCst);
        if n == 0 {
            return String::new();
        }
        std::fs::read_to_string(self.dir.join(format!("mount{}.log", n - 1))).unwrap_or_default()
    }

    /// Sends `signal` to the mount process and waits for it to exit; returns its status.
    #[track_caller]
    pub fn stop_mount(&self, signal: i32) -> std::process::ExitStatus {
        let pid = self
            .mount
            .lock()
            .unwrap()
            .take()
            .expect("no mount process running");
        self.mount_pid.pid.store(0, Ordering::SeqCst);
        unsafe { libc::kill(pid as i32, signal) };
        let w = wait_pid(pid, Duration::from_secs(30));
        if !w.exited {
            let conn = self.mount_pid.conn.load(Ordering::SeqCst);
            if conn > 0 {
                abort_fuse_connection(conn);
            }
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let w = wait_pid(pid, Duration::from_secs(30));
            panic!(
                "the mount process did not exit within 30 s of signal {signal} (then killed: {:?})",
                w.exited.then(|| w.status())
            );
        }
        w.status()
    }

    /// The hang watchdog's view of the mount (pid, FUSE connection).
    pub fn watch(&self) -> &Arc<Watch> {
        &self.mount_pid
    }

    /// The mount process, if still running, exited by itself?
    pub fn mount_exited(&self) -> Option<std::process::ExitStatus> {
        let pid = (*self.mount.lock().unwrap())?;
        let w = wait_pid(pid, Duration::ZERO);
        if w.exited {
            *self.mount.lock().unwrap() = None;
            Some(w.status())
        } else {
            None
        }
    }

    pub fn is_mounted(&self) -> bool {
        is_mounted(&self.mnt)
    }

    /// `umount -l` of the mount point if the kernel still lists it.
    pub fn lazy_unmount(&self) {
        if is_mounted(&self.mnt) {
            run_quiet(&["umount", "-l", &self.mnt.to_string_lossy()]);
        }
    }

    // ----- acting as a user -----

    /// Runs `f` in a thread with the user's uid, gid and groups (raw syscalls: only that
    /// thread changes). If it takes longer than [`OP_TIMEOUT`], the mount is declared hung:
    /// it is killed (the kernel then fails its pending requests) and the test panics.
    pub fn as_user<R: Send, F: FnOnce() -> R + Send>(&self, user: &User, f: F) -> R {
        as_ids(user.uid, user.gid, &self.mount_pid, f)
    }

    /// Like [`Fixture::as_user`] for any uid/gid (e.g. a uid without an as2box user).
    pub fn as_ids<R: Send, F: FnOnce() -> R + Send>(&self, uid: u32, gid: u32, f: F) -> R {
        as_ids(uid, gid, &self.mount_pid, f)
    }

    /// Runs `f` as root, with the same hang watchdog.
    pub fn as_root<R: Send, F: FnOnce() -> R + Send>(&self, f: F) -> R {
        with_watchdog(&self.mount_pid, f)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            let log = self.mount_log();
            let tail: Vec<&str> = log.lines().rev().take(80).collect();
            eprintln!(
                "--- {}: last lines of the mount log ({}):",
                self.test,
                self.dir.display()
            );
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
            eprintln!("---");
        }
        // 1. Stop the mount.
        let pid = self.mount.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.mount_pid.pid.store(0, Ordering::SeqCst);
        if let Some(pid) = pid {
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            if !wait_pid(pid, Duration::from_secs(10)).exited {
                eprintln!(
                    "{}: mount ignored SIGTERM for 10 s; aborting its connection and killing it",
                    self.test
                );
                let conn = self.mount_pid.conn.load(Ordering::SeqCst);
                if conn > 0 {
                    abort_fuse_connection(conn);
                }
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                wait_pid(pid, Duration::from_secs(10));
            }
        }
        // 2. Unmount if still there.
        self.lazy_unmount();
        if self.settings.state_on_tmpfs {
            if let Ok(c) = std::ffi::CString::new(self.state_dir.as_os_str().as_encoded_bytes()) {
                // SAFETY: plain syscall with a valid C string.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        // 3. Remove the users and their system accounts.
        let users = std::mem::take(&mut *self.users.lock().unwrap_or_else(|e| e.into_inner()));
        {
            let _lock = ACCOUNT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            for name in &users {
                let _ = self.cli(&["user", "remove", name.as_str(), "--force"]);
                remove_account(name);
            }
        }
        // 4. Remove the folders (never while something is still mounted there).
        if is_mounted(&self.mnt) {
            eprintln!(
                "{}: {} is still mounted; leaving {}",
                self.test,
                self.mnt.display(),
                self.dir.display()
            );
        } else if !panicking || std::env::var_os("AS2BOX_KEEP_FAILED").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Credentials and the watchdog
// ---------------------------------------------------------------------------------------

/// What the watchdog needs to unblock a hung mount.
#[derive(Default)]
pub struct Watch {
    pub pid: AtomicI32,
    /// The FUSE connection number (minor device number of the mount), 0 if unknown.
    pub conn: AtomicU32,
}

impl Watch {
    /// Aborts the FUSE connection (every pending request fails with ENOTCONN) and kills the
    /// mount process.
    pub fn abort(&self) {
        let conn = self.conn.load(Ordering::SeqCst);
        if conn > 0 {
            abort_fuse_connection(conn);
        }
        let pid = self.pid.load(Ordering::SeqCst);
        if pid > 0 {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The FUSE connection number of a mount point (the minor of its device, from mountinfo).
pub fn fuse_connection(mnt: &Path) -> Option<u32> {
    let want = mnt.to_string_lossy().replace(' ', "\\040");
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[4] == want)
        .and_then(|f| f[2].split(':').nth(1)?.parse().ok())
}

/// Writes to /sys/fs/fuse/connections/<conn>/abort (mounting fusectl if needed).
pub fn abort_fuse_connection(conn: u32) {
    let dir = Path::new("/sys/fs/fuse/connections");
    if !dir.join(conn.to_string()).exists() {
        run_quiet(&["mount", "-t", "fusectl", "none", "/sys/fs/fuse/connections"]);
    }
    if let Err(e) = std::fs::write(dir.join(conn.to_string()).join("abort"), "1") {
        eprintln!("cannot abort FUSE connection {conn}: {e}");
    }
}

fn as_ids<R: Send, F: FnOnce() -> R + Send>(uid: u32, gid: u32, mount_pid: &Arc<Watch>, f: F) -> R {
    with_watchdog(mount_pid, move || {
        switch_thread_credentials(uid, gid);
        f()
    })
}

/// Changes the credentials of the calling thread only (raw syscalls, not glibc's
/// process-wide wrappers). Call it in a thread that ends afterwards.
pub fn switch_thread_credentials(uid: u32, gid: u32) {
    unsafe {
        let groups = [gid as libc::gid_t];
        let r = libc::syscall(libc::SYS_setgroups, 1 as libc::size_t, groups.as_ptr());
        assert_eq!(r, 0, "setgroups: {}", io::Error::last_os_error());
        let r = libc::syscall(libc::SYS_setresgid, gid, gid, gid);
        assert_eq!(r, 0, "setresgid: {}", io::Error::last_os_error());
        let r = libc::syscall(libc::SYS_setresuid, uid, uid, uid);
        assert_eq!(r, 0, "setresuid: {}", io::Error::last_os_error());
    }
}

fn with_watchdog<R: Send, F: FnOnce() -> R + Send>(mount_pid: &Arc<Watch>, f: F) -> R {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let worker = s.spawn(move || {
            let r = f();
            let _ = tx.send(());
            r
        });
        let mut hung = false;
        match rx.recv_timeout(OP_TIMEOUT) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {} // panicked
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                hung = true;
                eprintln!(
                    "a file system operation took more than {OP_TIMEOUT:?}: aborting the FUSE connection and killing the mount to unblock it"
                );
                mount_pid.abort();
            }
        }
        let r = match worker.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        };
        if hung {
            panic!(
                "a file system operation hung for more than {OP_TIMEOUT:?} (the mount was killed)"
            );
        }
        r
    })
}

// ---------------------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------------------

/// Polls `f` every 50 ms until it returns `Some`, or panics after `timeout` naming `what`.
#[track_caller]
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` until it returns true; returns how long that took, or panics after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    wait_for(what, timeout, || f().then_some(()));
    start.elapsed()
}

// ---------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_as2box")
}

/// A `Command` whose child closes every inherited descriptor above 2 before `execve`.
///
/// Tests run in parallel threads of one process, so a spawned child inherits whatever file
/// descriptors on the mount other threads hold at that moment. Closing them in the child
/// *before* `execve` (instead of letting close-on-exec close them inside `execve`) keeps
/// the harness's own CLI calls independent of how the mount handles a flush from a process
/// that is in the middle of `execve` (see the test
/// `exec_while_an_outbox_file_is_open_does_not_hang_the_mount`).
pub fn command(program: impl AsRef<OsStr>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    cmd
}

fn describe<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| format!("{:?}", a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command through the spawn helper with captured output and a timeout.
pub fn run(
    args: &[String],
    env: &[(String, String)],
    ids: Option<(u32, u32)>,
    timeout: Duration,
) -> Output {
    let r = spawner::call(spawner::Request::Run {
        args: args.to_vec(),
        env: env.to_vec(),
        ids,
        timeout_ms: timeout.as_millis() as u64,
    });
    Output {
        status: r.status(),
        stdout: r.stdout,
        stderr: r.stderr,
    }
}

/// Runs a command through the spawn helper, ignoring its result.
pub fn run_quiet(args: &[&str]) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let _ = run(&args, &[], None, Duration::from_secs(60));
}

/// Waits (through the spawn helper) up to `timeout` for a process it spawned to exit.
pub fn wait_pid(pid: u32, timeout: Duration) -> spawner::Response {
    spawner::call(spawner::Request::Wait {
        pid,
        timeout_ms: timeout.as_millis() as u64,
    })
}

/// Runs a command directly (not through the helper) with captured output and a timeout.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration, what: &str) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let s = child.wait().unwrap();
            eprintln!("{what}: killed after {timeout:?}");
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// Random lowercase hex string of `2 * bytes` digits.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    openssl::rand::rand_bytes(&mut buf).unwrap();
    hex(&buf)
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    for chunk in buf.chunks_mut(1 << 20) {
        openssl::rand::rand_bytes(chunk).unwrap();
    }
    buf
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&openssl::sha::sha256(data))
}

/// uid and gid of a system account, from /etc/passwd.
pub fn passwd_ids(name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
    })
}

/// The passwd line of a system account.
pub fn passwd_line(name: &str) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines()
        .find(|l| l.split(':').next() == Some(name))
        .map(str::to_string)
}

fn group_exists(name: &str) -> bool {
    std::fs::read_to_string("/etc/group")
        .map(|t| t.lines().any(|l| l.split(':').next() == Some(name)))
        .unwrap_or(false)
}

/// Deletes a system account (and its group) left behind; the caller holds ACCOUNT_LOCK.
fn remove_account(name: &str) {
    if passwd_line(name).is_some() {
        run_quiet(&["userdel", name]);
    }
    if group_exists(name) {
        run_quiet(&["groupdel", name]);
    }
}

/// Mount ids (first field of /proc/self/mountinfo) of the mounts on `path`.
pub fn mount_ids(path: &Path) -> Vec<String> {
    let want = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| {
            t.lines()
                .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
                .map(|l| l.split(' ').next().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Is `path` a mount point according to /proc/self/mountinfo?
pub fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| {
            t.lines()
                .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
        })
        .unwrap_or(false)
}

fn make_root_dir(p: &Path) {
    match std::fs::create_dir(p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => panic!("cannot create {}: {e}", p.display()),
    }
    std::os::unix::fs::chown(p, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Cleans up fixtures left by test processes that died without dropping them (killed by a
/// timeout, `kill -9`): unmounts, deletes their system accounts, removes their folders.
fn sweep_stale_fixtures() {
    let Ok(entries) = std::fs::read_dir(TEST_ROOT) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let Ok(pid) = std::fs::read_to_string(dir.join("owner.pid")) else {
            continue;
        };
        let Ok(pid) = pid.trim().parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let mnt = dir.join("mnt");
        if is_mounted(&mnt) {
            run_quiet(&["umount", "-l", &mnt.to_string_lossy()]);
        }
        if let Ok(users) = std::fs::read_to_string(dir.join("users")) {
            let _lock = ACCOUNT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            for u in users.lines().filter(|u| !u.is_empty()) {
                remove_account(u);
            }
        }
        if !is_mounted(&mnt) {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------

/// Is `s` a delivery stamp `YYYYMMDDTHHMMSS.mmmZ-xxxxxx` (SEMANTICS.md "Inbox")?
pub fn stamp_like(s: &str) -> bool {
    // YYYYMMDDTHHMMSS.mmmZ-xxxxxx
    let b = s.as_bytes();
    b.len() == 27
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'.'
        && b[16..19].iter().all(u8::is_ascii_digit)
        && b[19] == b'Z'
        && b[20] == b'-'
        && b[21..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// The symbolic name of an errno, for messages.
pub fn errno_name(e: i32) -> String {
    let known = [
        (libc::EPERM, "EPERM"),
        (libc::ENOENT, "ENOENT"),
        (libc::EIO, "EIO"),
        (libc::EBADF, "EBADF"),
        (libc::EACCES, "EACCES"),
        (libc::EBUSY, "EBUSY"),
        (libc::EEXIST, "EEXIST"),
        (libc::EXDEV, "EXDEV"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EISDIR, "EISDIR"),
        (libc::EINVAL, "EINVAL"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::EROFS, "EROFS"),
        (libc::EMLINK, "EMLINK"),
        (libc::ENAMETOOLONG, "ENAMETOOLONG"),
        (libc::ENOSYS, "ENOSYS"),
        (libc::ENOTEMPTY, "ENOTEMPTY"),
        (libc::ENODATA, "ENODATA"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        (libc::ENOTCONN, "ENOTCONN"),
        (libc::EDQUOT, "EDQUOT"),
        (libc::ETXTBSY, "ETXTBSY"),
    ];
    known
        .iter()
        .find(|(n, _)| *n == e)
        .map(|(_, s)| s.to_string())
        .unwrap_or_else(|| format!("errno {e}"))
}

/// Asserts that `r` failed with exactly `want`.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(r: io::Result<T>, want: i32, what: &str) {
    match r {
        Ok(v) => panic!(
            "{what}: expected {} but it succeeded ({v:?})",
            errno_name(want)
        ),
        Err(e) => {
            let got = e.raw_os_error().unwrap_or(-1);
            assert!(
                got == want,
                "{what}: expected {} but got {} ({e})",
                errno_name(want),
                errno_name(got)
            );
        }
    }
}

/// Asserts that `r` failed with one of `want`.
#[track_caller]
pub fn assert_errno_in<T: std::fmt::Debug>(r: io::Result<T>, want: &[i32], what: &str) {
    let names: Vec<String> = want.iter().map(|e| errno_name(*e)).collect();
    match r {
        Ok(v) => panic!("{what}: expected one of {names:?} but it succeeded ({v:?})"),
        Err(e) => {
            let got = e.raw_os_error().unwrap_or(-1);
            assert!(
                want.contains(&got),
                "{what}: expected one of {names:?} but got {} ({e})",
                errno_name(got)
            );
        }
    }
}

/// Asserts success, showing the errno name on failure.
#[track_caller]
pub fn ok<T>(r: io::Result<T>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!(
            "{what}: failed with {} ({e})",
            errno_name(e.raw_os_error().unwrap_or(-1))
        ),
    }
}

/// Names in a folder, sorted (as root or inside `as_user`).
#[track_caller]
pub fn names(dir: &Path) -> BTreeSet<String> {
    ok(ops::list(dir), &format!("readdir {}", dir.display()))
        .into_iter()
        .collect()
}

/// Builds a set of names from string literals.
pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Mode bits (permission part) and owner of a path.
pub fn perm(md: &std::fs::Metadata) -> (u32, u32, u32) {
    (md.mode() & 0o7777, md.uid(), md.gid())
}

/// Was the process killed by a signal?
pub fn signalled(status: &std::process::ExitStatus) -> Option<i32> {
    status.signal()
}

/// Collects failed checks so that one test run reports every deviation at once; `finish`
/// (or drop) panics listing them all.
#[derive(Default)]
pub struct Checks {
    failures: Vec<String>,
    count: usize,
}

impl Checks {
    pub fn new() -> Checks {
        Checks::default()
    }

    /// Records a failure unless `r` failed with exactly `want`.
    pub fn errno<T: std::fmt::Debug>(&mut self, r: io::Result<T>, want: i32, what: &str) {
        self.count += 1;
        match r {
            Ok(v) => self.failures.push(format!(
                "{what}: expected {} but it succeeded ({})",
                errno_name(want),
                short_debug(&v)
            )),
            Err(e) => {
                let got = e.raw_os_error().unwrap_or(-1);
                if got != want {
                    self.failures.push(format!(
                        "{what}: expected {} but got {}",
                        errno_name(want),
                        errno_name(got)
                    ));
                }
            }
        }
    }

    /// Records a failure unless `r` succeeded.
    pub fn ok<T>(&mut self, r: io::Result<T>, what: &str) -> Option<T> {
        self.count += 1;
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.failures.push(format!(
                    "{what}: failed with {}",
                    errno_name(e.raw_os_error().unwrap_or(-1))
                ));
                None
            }
        }
    }

    /// Records a failure unless `cond`.
    pub fn check(&mut self, cond: bool, what: impl FnOnce() -> String) {
        self.count += 1;
        if !cond {
            self.failures.push(what());
        }
    }

    /// Panics listing every failed check.
    #[track_caller]
    pub fn finish(mut self) {
        let f = std::mem::take(&mut self.failures);
        if !f.is_empty() {
            panic!(
                "{} of {} checks failed:\n  {}",
                f.len(),
                self.count,
                f.join("\n  ")
            );
        }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        if !self.failures.is_empty() && !std::thread::panicking() {
            panic!(
                "{} of {} checks failed (finish() not called):\n  {}",
                self.failures.len(),
                self.count,
                self.failures.join("\n  ")
            );
        }
    }
}

fn short_debug<T: std::fmt::Debug>(v: &T) -> String {
    let s = format!("{v:?}");
    if s.len() > 80 {
        format!("{}...", &s[..80])
    } else {
        s
    }
}
