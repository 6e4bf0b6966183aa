#!/usr/bin/env python3
"""Helpers of bench/start.sh (stdlib only; run as root).

  timed --ready TEXT [--pull CMD] --run CMD [--metrics ADDR] [--reglog LOG]
        [--timeout S]
        Runs CMD (after PULL, if given) and reads its stdout until a line
        holds TEXT. Prints `metric value` lines: pull_s (start of PULL to its
        exit), ready_s (start of PULL, else of CMD, to the ready line),
        exit_s (to CMD's exit); at the ready line the registry log's GETs
        and HEADs since the start (reg_requests, reg_bytes) and the
        snapshotter's counters (demand/background requests and bytes,
        reads, read time); the counters again when CMD has exited (*_end);
        foreign_drops: how often someone dropped the page cache meanwhile
        (/proc/vmstat drop_pagecache; other benchmarks on a shared machine)
  metrics ADDR   the snapshotter's counters, summed over layers
  ztoc-spans ZTOC  the compressed span ranges of a gzip zTOC: `START END`
        per span (docs/format.md §2.4), from the zTOC's own bytes
  opened TRACE ROOTFS  the files a traced run opened: reads an `strace -f -y`
        log, keeps what the first process that exec'd python3 (and its
        children) opened from then on, plus what it exec'd; prints each
        regular file's path inside ROOTFS (symlinks resolved), once
  soci-ztocs REGISTRY REPO TAG OUTDIR  fetches the SOCI index of the v2
        image REPO:TAG and its zTOCs into OUTDIR (as <hex> files); writes
        OUTDIR/map.json {layer digest: zTOC digest}
  floor --opened LIST --ztocs OUTDIR --layout L [--json OUT]
        The byte floor of a lazy start: for each opened file, the top layer
        whose zTOC has it; the union of the compressed ranges of the spans
        that hold those files, per layer, plus the zTOCs' sizes. Prints a
        summary and writes the details as JSON.
  fix-diff-ids LAYOUT  recomputes the config's diff_ids of LAYOUT's `latest`
        from its zstd layers (skopeo 1.9's zstd:chunked writer can leave
        them wrong, environment.md) and rewrites config, manifest and
        index.json
  chunk-floor --opened LIST --layout L [--json OUT]  the byte floor of a
        lazy start of the zstd:chunked image in layout L: for each opened
        file, the top layer whose table of contents has it; the union of
        the compressed ranges of its chunks, plus the tables' sizes
  summary CSV [FLOOR_PREFIX]  the README tables (medians) from the CSV; the
        floor of IMAGE is read from FLOOR_PREFIX + IMAGE + ".json" (its
        zstd:chunked floor from FLOOR_PREFIX + IMAGE + "-chunked.json")
"""

import json
import os
import re
import shlex
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request

# --- metrics and the registry log ---------------------------------------------

METRIC = re.compile(r'^(\w+)\{([^}]*)\} ([0-9.e+-]+)$')


def metrics(addr):
    """Counters of the snapshotter at ADDR, summed over its layers."""
    out = {"demand_requests": 0, "demand_bytes": 0, "background_requests": 0,
           "background_bytes": 0, "prefetch_requests": 0, "prefetch_bytes": 0,
           "reads": 0, "read_bytes": 0, "read_time_s": 0.0,
           "fetch_time_s": 0.0, "verify_time_s": 0.0, "inflate_time_s": 0.0,
           "layers_mounted": 0, "lazy_layers": 0, "background_complete": 0}
    try:
        text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        m = METRIC.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2), float(m.group(3))
        kind = ("demand" if 'kind="demand"' in labels
                else "prefetch" if 'kind="prefetch"' in labels else "background")
        if name == "sochi_layer_fetch_requests_total":
            out[f"{kind}_requests"] += int(value)
        elif name == "sochi_layer_fetched_bytes_total":
            out[f"{kind}_bytes"] += int(value)
        elif name == "sochi_reads_total":
            out["reads"] += int(value)
        elif name == "sochi_read_bytes_total":
            out["read_bytes"] += int(value)
        elif name == "sochi_read_duration_seconds_sum":
            out["read_time_s"] += value
        elif name == "sochi_span_stage_seconds_total":
            stage = re.search(r'stage="(\w+)"', labels)
            if stage and f"{stage.group(1)}_time_s" in out:
                out[f"{stage.group(1)}_time_s"] += value
        elif name == "sochi_background_fetch_complete":
            out["background_complete"] += int(value)
        elif name == "sochi_layer_spans":
            out["layers_mounted"] += 1
        elif name == "sochi_snapshotter_layers_total" and 'outcome="lazy"' in labels:
            out["lazy_layers"] += int(value)
    return out


ACCESS = re.compile(r'^\S+ - \S+ \[[^]]*\] "(\w+) (\S+) [^"]*" (\d+) (\d+)')


def reglog(log, start_line=0):
    """(lines, requests, bytes) of GET/HEAD lines after START_LINE."""
    lines = requests = byt = 0
    try:
        f = open(log, errors="replace")
    except OSError:
        return 0, 0, 0
    with f:
        for n, line in enumerate(f, 1):
            lines = n
            if n <= start_line:
                continue
            m = ACCESS.match(line)
            if m and m.group(1) in ("GET", "HEAD"):
                requests += 1
                byt += int(m.group(4))
    return lines, requests, byt


def drop_count():
    """How often the page cache was dropped since boot (any process)."""
    try:
        for line in open("/proc/vmstat"):
            if line.startswith("drop_pagecache "):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(watched):
    """CPU seconds so far: of the whole machine (busy, all cores: `cpu_busy_s`) and
    of each watched (NAME, PID) process and its threads (`cpu_NAME_s`)."""
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    try:
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        # user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
        out["cpu_busy_s"] = (sum(fields[:8]) - fields[3] - fields[4]) / hz
    except (OSError, ValueError, IndexError):
        pass
    for name, pid in watched:
        try:
            stat = open(f"/proc/{pid}/stat").read()
            rest = stat[stat.rindex(")") + 2:].split()
            out[f"cpu_{name}_s"] = (int(rest[11]) + int(rest[12])) / hz
        except (OSError, ValueError, IndexError):
            pass
    return out


# --- timed runs ---------------------------------------------------------------


def cmd_timed(argv):
    import argparse
    p = argparse.ArgumentParser(prog="helper.py timed")
    p.add_argument("--ready", required=True)
    p.add_argument("--pull")
    p.add_argument("--run", required=True)
    p.add_argument("--metrics")
    p.add_argument("--reglog")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--cpu", action="append", default=[], metavar="NAME=PID",
                   help="record the CPU seconds of process PID from the start to the ready line")
    a = p.parse_args(argv)
    res = {}
    reg0 = reglog(a.reglog)[0] if a.reglog else 0
    drops0 = drop_count()
    watched = [tuple(w.split("=", 1)) for w in a.cpu]
    cpu0 = cpu_seconds(watched)
    t0 = time.monotonic()
    if a.pull:
        r = subprocess.run(shlex.split(a.pull), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=a.timeout)
        res["pull_s"] = time.monotonic() - t0
        if r.returncode != 0:
            sys.stderr.write(r.stdout.decode(errors="replace"))
            raise SystemExit(f"timed: pull failed with status {r.returncode}: {a.pull}")
    run = subprocess.Popen(shlex.split(a.run), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    timer = threading.Timer(a.timeout, run.kill)
    timer.start()
    seen = []
    ready = None
    for raw in run.stdout:
        line = raw.decode(errors="replace")
        seen.append(line)
        if ready is None and a.ready in line:
            ready = time.monotonic() - t0
            for k, v in cpu_seconds(watched).items():
                res[k] = v - cpu0.get(k, 0.0)
            if a.reglog:
                _, res["reg_requests"], res["reg_bytes"] = reglog(a.reglog, reg0)
            if a.metrics:
                for k, v in metrics(a.metrics).items():
                    res[k] = v
    status = run.wait()
    timer.cancel()
    res["exit_s"] = time.monotonic() - t0
    if ready is None or status != 0:
        sys.stderr.write("".join(seen[-30:]))
        raise SystemExit(f"timed: no ready line ({a.ready!r}) or status {status}: {a.run}")
    res["ready_s"] = ready
    res["foreign_drops"] = drop_count() - drops0
    if a.metrics:
        for k, v in metrics(a.metrics).items():
            res[k + "_end"] = v
    if a.reglog:
        _, res["reg_requests_end"], res["reg_bytes_end"] = reglog(a.reglog, reg0)
    for k, v in res.items():
        print(k, f"{v:.4f}" if isinstance(v, float) else v)


# --- zTOC span geometry (docs/format.md §1.1, §2.2, §2.4) --------------------------------


def ztoc_spans(buf):
    """[(start_compressed, end_compressed, start_uncompressed)] per span."""
    u32 = lambda o: struct.unpack_from("<I", buf, o)[0]
    i32 = lambda o: struct.unpack_from("<i", buf, o)[0]

    def field(table, slot):
        vt = table - i32(table)
        vtsize = struct.unpack_from("<H", buf, vt)[0]
        off = 4 + 2 * slot
        if off >= vtsize:
            return None
        o = struct.unpack_from("<H", buf, vt + off)[0]
        return table + o if o else None

    root = u32(0)
    f = field(root, 2)
    compressed = struct.unpack_from("<q", buf, f)[0] if f else 0
    f = field(root, 5)
    info = f + u32(f)
    f = field(info, 0)
    algorithm = buf[f] if f else 1
    f = field(info, 3)
    vec = f + u32(f)
    zinfo = buf[vec + 4:vec + 4 + u32(vec)]
    if algorithm != 1:
        # TarZinfo: fixed-size spans of the file.
        zroot = struct.unpack_from("<I", zinfo, 0)[0]
        zvt = zroot - struct.unpack_from("<i", zinfo, zroot)[0]

        def zf(slot):
            o = struct.unpack_from("<H", zinfo, zvt + 4 + 2 * slot)[0]
            return struct.unpack_from("<q", zinfo, zroot + o)[0]
        span, size = zf(1), zf(2)
        n = max(1, (size + span - 1) // span)
        return [(i * span, min(size, (i + 1) * span), i * span) for i in range(n)]
    count = struct.unpack_from("<i", zinfo, 0)[0]
    rec = 32785
    cps = []
    if len(zinfo) == 12 + rec * count:
        stored = range(count)
    elif len(zinfo) == 12 + rec * (count - 1):
        cps.append((10, 0, 0))
        stored = range(count - 1)
    else:
        raise ValueError("bad zinfo length")
    for i in stored:
        o = 12 + rec * i
        inn, out = struct.unpack_from("<qq", zinfo, o)
        bits = zinfo[o + 16]
        cps.append((inn, out, bits))
    spans = []
    for i, (inn, out, bits) in enumerate(cps):
        end = cps[i + 1][0] if i + 1 < len(cps) else compressed
        spans.append((inn - (1 if bits else 0), end, out))
    return spans


def cmd_ztoc_spans(path):
    for s, e, _ in ztoc_spans(open(path, "rb").read()):
        print(s, e)


# --- files a traced run opened ------------------------------------------------

LINE = re.compile(r'^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)(<([^>]*)>)?')
ARG0 = re.compile(r'^(?:AT_FDCWD|\d+(?:<[^>]*>)?),\s*"((?:[^"\\]|\\.)*)"')
UNFINISHED = re.compile(r'^(\d+)\s+(.*) <unfinished \.\.\.>$')
RESUMED = re.compile(r'^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$')
EXEC0 = re.compile(r'^"((?:[^"\\]|\\.)*)"')


def cmd_opened(trace, rootfs):
    rootfs = os.path.realpath(rootfs)
    # The traced command is a chain of execs in one process (chroot, env,
    # sh) ending in python3; everything logged from python3's exec on is
    # python3's or its children's (e.g. `uname -p`).
    started = False
    files = []
    execs = []
    pending = {}
    for line in open(trace, errors="replace"):
        line = line.rstrip("\n")
        u = UNFINISHED.match(line)
        if u:
            pending[u.group(1)] = u.group(2)
            continue
        r = RESUMED.match(line)
        if r and r.group(1) in pending:
            line = f"{r.group(1)} {pending.pop(r.group(1))}{r.group(3)}"
        m = LINE.match(line)
        if not m:
            continue
        call, args, ret, fdpath = m.group(2), m.group(3), int(m.group(4)), m.group(6)
        if call == "execve" and ret == 0:
            e = EXEC0.match(args)
            path = e.group(1) if e else ""
            if not started and os.path.basename(path).startswith("python3"):
                started = True
            if started:
                execs.append(path)
            continue
        if not started or ret < 0 or call not in ("open", "openat", "openat2"):
            continue
        if fdpath:
            files.append(fdpath)
    out = []
    seen = set()

    def add(host_path):
        if not host_path.startswith(rootfs + "/"):
            return
        rel = host_path[len(rootfs) + 1:]
        if rel.split("/")[0] in ("proc", "sys", "dev"):
            return
        if rel in seen or not os.path.isfile(host_path):
            return
        seen.add(rel)
        out.append(rel)

    for f in files:
        add(os.path.realpath(f) if f.startswith(rootfs) else f)
    for e in execs:
        # The exec'd file and its ELF interpreter (the kernel opens both).
        host = resolve_in_root(rootfs, e)
        add(host)
        interp = elf_interpreter(host)
        if interp:
            add(resolve_in_root(rootfs, interp))
    for rel in out:
        print(rel)


def resolve_in_root(root, path):
    """PATH (absolute, inside ROOT) with every symlink resolved inside ROOT."""
    parts = [p for p in path.split("/") if p]
    cur = []
    hops = 0
    while parts:
        p = parts.pop(0)
        if p == ".":
            continue
        if p == "..":
            if cur:
                cur.pop()
            continue
        cand = os.path.join(root, *cur, p)
        if os.path.islink(cand):
            hops += 1
            if hops > 40:
                return cand
            target = os.readlink(cand)
            if target.startswith("/"):
                cur = []
            parts = [x for x in target.split("/") if x] + parts
            continue
        cur.append(p)
    return os.path.join(root, *cur)


def elf_interpreter(path):
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                return None
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                ph = f.read(phentsize)
                ptype, = struct.unpack_from("<I", ph, 0)
                if ptype == 3:  # PT_INTERP
                    off, = struct.unpack_from("<Q", ph, 8)
                    size, = struct.unpack_from("<Q", ph, 32)
                    f.seek(off)
                    return f.read(size).rstrip(b"\0").decode()
    except OSError:
        return None
    return None


# --- the byte floor -----------------------------------------------------------


def clean(name):
    return os.path.normpath("/" + name).lstrip("/")


def union_length(ranges):
    total = 0
    end = -1
    for s, e in sorted(ranges):
        if s >= end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def cmd_floor(argv):
    import argparse
    p = argparse.ArgumentParser(prog="helper.py floor")
    p.add_argument("--opened", required=True)
    p.add_argument("--ztocs", required=True, help="soci-ztocs' OUTDIR")
    p.add_argument("--layout", required=True)
    p.add_argument("--sochi", required=True)
    p.add_argument("--json")
    a = p.parse_args(argv)
    # Layers bottom first, as the image manifest lists them.
    blobs = os.path.join(a.layout, "blobs", "sha256")
    index = json.load(open(os.path.join(a.layout, "index.json")))
    desc = [m for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "latest"][0]
    manifest = json.load(open(os.path.join(blobs, desc["digest"].split(":", 1)[1])))
    layer_digests = [l["digest"] for l in manifest["layers"]]
    layer_sizes = {l["digest"]: l["size"] for l in manifest["layers"]}
    ztoc_of = json.load(open(os.path.join(a.ztocs, "map.json")))
    layers = []
    for d in layer_digests:
        zd = ztoc_of.get(d)
        if not zd:
            layers.append({"layer": d, "ztoc": None})
            continue
        zpath = os.path.join(a.ztocs, zd.split(":", 1)[1])
        info = json.loads(subprocess.run([a.sochi, "ztoc", "info", zpath], check=True,
                                         stdout=subprocess.PIPE).stdout)
        files = {}
        entries = sorted(info["files"], key=lambda f: f["offset"])
        header = 0
        for f in entries:
            name = clean(f["filename"])
            f["header"] = header
            header = (f["offset"] + f["size"] + 511) // 512 * 512
            files[name] = f
        layers.append({"layer": d, "ztoc": zd, "ztoc_size": os.path.getsize(zpath),
                       "spans": ztoc_spans(open(zpath, "rb").read()), "files": files,
                       "span_size": info["span_size"]})
    opened = [l.strip() for l in open(a.opened) if l.strip()]
    per_layer = {l["layer"]: {"files": 0, "file_bytes": 0, "spans": set(), "header_spans": set()}
                 for l in layers}
    missing = []
    for path in opened:
        name = clean(path)
        for l in reversed(layers):
            f = l.get("files", {}).get(name)
            if f is None:
                continue
            if f["type"] == "hardlink":
                # Data lives at the link target's entry of the same layer.
                f = l["files"].get(clean(f.get("linkname", "")), f)
            if f["type"] != "reg":
                continue
            acc = per_layer[l["layer"]]
            acc["files"] += 1
            acc["file_bytes"] += f["size"]
            if f["size"] > 0:
                acc["spans"].update(range(f["start_span"], f["end_span"] + 1))
                # The first-read check reads the tar header before the data.
                hs = span_of(l, f["header"])
                acc["header_spans"].update(range(hs, f["start_span"]))
            break
        else:
            missing.append(path)
    result = {"opened_files": len(opened), "not_in_any_ztoc": missing, "layers": []}
    tot_spans = tot_ztoc = tot_hdr = 0
    for l in layers:
        acc = per_layer[l["layer"]]
        if not l.get("ztoc"):
            result["layers"].append({"layer": l["layer"], "ztoc": None})
            continue
        span_bytes = union_length([l["spans"][i][:2] for i in acc["spans"]])
        with_hdr = union_length([l["spans"][i][:2] for i in acc["spans"] | acc["header_spans"]])
        tot_spans += span_bytes
        tot_hdr += with_hdr
        tot_ztoc += l["ztoc_size"]
        result["layers"].append({
            "layer": l["layer"], "layer_size": layer_sizes[l["layer"]], "ztoc": l["ztoc"],
            "ztoc_size": l["ztoc_size"], "num_spans": len(l["spans"]), "files": acc["files"],
            "file_bytes": acc["file_bytes"], "spans_needed": len(acc["spans"]),
            "span_bytes": span_bytes, "span_bytes_with_headers": with_hdr,
        })
    result["span_bytes"] = tot_spans
    result["span_bytes_with_headers"] = tot_hdr
    result["ztoc_bytes"] = tot_ztoc
    result["floor_bytes"] = tot_spans + tot_ztoc
    result["image_bytes"] = sum(layer_sizes.values())
    if a.json:
        json.dump(result, open(a.json, "w"), indent=1)
    print(f"opened files: {len(opened)} ({len(missing)} in no zTOC)")
    for l in result["layers"]:
        if l.get("ztoc"):
            print(f"  {l['layer'][:19]}: {l['files']} files, {l['spans_needed']}/{l['num_spans']} spans, "
                  f"{l['span_bytes'] / 1e6:.2f} MB of {l['layer_size'] / 1e6:.2f} MB; zTOC {l['ztoc_size'] / 1e6:.2f} MB")
    print(f"floor: {result['floor_bytes'] / 1e6:.2f} MB = spans {tot_spans / 1e6:.2f} MB + zTOCs "
          f"{tot_ztoc / 1e6:.2f} MB (image {result['image_bytes'] / 1e6:.1f} MB); "
          f"with tar-header spans {(tot_hdr + tot_ztoc) / 1e6:.2f} MB")


def span_of(layer, offset):
    """The span holding uncompressed OFFSET: the last one starting at or
    before it (docs/format.md §2.4 SpanOf)."""
    import bisect
    starts = layer.setdefault("_starts", [s[2] for s in layer["spans"]])
    return max(0, bisect.bisect_right(starts, offset) - 1)


# --- zTOCs of a v2 image in a registry -----------------------------------------


def cmd_soci_ztocs(registry, repo, tag, outdir):
    os.makedirs(outdir, exist_ok=True)

    def get(path, accept=None):
        req = urllib.request.Request(f"http://{registry}/v2/{repo}/{path}")
        if accept:
            req.add_header("Accept", accept)
        return urllib.request.urlopen(req, timeout=60).read()

    accept = ("application/vnd.oci.image.index.v1+json,"
              "application/vnd.oci.image.manifest.v1+json")
    index = json.loads(get(f"manifests/{tag}", accept))
    soci = [m for m in index["manifests"]
            if m.get("artifactType") == "application/vnd.amazon.soci.index.v2+json"]
    if not soci:
        raise SystemExit(f"soci-ztocs: {repo}:{tag} lists no SOCI index")
    manifest = json.loads(get(f"manifests/{soci[0]['digest']}", accept))
    mapping = {}
    for blob in manifest["layers"]:
        layer = blob.get("annotations", {}).get("com.amazon.soci.image-layer-digest")
        if not layer:
            continue
        data = get(f"blobs/{blob['digest']}")
        with open(os.path.join(outdir, blob["digest"].split(":", 1)[1]), "wb") as f:
            f.write(data)
        mapping[layer] = blob["digest"]
    json.dump(mapping, open(os.path.join(outdir, "map.json"), "w"), indent=1)
    print(len(mapping))


# --- summary ------------------------------------------------------------------


def latest_manifest(layout):
    """(index, manifest descriptor in the index, manifest) of LAYOUT's `latest`."""
    index = json.load(open(os.path.join(layout, "index.json")))
    desc = [m for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "latest"][0]
    return index, desc, json.load(open(blob_path(layout, desc["digest"])))


def blob_path(layout, digest):
    return os.path.join(layout, "blobs", "sha256", digest.split(":", 1)[1])


def write_blob(layout, data):
    import hashlib
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(blob_path(layout, digest), "wb") as f:
        f.write(data)
    return digest, len(data)


def cmd_fix_diff_ids(layout):
    import hashlib
    index, desc, manifest = latest_manifest(layout)
    diff_ids = []
    for layer in manifest["layers"]:
        proc = subprocess.Popen(["zstd", "-dc", blob_path(layout, layer["digest"])],
                                stdout=subprocess.PIPE)
        h = hashlib.sha256()
        for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):
            h.update(chunk)
        if proc.wait() != 0:
            sys.exit(f"fix-diff-ids: zstd -dc of {layer['digest']} failed")
        diff_ids.append("sha256:" + h.hexdigest())
    config = json.load(open(blob_path(layout, manifest["config"]["digest"])))
    if config["rootfs"]["diff_ids"] == diff_ids:
        return
    config["rootfs"]["diff_ids"] = diff_ids
    manifest["config"]["digest"], manifest["config"]["size"] = write_blob(
        layout, json.dumps(config, separators=(",", ":")).encode())
    desc["digest"], desc["size"] = write_blob(
        layout, json.dumps(manifest, separators=(",", ":")).encode())
    json.dump(index, open(os.path.join(layout, "index.json"), "w"))


def chunked_toc(layout, layer):
    offset, length, _, _ = map(int, layer["annotations"][
        "io.containers.zstd-chunked.manifest-position"].split(":"))
    with open(blob_path(layout, layer["digest"]), "rb") as f:
        f.seek(offset)
        frame = f.read(length)
    out = subprocess.run(["zstd", "-dc"], input=frame, stdout=subprocess.PIPE, check=True).stdout
    return json.loads(out), length


def cmd_chunk_floor(argv):
    import argparse
    p = argparse.ArgumentParser(prog="helper.py chunk-floor")
    p.add_argument("--opened", required=True)
    p.add_argument("--layout", required=True)
    p.add_argument("--json")
    a = p.parse_args(argv)
    _, _, manifest = latest_manifest(a.layout)
    layers = []
    for layer in manifest["layers"]:
        toc, toc_size = chunked_toc(a.layout, layer)
        files = {}
        for e in toc["entries"]:
            if e["type"] == "chunk":
                continue
            files[clean(e["name"])] = e
        layers.append({"layer": layer["digest"], "size": layer["size"], "files": files,
                       "toc_size": toc_size, "ranges": [], "count": 0})
    opened = [l.strip() for l in open(a.opened) if l.strip()]
    missing = []
    for path in opened:
        name = clean(path)
        for l in reversed(layers):
            e = l["files"].get(name)
            if e is None:
                continue
            if e["type"] == "hardlink":
                e = l["files"].get(clean(e.get("linkName", "")), e)
            if e["type"] == "reg" and e.get("size", 0) > 0:
                l["ranges"].append((e["offset"], e["endOffset"]))
                l["count"] += 1
            break
        else:
            missing.append(path)
    chunks = sum(union_length(l["ranges"]) for l in layers)
    tocs = sum(l["toc_size"] for l in layers)
    result = {"opened_files": len(opened), "in_no_table": missing,
              "layers": [{"layer": l["layer"], "layer_size": l["size"], "files": l["count"],
                          "chunk_bytes": union_length(l["ranges"]), "toc_size": l["toc_size"]}
                         for l in layers],
              "chunk_bytes": chunks, "toc_bytes": tocs, "floor_bytes": chunks + tocs,
              "image_bytes": sum(l["size"] for l in layers)}
    if a.json:
        json.dump(result, open(a.json, "w"), indent=1)
    print(f"zstd:chunked floor: {result['floor_bytes'] / 1e6:.2f} MB = chunks {chunks / 1e6:.2f} MB"
          f" + tables {tocs / 1e6:.2f} MB (image {result['image_bytes'] / 1e6:.1f} MB; "
          f"{len(missing)} opened files in no table)")


def read_floor(floor_prefix, name):
    """The floor bytes of FLOOR_PREFIX + NAME + ".json", if there is one."""
    path = f"{floor_prefix}{name}.json" if floor_prefix else None
    if not path or not os.path.exists(path):
        return None
    return json.load(open(path))["floor_bytes"]


def chunked_summary(images, links, med, sec, mb, floor_prefix):
    """zstd:chunked: sochi's lazy start against the full pull of the same image, beside gzip."""
    if not any(med(i, l, "sochi-chunked", "cold", "ready_s") is not None
               for i in images for l in links):
        return
    print()
    print("zstd:chunked (the image copied by skopeo 1.9 with `--dest-compress-format "
          "zstd:chunked`, no SOCI index): cold start through sochi against its full pull "
          "(overlayfs), beside the gzip image's lazy / full; registry bytes before the ready "
          "line against the chunk floor (the compressed chunks of the files the workload "
          "opens, plus the tables of contents). Medians.")
    print()
    print("| image | link | full pull (zstd:chunked) | sochi (zstd:chunked) | lazy / full "
          "| gzip SOCI lazy / full | MB before ready | chunk floor MB | vs floor | demand req |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for img in images:
        floor = read_floor(floor_prefix, f"{img}-chunked")
        for link in links:
            full = med(img, link, "overlayfs-chunked", "cold", "ready_s")
            lazy = med(img, link, "sochi-chunked", "cold", "ready_s")
            if lazy is None:
                continue
            gfull = med(img, link, "overlayfs", "cold", "ready_s")
            glazy = med(img, link, "sochi", "cold", "ready_s")
            ratio = f"**{lazy / full * 100:.0f}%**" if full and lazy else "–"
            gratio = f"{glazy / gfull * 100:.0f}%" if gfull and glazy else "–"
            reg = med(img, link, "sochi-chunked", "cold", "reg_bytes")
            vs = f"{reg / floor:.2f}×" if floor and reg else "–"
            req = med(img, link, "sochi-chunked", "cold", "demand_requests")
            print(f"| {img} | {link} | {sec(full)} | {sec(lazy)} | {ratio} | {gratio} | {mb(reg)} | "
                  f"{'–' if floor is None else mb(floor)} | {vs} | {'–' if req is None else int(req)} |")


def cmd_summary(csv_path, floor_prefix=None):
    import csv
    rows = list(csv.DictReader(open(csv_path)))
    vals = {}
    images, links = [], []
    for r in rows:
        key = (r["image"], r["link"], r["system"], r["phase"], r["metric"])
        vals.setdefault(key, []).append(float(r["value"]))
        if r["image"] not in images:
            images.append(r["image"])
        if r["link"] not in links:
            links.append(r["link"])

    def med(*key):
        v = vals.get(key)
        return statistics.median(v) if v else None

    def rng(*key):
        v = vals.get(key)
        return f"{min(v):.2f}–{max(v):.2f}" if v and len(v) > 1 else ""

    retried = sum(1 for r in rows if r["metric"] == "attempts" and float(r["value"]) > 1)
    kept = sum(1 for r in rows if r["metric"] == "foreign_drops" and float(r["value"]) > 0)
    print(f"Runs repeated because another process dropped the page cache during them: {retried}; "
          f"recorded runs still disturbed so: {kept}.")
    print()
    sec = lambda x: "–" if x is None else f"{x:.2f} s"
    mb = lambda x: "–" if x is None else f"{x / 1e6:.1f}"
    targets = {"loopback": 0.40, "100mbit": 0.35}

    print("Cold start, time from the start of the pull to the ready line (median; range in "
          "brackets), and what came from the registry before the ready line:")
    print()
    print("| image | link | full pull + run (overlayfs) | sochi lazy pull + run | lazy / full "
          "| registry MB before ready (full / lazy) | requests (full / lazy) |")
    print("|---|---|---|---|---|---|---|")
    for img in images:
        for link in links:
            full = med(img, link, "overlayfs", "cold", "ready_s")
            lazy = med(img, link, "sochi", "cold", "ready_s")
            if full is None and lazy is None:
                continue
            ratio = f"**{lazy / full * 100:.0f}%**" if full and lazy else "–"
            fr, lr = rng(img, link, "overlayfs", "cold", "ready_s"), rng(img, link, "sochi", "cold", "ready_s")
            freq = med(img, link, "overlayfs", "cold", "reg_requests")
            lreq = med(img, link, "sochi", "cold", "reg_requests")
            print(f"| {img} | {link} | {sec(full)}{f' ({fr})' if fr else ''} | {sec(lazy)}"
                  f"{f' ({lr})' if lr else ''} | {ratio} | "
                  f"{mb(med(img, link, 'overlayfs', 'cold', 'reg_bytes'))} / "
                  f"{mb(med(img, link, 'sochi', 'cold', 'reg_bytes'))} | "
                  f"{'–' if freq is None else int(freq)} / {'–' if lreq is None else int(lreq)} |")
    print()
    print("Warm start (image pulled and run once, sochi's background fetch finished): "
          "`ctr run` to the ready line, loopback, median:")
    print()
    print("| image | overlayfs | sochi | sochi / overlayfs | overlayfs, page cache dropped "
          "| sochi, page cache dropped |")
    print("|---|---|---|---|---|---|")
    for img in images:
        wf = med(img, "loopback", "overlayfs", "warm", "ready_s")
        wl = med(img, "loopback", "sochi", "warm", "ready_s")
        if wf is None and wl is None:
            continue
        ratio = f"**{wl / wf:.2f}×**" if wf and wl else "–"
        df = med(img, "loopback", "overlayfs", "dropped", "ready_s")
        dl = med(img, "loopback", "sochi", "dropped", "ready_s")
        print(f"| {img} | {sec(wf)} | {sec(wl)} | {ratio} | {sec(df)} | {sec(dl)} |")
    print()
    print("(Page cache dropped: `sync; echo 3 > /proc/sys/vm/drop_caches` before each warm "
          "run; every byte is on the local disk, none goes over the link, but the kernel reads "
          "the container's files, ctr, runc and the shim again.)")
    print()
    print("Lazy cold runs (medians): where the time goes, and the bytes against the floor "
          "(spans holding the files the workload opens, plus the zTOCs):")
    print()
    print("| image | link | `sochi pull` | pull end → ready | FUSE read time (sum) | "
          "demand req / MB | background req / MB | registry MB before ready | floor MB | vs floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for img in images:
        floor = read_floor(floor_prefix, img)
        for link in links:
            ready = med(img, link, "sochi", "cold", "ready_s")
            if ready is None:
                continue
            g = lambda m: med(img, link, "sochi", "cold", m) or 0
            reg = g("reg_bytes")
            vs = f"**{reg / floor:.2f}×**" if floor and reg else "–"
            print(f"| {img} | {link} | {sec(g('pull_s'))} | {sec(ready - g('pull_s'))} | "
                  f"{sec(g('read_time_s'))} | {int(g('demand_requests'))} / {mb(g('demand_bytes'))} | "
                  f"{int(g('background_requests'))} / {mb(g('background_bytes'))} | {mb(reg)} | "
                  f"{'–' if floor is None else mb(floor)} | {vs} |")

    load_order_summary(images, links, med, sec, mb, floor_prefix)
    chunked_summary(images, links, med, sec, mb, floor_prefix)
    cpu_summary(images, links, ["overlayfs", "sochi", "sochi-lo", "sochi-wrong",
                                "overlayfs-chunked", "sochi-chunked"], med, sec)


def link_bits_per_s(link):
    m = re.match(r"^(\d+)(mbit|gbit)$", link)
    if not m:
        return None
    return int(m.group(1)) * (1e6 if m.group(2) == "mbit" else 1e9)


def load_order_summary(images, links, med, sec, mb, floor_prefix):
    """The load-order systems against sochi: cold starts, targets, where the time goes."""
    systems = [s for s in ("sochi-lo", "sochi-wrong")
               if any(med(i, l, s, "cold", "ready_s") is not None for i in images for l in links)]
    if not systems:
        return
    print()
    print("Load orders (cold, medians): `sochi + load order` (the image converted with a load "
          "order recorded from `python3 /app/main.py`) and `wrong load order` (recorded from "
          "`python3 -c 'import json, email'`) against sochi without one. Target for the load "
          "order: loopback ≤ 2.5× sochi's warm start; a shaped link ≤ floor bytes ÷ link rate + "
          "warm start, times 1.5 at 1 Gbit/s and 1.05 at 100 Mbit/s; bytes ≤ 1.05× the floor; "
          "the wrong one ≤ 1.10× sochi.")
    print()
    print("| image | link | sochi | + load order | target | met | wrong load order | wrong / sochi "
          "| MB before ready (lo) | lo vs floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for img in images:
        floor = read_floor(floor_prefix, img)
        warm = med(img, "loopback", "sochi", "warm", "ready_s")
        for link in links:
            base = med(img, link, "sochi", "cold", "ready_s")
            lo = med(img, link, "sochi-lo", "cold", "ready_s")
            wrong = med(img, link, "sochi-wrong", "cold", "ready_s")
            if lo is None and wrong is None:
                continue
            target = None
            if warm is not None:
                rate = link_bits_per_s(link)
                if link == "loopback":
                    target = 2.5 * warm
                elif rate and floor:
                    factor = 1.5 if rate >= 1e9 else 1.05
                    target = factor * (floor * 8 / rate + warm)
            met = "–" if target is None or lo is None else ("yes" if lo <= target else "**no**")
            reg = med(img, link, "sochi-lo", "cold", "reg_bytes")
            vs = f"{reg / floor:.2f}×" if floor and reg else "–"
            ratio = f"{wrong / base:.2f}×" if wrong and base else "–"
            print(f"| {img} | {link} | {sec(base)} | {sec(lo)} | {sec(target)} | {met} | "
                  f"{sec(wrong)} | {ratio} | {mb(reg)} | {vs} |")
    print()
    print("Where the time of a cold start goes (medians; fetch, verify and inflate are summed "
          "over the threads doing them, for reads and prefetch together, so they may exceed "
          "the wall time):")
    print()
    print("| image | link | system | `sochi pull` | pull end → ready | FUSE read time | "
          "fetch wait | verify | inflate | demand req | prefetch req / MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for img in images:
        for link in links:
            for system in ["sochi"] + systems:
                ready = med(img, link, system, "cold", "ready_s")
                if ready is None:
                    continue
                g = lambda m: med(img, link, system, "cold", m) or 0
                print(f"| {img} | {link} | {system} | {sec(g('pull_s'))} | "
                      f"{sec(ready - g('pull_s'))} | {sec(g('read_time_s'))} | "
                      f"{sec(g('fetch_time_s'))} | {sec(g('verify_time_s'))} | "
                      f"{sec(g('inflate_time_s'))} | {int(g('demand_requests'))} | "
                      f"{int(g('prefetch_requests'))} / {mb(g('prefetch_bytes'))} |")


def cpu_summary(images, links, systems, med, sec):
    """Where the CPU went from the start of the pull to the ready line."""
    rows = [(i, l, s) for i in images for l in links for s in systems
            if med(i, l, s, "cold", "cpu_busy_s") is not None]
    if not rows:
        return
    cores = os.cpu_count() or 1
    print()
    print(f"CPU from the start of the pull to the ready line (cold, medians; {cores} cores): "
          "busy CPU seconds of the whole machine, and how much of the cores that is over the "
          "wall time; of it the snapshotter (fetch, verify, inflate, FUSE), the registry (on "
          "this machine, also for the shaped links), containerd, and the rest (the container, "
          "`sochi pull`, ctr, runc, the shim, the kernel, other tenants):")
    print()
    print("| image | link | system | wall | busy CPU | of the cores | snapshotter | registry "
          "| containerd | rest |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for img, link, system in rows:
        g = lambda m: med(img, link, system, "cold", m)
        wall, busy = g("ready_s") or 0, g("cpu_busy_s") or 0
        snap, reg, ctd = g("cpu_snapshotter_s"), g("cpu_registry_s"), g("cpu_containerd_s")
        share = f"{busy / (cores * wall) * 100:.0f}%" if wall else "–"
        rest = max(0.0, busy - (snap or 0) - (reg or 0) - (ctd or 0))
        print(f"| {img} | {link} | {system} | {sec(wall)} | {sec(busy)} | {share} | {sec(snap)} | "
              f"{sec(reg)} | {sec(ctd)} | {sec(rest)} |")


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "timed":
        cmd_timed(args)
    elif cmd == "metrics":
        for k, v in metrics(args[0]).items():
            print(k, v)
    elif cmd == "ztoc-spans":
        cmd_ztoc_spans(args[0])
    elif cmd == "opened":
        cmd_opened(args[0], args[1])
    elif cmd == "soci-ztocs":
        cmd_soci_ztocs(*args)
    elif cmd == "floor":
        cmd_floor(args)
    elif cmd == "fix-diff-ids":
        cmd_fix_diff_ids(args[0])
    elif cmd == "chunk-floor":
        cmd_chunk_floor(args)
    elif cmd == "summary":
        cmd_summary(*args)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
