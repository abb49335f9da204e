#!/usr/bin/env python3
"""Times pyas2lib building and parsing a signed (sha256) + AES-256-CBC
message of SIZE bytes, in-process (interpreter start-up excluded).
Usage: bench_pyas2lib.py KEY_PEM PARTNER_KEY_PEM SIZE ITERATIONS
Prints the mean seconds per build+parse."""
import os
import sys
import time

from pyas2lib import Message, Organization, Partner


def main():
    key, partner_key, size, iters = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    k1, k2 = open(key, "rb").read(), open(partner_key, "rb").read()

    def cert_of(pem):
        i = pem.index(b"-----BEGIN CERTIFICATE-----")
        return pem[i:]

    sender = Organization(as2_name="a", sign_key=k1, decrypt_key=k1, domain="x")
    receiver_org = Organization(as2_name="b", sign_key=k2, decrypt_key=k2, domain="x")
    to_b = Partner(as2_name="b", verify_cert=cert_of(k2), encrypt_cert=cert_of(k2), validate_certs=False,
                   sign=True, digest_alg="sha256", encrypt=True, enc_alg="aes_256_cbc")
    from_a = Partner(as2_name="a", verify_cert=cert_of(k1), encrypt_cert=cert_of(k1), validate_certs=False)
    data = os.urandom(size)
    total = 0.0
    for _ in range(iters):
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
    print(f"{total / iters:.6f}")


if __name__ == "__main__":
    main()
