#!/usr/bin/env python3
"""Independent PSNR of `classsr eval --save DIR` outputs, for the tests: for every
NAME_MODE.ppm next to NAME_hr.ppm, RGB PSNR with a SHAVE-pixel border left out, computed
with numpy. Prints one line per image: NAME MODE PSNR."""
import pathlib
import re
import sys

import numpy as np


def read_ppm(path):
    data = pathlib.Path(path).read_bytes()
    # exactly one whitespace byte ends the header: the first pixel byte may itself be one
    m = re.match(rb"P6\s+(\d+)\s+(\d+)\s+255\s", data)
    assert m, path
    w, h = int(m.group(1)), int(m.group(2))
    return np.frombuffer(data[m.end() : m.end() + w * h * 3], dtype=np.uint8).reshape(h, w, 3)


def main():
    folder, shave = pathlib.Path(sys.argv[1]), int(sys.argv[2])
    for hr_path in sorted(folder.glob("*_hr.ppm")):
        name = hr_path.name[: -len("_hr.ppm")]
        hr = read_ppm(hr_path).astype(np.float64)
        for sr_path in sorted(folder.glob(name + "_*.ppm")):
            mode = sr_path.name[len(name) + 1 : -len(".ppm")]
            if mode == "hr":
                continue
            sr = read_ppm(sr_path).astype(np.float64)
            d = (sr - hr)[shave:-shave, shave:-shave, :]
            mse = np.mean(d * d)
            psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 * 255.0 / mse)
            print(f"{name} {mode} {psnr:.6f}")


if __name__ == "__main__":
    main()
