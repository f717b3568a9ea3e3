#!/usr/bin/env python3
"""Scenario 10 through the cluster path: how long a change to an ApiGateway,
written to a real kube-apiserver, takes to reach a cluster-mode meshgate-proxy.

The proxy runs on this host in cluster mode (`--gateway NS/NAME`, KUBECONFIG),
watching the API server like the operator's Deployment does. The script
installs the CRDs, creates a Service, an EndpointSlice and an ApiGateway with
ROUTES PathPrefix routes `/r0/` ... (one HTTP listener), starts the proxy, then
RUNS times adds route `/newN/` with a JSON patch and probes it on loopback
(a new TCP connection every PROBE_MS) until it answers 200; before that it
answers 404. Per run it records:

  total_ms   from just before the PATCH is sent to the first 200
  accept_ms  the PATCH round trip (API server admission, validation, etcd)
  watch_ms   accept -> the proxy's watch event (derived from the proxy's
             "reload timing" debug log, same host clock)
  debounce_ms, assemble_ms, compile_ms, blocking_task_ms, apply_ms
             as logged by the proxy (proxy/src/cluster.rs)

then the proxy's RSS (VmRSS right after the last run and REST_S later, and
VmHWM). Text and JSON go to OUT (proxy/bench/results/ by default).

**CRD limit**: an ApiGateway holds at most 256 routes (`spec.routes`
maxItems) and a proxy serves exactly one ApiGateway, so 5,000 routes cannot be
configured in a cluster with the stock CRD. With ROUTES > 256 the script
installs a *bench-only* variant of the CRD: maxItems raised to ROUTES + RUNS
and the CEL rules on routes dropped (the API server refuses the CRD otherwise:
a rule's estimated cost is multiplied by maxItems). Route names stay unique
(a list-map keyed by name, in both variants). The proxy code path is the same;
the API server's validation work per write is smaller than with those rules.

usage (with a local control plane, kind-tests/scripts/local-cluster.sh):
  eval "$(bash kind-tests/scripts/local-cluster.sh env /tmp/lc)"   # KUBECONFIG, KUBECTL
  cargo build --release -p meshgate-proxy
  ROUTES=5000 RUNS=30 python3 proxy/bench/propagation_cluster.py

Environment: ROUTES (5000), RUNS (30), PROBE_MS (2), PAUSE_S (1.0, between
runs: longer than the proxy's 300 ms MAX_DELAY), NAMESPACE (mg-prop),
LISTEN_PORT (28480), ADMIN (127.0.0.1:28490), UPSTREAM_PORT (28491),
UPSTREAM_IP (the first non-loopback IPv4 address: the API server refuses
loopback EndpointSlice addresses), MESHGATE_BIN (target/release/meshgate-proxy
under CARGO_TARGET_DIR or the workspace), KUBECTL (kubectl), PATCH_WITH
(rest: the PATCH from this script; kubectl: `kubectl patch`, which adds the
kubectl process's own start-up), REST_S (3.0: when RSS is read the second
time), KEEP (1: leave the namespace and CRDs).

Only the standard library. Everything it starts is stopped on exit.
"""

import base64
import datetime
import http.client
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
ENV = os.environ
ROUTES = int(ENV.get("ROUTES", "5000"))
RUNS = int(ENV.get("RUNS", "30"))
PROBE_S = float(ENV.get("PROBE_MS", "2")) / 1000
PAUSE_S = float(ENV.get("PAUSE_S", "1.0"))
# RSS is read twice: right after the last run, and REST_S later, once the
# reload's garbage has been handed back (jemalloc's decay is ~1 s).
REST_S = float(ENV.get("REST_S", "3.0"))
NS = ENV.get("NAMESPACE", "mg-prop")
GW = "bench"
LISTEN_PORT = int(ENV.get("LISTEN_PORT", "28480"))
ADMIN = ENV.get("ADMIN", "127.0.0.1:28490")
UPSTREAM_PORT = int(ENV.get("UPSTREAM_PORT", "28491"))
KUBECTL = ENV.get("KUBECTL", "kubectl")
PATCH_WITH = ENV.get("PATCH_WITH", "rest")
OUT = ENV.get("OUT", os.path.join(HERE, "results"))
STOCK_MAX_ROUTES = 256
TARGET_P99_MS = 250


def log(msg):
    print(f"[propagation] {msg}", file=sys.stderr, flush=True)


def default_bin():
    target = ENV.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "meshgate-proxy")


MESHGATE_BIN = ENV.get("MESHGATE_BIN") or default_bin()


def upstream_ip():
    if ENV.get("UPSTREAM_IP"):
        return ENV["UPSTREAM_IP"]
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    for a in out:
        if "." in a and not a.startswith("127."):
            return a
    sys.exit("no non-loopback IPv4 address; set UPSTREAM_IP")


def kubectl(*args, stdin=None, check=True):
    r = subprocess.run([KUBECTL, *args], input=stdin, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


class Api:
    """A minimal REST client from the current kubeconfig context (client certificates)."""

    def __init__(self):
        cfg = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json"))
        cluster = cfg["clusters"][0]["cluster"]
        user = cfg["users"][0]["user"]
        url = cluster["server"]
        assert url.startswith("https://"), url
        hostport = url[len("https://"):].rstrip("/")
        self.host, _, port = hostport.rpartition(":")
        self.port = int(port)
        self.tmp = tempfile.mkdtemp(prefix="mg-prop-")

        def material(data_key, path_key, name):
            if data_key in cluster or data_key in user:
                src = cluster if data_key in cluster else user
                path = os.path.join(self.tmp, name)
                with open(path, "wb") as f:
                    f.write(base64.b64decode(src[data_key]))
                return path
            return (cluster.get(path_key) or user.get(path_key))

        ctx = ssl.create_default_context(cafile=material(
            "certificate-authority-data", "certificate-authority", "ca.crt"))
        ctx.load_cert_chain(material("client-certificate-data", "client-certificate", "c.crt"),
                            material("client-key-data", "client-key", "c.key"))
        self.ctx = ctx
        self.conn = None

    def request(self, method, path, body=None, content_type="application/json"):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                                        timeout=60)
            try:
                headers = {"Content-Type": content_type, "Accept": "application/json"}
                data = json.dumps(body).encode() if body is not None else None
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                text = r.read()
                return r.status, json.loads(text) if text else None
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise


def gw_path(name=None):
    base = f"/apis/meshgate.io/v1alpha1/namespaces/{NS}/apigateways"
    return f"{base}/{name}" if name else base


def route(name, prefix):
    return {"name": name, "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
            "backendRefs": [{"name": "upstream", "port": 80}]}


def drop_cel_rules(schema):
    """Removes every x-kubernetes-validations at and under `schema`; returns how many.
    The API server estimates a rule's cost times the maxItems above it: with
    thousands of routes the per-route rules exceed the CRD budget (the path rule
    by 6.7x at 5,030) and the CRD is refused."""
    n = len(schema.pop("x-kubernetes-validations", []))
    for key in ("properties", "items"):
        sub = schema.get(key)
        if isinstance(sub, dict):
            children = sub.values() if key == "properties" else [sub]
            for child in children:
                if isinstance(child, dict):
                    n += drop_cel_rules(child)
    return n


def install_crds(max_routes):
    """Installs the CRDs; returns the CRD variant used ('stock' or 'bench')."""
    for f in ("apigateways.meshgate.io.yaml", "apipolicies.meshgate.io.yaml"):
        kubectl("apply", "--server-side", "--force-conflicts", "-f", os.path.join(ROOT, "crds", f))
    variant = "stock"
    if max_routes > STOCK_MAX_ROUTES:
        crd = json.loads(kubectl("get", "crd", "apigateways.meshgate.io", "-o", "json"))
        for v in crd["spec"]["versions"]:
            routes = v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["routes"]
            routes["maxItems"] = max_routes
            dropped = drop_cel_rules(routes)
        kubectl("replace", "-f", "-", stdin=json.dumps(crd))
        variant = "bench"
        log(f"installed the BENCH-ONLY ApiGateway CRD: routes maxItems {max_routes} "
            f"(stock: {STOCK_MAX_ROUTES}), without the {dropped} CEL rules on routes")
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            "crd/apigateways.meshgate.io", "crd/apipolicies.meshgate.io")
    return variant


def create_objects(api, ip):
    kubectl("create", "namespace", NS, check=False)
    objects = f"""apiVersion: v1
kind: Service
metadata: {{name: upstream, namespace: {NS}}}
spec: {{ports: [{{name: http, port: 80, targetPort: {UPSTREAM_PORT}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: upstream-1, namespace: {NS}, labels: {{kubernetes.io/service-name: upstream}}}}
addressType: IPv4
ports: [{{name: http, port: {UPSTREAM_PORT}}}]
endpoints: [{{addresses: ["{ip}"], conditions: {{ready: true}}}}]
"""
    kubectl("apply", "-f", "-", stdin=objects)
    api.request("DELETE", gw_path(GW))
    gateway = {
        "apiVersion": "meshgate.io/v1alpha1", "kind": "ApiGateway",
        "metadata": {"name": GW, "namespace": NS},
        "spec": {
            "listeners": [{"name": "http", "port": LISTEN_PORT, "protocol": "HTTP"}],
            "clientTraffic": {"accessLog": False},
            "routes": [route(f"r{i}", f"/r{i}/") for i in range(ROUTES)],
        },
    }
    t = time.monotonic()
    status, body = api.request("POST", gw_path(), gateway)
    if status not in (200, 201):
        raise RuntimeError(f"creating the ApiGateway: {status} {json.dumps(body)[:2000]}")
    size = len(json.dumps(body))
    log(f"ApiGateway with {ROUTES} routes created in {(time.monotonic() - t) * 1e3:.0f} ms "
        f"({size / 1024:.0f} KiB as JSON)")
    return size


UPSTREAM_CODE = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""


def probe(path):
    """Status of GET path on the proxy's listener, over a new connection; 0 if refused."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", LISTEN_PORT, timeout=2)
        conn.request("GET", path, headers={"Host": "bench.local"})
        r = conn.getresponse()
        r.read()
        conn.close()
        return r.status
    except OSError:
        return 0


def wait_status(path, want=200, timeout=120):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe(path)
        if last == want:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{path}: {last}, not {want}, after {timeout} s")


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def reload_timings(log_path):
    out = []
    with open(log_path) as f:
        for line in f:
            if "reload timing" not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            fields = rec.get("fields", {})
            if fields.get("message") != "reload timing":
                continue
            ts = datetime.datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00"))
            out.append((ts.timestamp(), fields))
    return out


def pct(values, p):
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values):
    return {"p50": pct(values, 50), "p99": pct(values, 99), "max": max(values) if values else None,
            "min": min(values) if values else None, "mean": statistics.fmean(values) if values else None}


def main():
    if not ENV.get("KUBECONFIG"):
        sys.exit("KUBECONFIG is not set (eval \"$(kind-tests/scripts/local-cluster.sh env DIR)\")")
    if not os.access(MESHGATE_BIN, os.X_OK):
        sys.exit(f"{MESHGATE_BIN} not found: cargo build --release -p meshgate-proxy, or MESHGATE_BIN=")
    os.makedirs(OUT, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    log_path = os.path.join(tempfile.gettempdir(), f"mg-prop-proxy-{stamp}.log")
    api = Api()
    ip = upstream_ip()
    variant = install_crds(ROUTES + RUNS)
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, "-c", UPSTREAM_CODE, ip, str(UPSTREAM_PORT)],
                                      start_new_session=True))
        size = create_objects(api, ip)
        env = dict(ENV)
        env["RUST_LOG"] = ENV.get("PROXY_LOG", "info,meshgate_proxy::cluster=debug")
        logf = open(log_path, "w")
        started = time.monotonic()
        proxy = subprocess.Popen([MESHGATE_BIN, "--gateway", f"{NS}/{GW}", "--admin", ADMIN,
                                  "--bind-ip", "127.0.0.1"],
                                 env=env, stdout=logf, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        procs.append(proxy)
        wait_status(f"/r{ROUTES - 1}/x")
        log(f"proxy serving {ROUTES} routes {(time.monotonic() - started):.1f} s after start "
            f"(pid {proxy.pid}, log {log_path}); RSS {status_kib(proxy.pid, 'VmRSS') / 1024:.1f} MiB")
        time.sleep(PAUSE_S)

        runs = []
        for i in range(RUNS):
            path = f"/new{i}/x"
            if probe(path) != 404:
                raise RuntimeError(f"{path} answered before the change")
            patch = [{"op": "add", "path": "/spec/routes/-", "value": route(f"new{i}", f"/new{i}/")}]
            t0_wall, t0 = time.time(), time.monotonic()
            if PATCH_WITH == "kubectl":
                kubectl("patch", "apigateway", GW, "-n", NS, "--type=json", "-p", json.dumps(patch))
                status = 200
            else:
                status, body = api.request("PATCH", gw_path(GW), patch,
                                           content_type="application/json-patch+json")
            t1 = time.monotonic()
            if status != 200:
                raise RuntimeError(f"PATCH: {status} {json.dumps(body)[:1000]}")
            probes = 0
            while True:
                probes += 1
                code = probe(path)
                if code == 200:
                    break
                if time.monotonic() - t0 > 30:
                    raise RuntimeError(f"{path} not served after 30 s (last {code})")
                time.sleep(PROBE_S)
            t2 = time.monotonic()
            runs.append({"run": i, "t0_wall": t0_wall, "accept_ms": (t1 - t0) * 1e3,
                         "total_ms": (t2 - t0) * 1e3, "probes": probes})
            log(f"run {i + 1}/{RUNS}: served after {(t2 - t0) * 1e3:.1f} ms "
                f"(PATCH accepted after {(t1 - t0) * 1e3:.1f} ms, {probes} probes)")
            time.sleep(PAUSE_S)

        rss = status_kib(proxy.pid, "VmRSS")
        time.sleep(max(REST_S, 0.2))  # also lets the last timing line reach the log
        rss_rest = status_kib(proxy.pid, "VmRSS")
        hwm = status_kib(proxy.pid, "VmHWM")
        timings = reload_timings(log_path)
        # Each run's reload: the first "reload timing" logged after its PATCH was sent.
        for r in runs:
            later = [(ts, f) for ts, f in timings if ts >= r["t0_wall"]]
            if not later:
                continue
            ts, f = later[0]
            for k in ("debounce_ms", "assemble_ms", "compile_ms", "blocking_task_ms", "apply_ms"):
                r[k] = float(f.get(k, 0))
            event = ts - (r["debounce_ms"] + r["assemble_ms"] + r["blocking_task_ms"]
                          + r["apply_ms"]) / 1e3
            r["watch_ms"] = (event - r["t0_wall"]) * 1e3 - r["accept_ms"]
            r["version"] = f.get("version")

        keys = ["total_ms", "accept_ms", "watch_ms", "debounce_ms", "assemble_ms",
                "compile_ms", "blocking_task_ms", "apply_ms"]
        stats = {k: summary([r[k] for r in runs if k in r]) for k in keys}
        result = {
            "scenario": "10 (cluster mode)", "date_utc": stamp, "routes": ROUTES, "runs": RUNS,
            "routes_at_end": ROUTES + RUNS, "crd_variant": variant, "patch_with": PATCH_WITH,
            "probe_ms": PROBE_S * 1e3, "gateway_json_kib": round(size / 1024, 1),
            "target_p99_ms": TARGET_P99_MS,
            "rss_mib": round(rss / 1024, 1), "rss_rest_mib": round(rss_rest / 1024, 1),
            "rest_s": REST_S, "rss_peak_mib": round(hwm / 1024, 1),
            "stats": stats, "runs_detail": runs,
            "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg()},
        }
        lines = [
            f"scenario 10 in cluster mode, {stamp}: {ROUTES} routes (+{RUNS} added), "
            f"{RUNS} runs, CRD {variant}, PATCH via {PATCH_WITH}, probe every {PROBE_S * 1e3:g} ms",
            f"  {'':18} {'p50':>8} {'p99':>8} {'max':>8}",
        ]
        for k in keys:
            s = stats[k]
            if s["max"] is not None:
                lines.append(f"  {k:18} {s['p50']:8.1f} {s['p99']:8.1f} {s['max']:8.1f}")
        verdict = "met" if stats["total_ms"]["p99"] <= TARGET_P99_MS else "MISSED"
        lines.append(f"  target p99 <= {TARGET_P99_MS} ms: {verdict}")
        lines.append(f"  proxy RSS {rss / 1024:.1f} MiB after the last run, {rss_rest / 1024:.1f} MiB "
                     f"{REST_S:g} s later (peak {hwm / 1024:.1f} MiB), "
                     f"ApiGateway {size / 1024:.0f} KiB as JSON, load avg {os.getloadavg()[0]:.2f}")
        text = "\n".join(lines)
        print(text)
        base = os.path.join(OUT, f"propagation_cluster-{ROUTES}-{stamp}")
        with open(base + ".json", "w") as f:
            json.dump(result, f, indent=1)
        with open(base + ".txt", "w") as f:
            f.write(text + "\n")
        log(f"wrote {base}.json and .txt")
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if ENV.get("KEEP") != "1":
            kubectl("delete", "namespace", NS, "--wait=false", check=False)


if __name__ == "__main__":
    main()
