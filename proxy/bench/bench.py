#!/usr/bin/env python3
"""The runner behind compare.sh: configures nginx, HAProxy and meshgate-proxy in
the same role, drives the load generators, and writes the comparison.

Only the standard library; every process it starts runs in its own session and
is recorded under $WORK/pids so compare.sh's trap can end it. All traffic goes
to 127.0.0.1.
"""

import base64
import json
import os
import platform
import re
import signal as sig_mod
import socket
import ssl
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = os.environ
WORK = ENV["WORK"]
CERTS = os.path.join(WORK, "certs")
LOGS = os.path.join(WORK, "logs")
OUT = ENV.get("MESHGATE_BENCH_OUT", os.path.join(HERE, "results"))
REPEAT = int(ENV.get("REPEAT", "3"))
DURATION = int(ENV.get("DURATION", "10"))
SCENARIOS = [int(s) for s in ENV.get("SCENARIOS", "1 2 3 4 6 7 8 9 10").split()]
PEERS = ENV.get("PEERS", "nginx haproxy").split()
CONNS = int(ENV.get("CONNS", "50"))
IDLE_CONNS = int(ENV.get("IDLE_CONNS", "10000"))
MANY_ROUTES = int(ENV.get("MANY_ROUTES", "10000"))
PROP_ROUTES = int(ENV.get("PROP_ROUTES", "5000"))
PROXY_CPU = ENV.get("PROXY_CPU", "0")
LOAD_CPU = ENV.get("LOAD_CPU", "1")
MESHGATE_BIN = ENV.get("MESHGATE_BIN", "meshgate-proxy")
OHA = ENV.get("OHA", "oha")
UPSTREAM_DNS = ENV.get("UPSTREAM_DNS", "upstream.bench.svc.cluster.local")
# A peer whose own repeats spread more than this (max-min over median) makes
# the scenario unreadable.
MAX_SPREAD = float(ENV.get("MAX_SPREAD", "0.10"))
# The open-files limit the proxies inherit (compare.sh raises it as far as allowed).
import resource
FD_LIMIT = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
# HAProxy refuses to start unless it has two descriptors per connection it
# admits (front and back), so the idle-connection count is capped by the limit.
HAPROXY_MAXCONN = max(1000, min(60000, (FD_LIMIT - 500) // 2))
IDLE_CONNS_WANTED = IDLE_CONNS
IDLE_CONNS = min(IDLE_CONNS, HAPROXY_MAXCONN - 100)

EDGE_PORT = 18443
UP_H1_PORT = 19443
UP_H2_PORT = 19444
ADMIN = "127.0.0.1:15900"
# A name, not an IP: clients send it as SNI (an IP in SNI is illegal and rustls
# logs a warning per handshake). localhost is in the edge certificate.
URL = f"https://localhost:{EDGE_PORT}"
BODY = "ok: meshgate bench upstream, a small fixed body\n"
GRPC_PATH = "/grpc.bench.Bench/Echo"
ISSUER = "https://issuer.bench.local"

for d in (LOGS, OUT, os.path.join(WORK, "pids")):
    os.makedirs(d, exist_ok=True)


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --- processes -----------------------------------------------------------------

class Proc:
    """A process pinned to `cpu`, in its own session, its pid recorded."""

    def __init__(self, name, cmd, cpu, env=None, stdin=None, stdout=None):
        self.name = name
        self.log_path = os.path.join(LOGS, f"{name}.log")
        logf = open(self.log_path, "ab")
        self.p = subprocess.Popen(
            ["taskset", "-c", str(cpu)] + cmd,
            stdout=stdout if stdout is not None else logf,
            stderr=logf,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        self.pid_file = os.path.join(WORK, "pids", f"{name}-{self.p.pid}.pid")
        with open(self.pid_file, "w") as f:
            f.write(str(self.p.pid))

    def signal(self, sig):
        os.kill(self.p.pid, sig)

    def alive(self):
        return self.p.poll() is None

    def stop(self, sig=sig_mod.SIGTERM):
        if self.alive():
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, sig_mod.SIGKILL)
                self.p.wait()
        # Children left in the group (nginx workers, HAProxy's old processes).
        try:
            os.killpg(self.p.pid, sig_mod.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if os.path.exists(self.pid_file):
            os.remove(self.pid_file)


def tree_pids(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return out


def rss_kib(pid):
    """Resident memory of a process and all its descendants, KiB."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_split(pid):
    """(user, system) CPU time of a process tree (live processes only), seconds."""
    user = system = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
        except (FileNotFoundError, IndexError, ValueError):
            pass
    return user / CLK_TCK, system / CLK_TCK


def run(cmd, cpu=LOAD_CPU, timeout=None):
    r = subprocess.run(["taskset", "-c", str(cpu)] + cmd, capture_output=True,
                       text=True, timeout=timeout)
    return r.stdout + r.stderr


# --- HTTPS probes ------------------------------------------------------------------

def client_ctx():
    ctx = ssl.create_default_context(cafile=os.path.join(CERTS, "edge-ca.crt"))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


CTX = None


def probe(path, timeout=1.0, headers=""):
    """One request on a new TLS connection; the status code, or None."""
    global CTX
    CTX = CTX or client_ctx()
    try:
        with socket.create_connection(("127.0.0.1", EDGE_PORT), timeout=timeout) as raw:
            with CTX.wrap_socket(raw, server_hostname="bench.local") as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench.local\r\n{headers}Connection: close\r\n\r\n".encode())
                data = b""
                while b"\r\n" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                m = re.match(rb"HTTP/1\.1 (\d{3})", data)
                return int(m.group(1)) if m else None
    except (OSError, ssl.SSLError):
        return None


def wait_status(path, want=200, timeout=60, headers=""):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = probe(path, headers=headers)
        if last == want:
            return True
        time.sleep(0.05)
    raise RuntimeError(f"{path}: wanted {want}, last answer {last}")


def wait_port(port, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def write_atomic(path, text):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


# --- the upstream: nginx requiring mesh mTLS --------------------------------------------

def start_upstream():
    d = os.path.join(WORK, "upstream")
    os.makedirs(os.path.join(d, "grpc"), exist_ok=True)
    # A gRPC reply: one length-prefixed message (field 1 = "ok").
    msg = b"\x0a\x02ok"
    with open(os.path.join(d, "grpc", "reply.bin"), "wb") as f:
        f.write(b"\x00" + len(msg).to_bytes(4, "big") + msg)
    conf = f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {LOGS}/upstream-error.log {ENV.get("UPSTREAM_LOG_LEVEL", "warn")};
worker_rlimit_nofile {FD_LIMIT};
events {{ worker_connections {FD_LIMIT}; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    http2_max_concurrent_streams 1000;
    ssl_protocols TLSv1.3;
    ssl_certificate {CERTS}/upstream.crt;
    ssl_certificate_key {CERTS}/upstream.key;
    # The mesh: only clients with a workload certificate of the mesh CA.
    ssl_client_certificate {CERTS}/mesh-ca.crt;
    ssl_verify_client on;
    ssl_verify_depth 2;
    server {{
        listen 127.0.0.1:{UP_H1_PORT} ssl;
        location / {{ default_type text/plain; return 200 "{BODY.strip()}\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{UP_H2_PORT} ssl http2;
        root {d}/grpc;
        location / {{
            default_type application/grpc;
            add_trailer grpc-status 0 always;
            # Read the whole request body first (a mirror subrequest that does
            # nothing), as a gRPC server does; answering before it confuses
            # HTTP/2 clients ("frame for unknown stream").
            mirror /.read-body;
            mirror_request_body on;
            # POST to a static file is 405: answer it with the file instead.
            error_page 405 =200 $uri;
            try_files /reply.bin =404;
        }}
        location = /.read-body {{ internal; return 204; }}
    }}
}}
"""
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    p = Proc("upstream", ["nginx", "-c", path, "-e", f"{LOGS}/upstream-error.log"], LOAD_CPU)
    wait_port(UP_H1_PORT)
    wait_port(UP_H2_PORT)
    # The upstream refuses a client without a mesh certificate.
    raw = ssl.create_default_context(cafile=os.path.join(CERTS, "mesh-ca.crt"))
    raw.check_hostname = False
    try:
        with socket.create_connection(("127.0.0.1", UP_H1_PORT), timeout=2) as s:
            with raw.wrap_socket(s) as t:
                t.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                ans = t.recv(200)
        assert b" 400 " in ans or not ans, ans
    except (ssl.SSLError, OSError):
        pass
    return p


# --- the proxies under test -------------------------------------------------------------

class Peer:
    name = "?"

    def __init__(self):
        self.proc = None
        self.gen = 0

    def rss(self):
        return rss_kib(self.proc.p.pid)

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None


def route_prefixes(n):
    return [f"/r{i}/" for i in range(n)]


class Nginx(Peer):
    name = "nginx"

    def conf(self, routes, policy=False):
        d = os.path.join(WORK, "nginx")
        os.makedirs(d, exist_ok=True)
        if routes is None:
            locs = "location / { proxy_pass https://up_h1; }"
        else:
            # nginx 1.22 builds an SSL context per location that has its own
            # proxy_pass https:// (10,000 of them take minutes and gigabytes), so
            # each route hands the request to one named location instead.
            locs = "\n".join(f"location {p} {{ error_page 418 = @up; return 418; }}" for p in routes)
            locs += "\nlocation @up { proxy_pass https://up_h1; }"
            locs += "\nlocation / { return 404; }"
        header = f'add_header x-gen "{self.gen}";' if self.gen else ""
        return d, f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {LOGS}/nginx-error.log warn;
worker_rlimit_nofile {FD_LIMIT};
events {{ worker_connections {FD_LIMIT}; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp;
    proxy_temp_path {d}/ptmp;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_header_timeout 60s;
    http2_max_concurrent_streams 100;
    ssl_protocols TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    upstream up_h1 {{ server 127.0.0.1:{UP_H1_PORT}; keepalive 256; keepalive_requests 100000000; keepalive_timeout 300s; }}
    upstream up_h2 {{ server 127.0.0.1:{UP_H2_PORT}; keepalive 256; keepalive_requests 100000000; keepalive_timeout 300s; }}
    server {{
        listen 127.0.0.1:{EDGE_PORT} ssl http2;
        ssl_certificate {CERTS}/edge.crt;
        ssl_certificate_key {CERTS}/edge.key;
        {header}
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_ssl_certificate {CERTS}/gateway.crt;
        proxy_ssl_certificate_key {CERTS}/gateway.key;
        proxy_ssl_trusted_certificate {CERTS}/mesh-ca.crt;
        proxy_ssl_protocols TLSv1.3;
        proxy_ssl_verify on;
        proxy_ssl_verify_depth 2;
        proxy_ssl_name {UPSTREAM_DNS};
        proxy_ssl_server_name on;
        grpc_ssl_certificate {CERTS}/gateway.crt;
        grpc_ssl_certificate_key {CERTS}/gateway.key;
        grpc_ssl_trusted_certificate {CERTS}/mesh-ca.crt;
        grpc_ssl_protocols TLSv1.3;
        grpc_ssl_verify on;
        grpc_ssl_verify_depth 2;
        grpc_ssl_name {UPSTREAM_DNS};
        grpc_ssl_server_name on;
        location /grpc.bench.Bench/ {{ grpc_pass grpcs://up_h2; }}
        {locs}
    }}
}}
"""

    def write(self, routes, policy=False):
        d, text = self.conf(routes, policy)
        self.path = os.path.join(d, "nginx.conf")
        write_atomic(self.path, text)

    def start(self, routes=None, policy=False):
        self.gen = 0
        self.write(routes, policy)
        out = subprocess.run(["nginx", "-t", "-q", "-c", self.path, "-e", f"{LOGS}/nginx-error.log"],
                             capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"nginx -t: {out.stderr}")
        self.proc = Proc("nginx", ["nginx", "-c", self.path, "-e", f"{LOGS}/nginx-error.log"], PROXY_CPU)
        wait_port(EDGE_PORT)

    def reload(self, routes=None, policy=False):
        self.gen += 1
        self.write(routes, policy)
        self.proc.signal(sig_mod.SIGHUP)


class Haproxy(Peer):
    name = "haproxy"

    def conf(self, routes, policy=False):
        d = os.path.join(WORK, "haproxy")
        os.makedirs(d, exist_ok=True)
        rules = []
        if routes is not None:
            mp = os.path.join(d, "routes.map")
            write_atomic(mp, "".join(f"{p} be_h1\n" for p in routes))
            rules.append(f"http-request return status 404 unless {{ path_beg /grpc.bench.Bench/ }} || {{ path,map_beg({mp}) -m found }}")
        if policy:
            make_jwt()  # the key file must exist when HAProxy loads its configuration
            rules += [
                "http-request set-var(txn.bearer) http_auth_bearer",
                "http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')",
                "http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')",
                "http-request set-var(txn.now) date",
                "http-request deny deny_status 401 unless { var(txn.alg) -m str ES256 }",
                f'http-request set-var(txn.jwt_ok) var(txn.bearer),jwt_verify(txn.alg,"{CERTS}/jwt.crt")',
                "http-request deny deny_status 401 unless { var(txn.jwt_ok) -m int 1 }",
                f"http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_payload_query('$.iss') -m str {ISSUER} }}",
                "http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }",
                "http-request track-sc0 src table rl",
                "http-request deny deny_status 429 if { sc_http_req_rate(0,rl) gt 1000000000 }",
            ]
        if self.gen:
            rules.append(f"http-response set-header x-gen {self.gen}")
        rules = "\n    ".join(rules)
        server = (f"ssl verify required ca-file {CERTS}/mesh-ca.crt crt {CERTS}/gateway.pem "
                  f"verifyhost {UPSTREAM_DNS} sni str({UPSTREAM_DNS})")
        return d, f"""
global
    nbthread 1
    maxconn {HAPROXY_MAXCONN}
    pidfile {d}/haproxy.pid
    tune.ssl.cachesize 0
    hard-stop-after 30s
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    timeout http-request 60s
    option http-keep-alive
backend rl
    stick-table type ip size 100k expire 10s store http_req_rate(1s)
frontend edge
    bind 127.0.0.1:{EDGE_PORT} ssl crt {CERTS}/edge.pem alpn h2,http/1.1 ssl-min-ver TLSv1.3 no-tls-tickets
    maxconn {HAPROXY_MAXCONN}
    {rules}
    use_backend be_grpc if {{ path_beg /grpc.bench.Bench/ }}
    default_backend be_h1
backend be_h1
    http-reuse always
    server up 127.0.0.1:{UP_H1_PORT} {server} alpn http/1.1 pool-max-conn 256
backend be_grpc
    http-reuse always
    server up 127.0.0.1:{UP_H2_PORT} {server} alpn h2 pool-max-conn 256
"""

    def write(self, routes, policy=False):
        d, text = self.conf(routes, policy)
        self.path = os.path.join(d, "haproxy.cfg")
        write_atomic(self.path, text)

    def start(self, routes=None, policy=False):
        self.gen = 0
        self.write(routes, policy)
        out = subprocess.run(["haproxy", "-c", "-q", "-f", self.path], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"haproxy -c: {out.stdout}{out.stderr}")
        # Master-worker: SIGUSR2 to the master reloads.
        self.proc = Proc("haproxy", ["haproxy", "-W", "-db", "-f", self.path], PROXY_CPU)
        wait_port(EDGE_PORT)

    def reload(self, routes=None, policy=False):
        self.gen += 1
        self.write(routes, policy)
        self.proc.signal(sig_mod.SIGUSR2)


class Meshgate(Peer):
    name = "meshgate"

    def manifests(self, routes, policy=False):
        def pem(path):
            with open(path) as f:
                return "".join("    " + line for line in f)
        if routes is None:
            rl = f"""  - name: default
    backendRefs: [{{name: upstream, port: 80}}]
"""
        else:
            rl = "".join(
                f"  - name: r{i}\n    matches: [{{path: {{type: PathPrefix, value: {p}}}}}]\n"
                f"    backendRefs: [{{name: upstream, port: 80}}]\n"
                for i, p in enumerate(routes))
        gen = ""
        if self.gen:
            gen = (f"  - name: gen\n    matches: [{{path: {{type: PathPrefix, value: /gen/}}}}]\n"
                   f"    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{set: [{{name: x-gen, value: \"{self.gen}\"}}]}}}}]\n"
                   f"    backendRefs: [{{name: upstream, port: 80}}]\n")
        gateway = f"""apiVersion: meshgate.io/v1alpha1
kind: ApiGateway
metadata: {{name: bench, namespace: bench}}
spec:
  listeners:
  - name: https
    port: {EDGE_PORT}
    protocol: HTTPS
    tls: {{minVersion: "1.3", certificateRefs: [{{name: edge-tls}}]}}
  clientTraffic:
    accessLog: false
    idleTimeout: 300s
    requestHeaderTimeout: 60s
    maxConcurrentStreams: 100
  mesh:
    mode: Istio
    trustDomain: cluster.local
    backends:
    - {{name: upstream, serviceAccounts: [upstream]}}
    - {{name: upstream-grpc, serviceAccounts: [upstream]}}
  routes:
  - name: grpc
    matches: [{{path: {{type: PathPrefix, value: /grpc.bench.Bench/}}}}]
    backendRefs: [{{name: upstream-grpc, port: 80}}]
{gen}{rl}"""
        objects = f"""apiVersion: v1
kind: Secret
metadata: {{name: edge-tls, namespace: bench}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{pem(os.path.join(CERTS, "edge.crt"))}  tls.key: |
{pem(os.path.join(CERTS, "edge.key"))}---
apiVersion: v1
kind: Service
metadata: {{name: upstream, namespace: bench}}
spec: {{ports: [{{name: http, port: 80, targetPort: {UP_H1_PORT}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: upstream-1, namespace: bench, labels: {{kubernetes.io/service-name: upstream}}}}
addressType: IPv4
ports: [{{name: http, port: {UP_H1_PORT}}}]
endpoints: [{{addresses: ["127.0.0.1"], conditions: {{ready: true}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: upstream-grpc, namespace: bench}}
spec: {{ports: [{{name: grpc, port: 80, targetPort: {UP_H2_PORT}, appProtocol: grpc}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: upstream-grpc-1, namespace: bench, labels: {{kubernetes.io/service-name: upstream-grpc}}}}
addressType: IPv4
ports: [{{name: grpc, port: {UP_H2_PORT}, appProtocol: grpc}}]
endpoints: [{{addresses: ["127.0.0.1"], conditions: {{ready: true}}}}]
"""
        return gateway, objects, policy_yaml() if policy else None

    def write(self, routes, policy=False):
        self.dir = os.path.join(WORK, "meshgate")
        os.makedirs(self.dir, exist_ok=True)
        gateway, objects, pol = self.manifests(routes, policy)
        write_atomic(os.path.join(self.dir, "objects.yaml"), objects)
        pol_path = os.path.join(self.dir, "policy.yaml")
        if pol:
            write_atomic(pol_path, pol)
        elif os.path.exists(pol_path):
            os.remove(pol_path)
        write_atomic(os.path.join(self.dir, "gateway.yaml"), gateway)

    def start(self, routes=None, policy=False):
        self.gen = 0
        if os.path.isdir(os.path.join(WORK, "meshgate")):
            for f in os.listdir(os.path.join(WORK, "meshgate")):
                os.remove(os.path.join(WORK, "meshgate", f))
        self.write(routes, policy)
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "warn")
        # One runtime worker; taskset already limits available_parallelism to 1.
        env.setdefault("TOKIO_WORKER_THREADS", "1")
        self.proc = Proc("meshgate", [
            MESHGATE_BIN, "--manifests", self.dir, "--admin", ADMIN, "--bind-ip", "127.0.0.1",
            "--mesh-cert-dir", os.path.join(CERTS, "mesh"),
        ], PROXY_CPU, env=env)
        deadline = time.time() + 120
        while time.time() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"meshgate-proxy exited, see {self.proc.log_path}")
            if admin_get("/ready") == 200:
                return
            time.sleep(0.05)
        raise RuntimeError("meshgate-proxy not ready")

    def reload(self, routes=None, policy=False):
        self.gen += 1
        gateway, _, _ = self.manifests(routes, policy)
        write_atomic(os.path.join(self.dir, "gateway.yaml"), gateway)


def admin_get(path, body=False):
    host, port = ADMIN.split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                c = s.recv(65536)
                if not c:
                    break
                data += c
        head, _, rest = data.partition(b"\r\n\r\n")
        code = int(head.split()[1])
        return (code, rest.decode(errors="replace")) if body else code
    except (OSError, ValueError, IndexError):
        return (None, "") if body else None


def reloads_ok():
    _, text = admin_get("/metrics", body=True)
    m = re.search(r'meshgate_config_reloads_total\{result="ok"\} (\d+)', text)
    return int(m.group(1)) if m else None


class Bare(Peer):
    """The floor: proxy/examples/bare_proxy.rs, hyper + rustls and nothing else.
    It forwards everything to the HTTP/1.1 upstream, so it takes part only in
    the scenarios without routes, policies, gRPC or reloads (FLOOR_SCENARIOS)."""
    name = "bare"

    def start(self, routes=None, policy=False):
        env = dict(os.environ, BARE_LISTEN=f"127.0.0.1:{EDGE_PORT}",
                   BARE_CERT=os.path.join(CERTS, "edge.crt"), BARE_KEY=os.path.join(CERTS, "edge.key"),
                   BARE_UPSTREAM=f"127.0.0.1:{UP_H1_PORT}", BARE_UPSTREAM_NAME=UPSTREAM_DNS,
                   BARE_MESH_CA=os.path.join(CERTS, "mesh-ca.crt"),
                   BARE_CLIENT_CERT=os.path.join(CERTS, "gateway.crt"),
                   BARE_CLIENT_KEY=os.path.join(CERTS, "gateway.key"))
        self.proc = Proc("bare", [BARE_BIN], PROXY_CPU, env=env)
        wait_port(EDGE_PORT)


FLOOR_SCENARIOS = (1, 2, 3, 7, 8)
BARE_BIN = ENV.get("BARE_BIN", "bare_proxy")
PEER_CLASSES = {"nginx": Nginx, "haproxy": Haproxy, "meshgate": Meshgate, "bare": Bare}


# --- JWT for scenario 5 -----------------------------------------------------------------

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def der_sig_to_raw(der):
    # SEQUENCE { INTEGER r, INTEGER s }
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        v = der[i + 2:i + 2 + n].lstrip(b"\x00")
        out += v.rjust(32, b"\x00")
        i += 2 + n
    return out


JWT = {}


def make_jwt():
    if JWT:
        return JWT
    key = os.path.join(CERTS, "jwt.key")
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-out", key], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-x509", "-new", "-key", key, "-subj", "/CN=jwt", "-days", "30",
                    "-out", os.path.join(CERTS, "jwt.crt")], check=True, capture_output=True)
    pub = subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    point = pub[-65:]
    assert point[0] == 4
    jwks = {"keys": [{"kty": "EC", "crv": "P-256", "kid": "bench", "alg": "ES256", "use": "sig",
                      "x": b64u(point[1:33]), "y": b64u(point[33:])}]}
    header = b64u(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "bench"}).encode())
    now = int(time.time())
    payload = b64u(json.dumps({"iss": ISSUER, "aud": "bench", "sub": "bench-user",
                               "iat": now, "exp": now + 30 * 86400}).encode())
    signing_input = f"{header}.{payload}".encode()
    der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing_input,
                         check=True, capture_output=True).stdout
    JWT["token"] = f"{header}.{payload}.{b64u(der_sig_to_raw(der))}"
    JWT["jwks"] = json.dumps(jwks, separators=(",", ":"))
    return JWT


def policy_yaml():
    j = make_jwt()
    return f"""# Scenario 5: JWT (local JWKS, inline) and a local rate limit that never triggers.
apiVersion: meshgate.io/v1alpha1
kind: ApiPolicy
metadata: {{name: bench-policy, namespace: bench}}
spec:
  targetRefs:
  - {{group: meshgate.io, kind: ApiGateway, name: bench}}
  authentication:
    jwt:
      providers:
      - name: bench
        issuer: {ISSUER}
        audiences: [bench]
        localJWKS:
          type: Inline
          inline: '{j["jwks"]}'
  rateLimit:
    type: Local
    rules:
    - limit: {{requests: 1000000000, unit: Second}}
"""


# --- load generators and their output ------------------------------------------------------

def num(s):
    return float(s.replace(",", ""))


def to_ms(v, unit):
    return v * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(out):
    r = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if m:
            r[f"p{pct}_ms"] = to_ms(float(m.group(1)), m.group(2))
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    sock = sum(int(x) for x in m.groups()) if m else 0
    r["failed"] = non2xx + sock
    return r


def wrk(path="/", conns=CONNS, duration=DURATION, headers=(), script=None):
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    for h in headers:
        cmd += ["-H", h]
    cmd.append(URL + path)
    out = run(cmd, timeout=duration + 60)
    r = parse_wrk(out)
    r["raw"] = out
    return r


def parse_h2load(out):
    r = {}
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    if m:
        r["requests"] = int(m.group(3))
        r["failed"] = int(m.group(5)) + int(m.group(6)) + int(m.group(7))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r["non2xx"] = int(m.group(2)) + int(m.group(3)) + int(m.group(4))
    m = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", out)
    if m:
        r["mean_ms"] = to_ms(float(m.group(5)), m.group(6))
    return r


def h2load(path="/", clients=10, streams=10, duration=DURATION, extra=()):
    # No --warm-up-time: its requests would not be counted but their CPU would
    # (the scenarios warm up with a separate short run).
    cmd = ["h2load", "-t1", f"-c{clients}", f"-m{streams}", f"-D{duration}", *extra, URL + path]
    out = run(cmd, timeout=duration + 60)
    r = parse_h2load(out)
    r["raw"] = out
    return r


def oha(rate, path="/", duration=DURATION, conns=CONNS):
    cmd = [OHA, "-z", f"{duration}s", "-q", str(int(rate)), "-c", str(conns), "--latency-correction",
           "--insecure", "--no-tui", "--output-format", "json", URL + path]
    out = run(cmd, timeout=duration + 120)
    try:
        j = json.loads(out[out.index("{"):])
    except ValueError:
        return {"error": out[-2000:]}
    pct = j.get("latencyPercentiles", {})
    codes = j.get("statusCodeDistribution", {})
    errors = j.get("errorDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    return {
        "rps": j["summary"].get("requestsPerSec", 0.0),
        "p50_ms": (pct.get("p50") or 0) * 1000,
        "p99_ms": (pct.get("p99") or 0) * 1000,
        "p99.9_ms": (pct.get("p99.9") or 0) * 1000,
        # Requests cut by the end of the run ("aborted due to deadline") are not failures.
        "failed": sum(v for k, v in codes.items() if not k.startswith("2"))
        + sum(v for k, v in errors.items() if "deadline" not in k),
        "ok": ok,
    }


# --- scenarios: each runs once against a started peer and returns {metric: value} ------

class Scenario:
    routes = None
    policy = False
    path = "/"
    headers = ""
    peers = None  # None: every peer
    # metric name -> (unit, higher is better)
    metrics = {"rps": ("req/s", True)}

    def ready(self, peer):
        wait_status(self.path, headers=self.headers)

    def warm(self, peer):
        wrk(self.path, duration=1, headers=self.wrk_headers())

    def wrk_headers(self):
        return [h for h in self.headers.split("\r\n") if h]


class S1(Scenario):
    id, title = 1, "HTTPS HTTP/1.1 keep-alive, small response (wrk)"
    metrics = {"rps": ("req/s", True), "p99_ms": ("ms", False), "cpu_us_per_req": ("proxy CPU us/req", False),
               "sys_us_per_req": ("of which kernel us/req", False)}

    def run(self, peer):
        r = wrk()
        return {"rps": r["rps"], "p99_ms": r.get("p99_ms"), "failed": r["failed"], "requests": r["requests"]}


S2_CLIENTS = int(ENV.get("S2_CLIENTS", "16"))
# s_time sends "GET <path> HTTP/1.0": the path carries the rest of a valid
# HTTP/1.1 request (meshgate-proxy rightly refuses a request without Host).
S2_REQUEST = "/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Bench:"


class S2(Scenario):
    id, title = 2, f"new TLS connection per request: full handshakes/s ({S2_CLIENTS} x openssl s_time -new)"
    metrics = {"rps": ("handshakes/s", True), "cpu_us_per_req": ("proxy CPU us/handshake", False)}

    def warm(self, peer):
        self.s_time(1)

    def s_time(self, duration):
        # `-new`: a new SSL object per connection and never a session to resume
        # (wrk and h2load resume sessions whenever the server offers it, which
        # meshgate-proxy does and cannot be told not to).
        procs = [Proc(f"s_time-{i}", ["openssl", "s_time", "-connect", f"127.0.0.1:{EDGE_PORT}", "-new",
                                     "-time", str(duration), "-www", S2_REQUEST],
                      LOAD_CPU, stdout=subprocess.PIPE) for i in range(S2_CLIENTS)]
        t0 = time.monotonic()
        outs = [pr.p.communicate(timeout=duration + 60)[0].decode(errors="replace") for pr in procs]
        wall = time.monotonic() - t0
        for pr in procs:
            pr.stop()
        conns, per_conn = 0, []
        for out in outs:
            m = re.search(r"(\d+) connections in [\d.]+ real seconds, (\d+) bytes read per connection", out)
            if m:
                conns += int(m.group(1))
                per_conn.append(int(m.group(2)))
        return conns, wall, per_conn

    def run(self, peer):
        conns, wall, per_conn = self.s_time(DURATION)
        # Every connection must have read the same full answer.
        failed = 0 if per_conn and min(per_conn) > 100 and len(per_conn) == S2_CLIENTS else 1
        return {"rps": conns / wall, "connections": conns, "bytes_per_conn": per_conn[:1], "failed": failed}


class S3(Scenario):
    id, title = 3, "HTTP/2 multiplexed, 10 conns x 10 streams (h2load)"
    metrics = {"rps": ("req/s", True), "cpu_us_per_req": ("proxy CPU us/req", False),
               "sys_us_per_req": ("of which kernel us/req", False)}

    def warm(self, peer):
        h2load(duration=1)

    def run(self, peer):
        r = h2load()
        return {"rps": r["rps"], "failed": r.get("failed", 0) + r.get("non2xx", 0),
                "requests": r.get("requests")}


class S4(Scenario):
    id, title = 4, "gRPC unary over HTTP/2, 10 conns x 10 streams (h2load, framed POST)"
    path = GRPC_PATH
    metrics = {"rps": ("req/s", True), "cpu_us_per_req": ("proxy CPU us/req", False)}

    def ready(self, peer):
        r = h2load(GRPC_PATH, clients=1, streams=1, duration=1, extra=self.extra())
        if r.get("rps", 0) <= 0 or r.get("non2xx", 1) or r.get("failed", 1):
            raise RuntimeError(f"gRPC probe failed: {r['raw'][-1500:]}")

    def warm(self, peer):
        h2load(GRPC_PATH, duration=1, extra=self.extra())

    def extra(self):
        body = os.path.join(WORK, "grpc-request.bin")
        if not os.path.exists(body):
            msg = b"\x0a\x05hello"
            with open(body, "wb") as f:
                f.write(b"\x00" + len(msg).to_bytes(4, "big") + msg)
        return ["-d", body, "-H", "content-type: application/grpc", "-H", "te: trailers"]

    def run(self, peer):
        r = h2load(GRPC_PATH, extra=self.extra())
        return {"rps": r["rps"], "failed": r.get("failed", 0) + r.get("non2xx", 0),
                "requests": r.get("requests")}


class S5(Scenario):
    id, title = 5, "JWT (ES256, local JWKS) + local rate limit, HTTP/1.1 keep-alive (wrk)"
    policy = True
    # nginx OSS has no JWT validation. HAProxy 2.6 has jwt_verify, but with
    # Debian 12's 2.6.12 it answers -5 (unknown certificate) for the ES256 key
    # here, so it only joins with HAPROXY_JWT=1.
    peers = ["haproxy", "meshgate"] if ENV.get("HAPROXY_JWT") == "1" else ["meshgate"]

    @property
    def headers(self):
        return f"Authorization: Bearer {make_jwt()['token']}\r\n"

    def run(self, peer):
        r = wrk(headers=self.wrk_headers())
        return {"rps": r["rps"], "failed": r["failed"]}


class S6(Scenario):
    id, title = 6, f"{MANY_ROUTES} prefix routes, request matching the last one (wrk)"
    routes = route_prefixes(MANY_ROUTES)
    path = f"/r{MANY_ROUTES - 1}/x"
    metrics = {"rps": ("req/s", True), "cpu_us_per_req": ("proxy CPU us/req", False)}

    def run(self, peer):
        r = wrk(self.path)
        return {"rps": r["rps"], "failed": r["failed"], "requests": r["requests"]}


class S7(Scenario):
    id, title = 7, f"memory per idle TLS connection, {IDLE_CONNS} keep-alive connections"
    metrics = {"kib_per_conn": ("KiB/conn", False)}

    def warm(self, peer):
        wrk(duration=1, conns=10)

    def run(self, peer):
        time.sleep(1)
        before = peer.rss()
        opener = Proc("opener", [sys.executable, os.path.join(HERE, "idle_conns.py"),
                                 "127.0.0.1", str(EDGE_PORT), str(IDLE_CONNS)],
                      LOAD_CPU, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            line = opener.p.stdout.readline().decode().strip()
            if not line.startswith("open "):
                raise RuntimeError(f"opener: {line!r}, see {opener.log_path}")
            opened = int(line.split()[1])
            time.sleep(2)
            after = peer.rss()
            # The connections must still be open (none closed by the proxy).
            opener.p.stdin.write(b"check\n")
            opener.p.stdin.flush()
            alive = int(opener.p.stdout.readline().decode().split()[1])
        finally:
            opener.stop()
        return {"kib_per_conn": (after - before) / max(opened, 1), "opened": opened,
                "still_open": alive, "rss_before_kib": before, "rss_after_kib": after,
                "failed": IDLE_CONNS - alive}


class S8(Scenario):
    id, title = 8, "latency at a constant rate of 50% of nginx's max (oha, open loop, corrected)"
    metrics = {"p50_ms": ("ms", False), "p99_ms": ("ms", False), "p99.9_ms": ("ms", False)}
    rate = None

    def run(self, peer):
        r = oha(self.rate)
        if "error" in r:
            raise RuntimeError(f"oha: {r['error']}")
        return r


RELOAD_INTERVAL_MS = int(ENV.get("RELOAD_INTERVAL_MS", "100"))


class S9(Scenario):
    id, title = 9, f"config reload every {RELOAD_INTERVAL_MS} ms under load (wrk): failed requests (must be 0)"
    metrics = {"failed": ("requests", False), "rps": ("req/s", True)}

    def run(self, peer):
        before = reloads_ok() if peer.name == "meshgate" else None
        load = Proc("wrk-reload", ["wrk", "-t1", f"-c{CONNS}", f"-d{DURATION}s", "--timeout", "5s",
                                   URL + "/"], LOAD_CPU, stdout=subprocess.PIPE)
        reloads = 0
        t_end = time.time() + DURATION
        while time.time() < t_end and load.alive():
            time.sleep(RELOAD_INTERVAL_MS / 1000)
            peer.reload()
            reloads += 1
        out = load.p.stdout.read().decode()
        load.p.wait()
        load.stop()
        r = parse_wrk(out)
        res = {"failed": r["failed"], "rps": r["rps"], "reloads_sent": reloads}
        if before is not None:
            time.sleep(0.6)
            res["reloads_applied"] = (reloads_ok() or 0) - before
        return res


PROP_CHANGES = int(ENV.get("PROP_CHANGES", "20"))


def percentile(values, pct):
    """Nearest-rank percentile (with 20 samples, p99 is the slowest)."""
    vals = sorted(values)
    return vals[max(0, min(len(vals) - 1, -(-len(vals) * pct // 100) - 1))]


class S10(Scenario):
    id, title = 10, (f"config propagation at {PROP_ROUTES} routes: changed config -> first request "
                     f"on the new route, p50/p99 over {PROP_CHANGES} changes per run")
    metrics = {"propagation_p50_ms": ("ms", False), "propagation_p99_ms": ("ms", False),
               "rss_mib": ("MiB", False)}
    routes = route_prefixes(PROP_ROUTES)
    path = "/r0/x"
    n = 0

    def warm(self, peer):
        pass

    def run(self, peer):
        # Each change adds one route (the ones added before stay) and waits until
        # it is served; every peer takes the same loop (nginx and HAProxy reload
        # on their signal, meshgate watches its directory).
        added, samples = [], []
        for _ in range(PROP_CHANGES):
            S10.n += 1
            new = f"/new{S10.n}/"
            if probe(new + "x") != 404:
                raise RuntimeError(f"{new} answers before the change")
            added.append(new)
            t0 = time.monotonic()
            peer.reload(routes=self.routes + added)
            while probe(new + "x", timeout=2) != 200:
                if time.monotonic() - t0 > 60:
                    raise RuntimeError(f"{new} not served after 60 s")
                time.sleep(0.002)
            samples.append((time.monotonic() - t0) * 1000)
            # Let the previous reload settle (old workers exit, memory is freed).
            time.sleep(0.3)
        time.sleep(1)
        return {"propagation_p50_ms": percentile(samples, 50),
                "propagation_p99_ms": percentile(samples, 99),
                "propagation_max_ms": max(samples),
                "changes": len(samples),
                "rss_mib": peer.rss() / 1024}


ALL = {c.id: c for c in (S1, S2, S3, S4, S5, S6, S7, S8, S9, S10)}


# --- the comparison ------------------------------------------------------------------------

def machine():
    def read(path):
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return ""
    cpu = re.search(r"model name\s*:\s*(.*)", read("/proc/cpuinfo"))
    mem = re.search(r"MemTotal:\s*(\d+)", read("/proc/meminfo"))
    def ver(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip() or \
                subprocess.run(cmd, capture_output=True, text=True).stderr.strip()
        except OSError:
            return "n/a"
    return {
        "cpu": cpu.group(1) if cpu else platform.processor(),
        "cores": os.cpu_count(),
        "mem_gib": round(int(mem.group(1)) / 1048576, 1) if mem else None,
        "kernel": platform.release(),
        "nginx": ver(["nginx", "-v"]).splitlines()[0],
        "haproxy": ver(["haproxy", "-v"]).splitlines()[0],
        "wrk": (ver(["wrk", "-v"]).splitlines() or ["?"])[0],
        "h2load": (ver(["h2load", "--version"]).splitlines() or ["?"])[0],
        "oha": ver([OHA, "--version"]) if os.path.exists(OHA) else "n/a",
        "meshgate": ver([MESHGATE_BIN, "--version"]),
    }


def order(peers, rep):
    """Rotate, and reverse every other repetition, so no peer always runs first."""
    k = rep % len(peers)
    o = peers[k:] + peers[:k]
    return o[::-1] if rep % 2 else o


def spread(values):
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return 0.0
    med = statistics.median(vals)
    return (max(vals) - min(vals)) / med if med else 0.0


def main():
    started = time.time()
    info = machine()
    log(f"machine: {info}")
    if IDLE_CONNS < IDLE_CONNS_WANTED and 7 in SCENARIOS:
        log(f"scenario 7: {IDLE_CONNS} connections, not {IDLE_CONNS_WANTED}: the open-files "
            f"limit is {FD_LIMIT} (raise the hard limit to {2 * IDLE_CONNS_WANTED + 1000})")
    upstream = start_upstream()
    results = {"machine": info, "settings": {
        "repeat": REPEAT, "duration_s": DURATION, "conns": CONNS, "idle_conns": IDLE_CONNS, "idle_conns_wanted": IDLE_CONNS_WANTED,
        "fd_limit": FD_LIMIT, "reload_interval_ms": RELOAD_INTERVAL_MS,
        "many_routes": MANY_ROUTES, "prop_routes": PROP_ROUTES, "prop_changes": PROP_CHANGES, "proxy_cpu": PROXY_CPU,
        "load_cpu": LOAD_CPU, "peers": PEERS, "scenarios": SCENARIOS}, "scenarios": {}}
    all_peers = PEERS + (["meshgate"] if ENV.get("INCLUDE_MESHGATE", "1") == "1" else [])
    try:
        for sid in SCENARIOS:
            sc = ALL[sid]()
            peers = [p for p in all_peers if (sc.peers is None or p in sc.peers)
                     and (p != "bare" or sid in FLOOR_SCENARIOS)]
            if sid == 8:
                if not os.path.exists(OHA):
                    log("scenario 8 skipped: no oha")
                    continue
                nginx_max = results["scenarios"].get("1", {}).get("median", {}).get("nginx", {}).get("rps")
                if not nginx_max:
                    log("scenario 8: measuring nginx's max first (scenario 1 on nginx)")
                    p = Nginx()
                    p.start()
                    try:
                        wait_status("/")
                        S1().warm(p)
                        nginx_max = wrk()["rps"]
                    finally:
                        p.stop()
                sc.rate = max(1, int(nginx_max * 0.5))
                log(f"scenario 8 rate: {sc.rate} req/s (nginx max {nginx_max:.0f})")
            entry = {"title": sc.title, "metrics": {k: {"unit": u, "higher_is_better": h}
                                                     for k, (u, h) in sc.metrics.items()},
                     "runs": {p: [] for p in peers}, "errors": {}}
            if sid == 8:
                entry["rate"] = sc.rate
            results["scenarios"][str(sid)] = entry
            log(f"== scenario {sid}: {sc.title}")
            for rep in range(REPEAT):
                for name in order(peers, rep):
                    peer = PEER_CLASSES[name]()
                    try:
                        peer.start(routes=sc.routes, policy=sc.policy)
                        sc.ready(peer)
                        sc.warm(peer)
                        (user0, sys0), t0 = cpu_split(peer.proc.p.pid), time.monotonic()
                        r = sc.run(peer)
                        user1, sys1 = cpu_split(peer.proc.p.pid)
                        cpu = (user1 - user0) + (sys1 - sys0)
                        wall = time.monotonic() - t0
                        # How busy the proxy's core was: below ~90 % the load
                        # generator, not the proxy, set the pace.
                        r["proxy_cpu_pct"] = 100 * cpu / wall
                        n = r.get("requests") or r.get("connections")
                        if n and "cpu_us_per_req" in sc.metrics:
                            r["cpu_us_per_req"] = 1e6 * cpu / n
                            # The kernel's share (sockets, loopback TCP, epoll):
                            # what no proxy's user space can win back.
                            r["sys_us_per_req"] = 1e6 * (sys1 - sys0) / n
                        log(f"   {sid} rep {rep + 1} {name}: " + ", ".join(
                            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
                        entry["runs"][name].append(r)
                    except Exception as e:  # a failing peer must not end the comparison
                        log(f"   {sid} rep {rep + 1} {name}: FAILED: {e}")
                        entry["errors"].setdefault(name, []).append(str(e)[:2000])
                    finally:
                        peer.stop()
                        time.sleep(0.3)
            summarize(entry, peers)
    finally:
        upstream.stop()
    results["elapsed_s"] = round(time.time() - started, 1)
    table = render(results)
    print(table)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(OUT, f"compare-{stamp}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(OUT, f"compare-{stamp}.txt"), "w") as f:
        f.write(table + "\n")
    log(f"results: {path}")


def summarize(entry, peers):
    entry["median"], entry["spread"] = {}, {}
    for p in peers:
        runs = entry["runs"][p]
        entry["median"][p], entry["spread"][p] = {}, {}
        for m in list(entry["metrics"]) + ["failed"]:
            vals = [r.get(m) for r in runs if r.get(m) is not None]
            if vals:
                entry["median"][p][m] = statistics.median(vals)
                entry["spread"][p][m] = spread(vals)
    entry["ratio"] = {}
    for p in peers:
        if p == "meshgate":
            continue
        entry["ratio"][p] = {}
        for m in entry["metrics"]:
            a = entry["median"].get("meshgate", {}).get(m)
            b = entry["median"].get(p, {}).get(m)
            entry["ratio"][p][m] = (a / b) if (a is not None and b) else None
    # Unreadable when a peer's own figures vary too much (or a peer failed).
    unreadable = []
    for p in peers:
        if p == "meshgate":
            continue
        for m in entry["metrics"]:
            s = entry["spread"].get(p, {}).get(m)
            if s is not None and s > MAX_SPREAD and m != "failed":
                unreadable.append(f"{p} {m} varies {s:.0%}")
        if entry["errors"].get(p):
            unreadable.append(f"{p} failed")
    entry["unreadable"] = unreadable


def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def render(results):
    peers = PEERS
    head = ["scenario", "metric"] + [f"{p}" for p in peers] + ["meshgate"] + \
        [f"mg/{p}" for p in peers] + ["readable"]
    rows = [head]
    for sid, e in results["scenarios"].items():
        for m, meta in e["metrics"].items():
            row = [sid, f"{m} ({meta['unit']}{'' if meta['higher_is_better'] else ', lower better'})"]
            for p in peers + ["meshgate"]:
                v = e["median"].get(p, {}).get(m)
                err = e["errors"].get(p)
                row.append(fmt(v) if v is not None else ("FAILED" if err else "n/a"))
            for p in peers:
                r = e.get("ratio", {}).get(p, {}).get(m)
                row.append(f"{r:.2f}" if r is not None else "-")
            row.append("yes" if not e["unreadable"] else "NO")
            rows.append(row)
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = []
    for sid, e in results["scenarios"].items():
        notes.append(f"{sid}: {e['title']}")
        if e.get("rate"):
            notes.append(f"   constant rate {e['rate']} req/s")
            for p, runs in e["runs"].items():
                got = [r.get("rps", 0) for r in runs]
                if got and statistics.median(got) < 0.95 * e["rate"]:
                    notes.append(f"   {p}: RATE NOT REACHED (median {statistics.median(got):.0f} req/s): "
                                 "the latencies include queueing in the load generator or the proxy")
        for p, errs in e["errors"].items():
            notes.append(f"   {p} failed {len(errs)}x: {errs[0][:300]}")
        if e["unreadable"]:
            notes.append("   UNREADABLE: " + "; ".join(e["unreadable"]))
        for p, runs in e["runs"].items():
            applied = [r["reloads_applied"] for r in runs if "reloads_applied" in r]
            if applied:
                sent = [r.get("reloads_sent") for r in runs]
                notes.append(f"   {p}: reloads sent {sent}, applied {applied}"
                             + (" (NO reload applied: not exercised)" if not any(applied) else ""))
        busy = {p: statistics.median([r["proxy_cpu_pct"] for r in runs])
                for p, runs in e["runs"].items() if runs and "proxy_cpu_pct" in runs[0]}
        if busy and any(k in e["metrics"] for k in ("rps",)):
            notes.append("   proxy CPU busy: " + ", ".join(f"{p} {v:.0f}%" for p, v in busy.items())
                         + ("  (below 90%: the load generator set the pace; compare CPU per request)"
                            if min(busy.values()) < 90 else ""))
        for p in e["median"]:
            f = e["median"][p].get("failed")
            if f:
                notes.append(f"   {p}: median failed requests {f:g}")
    s = results["settings"]
    hdr = (f"meshgate-proxy vs {', '.join(peers)}: medians of {s['repeat']} runs of {s['duration_s']} s "
           f"(proxy on cpu {s['proxy_cpu']}, load+upstream on cpu {s['load_cpu']})")
    return "\n".join([hdr, ""] + lines + [""] + notes)


if __name__ == "__main__":
    main()
