#!/usr/bin/env python3
"""Benchmark of `as2box serve` against pyas2lib in the same run (run it through
scripts/bench-daemon, as root: it mounts, creates two system accounts and removes them).

Prints, for 1 MiB messages signed (sha256) and encrypted (aes256-cbc) with a signed
synchronous MDN, over loopback:

* received per second: the same pre-built messages POSTed by C client threads to as2box
  and to a pyas2lib receiver (pyas2lib parses, verifies, decrypts and signs the MDN);
* sent per second: as2box sending what is put into an outbox through the mount, and
  pyas2lib building and POSTing the same number of messages, both to the same as2box
  receiver (so both figures include as2box's receiving work);
* the latency from the close() of a file in an outbox to the first byte of its POST
  arriving at the partner (p50, p99), measured outside as2box;
* the crypto floor of one received message, from `openssl speed` in the same run: the
  RSA key-transport decrypt, AES-256-CBC decrypt of 1 MiB, one SHA-256 pass over 1 MiB (the
  signature's digest; the MIC is the digest of the same bytes, so a second pass is waste,
  not floor), the signature's RSA verify and the RSA signature of the MDN. The floor rate
  is what all cores do at that cost alone (cores / floor seconds), with nothing left for
  HTTP, MIME, storage or the client generating the load on the same machine;
* one large message (1 GiB unless --large-mib) put into an outbox through the mount, sent
  by the daemon to its own other station and received by it: the time, and the daemon's
  peak RSS (VmHWM, reset just before; the goal is 128 MiB).

`--perf DIR` records `perf record -g` of the daemon (and the mount while sending) during
the two throughput phases into DIR, for `perf report`.

Not a test: nothing here fails on a figure.
"""
import argparse
import importlib.metadata
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = str(REPO / "target/release/as2box")
sys.path.insert(0, str(REPO / "tests/peers"))
import pyas2_peer  # noqa: E402
from pyas2lib import Mdn, Message, Organization, Partner  # noqa: E402

pyas2_peer.emit = lambda obj: None  # the peer's per-message report is not wanted here

USERS = ("as2bench-a", "as2bench-b")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Setup:
    """A state folder, a mount, a daemon and two users whose stations are partners."""

    def __init__(self, work):
        self.work = work
        self.env = dict(os.environ, AS2BOX_STATE_DIR=str(work / "state"),
                        AS2BOX_CONFIG=str(work / "as2box.toml"), RUST_LOG="warn")
        self.procs = []
        self.mnt = work / "mnt"
        self.mnt.mkdir()
        self.port = free_port()
        (work / "as2box.toml").write_text(
            "[outbox]\nlinger_secs = 2\nbatch_quiet_secs = 10\nmax_bytes = 4294967296\n"
            f"[serve]\nhttp_listen = \"127.0.0.1:{self.port}\"\n"
            f"public_url = \"http://127.0.0.1:{self.port}\"\n")

    def cli(self, *args):
        r = subprocess.run([BIN, *args], env=self.env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"as2box {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def keypair(self, name):
        key, crt = self.work / f"{name}.key", self.work / f"{name}.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                        "-subj", f"/CN={name}", "-keyout", key, "-out", crt],
                       check=True, capture_output=True)
        pem = self.work / f"{name}.pem"
        pem.write_bytes(key.read_bytes() + crt.read_bytes())
        return pem, crt

    def start(self):
        for u in USERS:  # left over from an interrupted run
            subprocess.run([BIN, "user", "remove", u, "--force"], env=self.env, capture_output=True)
        self.cli("init")
        (self.work / "pass").write_text("bench passphrase\n")
        for u in USERS:
            self.cli("user", "add", u, "--private-key-out", str(self.work / f"{u}.key"),
                     "--passphrase-file", str(self.work / "pass"))
        self.cli("station", "add", "--user", USERS[0], "BOXA")
        self.cli("station", "add", "--user", USERS[1], "BOXB")
        for s in ("BOXA", "BOXB"):
            self.cli("station", "set", s, "--generate-cert")
        keys = Path(self.env["AS2BOX_STATE_DIR"]) / "keys"
        self.cert = {s: keys / f"{s}.cert.pem" for s in ("BOXA", "BOXB")}
        url = f"http://127.0.0.1:{self.port}/as2"
        profile = ["--sign", "sha256", "--encrypt", "aes256-cbc", "--mdn", "sync", "--mdn-signed", "yes"]
        self.cli("partner", "add", "--user", USERS[0], "BOXB")
        self.cli("partner", "set", "--user", USERS[0], "BOXB", "--url", url, "--cert", str(self.cert["BOXB"]), *profile)
        self.cli("partner", "add", "--user", USERS[1], "BOXA")
        self.cli("partner", "set", "--user", USERS[1], "BOXA", "--url", url, "--cert", str(self.cert["BOXA"]), *profile)
        # pyas2lib's identity towards BOXA (sending to us), and a pyas2lib receiver.
        self.peer_pem, self.peer_crt = self.keypair("pyas2peer")
        self.rx_pem, self.rx_crt = self.keypair("pyas2rx")
        self.cli("partner", "add", "--user", USERS[0], "PEER")
        self.cli("partner", "set", "--user", USERS[0], "PEER", "--url", "http://127.0.0.1:9/none",
                 "--cert", str(self.peer_crt), *profile)
        self.spawn("mount", [BIN, "mount", str(self.mnt)])
        deadline = time.time() + 20
        while f" {self.mnt} " not in Path("/proc/mounts").read_text():
            if time.time() > deadline:
                raise SystemExit("the mount did not come up; see " + str(self.work / "mount.log"))
            time.sleep(0.05)
        self.spawn("serve", [BIN, "serve"])
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise SystemExit("the daemon did not listen; see " + str(self.work / "serve.log"))
                time.sleep(0.05)

    def spawn(self, name, argv):
        log = open(self.work / f"{name}.log", "wb")
        self.procs.append(subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                           stdout=log, stderr=log))

    def box(self, user, station, partner):
        return self.mnt / user / "as2gateway" / station / partner

    def stop(self):
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True)
        for u in USERS:
            subprocess.run([BIN, "user", "remove", u, "--force"], env=self.env, capture_output=True)


def org_partner(key_pem, name, partner_name, partner_cert):
    key = Path(key_pem).read_bytes()
    org = Organization(as2_name=name, sign_key=key, decrypt_key=key, domain="bench.test")
    cert = Path(partner_cert).read_bytes()
    partner = Partner(as2_name=partner_name, verify_cert=cert, encrypt_cert=cert, validate_certs=False,
                      sign=True, digest_alg="sha256", encrypt=True, enc_alg="aes_256_cbc",
                      mdn_mode="SYNC", mdn_digest_alg="sha256")
    return org, partner


def build(org, partner, payloads):
    out = []
    for i, data in enumerate(payloads):
        m = Message(sender=org, receiver=partner)
        m.build(data, filename=f"bench{i}.bin", content_type="application/octet-stream")
        out.append(m)
    return out


def post(port, path, headers, body):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.request("POST", path, body=body, headers=headers)
    r = c.getresponse()
    resp = (r.status, dict(r.getheaders()), r.read())
    c.close()
    return resp


def raw(headers, body):
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n" + body


def check_mdns(messages, responses):
    by_id = {m.message_id: m for m in messages}
    bad = 0
    for status, headers, body in responses:
        if status != 200:
            bad += 1
            continue
        mdn = Mdn()
        st, _ = mdn.parse(raw(headers, body), find_message_cb=lambda mid, rcpt: by_id.get(mid))
        bad += st != "processed"
    return bad


def timed_posts(port, path, messages, clients):
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        responses = list(ex.map(lambda m: post(port, path, dict(m.headers), m.content), messages))
    return time.perf_counter() - start, responses


def bench_receive(s, payloads, clients):
    # as2box: pyas2lib (as PEER) -> BOXA.
    org, to_boxa = org_partner(s.peer_pem, "PEER", "BOXA", s.cert["BOXA"])
    msgs = build(org, to_boxa, payloads)
    t_box, resp = timed_posts(s.port, "/as2", msgs, clients)
    bad_box = check_mdns(msgs, resp)
    # pyas2lib receiver (as PYRX, knowing PEER's certificate) on its own port.
    args = pyas2_peer.parser().parse_args(["--key", str(s.rx_pem), "--partner-cert", str(s.peer_crt),
                                           "--name", "PYRX", "--partner-name", "PEER"])
    peer = pyas2_peer.Peer(args)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), pyas2_peer.make_handler(peer))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    org, to_rx = org_partner(s.peer_pem, "PEER", "PYRX", s.rx_crt)
    msgs = build(org, to_rx, payloads)
    t_py, resp = timed_posts(srv.server_address[1], "/as2", msgs, clients)
    bad_py = check_mdns(msgs, resp)
    srv.shutdown()
    return t_box, bad_box, t_py, bad_py


def as_user(user, script, **kw):
    # The system Python: the virtual environment may live where the user cannot read.
    return subprocess.Popen(["/usr/bin/python3", "-c", script], user=user, group=user,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kw)


def delivered_count(s, user, name_prefix):
    out = json.loads(s.cli("messages", "list", "--user", user, "--json"))
    states = [m["state"] for m in out if m["direction"] == "out" and m["name"].startswith(name_prefix)]
    return states.count("delivered"), states.count("failed")


def bench_send(s, payloads, clients):
    n = len(payloads)
    # as2box: files put into BOXA's outbox towards BOXB, sent by the daemon, received by it.
    src = s.work / "payloads"
    src.mkdir()
    for i, data in enumerate(payloads):
        (src / f"send{i}.bin").write_bytes(data)
    os.chmod(src, 0o755)
    outbox = s.box(USERS[0], "BOXA", "BOXB") / "outbox"
    writer = (
        "import shutil, sys\n"
        f"for i in range({n}):\n"
        f"    shutil.copyfile('{src}/send%d.bin' % i, '{outbox}/send%d.bin' % i)\n"
    )
    start = time.perf_counter()
    w = as_user(USERS[0], writer)
    w.communicate()
    if w.returncode != 0:
        raise SystemExit("writing into the outbox failed")
    while True:
        done, failed = delivered_count(s, USERS[0], "send")
        if done + failed >= n:
            break
        time.sleep(0.05)
    t_box = time.perf_counter() - start
    # pyas2lib: build + POST + verify the MDN, to the same as2box receiver.
    org, to_boxa = org_partner(s.peer_pem, "PEER", "BOXA", s.cert["BOXA"])

    def one(data):
        m = Message(sender=org, receiver=to_boxa)
        m.build(data, filename="py.bin", content_type="application/octet-stream")
        r = post(s.port, "/as2", dict(m.headers), m.content)
        return check_mdns([m], [r])

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        bad_py = sum(ex.map(one, payloads))
    t_py = time.perf_counter() - start
    return t_box, failed, t_py, bad_py


class FirstByteSink:
    """A partner that notes when the first byte of each POST arrives and answers 200."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.arrivals = []
        self.cond = threading.Condition()
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self):
        while True:
            conn, _ = self.sock.accept()
            first = conn.recv(65536)
            t = time.time()
            data = first
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            conn.close()
            with self.cond:
                self.arrivals.append(t)
                self.cond.notify_all()


def bench_latency(s, samples):
    sink = FirstByteSink()
    s.cli("partner", "add", "--user", USERS[0], "SINK")
    s.cli("partner", "set", "--user", USERS[0], "SINK", "--url", f"http://127.0.0.1:{sink.port}/as2",
          "--cert", str(s.cert["BOXB"]), "--sign", "sha256", "--encrypt", "aes256-cbc", "--mdn", "none")
    outbox = s.box(USERS[0], "BOXA", "SINK") / "outbox"
    # One writer process for all samples: it writes a file, reports the time right after
    # close(), and waits for "next" so that samples do not overlap.
    # A random pause before each file: otherwise each write would start right after the
    # previous POST, in step with the daemon's queue polling, and every sample would see
    # the same phase of it.
    writer = (
        "import random, sys, time, os\n"
        f"for i in range({samples}):\n"
        "    time.sleep(random.random() * 0.2)\n"
        f"    with open('{outbox}/lat%d.edi' % i, 'wb') as f:\n"
        "        f.write(os.urandom(4096))\n"
        "    print(time.time(), flush=True)\n"
        "    sys.stdin.readline()\n"
    )
    w = as_user(USERS[0], writer)
    lat = []
    for i in range(samples):
        closed = float(w.stdout.readline())
        with sink.cond:
            if not sink.cond.wait_for(lambda: len(sink.arrivals) > i, timeout=30):
                raise SystemExit(f"sample {i} never reached the partner")
            lat.append(sink.arrivals[i] - closed)
        w.stdin.write("next\n")
        w.stdin.flush()
    w.wait()
    return sorted(lat)


def openssl_speed(*args):
    """`openssl speed -mr` figures: {name: ops or bytes per second}."""
    r = subprocess.run(["openssl", "speed", "-mr", "-seconds", "1", *args],
                       capture_output=True, text=True, check=True)
    out = {}
    for line in r.stdout.splitlines():
        f = line.split(":")
        if line.startswith("+F:"):  # +F:<n>:<name>:<bytes/s per block size>...
            out[f[2]] = float(f[3])
        elif line.startswith("+F2:"):  # +F2:<n>:<bits>:<sign/s>:<verify/s>
            out["rsa-sign"], out["rsa-verify"] = float(f[3]), float(f[4])
    return out


def crypto_floor(size):
    """Seconds of crypto one received message needs at least (see the module docs), and
    the parts."""
    aes = openssl_speed("-bytes", str(size), "-decrypt", "-evp", "aes-256-cbc")["AES-256-CBC"]
    sha = openssl_speed("-bytes", str(size), "-evp", "sha256")["sha256"]
    rsa = openssl_speed("rsa2048")
    parts = {
        "rsa2048 decrypt (key transport)": 1 / rsa["rsa-sign"],  # a private-key operation
        "aes-256-cbc decrypt 1 MiB": size / aes,
        "sha256 1 MiB": size / sha,
        "rsa2048 verify": 1 / rsa["rsa-verify"],
        "rsa2048 sign (MDN)": 1 / rsa["rsa-sign"],
    }
    return sum(parts.values()), parts


class Perf:
    """`perf record` of some processes while a phase runs, when asked for."""

    def __init__(self, out_dir, name, pids):
        self.proc = None
        if out_dir:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            # BENCH_STRACE=1: count the system calls (and their time) instead.
            argv = (os.environ["BENCH_STRACE"].split() + ["-o", f"{out_dir}/{name}.strace"]
                    + [x for p in pids for x in ("-p", str(p))]
                    if os.environ.get("BENCH_STRACE") else
                    ["perf", "record", "-q", "-F", "1999", "-g", "-o", f"{out_dir}/{name}.data",
                     "-p", ",".join(str(p) for p in pids)])
            self.proc = subprocess.Popen(argv,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc:
            self.proc.send_signal(2)
            self.proc.wait(60)


def peak_rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmHWM for the daemon")


def bench_large(s, mib):
    """One file of `mib` MiB put into BOXA's outbox through the mount: the daemon sends it
    (signed, encrypted) to BOXB, i.e. to itself, and receives it: one large message sent
    and one received by the same `serve`, whose peak RSS is reset just before."""
    serve_pid = s.procs[1].pid
    src = s.work / "large.bin"
    with open(src, "wb") as f:
        chunk = random.Random(7).randbytes(1 << 20)
        for _ in range(mib):
            f.write(chunk)
    os.chmod(src, 0o644)
    outbox = s.box(USERS[0], "BOXA", "BOXB") / "outbox"
    Path(f"/proc/{serve_pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    before = peak_rss_mib(serve_pid)
    start = time.perf_counter()
    w = as_user(USERS[0], f"import shutil; shutil.copyfile('{src}', '{outbox}/large.bin')")
    w.communicate()
    if w.returncode != 0:
        raise SystemExit("writing the large file into the outbox failed")
    while True:
        done, failed = delivered_count(s, USERS[0], "large")
        if done + failed >= 1:
            break
        time.sleep(0.2)
    elapsed = time.perf_counter() - start
    src.unlink()
    return elapsed, failed, before, peak_rss_mib(serve_pid)


def pct(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))]


def main():
    global BIN
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--messages", type=int, default=40, help="messages per measurement (default 40)")
    ap.add_argument("-c", "--clients", type=int, default=4, help="concurrent HTTP clients (default 4)")
    ap.add_argument("--samples", type=int, default=100, help="latency samples (default 100)")
    ap.add_argument("--binary", default=BIN, help="the as2box to measure (default: this tree's release build)")
    ap.add_argument("--only", choices=("receive", "send", "latency", "large"), help="run one measurement only")
    ap.add_argument("--large-mib", type=int, default=1024,
                    help="size of the large message, sent and received by the daemon (default 1024)")
    ap.add_argument("--perf", metavar="DIR", help="record perf profiles of the daemon into DIR")
    a = ap.parse_args()
    BIN = a.binary
    base = Path("/srv/as2box-bench")
    base.mkdir(exist_ok=True)
    os.chmod(base, 0o755)
    work = Path(tempfile.mkdtemp(dir=base))
    os.chmod(work, 0o755)
    s = Setup(work)
    try:
        s.start()
        rnd = random.Random(42)
        payloads = [rnd.randbytes(1 << 20) for _ in range(a.messages)]
        print(f"as2box daemon vs pyas2lib {importlib.metadata.version('pyas2lib')}: "
              f"{a.messages} messages of 1 MiB, signed sha256 + aes256-cbc, signed sync MDN, "
              f"{a.clients} clients, loopback")
        floor, parts = crypto_floor(1 << 20)
        cores = os.cpu_count()
        floor_rate = cores / floor
        print(f"crypto floor per received message (openssl speed, this run): {floor * 1000:.2f} ms = "
              + " + ".join(f"{k} {v * 1000:.3f}" for k, v in parts.items()))
        print(f"floor rate: {cores} cores / {floor * 1000:.2f} ms = {floor_rate:.0f} msg/s")
        serve_pid, mount_pid = s.procs[1].pid, s.procs[0].pid
        if a.only in (None, "receive"):
            with Perf(a.perf, "receive", [serve_pid]):
                t_box, bad_box, t_py, bad_py = bench_receive(s, payloads, a.clients)
            rate = a.messages / t_box
            print(f"received/s  as2box {rate:7.1f}   pyas2lib {a.messages / t_py:7.1f}   "
                  f"ratio {t_py / t_box:5.1f}x   (bad MDNs: as2box {bad_box}, pyas2lib {bad_py})   "
                  f"as2box / floor rate {rate / floor_rate:.2f}")
        if a.only in (None, "send"):
            with Perf(a.perf, "send", [serve_pid, mount_pid]):
                t_box, bad_box, t_py, bad_py = bench_send(s, payloads, a.clients)
            print(f"sent/s      as2box {a.messages / t_box:7.1f}   pyas2lib {a.messages / t_py:7.1f}   "
                f"ratio {t_py / t_box:5.1f}x   (failed: as2box {bad_box}, pyas2lib {bad_py}; "
                f"as2box: put through the mount, both received by as2box)")
        if a.only in (None, "latency"):
            lat = bench_latency(s, a.samples)
            print(f"outbox close -> first byte of POST ({len(lat)} samples, 4 KiB): "
                  f"p50 {pct(lat, 50) * 1000:.0f} ms, p99 {pct(lat, 99) * 1000:.0f} ms, "
                  f"max {lat[-1] * 1000:.0f} ms")
        if a.only in (None, "large"):
            t, failed, before, peak = bench_large(s, a.large_mib)
            print(f"one {a.large_mib} MiB message sent and received by serve: {t:.1f} s "
                  f"({a.large_mib / t:.0f} MiB/s, put through the mount to delivered){' FAILED' if failed else ''}; "
                  f"serve peak RSS {peak:.0f} MiB (was {before:.0f} MiB before it; goal <= 128 MiB)")
    finally:
        s.stop()
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
