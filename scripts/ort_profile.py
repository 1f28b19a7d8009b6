#!/usr/bin/env python3
"""Summarises the ONNX Runtime profiles that CLASSSR_ORT_PROFILE=PREFIX makes (one JSON file per
session): per session, its runs and their total time, then its costliest operators with the
execution provider each ran on. Nodes ONNX Runtime placed on the CPU in a CUDA session, and the
copies it inserted between host and device, show here.

    python3 scripts/ort_profile.py PREFIX [TOP]
"""
import collections
import glob
import json
import sys


def role(ops):
    """Which of the element's graphs a session ran, from its operators (as optimised)."""
    for op, name in [("ScatterElements", "accumulate graph"), ("Floor", "pack graph"), ("Gemm", "classifier"),
                     ("GlobalAveragePool", "classifier"), ("Conv", "branch"), ("Transpose", "unpack graph"),
                     ("Pad", "unpack graph")]:
        if op in ops:
            return name
    return "select graph"


def main():
    prefix = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    rows = []
    for path in sorted(glob.glob(prefix + "*.json")):
        try:
            events = json.load(open(path))
        except (OSError, ValueError) as e:
            print(f"{path}: unreadable ({e})")
            continue
        runs = [e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
        if not runs:
            continue
        nodes = collections.defaultdict(lambda: [0, 0, "", ""])
        for e in events:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            args = e.get("args", {})
            n = nodes[e["name"][: -len("_kernel_time")]]
            n[0] += e["dur"]
            n[1] += 1
            n[2] = args.get("op_name", "?")
            n[3] = args.get("provider", "?").replace("ExecutionProvider", "")
        ops = {v[2] for v in nodes.values()}
        rows.append((sum(runs), len(runs), role(ops), nodes))
    if not rows:
        print(f"no profile with runs at {prefix}*.json")
        sys.exit(1)
    rows.sort(key=lambda r: -r[0])
    for total, count, name, nodes in rows:
        print(f"{name}: {count} runs, {total / 1e3:.1f} ms in all, {total / 1e3 / count:.3f} ms per run")
        kernels = sum(v[0] for v in nodes.values())
        print(f"  operators: {kernels / 1e3:.1f} ms in all")
        for node, (dur, k, op, provider) in sorted(nodes.items(), key=lambda kv: -kv[1][0])[:top]:
            print(f"  {dur / 1e3:9.1f} ms  {op:16} {provider:6} {node} ({k} calls)")
        on_cpu = sorted({v[2] for v in nodes.values() if v[3] == "CPU"})
        if on_cpu and any(v[3] == "CUDA" for v in nodes.values()):
            print(f"  on the CPU in this CUDA session: {', '.join(on_cpu)}")


if __name__ == "__main__":
    main()
