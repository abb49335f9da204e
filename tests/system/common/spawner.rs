//! Runs every process the harness starts (CLI calls, the mount, helpers) from a separate
//! helper process that never holds a descriptor on a mount.
//!
//! Why: the tests run in parallel threads of one process, and a child forked from it gets
//! a copy of every descriptor that other threads hold open on their mounts at that moment.
//! When the child closes them (close-on-exec inside `execve`, or at exit), the kernel sends
//! a FUSE flush for each, from the child's pid. To the mount that is a close of the file by
//! another process, which can pick the file up (or hold it as interrupted) while the test
//! still writes it, or (flush from inside `execve`) wedge the mount. Tests that want exactly
//! that do it on purpose; every other spawn goes through this helper.
//!
//! The helper is the test binary itself (tests/system/main.rs), started (before any fixture exists) with the
//! ignored test `zz_spawn_server` selected and `AS2BOX_SPAWN_SERVER=1`; requests and
//! responses are JSON lines over its stdin/stdout.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const MARK: &str = "@@SPAWN ";
const READY: &str = "@@SPAWN-READY";

#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum Request {
    /// Run to completion (killed after the timeout), capturing output.
    Run {
        args: Vec<String>,
        env: Vec<(String, String)>,
        ids: Option<(u32, u32)>,
        timeout_ms: u64,
    },
    /// Start in the background with stdout and stderr appended to a file.
    Spawn {
        args: Vec<String>,
        env: Vec<(String, String)>,
        ids: Option<(u32, u32)>,
        log: String,
    },
    /// Wait up to the timeout for a spawned process to exit.
    Wait { pid: u32, timeout_ms: u64 },
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Response {
    pub error: Option<String>,
    pub pid: u32,
    /// Set when the process has exited.
    pub exited: bool,
    pub raw_status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Response {
    pub fn status(&self) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        ExitStatus::from_raw(self.raw_status)
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    id: u64,
    body: T,
}

/// In a test binary without the `zz_spawn_server` stub, the helper cannot start: the
/// harness then spawns directly, closing inherited descriptors before `execve`.
static LOCAL: OnceLock<bool> = OnceLock::new();
static LOCAL_CHILDREN: OnceLock<Mutex<HashMap<u32, Child>>> = OnceLock::new();

struct Client {
    stdin: Mutex<ChildStdin>,
    pending: Mutex<HashMap<u64, Sender<Response>>>,
    next: AtomicU64,
    _child: Mutex<Child>,
}

static CLIENT: OnceLock<Client> = OnceLock::new();

/// Starts the helper (idempotent). Call before any test opens a file on a mount.
pub fn start() {
    CLIENT.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "zz_spawn_server",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("AS2BOX_SPAWN_SERVER", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start the spawn helper");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        // Wait for the helper's hello; without it (no stub in this binary) go local.
        let mut ready = false;
        let mut line = String::new();
        while stdout.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if line.contains(READY) {
                ready = true;
                break;
            }
            line.clear();
        }
        let _ = LOCAL.set(!ready);
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                // libtest may print "test zz_spawn_server ... " before the first reply.
                let Some(at) = line.find(MARK) else { continue };
                let json = &line[at + MARK.len()..];
                let env: Envelope<Response> = serde_json::from_str(json).expect("helper reply");
                let client = CLIENT.get().unwrap();
                if let Some(tx) = client.pending.lock().unwrap().remove(&env.id) {
                    let _ = tx.send(env.body);
                }
            }
        });
        Client {
            stdin: Mutex::new(stdin),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            _child: Mutex::new(child),
        }
    });
}

/// Sends a request to the helper and waits for its answer.
pub fn call(req: Request) -> Response {
    start();
    if LOCAL.get() == Some(&true) {
        let r = handle(req, LOCAL_CHILDREN.get_or_init(Default::default), true);
        if let Some(e) = &r.error {
            panic!("spawn: {e}");
        }
        return r;
    }
    let client = CLIENT.get().unwrap();
    let id = client.next.fetch_add(1, Ordering::SeqCst);
    let (tx, rx) = channel();
    client.pending.lock().unwrap().insert(id, tx);
    {
        let mut w = client.stdin.lock().unwrap();
        let line = serde_json::to_string(&Envelope { id, body: req }).unwrap();
        writeln!(w, "{line}").expect("spawn helper is gone");
        w.flush().unwrap();
    }
    let r = rx
        .recv_timeout(Duration::from_secs(900))
        .expect("no answer from the spawn helper");
    if let Some(e) = &r.error {
        panic!("spawn helper: {e}");
    }
    r
}

// ---------------------------------------------------------------------------------------
// The helper's side
// ---------------------------------------------------------------------------------------

/// Body of the `zz_spawn_server` test of the system-test binary: serves requests when started
/// as the helper, does nothing otherwise.
pub fn serve_if_helper() {
    if std::env::var_os("AS2BOX_SPAWN_SERVER").is_none() {
        return;
    }
    let out = std::sync::Arc::new(Mutex::new(std::io::stdout()));
    let children: std::sync::Arc<Mutex<HashMap<u32, Child>>> = Default::default();
    {
        let mut o = out.lock().unwrap();
        let _ = writeln!(o, "\n{READY}");
        let _ = o.flush();
    }
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let env: Envelope<Request> = match serde_json::from_str(&line) {
            Ok(e) => e,
            Err(_) => continue,
        };
        let out = out.clone();
        let children = children.clone();
        std::thread::spawn(move || {
            let body = handle(env.body, &children, false);
            let line = serde_json::to_string(&Envelope { id: env.id, body }).unwrap();
            let mut o = out.lock().unwrap();
            let _ = writeln!(o, "{MARK}{line}");
            let _ = o.flush();
        });
    }
    // stdin closed: the test process is gone. Leave spawned processes to the fixtures'
    // stale sweep.
    std::process::exit(0);
}

fn build(
    args: &[String],
    env: &[(String, String)],
    ids: Option<(u32, u32)>,
    close_fds: bool,
) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(&args[0]);
    if close_fds {
        unsafe {
            cmd.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            });
        }
    }
    cmd.args(&args[1..]).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some((uid, gid)) = ids {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn handle(req: Request, children: &Mutex<HashMap<u32, Child>>, close_fds: bool) -> Response {
    use std::os::unix::process::ExitStatusExt;
    let err = |e: String| Response {
        error: Some(e),
        ..Response::default()
    };
    match req {
        Request::Run {
            args,
            env,
            ids,
            timeout_ms,
        } => {
            let mut cmd = build(&args, &env, ids, close_fds);
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => return err(format!("cannot run {args:?}: {e}")),
            };
            let mut so = child.stdout.take().unwrap();
            let mut se = child.stderr.take().unwrap();
            let t1 = std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = so.read_to_end(&mut v);
                v
            });
            let t2 = std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = se.read_to_end(&mut v);
                v
            });
            let deadline = Instant::now() + Duration::from_millis(timeout_ms);
            let status = loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break s;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break child.wait().unwrap();
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            Response {
                pid: child.id(),
                exited: true,
                raw_status: status.into_raw(),
                stdout: t1.join().unwrap(),
                stderr: t2.join().unwrap(),
                ..Response::default()
            }
        }
        Request::Spawn {
            args,
            env,
            ids,
            log,
        } => {
            let file = match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
            {
                Ok(f) => f,
                Err(e) => return err(format!("cannot open {log}: {e}")),
            };
            let mut cmd = build(&args, &env, ids, close_fds);
            cmd.stdout(file.try_clone().unwrap()).stderr(file);
            match cmd.spawn() {
                Ok(c) => {
                    let pid = c.id();
                    children.lock().unwrap().insert(pid, c);
                    Response {
                        pid,
                        ..Response::default()
                    }
                }
                Err(e) => err(format!("cannot start {args:?}: {e}")),
            }
        }
        Request::Wait { pid, timeout_ms } => {
            let deadline = Instant::now() + Duration::from_millis(timeout_ms);
            loop {
                {
                    let mut map = children.lock().unwrap();
                    let Some(c) = map.get_mut(&pid) else {
                        return err(format!("no child {pid}"));
                    };
                    if let Some(s) = c.try_wait().unwrap() {
                        map.remove(&pid);
                        return Response {
                            pid,
                            exited: true,
                            raw_status: s.into_raw(),
                            ..Response::default()
                        };
                    }
                }
                if Instant::now() >= deadline {
                    return Response {
                        pid,
                        ..Response::default()
                    };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
