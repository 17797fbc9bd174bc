"""ckptcore vs plain s3fs on S3 (moto server on loopback), in one run.

Workloads:

* ``large``: a few big float32 tensors. ckptcore ``write``/``read`` against
  plain s3fs ``pipe_file``/``cat_file`` of the same bytes, stored two ways:
  one object per tensor, and all of it as one object (s3fs does its own
  concurrent multipart and ranged GETs). ckptcore writes a data shard per
  large tensor (per ~64 MiB), several at once. Target: ratio >= 0.9.
* ``many-small``: thousands of small arrays. ckptcore packs them into one
  data object; plain s3fs stores one object per array (``pipe``/``cat`` with a
  dict/list, which s3fs batches concurrently). Target: far above 1.

Run: ``.venv/bin/python -m benchmarks.bench_s3`` (or ``make bench``).
``main(argv)`` takes ``--large-mb``, ``--tensors``, ``--small``, ``--repeat``, ``--part-mb``
(``main()`` with no arguments runs the defaults; ``make bench`` calls it).

Example:
    >>> from benchmarks import bench_s3
    >>> callable(bench_s3.main)
    True
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import numpy as np


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    """Start ``moto.server`` on a free loopback port; point the AWS environment at it."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint + "/", timeout=1).read()
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start (pip install 'moto[server]')") from None
            time.sleep(0.1)
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
    return proc, endpoint


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_large(fs, bucket: str, total_mb: int, n_tensors: int, repeat: int) -> dict:
    import ckptcore as ck

    per = total_mb * (1 << 20) // n_tensors // 4
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(per).astype(np.float32) for _ in range(n_tensors)]
    nbytes = sum(a.nbytes for a in arrays)
    m = ck.Module()
    m.tensors = arrays
    ckpt = ck.Checkpoint(model=m)
    prefix = f"s3://{bucket}/large/ckpt"

    def ck_save():
        ckpt.write(prefix)

    def s3_put():
        for i, a in enumerate(arrays):
            fs.pipe_file(f"{bucket}/plain-large/t{i}", a.tobytes())

    dest = ck.Module()
    dest.tensors = [np.empty_like(a) for a in arrays]
    dck = ck.Checkpoint(model=dest)

    def ck_restore():
        dck.read(prefix).assert_consumed()

    def s3_get():
        for i in range(len(arrays)):
            np.frombuffer(fs.cat_file(f"{bucket}/plain-large/t{i}"), np.float32)

    blob = b"".join(a.tobytes() for a in arrays)   # the same bytes as one object, like ckptcore's data object

    def s3_put_one():
        fs.pipe_file(f"{bucket}/plain-large/blob", blob)

    def s3_get_one():
        fs.cat_file(f"{bucket}/plain-large/blob")

    out = {"bytes": nbytes}
    # interleave, so neither side benefits from a warmer server
    out["ck_save"] = _best(ck_save, repeat)
    out["s3_put"] = _best(s3_put, repeat)
    out["ck_restore"] = _best(ck_restore, repeat)
    out["s3_get"] = _best(s3_get, repeat)
    out["s3_put_one"] = _best(s3_put_one, repeat)
    out["s3_get_one"] = _best(s3_get_one, repeat)
    for a, b in zip(arrays, dest.tensors):
        assert np.array_equal(a, b)
    return out


def bench_small(fs, bucket: str, n: int, repeat: int) -> dict:
    import ckptcore as ck

    arrays = [np.full(64, i, np.float32) for i in range(n)]
    m = ck.Module()
    m.layers = arrays
    ckpt = ck.Checkpoint(model=m)
    prefix = f"s3://{bucket}/small/ckpt"
    dest = ck.Module()
    dest.layers = [np.empty_like(a) for a in arrays]
    dck = ck.Checkpoint(model=dest)
    paths = [f"{bucket}/plain-small/a{i}" for i in range(n)]
    out = {"bytes": sum(a.nbytes for a in arrays)}
    out["ck_save"] = _best(lambda: ckpt.write(prefix), repeat)
    # one object per array costs a request each: measured once, it dominates the run time
    out["s3_put"] = _best(lambda: fs.pipe({p: a.tobytes() for p, a in zip(paths, arrays)}), 1)
    out["ck_restore"] = _best(lambda: dck.read(prefix).assert_consumed(), repeat)
    out["s3_get"] = _best(lambda: fs.cat(paths), 1)
    assert all(np.array_equal(a, b) for a, b in zip(arrays, dest.layers))
    return out


def _report(name: str, r: dict) -> list[str]:
    mb = r["bytes"] / (1 << 20)
    lines = []
    for op, ck_key, s3_key in (("save", "ck_save", "s3_put"), ("restore", "ck_restore", "s3_get")):
        ck_t, s3_t = r[ck_key], r[s3_key]
        line = (f"{name:<11} {op:<8} {mb:8.1f} MiB  ckptcore {mb / ck_t:7.1f} MiB/s ({ck_t:6.3f} s)  "
                f"s3fs per-array objects {mb / s3_t:7.1f} MiB/s  ratio {s3_t / ck_t:6.2f}x")
        one = r.get(s3_key + "_one")
        if one:
            line += f"  | s3fs one object {mb / one:7.1f} MiB/s  ratio {one / ck_t:5.2f}x"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> dict:
    """Run both workloads against a fresh moto server and print throughput and ratios.

    Returns the raw timings (seconds) per workload.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--large-mb", type=int, default=256)
    p.add_argument("--tensors", type=int, default=4)
    p.add_argument("--small", type=int, default=20000)  # issue 15: 20,000 small arrays
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--part-mb", type=int, default=None,
                   help="ckptcore part/range size in MiB (default: ckptcore.storage.cloud.DEFAULT_PART_SIZE)")
    args = p.parse_args([] if argv is None else argv)
    if args.part_mb:
        from ckptcore.storage import cloud

        cloud.DEFAULT_PART_SIZE = args.part_mb << 20
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    proc, endpoint = start_moto()
    try:
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
        results = {
            "large": bench_large(fs, bucket, args.large_mb, args.tensors, args.repeat),
            "many-small": bench_small(fs, bucket, args.small, args.repeat),
        }
        print(f"S3 (moto server at {endpoint}); ratio = s3fs time / ckptcore time (>1: ckptcore faster)")
        print("note: moto reads a whole object for every ranged GET, so ranged reads of a large object cost "
              "O(object size) each here (not so on S3); ckptcore's data shards keep objects <= 64 MiB "
              "unless one tensor is larger")
        for name, r in results.items():
            for line in _report(name, r):
                print(line)
        return results
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main(sys.argv[1:])
