#!/usr/bin/env python3
"""Helpers of bench/mount.sh (stdlib only; run as root).

  unpack MERGED_DIR LAYERS_DIR BLOB...  the image's tree on this disk: MERGED_DIR
        with the layers applied in order as containerd does (whiteouts and
        opaque dirs applied, e2e/src/oracle.rs's rules), and LAYERS_DIR/<i>
        one dir per layer in overlayfs format (whiteouts as 0/0 char
        devices, opaque dirs with trusted.overlay.opaque=y)
  first FILE                     ms to open and read FILE once; prints "MS BYTES"
  seq [--drop|--warm] FILE       one sequential read with 1 MiB reads; prints
        "SECONDS BYTES RETRIES" (--drop: drop the page cache first; --warm:
        read the file once first)
  rand [--drop|--warm] [--ops N] [--max-seconds S] FILE...   random 4 KiB
        preads (4 KiB aligned, files picked by size, fixed seed); prints
        "OPS SECONDS RETRIES"
        Both run again (RETRIES times) when somebody else drops the page
        cache meanwhile (/proc/vmstat drop_pagecache moved).
  dropcount                      /proc/vmstat drop_pagecache
  warm FILE...                   read each file once
  readall ROOT                   read every regular file under ROOT once; prints
        "FILES BYTES ERRORS"
  metrics ADDR                   sums of the sochi daemon's counters: prints
        "DEMAND_REQUESTS DEMAND_BYTES BACKGROUND_COMPLETE LAYERS"
  reglog LOG FROM_LINE           registry access-log lines after FROM_LINE:
        prints "LINES REQUESTS BYTES" (requests: blob GETs; bytes: body bytes)
  layers LAYOUT                  the layer blobs of LAYOUT's image `latest`, bottom
        first, one path a line
  summary CSV                    the README tables (medians) from the CSV
"""

import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.request

BUF = 1 << 20


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    time.sleep(1)  # let the FORGETs reach the FUSE servers before timing


def read_whole(path):
    total = 0
    buf = bytearray(BUF)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            n = os.readv(fd, [view])
            if n == 0:
                return total
            total += n
    finally:
        os.close(fd)


# --- unpack ------------------------------------------------------------------

WH = ".wh."
OPQ = ".wh..wh..opq"


def inside(root, rel):
    """The path of `rel` under `root` with symlinks of its parents resolved
    inside root (None if it leaves root)."""
    rel = os.path.normpath("/" + rel).lstrip("/")
    if not rel:
        return root
    parent, name = os.path.split(rel)
    real_root = os.path.realpath(root)
    cur = real_root
    for part in [p for p in parent.split("/") if p]:
        nxt = os.path.join(cur, part)
        for _ in range(40):
            if os.path.islink(nxt):
                target = os.readlink(nxt)
                if target.startswith("/"):
                    nxt = os.path.join(real_root, target.lstrip("/"))
                else:
                    nxt = os.path.normpath(os.path.join(os.path.dirname(nxt), target))
                if not (nxt + "/").startswith(real_root + "/"):
                    return None
            else:
                break
        cur = nxt
    return os.path.join(cur, name)


def remove(path):
    if path is None or not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def gnu_tar_extract(blob, dest):
    subprocess.run(
        ["tar", "-C", dest, "-xpf", blob, "--numeric-owner", "--xattrs",
         "--xattrs-include=*", "--exclude=.wh.*", "--delay-directory-restore"],
        check=True)


def unpack(merged, layers_dir, blobs):
    os.makedirs(merged, exist_ok=True)
    for i, blob in enumerate(blobs):
        with tarfile.open(blob, "r:*") as tar:
            members = tar.getmembers()
        # 1. merged tree: whiteouts and opaque markers of this layer apply to
        # what the earlier layers put there; then kind conflicts; then tar -x.
        for m in members:
            d, base = os.path.split(os.path.normpath("/" + m.name).lstrip("/"))
            if base == OPQ:
                target = inside(merged, d) if d else merged
                if target and os.path.isdir(target) and not os.path.islink(target):
                    for e in os.listdir(target):
                        remove(os.path.join(target, e))
            elif base.startswith(WH):
                remove(inside(merged, os.path.join(d, base[len(WH):])))
        for m in members:
            base = os.path.basename(os.path.normpath("/" + m.name))
            if base.startswith(WH):
                continue
            path = inside(merged, m.name)
            if path is None or not os.path.lexists(path):
                continue
            is_dir = os.path.isdir(path) and not os.path.islink(path)
            if m.isdir() != is_dir:
                remove(path)
        gnu_tar_extract(blob, merged)
        # 2. one overlayfs lower dir per layer.
        ldir = os.path.join(layers_dir, str(i))
        os.makedirs(ldir, exist_ok=True)
        gnu_tar_extract(blob, ldir)
        for m in members:
            rel = os.path.normpath("/" + m.name).lstrip("/")
            d, base = os.path.split(rel)
            if base == OPQ:
                os.makedirs(os.path.join(ldir, d), exist_ok=True)
                os.setxattr(os.path.join(ldir, d) if d else ldir, "trusted.overlay.opaque", b"y")
            elif base.startswith(WH):
                os.makedirs(os.path.join(ldir, d), exist_ok=True)
                p = os.path.join(ldir, d, base[len(WH):])
                remove(p)
                os.mknod(p, 0o600 | 0o020000, os.makedev(0, 0))


# --- reads -------------------------------------------------------------------


def cmd_first(path):
    t = time.perf_counter()
    with open(path, "rb") as f:
        data = f.read()
    ms = (time.perf_counter() - t) * 1000
    print(f"{ms:.3f} {len(data)}")


def drop_count():
    """How many times anyone wrote to /proc/sys/vm/drop_caches (1 or 3)."""
    with open("/proc/vmstat") as f:
        for line in f:
            if line.startswith("drop_pagecache "):
                return int(line.split()[1])
    return 0


def guarded(measure, drop, warm, tries=6):
    """Runs `measure` (after dropping the page cache, or after reading
    `warm` once), again if somebody else dropped the page cache meanwhile:
    on this machine something does, about once a minute. Returns its result
    and the number of retries."""
    for attempt in range(tries):
        if drop:
            drop_caches()
        before = drop_count()
        for path in warm:
            read_whole(path)
        result = measure()
        if drop_count() == before:
            return result, attempt
    return result, tries


def parse_flags(args, name, **defaults):
    opts = dict(defaults)
    while args and args[0].startswith("--"):
        key = args[0][2:].replace("-", "_")
        if key not in opts:
            sys.exit(f"{name}: unknown flag {args[0]}")
        if isinstance(opts[key], bool):
            opts[key] = True
            args = args[1:]
        else:
            opts[key] = type(opts[key])(args[1])
            args = args[2:]
    return opts, args


def cmd_seq(args):
    opts, args = parse_flags(args, "seq", drop=False, warm=False)
    (path,) = args

    def measure():
        t = time.perf_counter()
        n = read_whole(path)
        return time.perf_counter() - t, n

    (secs, n), retries = guarded(measure, opts["drop"], [path] if opts["warm"] else [])
    print(f"{secs:.6f} {n} {retries}")


def cmd_rand(args):
    opts, args = parse_flags(args, "rand", drop=False, warm=False, ops=20000, max_seconds=30.0)
    files = [(p, os.stat(p).st_size) for p in args]
    pages = [max(1, s // 4096) for _, s in files]
    rng = random.Random(42)
    # the same offsets for every system
    picks = rng.choices(range(len(files)), weights=pages, k=opts["ops"])
    offsets = [(i, rng.randrange(pages[i]) * 4096) for i in picks]

    def measure():
        fds = [os.open(p, os.O_RDONLY) for p, _ in files]
        done = 0
        t = time.perf_counter()
        deadline = t + opts["max_seconds"]
        for i, off in offsets:
            os.pread(fds[i], 4096, off)
            done += 1
            if done % 64 == 0 and time.perf_counter() > deadline:
                break
        elapsed = time.perf_counter() - t
        for fd in fds:
            os.close(fd)
        return done, elapsed

    (done, elapsed), retries = guarded(measure, opts["drop"], args if opts["warm"] else [])
    print(f"{done} {elapsed:.6f} {retries}")


def cmd_readall(root):
    files = total = errors = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == root and ".soci-snapshotter" in dirnames:
            dirnames.remove(".soci-snapshotter")
        for name in filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
                if not (st.st_mode & 0o170000 == 0o100000):
                    continue
                total += read_whole(p)
                files += 1
            except OSError:
                errors += 1
    print(f"{files} {total} {errors}")


# --- metrics and logs --------------------------------------------------------

METRIC = re.compile(r'^(\w+)\{([^}]*)\} ([0-9.e+-]+)$')


def cmd_metrics(addr):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
    req = byt = 0
    complete = layers = 0
    for line in text.splitlines():
        m = METRIC.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2), float(m.group(3))
        if name == "sochi_layer_fetch_requests_total" and 'kind="demand"' in labels:
            req += value
        elif name == "sochi_layer_fetched_bytes_total" and 'kind="demand"' in labels:
            byt += value
        elif name == "sochi_background_fetch_complete":
            layers += 1
            complete += value
    print(f"{int(req)} {int(byt)} {int(complete)} {layers}")


ACCESS = re.compile(r'^\S+ - \S+ \[[^]]*\] "(\w+) (\S+) [^"]*" (\d+) (\d+)')


def cmd_reglog(log, start):
    lines = requests = byt = 0
    with open(log, errors="replace") as f:
        for n, line in enumerate(f, 1):
            lines = n
            if n <= start:
                continue
            m = ACCESS.match(line)
            if m and m.group(1) in ("GET", "HEAD"):
                requests += 1
                byt += int(m.group(4))
    print(f"{lines} {requests} {byt}")


def cmd_layers(layout):
    import json
    blobs = os.path.join(layout, "blobs", "sha256")
    index = json.load(open(os.path.join(layout, "index.json")))
    manifests = index["manifests"]
    tagged = [m for m in manifests
              if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "latest"]
    desc = (tagged or manifests)[0]
    manifest = json.load(open(os.path.join(blobs, desc["digest"].split(":", 1)[1])))
    for layer in manifest["layers"]:
        print(os.path.join(blobs, layer["digest"].split(":", 1)[1]))


# --- summary -----------------------------------------------------------------


def cmd_summary(csv):
    import csv as csvmod
    rows = list(csvmod.DictReader(open(csv)))
    vals = {}
    for r in rows:
        vals.setdefault((r["test"], r["system"], r["metric"]), []).append(float(r["value"]))

    def med(test, system, metric):
        v = vals.get((test, system, metric))
        return statistics.median(v) if v else None

    def n(test, system, metric):
        return len(vals.get((test, system, metric), []))

    def f(x, fmt):
        return "–" if x is None else format(x, fmt)

    out = []
    p = out.append

    loads = [(sec, med("load", sec, "loadavg_1min")) for sec in ("index", "cold", "seq", "rand", "find", "rss")]
    if any(l is not None for _, l in loads):
        p("1-minute load average at the start of each test (others' jobs share this machine): "
          + ", ".join(f"{sec} {l:.2f}" for sec, l in loads if l is not None))
        p("")

    retries = {t: sum(sum(v) for k, v in vals.items() if k[0] == t and k[2].endswith("_retries"))
               for t in ("seq", "rand", "find")}
    if any(retries.values()):
        p("Runs repeated because something else dropped the page cache meanwhile: "
          + ", ".join(f"{t} {int(n)}" for t, n in retries.items()))
        p("")

    # 1. cold read
    p("Cold read of one small file (`usr/lib/python3.11/json/decoder.py`, 12.5 KB, in the"
      " python layer), fresh mount each run, medians:")
    p("")
    p("| system | source | mount | first read | requests (read) | bytes (read) |"
      " requests (mount + read) | bytes (mount + read) |")
    p("|---|---|---|---|---|---|---|---|")
    systems = [
        ("sochi-image", "sochi mount IMAGE (3 layers)", "registry (HTTP, loopback)"),
        ("ratarmount-http", "ratarmount URL (python layer only, no index)", "registry (HTTP, loopback)"),
        ("ratarmount-http-index", "ratarmount URL + prebuilt index", "registry (HTTP, loopback)"),
        ("sochi-layer", "sochi mount --layer-file + zTOC", "local .tar.gz"),
        ("ratarmount-local", "ratarmount FILE + prebuilt index", "local .tar.gz"),
    ]
    for key, label, src in systems:
        if n("cold", key, "mount_s") == 0:
            continue
        rr, rb = med("cold", key, "read_requests"), med("cold", key, "read_bytes")
        tr, tb = med("cold", key, "total_requests"), med("cold", key, "total_bytes")
        p(f"| {label} | {src} | {f(med('cold', key, 'mount_s'), '.3f')} s |"
          f" {f(med('cold', key, 'first_read_ms'), '.1f')} ms |"
          f" {f(rr, '.0f')} | {'–' if rb is None else f'{rb / 1e6:.2f} MB'} |"
          f" {f(tr, '.0f')} | {'–' if tb is None else f'{tb / 1e6:.2f} MB'} |")
    p("")

    # 2. index
    p("Index of the big layer, medians:")
    p("")
    p("| what | wall | peak RSS | index size |")
    p("|---|---|---|---|")
    for key, label in (("sochi-ztoc-build", "`sochi ztoc build` (span 4 MiB)"),
                       ("ratarmount-index", "ratarmount first mount (`--no-mount`: builds its SQLite index)")):
        w, s = med("index", key, "wall_s"), med("index", key, "index_bytes")
        r = med("index", key, "peak_rss_kib")
        p(f"| {label} | {f(w, '.2f')} s | {f(r / 1024 if r else None, '.0f')} MiB |"
          f" {'–' if s is None else f'{s / 1e6:.1f} MB'} |")
    p("")

    big = [("ext4", "ext4 (`tar -x` of the layer)"),
           ("sochi-image", "sochi mount IMAGE, background fetch done (disk span cache)"),
           ("sochi-layer", "sochi mount --layer-file (64 MiB memory span cache)"),
           ("ratarmount", "ratarmount FILE")]

    # 3. sequential
    size = med("seq", "file", "size_bytes")
    p(f"Sequential read (1 MiB reads) of the layer's largest file ({f(size / 1e6 if size else None, '.0f')} MB),"
      " warmed once, medians (FUSE passthrough: off — not implemented in sochi):")
    p("")
    # The disk's speed swings within a run: besides medians, the best run
    # of each system (what each reaches when the disk is at its fastest).
    def best(test, system, metric):
        v = vals.get((test, system, metric))
        return max(v) if v else None

    p("| system | page cache hot | vs ext4 | after `drop_caches` | vs ext4 | best dropped run | vs ext4's best |")
    p("|---|---|---|---|---|---|---|")
    e_hot, e_cold = med("seq", "ext4", "hot_MBps"), med("seq", "ext4", "dropped_MBps")
    e_best = best("seq", "ext4", "dropped_MBps")
    for key, label in big:
        h, c = med("seq", key, "hot_MBps"), med("seq", key, "dropped_MBps")
        b = best("seq", key, "dropped_MBps")
        if h is None and c is None:
            continue
        p(f"| {label} | {f(h, '.0f')} MB/s | {f(h / e_hot if h and e_hot else None, '.2f')}× |"
          f" {f(c, '.0f')} MB/s | {f(c / e_cold if c and e_cold else None, '.2f')}× |"
          f" {f(b, '.0f')} MB/s | {f(b / e_best if b and e_best else None, '.2f')}× |")
    p("")

    bg = med("bgfetch", "sochi-image", "wall_s")
    if bg is not None:
        p(f"(sochi mount IMAGE: mount plus background fetch of the whole layer into the span cache took {bg:.1f} s.)")
        p("")

    # 4. random
    p("Random 4 KiB reads over the layer's largest files after one full read of each, medians:")
    p("")
    p("| system | page cache hot | vs ext4 | after `drop_caches` | vs ext4 |")
    p("|---|---|---|---|---|")
    e_hot, e_cold = med("rand", "ext4", "hot_ops"), med("rand", "ext4", "dropped_ops")
    for key, label in big:
        h, c = med("rand", key, "hot_ops"), med("rand", key, "dropped_ops")
        if h is None and c is None:
            continue
        p(f"| {label} | {f(h, ',.0f')} ops/s | {f(h / e_hot if h and e_hot else None, '.2f')}× |"
          f" {f(c, ',.0f')} ops/s | {f(c / e_cold if c and e_cold else None, '.2f')}× |")
    p("")

    # 5. find
    for suffix, fmt, note in (("", "%u", "the issue's command; `%u` reads /etc/passwd for each entry"),
                              ("_numeric", "%U", "numeric owner: stat only")):
        p(f"`find MNT -printf '%s %m {fmt}\\n' > /dev/null` over the debian-python image ({note}),"
          " medians (best run in brackets); speed vs native = native time / time, of the medians:")
        p("")
        p("| system | entries | cold (after `drop_caches`) | speed vs native | warm | speed vs native |")
        p("|---|---|---|---|---|---|")
        n_cold, n_warm = med("find", "native", "cold" + suffix + "_s"), med("find", "native", "warm" + suffix + "_s")
        best = lambda key, metric: min(vals.get(("find", key, metric), [float("nan")]))
        for key, label in (("native", "native: the merged tree on ext4"),
                           ("native-overlay", "overlayfs of the 3 layers unpacked on ext4"),
                           ("sochi-image", "sochi mount IMAGE (overlayfs of 3 FUSE layers)"),
                           ("ratarmount-union", "ratarmount union of the 3 layer files (whiteouts not applied)")):
            c, w = med("find", key, "cold" + suffix + "_s"), med("find", key, "warm" + suffix + "_s")
            if c is None:
                continue
            bc, bw = best(key, "cold" + suffix + "_s"), best(key, "warm" + suffix + "_s")
            p(f"| {label} | {f(med('find', key, 'entries'), '.0f')} | {c:.3f} s ({bc:.3f}) | {f(n_cold / c, '.2f')}× |"
              f" {w:.3f} s ({bw:.3f}) | {f(n_warm / w, '.2f')}× |")
        p("")

    # 6. RSS
    p("Daemon memory:")
    p("")
    p("| daemon | what it served | VmRSS just mounted | VmRSS | VmHWM |")
    p("|---|---|---|---|---|")
    order = ["sochi-busybox", "sochi-debian-python", "sochi-edgecase", "sochi-all-3-images",
             "sochi-debian-python-mmap-threshold", "sochi-image-big", "sochi-layer-big", "ratarmount-big"]
    rss_systems = {k[1] for k in vals if k[0] == "rss"}
    for key in order + sorted(rss_systems - set(order)):
        if key not in rss_systems:
            continue
        r, h = med("rss", key, "vmrss_kib"), med("rss", key, "vmhwm_kib")
        what = {
            "sochi-busybox": "busybox (1 layer), every file read, background fetch done",
            "sochi-debian-python": "debian-python (3 layers), every file read, background fetch done",
            "sochi-edgecase": "edgecase (2 layers), every file read, background fetch done",
            "sochi-all-3-images": "the three daemons above together",
            "sochi-debian-python-mmap-threshold": "debian-python as above, daemon run with MALLOC_MMAP_THRESHOLD_=1048576 (diagnostic)",
            "sochi-image-big": "big layer from the registry after the read tests",
            "sochi-layer-big": "big layer, --layer-file, after the read tests",
            "ratarmount-big": "big layer after the read tests",
        }.get(key, key)
        m = med("rss", key, "vmrss_mounted_kib")
        if key == "sochi-all-3-images":
            ms = [med("rss", k, "vmrss_mounted_kib") for k in order[:3]]
            m = sum(ms) if all(x is not None for x in ms) else None
        p(f"| {key} | {what} | {'–' if m is None else f'{m / 1024:.1f} MiB'} |"
          f" {f(r / 1024 if r else None, '.1f')} MiB | {f(h / 1024 if h else None, '.1f')} MiB |")
    print("\n".join(out))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "unpack":
        unpack(args[0], args[1], args[2:])
    elif cmd == "first":
        cmd_first(args[0])
    elif cmd == "seq":
        cmd_seq(args)
    elif cmd == "rand":
        cmd_rand(args)
    elif cmd == "dropcount":
        print(drop_count())
    elif cmd == "warm":
        for p in args:
            read_whole(p)
    elif cmd == "readall":
        cmd_readall(args[0])
    elif cmd == "metrics":
        cmd_metrics(args[0])
    elif cmd == "reglog":
        cmd_reglog(args[0], int(args[1]))
    elif cmd == "layers":
        cmd_layers(args[0])
    elif cmd == "summary":
        cmd_summary(args[0])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
