#!/usr/bin/env python3
"""The pyas2lib driver of as2box's tests and benchmarks, two subcommands:

  pyas2_peer.py serve --key K --partner-cert C [...]
      an AS2 trading partner (below), for the daemon's system tests and
      scripts/bench-daemon (which imports this file and builds a Peer);
  pyas2_peer.py bench-roundtrip KEY_PEM PARTNER_KEY_PEM SIZE ITERATIONS
      times pyas2lib building and parsing a signed (sha256) + AES-256-CBC
      message of SIZE bytes in-process (interpreter start-up excluded) and
      prints the mean seconds per build+parse (benches/as2_throughput.rs).

`serve` listens on 127.0.0.1 only and speaks line-delimited JSON:

* on start it prints  {"event": "listening", "port": N, "mdn_port": M}
  - port N receives AS2 messages (POST any path) and answers the MDN the
    sender asked for: sync in the response, or async (HTTP 200 first, then
    the MDN POSTed to Receipt-Delivery-Option); signed when the request has
    Disposition-Notification-Options.
  - port M receives asynchronous MDNs for messages this peer sent.
* for each message received it prints {"event": "received", ...} with the
  pyas2lib status, MIC, algorithms and each payload's sha256/size/name, plus
  what the peer reads itself: "as2_from", "as2_to", "mdn_url" (the
  Receipt-Delivery-Option, null for none or sync), "cms_type" and "cipher" (the
  outer CMS content type and content-encryption algorithm, as asn1crypto names
  them: pyas2lib reports a cipher only for 3DES).
* after POSTing an async MDN it prints {"event": "mdn-posted", "message_id":
  ..., "url": ..., "status": HTTP status}.
* it reads commands from stdin, one JSON object per line:
    {"cmd": "send", "id": "...", "url": "http://127.0.0.1:P/as2",
     "data_b64": "...", "filename": "x.edi", "content_type": "application/edi-x12",
     "sign": "sha256" | null, "encrypt": "aes_256_cbc" | null, "compress": bool,
     "mdn": "none" | "sync" | "async", "mdn_digest": "sha256" | null,
     "sign_alg": "rsassa_pkcs1v15" | "rsassa_pss", "key_enc_alg": "rsaes_pkcs1v15" | "rsaes_oaep",
     "as2_from": "..." (optional, default --name), "as2_to": "..." (optional, default --partner-name)}
  and answers {"event": "sent", "id": ..., "message_id": ..., "mic": ...,
  "mdn_status": ..., "mdn_detail": ..., "mdn_signed": ..., "mdn_mic": the
  Received-Content-MIC returned}.
    {"cmd": "hold_async_mdns", "as2_to": "X"} keeps the async MDNs of messages
  received for AS2-To X until {"cmd": "release_async_mdns", "as2_to": "X"}
  (each answered {"event": "holding" | "released", "as2_to": X}; a held MDN
  is announced as {"event": "mdn-held", "message_id": ...}).
    {"cmd": "async_mdn_before_answer", "as2_to": "X"} makes the peer POST the
  async MDNs of messages for AS2-To X before it answers their HTTP request
  (answered {"event": "mdn-first", "as2_to": X}).
    {"cmd": "quit"} ends the process (so does EOF on stdin).
  Failure-path additions (tests/system/daemon_failures.rs):
    "post": false in a send command builds and remembers the request without
    POSTing it (answers {"event": "sent", ..., "posted": false}).
    {"cmd": "resend", "id": "...", "times": N, "concurrent": bool} POSTs the
    last request built by a send again, byte for byte (same Message-ID), N
    times (at once when concurrent) and answers {"event": "resent", "id": ...,
    "results": [{"http_status", "mdn_status", "mdn_detail", "disposition",
    "mic", "error"}, ...]}.
    --negative-mdn MODIFIER answers every message with a negative MDN
    (processed/Error: MODIFIER) whatever pyas2lib made of it.
    --no-async-mdn accepts messages asking for an async MDN and never sends it.

Keys: --key (PEM with private key and certificate, or PKCS#12) and
--key-pass for this peer; --partner-cert (PEM) for the other side.
"""
import argparse
import base64
import copy
import hashlib
import http.server
import json
import os
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request

from asn1crypto import cms as asn1_cms
from pyas2lib import Message, Mdn, Organization, Partner

LOCK = threading.Lock()
SENT = {}  # message_id -> Message, for MDN matching
ASYNC_WAIT = {}  # message_id -> (threading.Event, result dict)
HOLD_LOCK = threading.Lock()
HOLD = set()  # AS2-To values whose async MDNs are held
HELD = {}  # AS2-To -> [Mdn]
MDN_FIRST = set()  # AS2-To values whose async MDNs go out before the HTTP answer
LAST_REQUEST = {}  # "request" -> the last request a send built (for resend)


def emit(obj):
    with LOCK:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def outer_cms(headers, body):
    """The outer CMS content type and content-encryption algorithm of an
    encrypted request body (binary or base64), or (None, None)."""
    if "pkcs7-mime" not in (headers.get("Content-Type") or "").lower():
        return None, None
    for data in (body, None):
        try:
            if data is None:
                data = base64.b64decode(body)
            info = asn1_cms.ContentInfo.load(data)
            ctype = info["content_type"].native
            if ctype == "enveloped_data":
                alg = info["content"]["encrypted_content_info"]["content_encryption_algorithm"]
                return ctype, alg["algorithm"].native
            return ctype, None
        except Exception:
            continue
    return None, None


def raw_request(headers, body):
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("utf-8") + b"\r\n" + body


class Peer:
    def __init__(self, args):
        key = open(args.key, "rb").read()
        self.org = Organization(
            as2_name=args.name,
            sign_key=key,
            sign_key_pass=args.key_pass,
            decrypt_key=key,
            decrypt_key_pass=args.key_pass,
            domain="pyas2-peer.test",
        )
        self.partner_cert = open(args.partner_cert, "rb").read()
        self.partner_name = args.partner_name
        self.negative_mdn = args.negative_mdn
        self.no_async_mdn = args.no_async_mdn

    def partner(self, **kw):
        return Partner(
            as2_name=self.partner_name,
            verify_cert=self.partner_cert,
            encrypt_cert=self.partner_cert,
            validate_certs=False,
            **kw,
        )


def make_handler(peer):
    class AS2Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            raw = raw_request(self.headers, body)
            try:
                self.handle_message(raw, body)
            except Exception as e:  # report, never hang the test
                emit({"event": "error", "where": "receive", "error": repr(e), "trace": traceback.format_exc()})
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

        def handle_message(self, raw, body):
            msg = Message()
            status, (exc, _tb), mdn = msg.parse(
                raw,
                find_org_partner_cb=lambda org, partner: (peer.org, peer.partner()),
            )
            cms_type, cipher = outer_cms(self.headers, body)
            payloads = []
            if status == "processed" and msg.payload is not None:
                parts = [msg.payload]
                if msg.payload.is_multipart():
                    parts = [p for p in msg.payload.walk() if not p.is_multipart()]
                for p in parts:
                    data = p.get_payload(decode=True) or b""
                    payloads.append({
                        "filename": p.get_filename(),
                        "content_type": p.get_content_type(),
                        "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    })
            emit({
                "event": "received",
                "message_id": msg.message_id,
                "status": status,
                "error": repr(exc) if exc else None,
                "mic": msg.mic.decode() if msg.mic else None,
                "digest_alg": msg.digest_alg,
                "signed": bool(msg.signed),
                "encrypted": bool(msg.encrypted),
                "enc_alg": msg.enc_alg,
                "compressed": bool(msg.compressed),
                "payloads": payloads,
                "as2_from": self.headers.get("AS2-From"),
                "as2_to": self.headers.get("AS2-To"),
                "mdn_url": self.headers.get("Receipt-Delivery-Option"),
                "cms_type": cms_type,
                "cipher": cipher,
            })
            mdn = adjust_mdn(peer, msg, mdn)
            if mdn is None:
                self.reply(200, {}, b"")
            elif mdn.mdn_mode == "SYNC":
                self.reply(200, mdn.headers, mdn.content)
            elif self.headers.get("AS2-To") in MDN_FIRST:
                post_async_mdn(mdn)
                self.reply(200, {}, b"")
            else:
                self.reply(200, {}, b"")
                to = self.headers.get("AS2-To")
                with HOLD_LOCK:
                    held = to in HOLD
                    if held:
                        HELD.setdefault(to, []).append(mdn)
                if held:
                    emit({"event": "mdn-held", "message_id": mdn.orig_message_id, "as2_to": to})
                else:
                    threading.Thread(target=post_async_mdn, args=(mdn,), daemon=True).start()

        def reply(self, code, headers, body):
            self.send_response(code)
            for k, v in headers.items():
                if k.lower() not in ("content-length", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)

    return AS2Handler


def adjust_mdn(peer, msg, mdn):
    """Applies --negative-mdn and --no-async-mdn to the MDN pyas2lib built."""
    if mdn is None:
        return None
    if peer.no_async_mdn and mdn.mdn_mode != "SYNC":
        return None
    if peer.negative_mdn:
        neg = Mdn(mdn_mode=mdn.mdn_mode, mdn_url=mdn.mdn_url, digest_alg=mdn.digest_alg)
        neg.build(message=msg, status="processed/Error", detailed_status=peer.negative_mdn)
        return neg
    return mdn


def mdn_fields(raw):
    """Disposition and Received-content-MIC of a raw MDN (signed or not), unverified."""
    out = {"disposition": None, "mic": None}
    for line in raw.replace(b"\r\n", b"\n").split(b"\n"):
        low = line.lower()
        if low.startswith(b"disposition:"):
            out["disposition"] = line.split(b":", 1)[1].strip().decode("utf-8", "replace")
        elif low.startswith(b"received-content-mic:"):
            out["mic"] = line.split(b":", 1)[1].strip().decode("utf-8", "replace")
    return out


def post_raw(req):
    """POSTs a remembered request; returns the HTTP status and the parsed MDN."""
    out = {"http_status": None, "error": None}
    r = urllib.request.Request(req["url"], data=req["body"], headers=req["headers"], method="POST")
    try:
        with urllib.request.urlopen(r, timeout=60) as resp:
            body = resp.read()
            out["http_status"] = resp.status
            raw = raw_request(dict(resp.headers.items()), body)
    except urllib.error.HTTPError as e:
        out["http_status"] = e.code
        out["error"] = e.read().decode("utf-8", "replace")
        return out
    except Exception as e:  # connection refused or reset: reported, not raised
        out["error"] = repr(e)
        return out
    out.update(parse_mdn(raw))
    out.update(mdn_fields(raw))
    return out


def resend(cmd):
    req = LAST_REQUEST.get("request")
    if req is None:
        emit({"event": "resent", "id": cmd.get("id"), "error": "nothing was sent yet"})
        return
    times = int(cmd.get("times", 1))
    results = [None] * times

    def one(i):
        results[i] = post_raw(req)

    if cmd.get("concurrent"):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(times)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i in range(times):
            one(i)
    emit({"event": "resent", "id": cmd.get("id"), "message_id": req["message_id"], "results": results})


def post_async_mdn(mdn):
    try:
        req = urllib.request.Request(mdn.mdn_url, data=mdn.content, headers=dict(mdn.headers), method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            emit({"event": "mdn-posted", "message_id": mdn.orig_message_id, "url": mdn.mdn_url, "status": r.status})
    except Exception as e:
        emit({"event": "error", "where": "async-mdn", "error": repr(e)})


def make_mdn_handler(peer):
    class MdnHandler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            result = parse_mdn(raw_request(self.headers, body))
            waiter = ASYNC_WAIT.get(result.get("orig_message_id"))
            if waiter:
                waiter[1].update(result)
                waiter[0].set()
            else:
                emit({"event": "error", "where": "async-mdn-in", "error": "unknown message", **result})

    return MdnHandler


def parse_mdn(raw):
    mdn = Mdn()
    status, detail = mdn.parse(raw, find_message_cb=lambda mid, rcpt: SENT.get(mid))
    signed = b"multipart/signed" in raw.split(b"\r\n\r\n", 1)[0].lower()
    # The Received-Content-MIC as returned (pyas2lib compares it but does not say with what).
    mdn_mic = None
    try:
        for part in (mdn.payload.walk() if mdn.payload is not None else []):
            if part.get_content_type() == "message/disposition-notification":
                mdn_mic = part.get_payload()[-1].get("Received-Content-MIC")
    except Exception:  # an unreadable report: mdn_status already says so
        pass
    return {
        "orig_message_id": mdn.orig_message_id,
        "mdn_status": status,
        "mdn_detail": detail,
        "mdn_signed": signed,
        "mdn_mic": mdn_mic,
    }


def send(peer, cmd, mdn_port):
    data = base64.b64decode(cmd["data_b64"])
    partner = peer.partner(
        sign=bool(cmd.get("sign")),
        digest_alg=cmd.get("sign") or "sha256",
        encrypt=bool(cmd.get("encrypt")),
        enc_alg=cmd.get("encrypt") or "tripledes_192_cbc",
        compress=bool(cmd.get("compress")),
        mdn_mode={"none": None, "sync": "SYNC", "async": "ASYNC"}[cmd.get("mdn", "sync")],
        mdn_digest_alg=cmd.get("mdn_digest"),
        sign_alg=cmd.get("sign_alg") or "rsassa_pkcs1v15",
        key_enc_alg=cmd.get("key_enc_alg") or "rsaes_pkcs1v15",
    )
    if cmd.get("as2_to"):
        partner.as2_name = cmd["as2_to"]
    sender = peer.org
    if cmd.get("as2_from"):
        # A shallow copy keeps the loaded keys (the constructor would reload them).
        sender = copy.copy(peer.org)
        sender.as2_name = cmd["as2_from"]
    # "mdn_url": where the async MDN is to go instead of this peer (the test then watches
    # for it itself, and the send does not wait for it).
    sender.mdn_url = cmd.get("mdn_url") or f"http://127.0.0.1:{mdn_port}/mdn"
    msg = Message(sender=sender, receiver=partner)
    msg.build(
        data,
        filename=cmd.get("filename"),
        content_type=cmd.get("content_type", "application/edi-consent"),
        # "message_id": reuse a Message-ID (the part before "@"), as a buggy sender would.
        message_id=cmd.get("message_id"),
    )
    SENT[msg.message_id] = msg
    waiter = None
    if cmd.get("mdn") == "async" and not cmd.get("mdn_url"):
        waiter = (threading.Event(), {})
        ASYNC_WAIT[msg.message_id] = waiter
    headers = dict(msg.headers)
    LAST_REQUEST["request"] = {
        "url": cmd["url"], "headers": headers, "body": msg.content, "message_id": msg.message_id,
    }
    if cmd.get("post") is False:
        emit({"event": "sent", "id": cmd.get("id"), "message_id": msg.message_id,
              "mic": msg.mic.decode() if msg.mic else None, "posted": False})
        return
    req = urllib.request.Request(cmd["url"], data=msg.content, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        resp_body = r.read()
        resp_headers = dict(r.headers.items())
    out = {
        "event": "sent",
        "id": cmd.get("id"),
        "message_id": msg.message_id,
        "mic": msg.mic.decode() if msg.mic else None,
        "digest_alg": msg.digest_alg,
    }
    if cmd.get("mdn") == "sync":
        out.update(parse_mdn(raw_request(resp_headers, resp_body)))
    elif waiter:
        if not waiter[0].wait(60):
            out["mdn_status"] = "timeout"
        else:
            out.update(waiter[1])
    emit(out)


def serve_arguments(ap):
    ap.add_argument("--key", required=True)
    ap.add_argument("--key-pass", default=None)
    ap.add_argument("--partner-cert", required=True)
    ap.add_argument("--name", default="pyas2peer")
    ap.add_argument("--partner-name", default="as2box")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--negative-mdn", default=None, metavar="MODIFIER")
    ap.add_argument("--no-async-mdn", action="store_true")
    return ap


def parser():
    """The `serve` command line (also used by scripts/bench_daemon.py to build a Peer)."""
    return serve_arguments(argparse.ArgumentParser(prog="pyas2_peer.py serve"))


def bench_roundtrip(args):
    """Mean seconds of one pyas2lib build + parse of a signed and encrypted message."""
    k1, k2 = open(args.key, "rb").read(), open(args.partner_key, "rb").read()

    def cert_of(pem):
        return pem[pem.index(b"-----BEGIN CERTIFICATE-----"):]

    sender = Organization(as2_name="a", sign_key=k1, decrypt_key=k1, domain="x")
    receiver_org = Organization(as2_name="b", sign_key=k2, decrypt_key=k2, domain="x")
    to_b = Partner(as2_name="b", verify_cert=cert_of(k2), encrypt_cert=cert_of(k2), validate_certs=False,
                   sign=True, digest_alg="sha256", encrypt=True, enc_alg="aes_256_cbc")
    from_a = Partner(as2_name="a", verify_cert=cert_of(k1), encrypt_cert=cert_of(k1), validate_certs=False)
    data = os.urandom(args.size)
    total = 0.0
    for _ in range(args.iterations):
        t = time.perf_counter()
        m = Message(sender=sender, receiver=to_b)
        m.build(data, filename="f.bin", content_type="application/octet-stream")
        raw = m.headers_str + b"\r\n" + m.content
        r = Message()
        status, exc, _ = r.parse(raw, find_org_partner_cb=lambda o, p: (receiver_org, from_a))
        total += time.perf_counter() - t
        if status != "processed" or r.content != data:
            print(f"pyas2lib round trip failed: {status} {exc}", file=sys.stderr)
            sys.exit(1)
    print(f"{total / args.iterations:.6f}")


def main():
    ap = argparse.ArgumentParser(description="pyas2lib driver of as2box's tests and benchmarks")
    sub = ap.add_subparsers(dest="command", required=True)
    serve_arguments(sub.add_parser("serve", help="an AS2 trading partner driven by JSON lines"))
    bench = sub.add_parser("bench-roundtrip", help="time pyas2lib building and parsing a message")
    bench.add_argument("key", help="PEM with this side's private key and certificate")
    bench.add_argument("partner_key", help="PEM with the other side's private key and certificate")
    bench.add_argument("size", type=int, help="payload bytes")
    bench.add_argument("iterations", type=int)
    args = ap.parse_args()
    if args.command == "bench-roundtrip":
        bench_roundtrip(args)
    else:
        serve(args)


def serve(args):
    peer = Peer(args)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(peer))
    mdn_srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_mdn_handler(peer))
    for s in (srv, mdn_srv):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    emit({"event": "listening", "port": srv.server_address[1], "mdn_port": mdn_srv.server_address[1]})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        if cmd.get("cmd") == "quit":
            break
        if cmd.get("cmd") == "hold_async_mdns":
            with HOLD_LOCK:
                HOLD.add(cmd["as2_to"])
            emit({"event": "holding", "as2_to": cmd["as2_to"]})
        if cmd.get("cmd") == "release_async_mdns":
            with HOLD_LOCK:
                HOLD.discard(cmd["as2_to"])
                held = HELD.pop(cmd["as2_to"], [])
            for mdn in held:
                threading.Thread(target=post_async_mdn, args=(mdn,), daemon=True).start()
            emit({"event": "released", "as2_to": cmd["as2_to"], "count": len(held)})
        if cmd.get("cmd") == "async_mdn_before_answer":
            MDN_FIRST.add(cmd["as2_to"])
            emit({"event": "mdn-first", "as2_to": cmd["as2_to"]})
        if cmd.get("cmd") == "send":
            try:
                send(peer, cmd, mdn_srv.server_address[1])
            except Exception as e:
                emit({"event": "sent", "id": cmd.get("id"), "error": repr(e), "trace": traceback.format_exc()})
        if cmd.get("cmd") == "resend":
            resend(cmd)
    srv.shutdown()
    mdn_srv.shutdown()


if __name__ == "__main__":
    main()
