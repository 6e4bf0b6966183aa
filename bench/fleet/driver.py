#!/usr/bin/env python3
"""Helpers of bench/fleet.sh (stdlib only; run as root).

  image-bytes REGISTRY REPO
        Sizes of what the image's two tags reference, from the registry
        (plain HTTP): `latest` (the image manifest, config, layers) and
        `soci` (the v2 image index, the same image manifest and its blobs,
        the SOCI index manifest, the zTOCs). Prints `metric value` lines:
        layers_bytes, config_bytes, manifest_bytes, index_bytes,
        soci_manifest_bytes, ztoc_bytes, layers, ztocs, full_bytes (manifest
        + config + layers: what `ctr images pull NAME:latest` fetches),
        lazy_bytes (everything `soci` references: full_bytes + index + SOCI
        manifest + zTOCs), `blob DIGEST SIZE` per layer and `warm PATH` per
        manifest and blob of both tags (PATH under /v2/REPO/).

  fleet --system lazy|full --ready TEXT --ref REF --node NS,CTD,HOSTS,SNAPROOT
        [--node ...] --sochi BIN --origin-log LOG --mirror-log LOG --net PFX
        [--timeout S]
        Starts every node's pull at the same moment (t0), each inside its
        network namespace (nsenter --net): lazy = `sochi pull --hosts-dir HOSTS`
        then `ctr run --snapshotter sochi`; full = `ctr images pull
        --hosts-dir HOSTS` then `ctr run` (overlayfs). Reads each run's
        stdout until TEXT. Prints `metric value` lines: per node
        nI_pull_s, nI_ready_s, nI_exit_s (from t0); fleet_ready_s (the last
        ready line), first_ready_s; and, at the last ready line (`*`) and when
        every container has exited (`*_exit`): origin_/mirror_ requests and
        bytes from their access logs, origin_blob_gets (GETs of blobs),
        origin_wire_bytes (what left the origin's veth, headers included),
        mirror_wire_bytes and nI_wire_bytes (mirror -> node I), for lazy
        the snapshotters' nI_registry_requests{host} and failovers, demand
        and background bytes; foreign_drops (page cache drops by others).

  settle --origin-log LOG --net PFX [--quiet S] [--max S]
        Waits until the origin's veth has sent nothing for S seconds (the
        mirror may still be filling its cache from the origin after the
        containers exited), at most MAX; prints origin_*_settled and
        settle_wait_s.

  blob-gets LOG [--since-line N]
        Per blob digest, how many GETs the registry served and their bytes
        (to see whether the mirror fetches a blob from the origin once or
        once per request).

  summary CSV [--mirror cold|warm]
        The README tables (medians) from the CSV (the image's sizes are its
        rows of system `image`).
"""

import json
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

ACCESS = re.compile(r'^\S+ - \S+ \[[^]]*\] "(\w+) (\S+) [^"]*" (\d+) (\d+)')
BLOB = re.compile(r'/v2/.+/blobs/(sha256:[0-9a-f]{64})')


def reglog(log, start_line=0):
    """(lines, requests, bytes, blob_gets, blob_bytes) of GET/HEAD lines
    after START_LINE."""
    lines = requests = byt = blob_gets = blob_bytes = 0
    try:
        f = open(log, errors="replace")
    except OSError:
        return 0, 0, 0, 0, 0
    with f:
        for n, line in enumerate(f, 1):
            lines = n
            if n <= start_line:
                continue
            m = ACCESS.match(line)
            if m and m.group(1) in ("GET", "HEAD"):
                requests += 1
                byt += int(m.group(4))
                if m.group(1) == "GET" and BLOB.search(m.group(2)):
                    blob_gets += 1
                    blob_bytes += int(m.group(4))
    return lines, requests, byt, blob_gets, blob_bytes


def blob_answers(log, start_line=0):
    """Blob GETs after START_LINE by how they were answered: `206` (the
    range asked for) or whole (`200`: a pull-through registry answers a
    range request for a blob it has not stored yet with the whole blob; a
    client that stops reading once it has its range makes the registry log
    the cut-short answer as `500`, "broken pipe", after the 200 header went
    out). Returns {"206": [gets, bytes], "whole": [gets, bytes]}."""
    out = {"206": [0, 0], "whole": [0, 0]}
    try:
        f = open(log, errors="replace")
    except OSError:
        return out
    with f:
        for n, line in enumerate(f, 1):
            if n <= start_line:
                continue
            m = ACCESS.match(line)
            if not m or m.group(1) != "GET" or not BLOB.search(m.group(2)):
                continue
            c = out["206" if m.group(3) == "206" else "whole"]
            c[0] += 1
            c[1] += int(m.group(4))
    return out


def tx_bytes(ns, dev):
    """Bytes sent by DEV in namespace NS (headers included)."""
    out = subprocess.run(["ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev],
                         stdout=subprocess.PIPE, check=True).stdout
    return json.loads(out)[0]["stats64"]["tx"]["bytes"]


def drop_count():
    try:
        for line in open("/proc/vmstat"):
            if line.startswith("drop_pagecache "):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


METRIC = re.compile(r'^(\w+)\{([^}]*)\} ([0-9.e+-]+)$')


def node_metrics(ns):
    """The snapshotter's counters in node namespace NS (metrics on its own
    127.0.0.1:9100)."""
    out = {}
    r = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "--", "curl", "-s", "-m", "10",
                        "http://127.0.0.1:9100/metrics"], stdout=subprocess.PIPE)
    if r.returncode != 0:
        return out
    for line in r.stdout.decode(errors="replace").splitlines():
        m = METRIC.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2), float(m.group(3))
        if name in ("sochi_registry_requests_total", "sochi_registry_failovers_total"):
            host = re.search(r'host="([^"]*)"', labels).group(1)
            kind = "registry_requests" if name.endswith("requests_total") else "registry_failovers"
            out[f"{kind}[{host}]"] = int(value)
        elif name == "sochi_layer_fetched_bytes_total":
            kind = "demand" if 'kind="demand"' in labels else "background"
            out[f"{kind}_bytes"] = out.get(f"{kind}_bytes", 0) + int(value)
        elif name == "sochi_layer_fetch_requests_total":
            kind = "demand" if 'kind="demand"' in labels else "background"
            out[f"{kind}_requests"] = out.get(f"{kind}_requests", 0) + int(value)
    return out


def counters(a, nodes, start, suffix):
    """Counters since START (the values at t0), as `metric value` pairs."""
    res = {}
    _, res["origin_requests"], res["origin_bytes"], res["origin_blob_gets"], res["origin_blob_bytes"] = \
        reglog(a.origin_log, start["origin_line"])[:5]
    _, res["mirror_requests"], res["mirror_bytes"], res["mirror_blob_gets"], res["mirror_blob_bytes"] = \
        reglog(a.mirror_log, start["mirror_line"])[:5]
    answers = blob_answers(a.mirror_log, start["mirror_line"])
    res["mirror_blob_206_gets"], res["mirror_blob_206_bytes"] = answers["206"]
    res["mirror_blob_whole_gets"], res["mirror_blob_whole_bytes"] = answers["whole"]
    res["origin_wire_bytes"] = tx_bytes(f"{a.net}-o", "up0") - start["origin_wire"]
    total = 0
    for i, n in enumerate(nodes, 1):
        b = tx_bytes(f"{a.net}-m", f"nd{i}") - start[f"n{i}_wire"]
        res[f"n{i}_wire_bytes"] = b
        total += b
    res["mirror_wire_bytes"] = total
    if a.system == "lazy":
        for i, n in enumerate(nodes, 1):
            for k, v in node_metrics(n["ns"]).items():
                res[f"n{i}_{k}"] = v
    res["foreign_drops"] = drop_count() - start["drops"]
    return {k + suffix: v for k, v in res.items()}


def cmd_fleet(argv):
    import argparse
    p = argparse.ArgumentParser(prog="driver.py fleet")
    p.add_argument("--system", choices=["lazy", "full"], required=True)
    p.add_argument("--ready", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--node", action="append", required=True)
    p.add_argument("--sochi", required=True)
    p.add_argument("--origin-log", required=True)
    p.add_argument("--mirror-log", required=True)
    p.add_argument("--net", required=True)
    p.add_argument("--timeout", type=float, default=900)
    a = p.parse_args(argv)
    nodes = []
    for spec in a.node:
        ns, ctd, hosts, snap = spec.split(",")
        nodes.append({"ns": ns, "ctd": ctd, "hosts": hosts, "snap": snap})

    start = {"origin_line": reglog(a.origin_log)[0], "mirror_line": reglog(a.mirror_log)[0],
             "origin_wire": tx_bytes(f"{a.net}-o", "up0"), "drops": drop_count()}
    for i in range(1, len(nodes) + 1):
        start[f"n{i}_wire"] = tx_bytes(f"{a.net}-m", f"nd{i}")

    res = {}
    lock = threading.Lock()
    ready_count = [0]
    all_ready = threading.Event()
    errors = []

    def node(i, n, t0):
        sock = f"{n['ctd']}/containerd.sock"
        # Only the network namespace: `ip netns exec` would add a mount
        # namespace, hiding the snapshotter's mounts from containerd.
        netns = ["nsenter", f"--net=/run/netns/{n['ns']}", "--"]
        cid = f"fleet-{a.system}-n{i}-{int(t0 * 1000) % 100000}"
        if a.system == "lazy":
            pull = netns + [a.sochi, "--plain-http", "--hosts-dir", n["hosts"], "pull", "-a", sock,
                            "--root", n["snap"] + "-pull", a.ref]
            run = netns + ["ctr", "-a", sock, "run", "--rm", "--snapshotter", "sochi", a.ref, cid]
        else:
            pull = netns + ["ctr", "-a", sock, "images", "pull", "--hosts-dir", n["hosts"], a.ref]
            run = netns + ["ctr", "-a", sock, "run", "--rm", a.ref, cid]
        try:
            r = subprocess.run(pull, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=a.timeout)
            with lock:
                res[f"n{i}_pull_s"] = time.monotonic() - t0
            if r.returncode != 0:
                sys.stderr.write(r.stdout.decode(errors="replace")[-3000:])
                raise RuntimeError(f"node {i}: pull failed with status {r.returncode}: "
                                   f"{shlex.join(pull)}")
            proc = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            timer = threading.Timer(a.timeout, proc.kill)
            timer.start()
            seen = []
            ready = False
            for raw in proc.stdout:
                line = raw.decode(errors="replace")
                seen.append(line)
                if not ready and a.ready in line:
                    ready = True
                    with lock:
                        res[f"n{i}_ready_s"] = time.monotonic() - t0
                        ready_count[0] += 1
                        if ready_count[0] == len(nodes):
                            all_ready.set()
            status = proc.wait()
            timer.cancel()
            with lock:
                res[f"n{i}_exit_s"] = time.monotonic() - t0
            if not ready or status != 0:
                sys.stderr.write("".join(seen[-30:]))
                raise RuntimeError(f"node {i}: no ready line or status {status}: {shlex.join(run)}")
        except Exception as e:  # noqa: BLE001 - reported, and the run fails
            errors.append(str(e))
            all_ready.set()

    t0 = time.monotonic()
    threads = [threading.Thread(target=node, args=(i, n, t0)) for i, n in enumerate(nodes, 1)]
    for t in threads:
        t.start()
    all_ready.wait(a.timeout + 60)
    if not errors:
        res.update(counters(a, nodes, start, ""))
    for t in threads:
        t.join()
    if errors:
        raise SystemExit("fleet: " + "; ".join(errors))
    res.update(counters(a, nodes, start, "_exit"))
    readies = [res[f"n{i}_ready_s"] for i in range(1, len(nodes) + 1)]
    res["fleet_ready_s"] = max(readies)
    res["first_ready_s"] = min(readies)
    # The state at t0, for `settle`.
    res["start_origin_line"] = start["origin_line"]
    res["start_origin_wire"] = start["origin_wire"]
    for k, v in res.items():
        print(k, f"{v:.4f}" if isinstance(v, float) else v)


def cmd_settle(argv):
    import argparse
    p = argparse.ArgumentParser(prog="driver.py settle")
    p.add_argument("--origin-log", required=True)
    p.add_argument("--net", required=True)
    p.add_argument("--start-line", type=int, required=True)
    p.add_argument("--start-wire", type=int, required=True)
    p.add_argument("--quiet", type=float, default=5)
    p.add_argument("--max", type=float, default=300)
    a = p.parse_args(argv)
    t0 = time.monotonic()
    last = tx_bytes(f"{a.net}-o", "up0")
    still = time.monotonic()
    while time.monotonic() - t0 < a.max:
        time.sleep(0.5)
        now = tx_bytes(f"{a.net}-o", "up0")
        if now - last > 4096:   # more than stray packets
            still = time.monotonic()
        last = now
        if time.monotonic() - still >= a.quiet:
            break
    _, req, byt, gets, gbytes = reglog(a.origin_log, a.start_line)
    print("origin_requests_settled", req)
    print("origin_bytes_settled", byt)
    print("origin_blob_gets_settled", gets)
    print("origin_blob_bytes_settled", gbytes)
    print("origin_wire_bytes_settled", last - a.start_wire)
    print("settle_wait_s", f"{time.monotonic() - t0:.1f}")


def cmd_blob_gets(argv):
    log = argv[0]
    since = int(argv[2]) if len(argv) > 2 and argv[1] == "--since-line" else 0
    per = {}
    for n, line in enumerate(open(log, errors="replace"), 1):
        if n <= since:
            continue
        m = ACCESS.match(line)
        if not m or m.group(1) != "GET":
            continue
        b = BLOB.search(m.group(2))
        if not b:
            continue
        c = per.setdefault(b.group(1), [0, 0, 0])
        c[0] += 1
        c[1] += int(m.group(4))
        c[2] += m.group(3) == "206"
    for d, (gets, byt, partial) in sorted(per.items(), key=lambda kv: -kv[1][1]):
        print(d, gets, byt, partial)


# --- image sizes --------------------------------------------------------------

OCI_ACCEPT = ("application/vnd.oci.image.index.v1+json,"
              "application/vnd.oci.image.manifest.v1+json,"
              "application/vnd.docker.distribution.manifest.v2+json")


def cmd_image_bytes(registry, repo):
    def get(path):
        req = urllib.request.Request(f"http://{registry}/v2/{repo}/{path}")
        req.add_header("Accept", OCI_ACCEPT)
        return urllib.request.urlopen(req, timeout=60).read()

    latest = get("manifests/latest")
    manifest = json.loads(latest)
    layers = sum(layer["size"] for layer in manifest["layers"])
    index_raw = get("manifests/soci")
    index = json.loads(index_raw)
    soci = [m for m in index.get("manifests", [])
            if m.get("artifactType") == "application/vnd.amazon.soci.index.v2+json"]
    if not soci:
        raise SystemExit(f"image-bytes: {repo}:soci lists no SOCI index")
    soci_raw = get(f"manifests/{soci[0]['digest']}")
    soci_manifest = json.loads(soci_raw)
    ztocs = [b for b in soci_manifest["layers"]]
    images = [m for m in index["manifests"] if m is not soci[0]]
    image_manifest_size = sum(m["size"] for m in images)
    out = {
        "layers": len(manifest["layers"]),
        "layers_bytes": layers,
        "config_bytes": manifest["config"]["size"],
        "manifest_bytes": len(latest),
        "index_bytes": len(index_raw),
        "soci_manifest_bytes": len(soci_raw),
        "soci_image_manifest_bytes": image_manifest_size,
        "ztocs": len(ztocs),
        "ztoc_bytes": sum(b["size"] for b in ztocs),
    }
    out["full_bytes"] = out["manifest_bytes"] + out["config_bytes"] + layers
    out["lazy_bytes"] = (out["index_bytes"] + image_manifest_size + out["config_bytes"] + layers
                         + out["soci_manifest_bytes"] + out["ztoc_bytes"])
    for k, v in out.items():
        print(k, v)
    for layer in manifest["layers"]:
        print("blob", layer["digest"], layer["size"])
    # What a warm mirror holds (`fleet.sh --mirror warm` fetches these
    # through it before t0): every manifest and blob of both tags.
    import hashlib
    warm = [f"manifests/sha256:{hashlib.sha256(latest).hexdigest()}"]
    warm += [f"manifests/{m['digest']}" for m in images]
    warm += [f"manifests/{soci[0]['digest']}"]
    warm += [f"manifests/sha256:{hashlib.sha256(index_raw).hexdigest()}"]
    warm += [f"blobs/{manifest['config']['digest']}"]
    warm += [f"blobs/{layer['digest']}" for layer in manifest["layers"]]
    warm += [f"blobs/{soci_manifest['config']['digest']}"]
    warm += [f"blobs/{b['digest']}" for b in ztocs]
    for w in dict.fromkeys(warm):
        print("warm", w)


# --- summary ------------------------------------------------------------------


def cmd_summary(csv_path, mirror="cold"):
    import csv
    rows = list(csv.DictReader(open(csv_path)))
    img = {r["metric"]: int(float(r["value"])) for r in rows if r["system"] == "image"}
    rows = [r for r in rows if r["system"] != "image"]
    vals = {}
    nodes = 0
    runs = set()
    for r in rows:
        vals.setdefault((r["system"], r["metric"]), []).append(float(r["value"]))
        runs.add((r["system"], r["run"]))
        m = re.match(r"n(\d+)_ready_s$", r["metric"])
        if m:
            nodes = max(nodes, int(m.group(1)))

    def med(system, metric):
        v = vals.get((system, metric))
        return statistics.median(v) if v else None

    def rng(system, metric):
        v = vals.get((system, metric))
        return f" ({min(v):.1f}–{max(v):.1f})" if v and len(v) > 1 else ""

    sec = lambda x: "–" if x is None else f"{x:.2f} s"
    mb = lambda x: "–" if x is None else f"{x / 1e6:.1f} MB"
    full_img, lazy_img, layers = img["full_bytes"], img["lazy_bytes"], img["layers_bytes"]
    nruns = {s: sum(1 for (sy, _) in runs if sy == s) for s in ("full", "lazy")}

    print(f"Image: {img['layers']} layers, {layers / 1e6:.1f} MB compressed; "
          f"**image bytes (full)** = manifest + config + layers = {full_img / 1e6:.1f} MB; "
          f"**image bytes (lazy)** = everything the `soci` tag references (the full set + "
          f"index, SOCI manifest and {img['ztocs']} zTOCs of {img['ztoc_bytes'] / 1e6:.1f} MB) "
          f"= {lazy_img / 1e6:.1f} MB.")
    print()
    state = ("cold: a fresh, empty mirror" if mirror == "cold" else
             "warm mirror: it had fetched and stored every manifest and blob of both tags before t0")
    print(f"Fleet of {nodes} nodes, fresh node roots, {state}; medians of "
          f"{nruns['full']} full and {nruns['lazy']} lazy runs (range in brackets):")
    print()
    fr, lr = med("full", "fleet_ready_s"), med("lazy", "fleet_ready_s")
    print("| | full pull + run (overlayfs) | sochi lazy pull + run | lazy / full |")
    print("|---|---|---|---|")
    ratio = lambda x, y: f"**{x / y * 100:.0f}%**" if x and y else "–"
    print(f"| fleet: all {nodes} ready | {sec(fr)}{rng('full', 'fleet_ready_s')} | "
          f"{sec(lr)}{rng('lazy', 'fleet_ready_s')} | {ratio(lr, fr)} |")
    ff, lf = med("full", "first_ready_s"), med("lazy", "first_ready_s")
    print(f"| first node ready | {sec(ff)} | {sec(lf)} | {ratio(lf, ff)} |")
    for i in range(1, nodes + 1):
        f, l = med("full", f"n{i}_ready_s"), med("lazy", f"n{i}_ready_s")
        print(f"| node {i} ready | {sec(f)}{rng('full', f'n{i}_ready_s')} | "
              f"{sec(l)}{rng('lazy', f'n{i}_ready_s')} | {ratio(l, f)} |")
    print()

    def row(label, metric, denom_full, denom_lazy):
        f, l = med("full", metric), med("lazy", metric)
        df = f"{f / denom_full:.2f}×" if f is not None and denom_full else "–"
        dl = f"{l / denom_lazy:.2f}×" if l is not None and denom_lazy else "–"
        print(f"| {label} | {mb(f)} ({df}) | {mb(l)} ({dl}) |")

    print("Bytes (medians). In brackets: against the image bytes: for the full pull its own "
          f"set ({full_img / 1e6:.1f} MB), for the lazy pull the `soci` set "
          f"({lazy_img / 1e6:.1f} MB):")
    print()
    print("| | full | lazy |")
    print("|---|---|---|")
    row("origin served, access log, at the last ready line", "origin_bytes", full_img, lazy_img)
    row("origin served, access log, after the mirror settled", "origin_bytes_settled", full_img, lazy_img)
    row("origin's link, wire bytes, settled", "origin_wire_bytes_settled", full_img, lazy_img)
    row("mirror served (all nodes), access log, at the last ready line", "mirror_bytes",
        full_img, lazy_img)
    row("mirror's links to the nodes, wire bytes, at the last ready line", "mirror_wire_bytes",
        full_img, lazy_img)
    row("mirror's links to the nodes, wire bytes, all exited", "mirror_wire_bytes_exit",
        full_img, lazy_img)
    row("of the mirror's blob answers (access log, at the last ready line): `206`",
        "mirror_blob_206_bytes", full_img, lazy_img)
    row("whole blobs (`200`: GETs without a range, e.g. zTOCs, and range requests for a blob "
        "the mirror had not stored yet; logged `500` when the client stopped reading)",
        "mirror_blob_whole_bytes", full_img, lazy_img)
    print()
    print("Against the layers alone "
          f"({layers / 1e6:.1f} MB) the settled origin bytes are "
          f"{(med('full', 'origin_bytes_settled') or 0) / layers:.2f}× (full) and "
          f"{(med('lazy', 'origin_bytes_settled') or 0) / layers:.2f}× (lazy).")
    print()
    print("| | full | lazy |")
    print("|---|---|---|")
    for label, metric in [("origin requests (GET/HEAD), settled", "origin_requests_settled"),
                          ("of which blob GETs", "origin_blob_gets_settled"),
                          ("mirror requests, at the last ready line", "mirror_requests"),
                          ("of which blob GETs", "mirror_blob_gets"),
                          ("of which answered `206`", "mirror_blob_206_gets"),
                          ("of which answered with the whole blob", "mirror_blob_whole_gets")]:
        f, l = med("full", metric), med("lazy", metric)
        print(f"| {label} | {'–' if f is None else int(f)} | {'–' if l is None else int(l)} |")
    # The snapshotters' requests per host (at the last ready line), summed
    # over the nodes of a run: the mirror (each node's link end) against the
    # origin (10.213.69.x), which the nodes have no route to.
    per_run = {}
    for r in rows:
        m = re.match(r"n\d+_registry_requests\[([^]]+)\]$", r["metric"])
        if r["system"] != "lazy" or not m:
            continue
        kind = "origin" if m.group(1).startswith("10.213.69.") else "mirror"
        c = per_run.setdefault(r["run"], {"mirror": 0, "origin": 0})
        c[kind] += int(float(r["value"]))
    if per_run:
        print()
        print("sochi snapshotters' registry requests at the last ready line, all nodes, per run: "
              + "; ".join(f"run {run}: {c['mirror']} to the mirror, {c['origin']} to the origin"
                          for run, c in sorted(per_run.items())) + ".")
    logs = {}
    for r in rows:
        m = re.match(r"n\d+_(snapshotter_log_warnings|snapshotter_log_errors|containerd_log_errors)$",
                     r["metric"])
        if m:
            key = (r["system"], m.group(1))
            logs[key] = logs.get(key, 0) + int(float(r["value"]))
    if logs:
        print()
        print("Log lines over all runs and nodes: "
              + ", ".join(f"{s} {what.replace('_', ' ')} {n}" for (s, what), n in sorted(logs.items()))
              + f"; mirror `level=error` lines: full {int(sum(vals.get(('full', 'mirror_log_errors'), [])))}"
              f", lazy {int(sum(vals.get(('lazy', 'mirror_log_errors'), [])))}.")
    fails = [v for (s, m), vs in vals.items() if s == "lazy" and "registry_failovers" in m and not m.endswith("_exit") for v in vs]
    print()
    print(f"sochi failovers (mirror to origin) over all lazy runs and nodes: {int(sum(fails))}; "
          f"page cache drops by other processes during runs: "
          f"{int(sum(vals.get(('full', 'foreign_drops_exit'), []) + vals.get(('lazy', 'foreign_drops_exit'), [])))}.")


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "fleet":
        cmd_fleet(args)
    elif cmd == "settle":
        cmd_settle(args)
    elif cmd == "image-bytes":
        cmd_image_bytes(*args)
    elif cmd == "blob-gets":
        cmd_blob_gets(args)
    elif cmd == "summary":
        if len(args) == 3 and args[1] == "--mirror":
            cmd_summary(args[0], args[2])
        else:
            cmd_summary(*args)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
