#!/usr/bin/env python3
"""What routing could achieve with a model's branches, independent of its classifier.

Reads the outputs that `classsr eval --save DIR --modes bicubic,branch1,branch2,branch3`
wrote (NAME_hr.ppm, NAME_bicubic.ppm, NAME_branchK.ppm), cuts every image into BLOCK x BLOCK
HR blocks and scores routers that send each block to one branch, on the eval protocol
(4-pixel border shaved, mean of per-image RGB PSNR):

* each branch everywhere;
* an activity router: the least active blocks (mean absolute gradient of the bicubic
  upscale) to branch1, the most active to branch3, the rest to branch2, for a grid of shares.

Cost is true MACs as a share of branch3, classifier included (--costs, from the manifest).

    classsr eval --hr data/val --modes bicubic,branch1,branch2,branch3 --save out/branches
    python3 scripts/routing_analysis.py out/branches
"""
import argparse
import glob
import os

import numpy as np

from psnr_check import read_ppm as read_ppm_u8


def read_ppm(path):
    return read_ppm_u8(path).astype(np.float64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--block", type=int, default=112, help="HR block side (28 LR px: a tile's stride)")
    ap.add_argument("--costs", default="0.0138,0.464,0.732,1.0",
                    help="classifier, branch1, branch2, branch3 MACs as shares of branch3")
    a = ap.parse_args()
    c = [float(v) for v in a.costs.split(",")]
    names = sorted({os.path.basename(p)[:-len("_hr.ppm")] for p in glob.glob(os.path.join(a.dir, "*_hr.ppm"))})
    if not names:
        raise SystemExit(f"no *_hr.ppm in {a.dir}: run classsr eval --save first")
    sse, act, img, pixels = [], [], [], []
    for i, n in enumerate(names):
        hr = read_ppm(os.path.join(a.dir, f"{n}_hr.ppm"))
        bic = read_ppm(os.path.join(a.dir, f"{n}_bicubic.ppm"))
        br = [read_ppm(os.path.join(a.dir, f"{n}_branch{k}.ppm")) for k in (1, 2, 3)]
        h, w, _ = hr.shape
        keep = np.zeros((h, w), bool)
        keep[4:h - 4, 4:w - 4] = True
        pixels.append(keep.sum() * 3)
        for y in range(0, h, a.block):
            for x in range(0, w, a.block):
                sl = (slice(y, y + a.block), slice(x, x + a.block))
                k = keep[sl]
                sse.append([((b[sl] - hr[sl]) ** 2)[k].sum() for b in br])
                g = bic[sl]
                act.append(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())
                img.append(i)
    sse, act, img = np.array(sse), np.array(act), np.array(img)
    n = len(act)

    def score(choice):
        per = []
        for i, px in enumerate(pixels):
            m = img == i
            per.append(10 * np.log10(255.0 ** 2 * px / sse[m][np.arange(m.sum()), choice[m]].sum()))
        return np.mean(per), 100 * (c[0] + np.array(c[1:])[choice].mean())

    print(f"{len(names)} images, {n} blocks of {a.block}x{a.block}")
    print("| router | PSNR (dB) | MACs % of branch3 |\n|---|---|---|")
    for k in range(3):
        p, cost = score(np.full(n, k))
        print(f"| branch{k + 1} everywhere | {p:.3f} | {cost:.1f} |")
    order = np.argsort(act)
    for f1 in (0.2, 0.3, 0.4, 0.5):
        for f3 in (0.0, 0.1, 0.2, 0.3):
            choice = np.full(n, 1)
            choice[order[:int(f1 * n)]] = 0
            if f3 > 0:
                choice[order[n - int(f3 * n):]] = 2
            p, cost = score(choice)
            print(f"| activity: {f1:.0%} branch1, {f3:.0%} branch3 | {p:.3f} | {cost:.1f} |")


if __name__ == "__main__":
    main()
