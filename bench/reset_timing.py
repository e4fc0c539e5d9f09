#!/usr/bin/env python3
"""Password-reset requests for a known and an unknown address, answered alike? Sends N requests
for each (interleaved in random order, one keep-alive connection), checks every answer is the
same status and bytes, and prints the median and p90 latency of each and their ratio.

    bench/reset_timing.py BASE KNOWN_EMAIL [N]
"""
import http.client
import json
import random
import statistics
import sys
import time
import urllib.parse


def main():
    base, known = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    u = urllib.parse.urlparse(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    order = ["known"] * n + ["unknown"] * n
    random.shuffle(order)
    times = {"known": [], "unknown": []}
    answers = set()
    for i, who in enumerate(order):
        email = known if who == "known" else f"nobody{i}@example.com"
        body = json.dumps({"email": email})
        started = time.perf_counter()
        c.request("POST", "/auth/password-reset", body=body,
                  headers={"content-type": "application/json"})
        r = c.getresponse()
        data = r.read()
        times[who].append((time.perf_counter() - started) * 1000)
        answers.add((r.status, data))
    if len(answers) != 1:
        print(f"answers differ: {answers}")
        sys.exit(1)
    (status, data), = answers
    k, x = statistics.median(times["known"]), statistics.median(times["unknown"])
    p90 = lambda v: sorted(v)[int(len(v) * 0.9)]
    print(f"password reset, {n} each: every answer {status} {data.decode()}")
    print(f"  known address:   median {k:.3f} ms, p90 {p90(times['known']):.3f} ms")
    print(f"  unknown address: median {x:.3f} ms, p90 {p90(times['unknown']):.3f} ms")
    print(f"  medians known/unknown: {k / x:.3f}")


if __name__ == "__main__":
    main()
