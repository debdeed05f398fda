"""A full load of a model from S3 into memory, in a process of its own, timed inside it.

The peer benchmark's "full load" runs each loader here, in a fresh process
(so no cache of an earlier load helps, and the peak RSS is the loader's own):

    runai_peer.py runai s3://BUCKET/KEY.safetensors
        Run:ai Model Streamer's SafetensorsStreamer (as vLLM uses it), every
        tensor kept (owned) in memory, on the CPU.
    runai_peer.py modelfs s3://BUCKET/PREFIX NAME.safetensors CACHE_DIR
        modelfs.load_model(NAME, store=modelfs.open_store(URL, cache_dir=CACHE_DIR),
        framework="numpy"), without a mount.

The endpoint and keys come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, as both read them. It prints one JSON line: seconds
(from the first request to the last tensor in memory, imports excluded),
bytes and tensors loaded, and peak_rss_bytes (VmHWM).

Caveats:
- Run:ai's S3 client (the AWS C++ SDK) can address buckets virtual-host style;
  the benchmark sets RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING=0 (path style), as
  SeaweedFS wants. Against SeaweedFS's address:port endpoint it also works
  without (tried: 0.17.1 streams the same tensors either way).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def load_runai(url: str) -> dict[str, Any]:
    from runai_model_streamer import SafetensorsStreamer

    tensors: dict[str, Any] = {}
    started = time.perf_counter()
    with SafetensorsStreamer() as streamer:
        streamer.stream_file(url)
        for name, tensor in streamer.get_tensors():
            tensors[name] = tensor
    seconds = time.perf_counter() - started
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    return {"seconds": seconds, "bytes": nbytes, "tensors": len(tensors)}


def load_modelfs(url: str, name: str, cache_dir: str) -> dict[str, Any]:
    import modelfs

    started = time.perf_counter()
    client = modelfs.open_store(url, cache_dir=cache_dir)
    try:
        tensors = modelfs.load_model(name, store=client, framework="numpy")
    finally:
        client.close()
    seconds = time.perf_counter() - started
    nbytes = sum(t.nbytes for t in tensors.values())
    return {"seconds": seconds, "bytes": nbytes, "tensors": len(tensors)}


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "runai":
        out = load_runai(argv[1])
    elif len(argv) == 4 and argv[0] == "modelfs":
        out = load_modelfs(*argv[1:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps({**out, "peak_rss_bytes": peak_rss()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
