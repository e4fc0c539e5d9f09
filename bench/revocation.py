#!/usr/bin/env python3
"""Revocation latency across instances: for each trial, log in on instance A, see the access
token admitted on a protected route of instance B, log out on A, then time how long until B
refuses the token (polling every 2 ms). Prints p50, p99 and the maximum, in milliseconds.

    bench/revocation.py BASE_A BASE_B EMAIL PASSWORD [TRIALS]
"""
import http.client
import json
import sys
import time
import urllib.parse


def conn(base):
    u = urllib.parse.urlparse(base)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=10)


def call(c, method, path, body=None, headers=None):
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    return r.status, data


def main():
    base_a, base_b, email, password = sys.argv[1:5]
    trials = int(sys.argv[5]) if len(sys.argv) > 5 else 100
    a, b = conn(base_a), conn(base_b)
    latencies = []
    form = urllib.parse.urlencode({"username": email, "password": password})
    for _ in range(trials):
        status, data = call(a, "POST", "/auth/token", form,
                            {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200, (status, data)
        token = json.loads(data)["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        status, _ = call(b, "GET", "/api/x", headers=auth)
        assert status == 200, status
        status, _ = call(a, "POST", "/auth/logout", headers=auth)
        assert status == 204, status
        started = time.monotonic()
        while True:
            status, _ = call(b, "GET", "/api/x", headers=auth)
            if status == 401:
                break
            assert time.monotonic() - started < 5, "not refused after 5 s"
            time.sleep(0.002)
        latencies.append((time.monotonic() - started) * 1000)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    print(f"revocation A -> B over {trials} trials: p50 {pick(0.5):.1f} ms, "
          f"p99 {pick(0.99):.1f} ms, max {latencies[-1]:.1f} ms")


if __name__ == "__main__":
    main()
