"""Measures how long until every gateway instance refuses a token (see bench/invalidation.sh).

    python3 bench/invalidation.py N TRIALS CONFIG PORT...
"""
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

n, trials, config, ports = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], [int(p) for p in sys.argv[4:]]
PASSWORD = "InvalidationBench1!"


def call(port, method, path, token=None, body=None, form=False):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        if form:
            body = urllib.parse.urlencode(body)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            body = json.dumps(body)
            headers["Content-Type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


def login(email):
    status, data = call(ports[0], "POST", "/auth/token", body={"username": email, "password": PASSWORD}, form=True)
    assert status == 200, (status, data)
    return json.loads(data)["access_token"]


def refused_everywhere(token, since):
    """Polls every instance every 2 ms on a keep-alive connection; the time until the last
    one refuses, from `since` (time.monotonic())."""
    times = [None] * len(ports)

    def poll(i, port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while True:
            conn.request("GET", "/api/x", headers={"Authorization": f"Bearer {token}"})
            r = conn.getresponse()
            r.read()
            if r.status == 401:
                times[i] = time.monotonic() - since
                conn.close()
                return
            assert r.status == 200, r.status
            if time.monotonic() - since > 10:
                raise SystemExit(f"instance {port} still accepts the token after 10 s")
            time.sleep(0.002)

    threads = [threading.Thread(target=poll, args=(i, p)) for i, p in enumerate(ports)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return max(times)


def warm(token):
    for p in ports:
        for _ in range(200):
            status, _ = call(p, "GET", "/api/x", token=token)
            if status == 200:
                break
            time.sleep(0.01)
        assert status == 200, (p, status)


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


email = "invalidation@example.com"
status, data = call(ports[0], "POST", "/auth/register", body={"email": email, "password": PASSWORD})
assert status == 200, (status, data)
logouts = []
for _ in range(trials):
    token = login(email)
    warm(token)
    status, _ = call(ports[0], "POST", "/auth/logout", token=token)
    assert status == 204, status
    logouts.append(refused_everywhere(token, time.monotonic()))

deactivations = []
binary = "target/release/sentinel-gateway"
for _ in range(max(trials // 3, 5)):
    token = login(email)
    warm(token)
    subprocess.run([binary, "--config", config, "users", "deactivate", email], check=True, capture_output=True)
    since = time.monotonic()
    deactivations.append(refused_everywhere(token, since))
    subprocess.run([binary, "--config", config, "users", "activate", email], check=True, capture_output=True)


def line(name, values):
    ms = [v * 1000 for v in values]
    return (f"N={n} {name:12} trials {len(ms):3}  p50 {percentile(ms, 0.5):7.1f} ms  "
            f"p99 {percentile(ms, 0.99):7.1f} ms  max {max(ms):7.1f} ms")


print(line("logout", logouts))
print(line("deactivate", deactivations))
