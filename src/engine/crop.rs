// Partial recompute of a cached tile (cache=full): when only a few of a tile's 8×8 blocks
// changed, its branch runs on those blocks plus a margin of context instead of on the whole
// tile, and the result is pasted into the tile's cached output.

use super::cache::BLOCK;

/// A rectangle of a tile in LR pixels: rows `y0..y1`, columns `x0..x1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub y0: usize,
    pub y1: usize,
    pub x0: usize,
    pub x1: usize,
}

impl Rect {
    /// The whole of a tile of side `t`.
    pub fn whole(t: usize) -> Rect {
        Rect {
            y0: 0,
            y1: t,
            x0: 0,
            x1: t,
        }
    }

    /// The smallest rectangle holding both.
    pub fn union(&self, o: &Rect) -> Rect {
        Rect {
            y0: self.y0.min(o.y0),
            y1: self.y1.max(o.y1),
            x0: self.x0.min(o.x0),
            x1: self.x1.max(o.x1),
        }
    }

    /// Grown by `by` on every side, within a tile of side `t`.
    pub fn grown(&self, by: usize, t: usize) -> Rect {
        Rect {
            y0: self.y0.saturating_sub(by),
            y1: (self.y1 + by).min(t),
            x0: self.x0.saturating_sub(by),
            x1: (self.x1 + by).min(t),
        }
    }

    /// In the pixels of an image `s` times larger.
    pub fn scaled(&self, s: usize) -> Rect {
        Rect {
            y0: self.y0 * s,
            y1: self.y1 * s,
            x0: self.x0 * s,
            x1: self.x1 * s,
        }
    }

    pub fn height(&self) -> usize {
        self.y1 - self.y0
    }

    pub fn width(&self) -> usize {
        self.x1 - self.x0
    }

    pub fn area(&self) -> usize {
        self.height() * self.width()
    }

    /// Copies this part of `tile` (one NCHW item of side `t`) into `dst` (3 planes of the
    /// part's size).
    pub fn stage(&self, tile: &[f32], t: usize, dst: &mut [f32]) {
        let (h, w) = (self.height(), self.width());
        for c in 0..3 {
            for y in 0..h {
                let s = (c * t + self.y0 + y) * t + self.x0;
                dst[(c * h + y) * w..(c * h + y + 1) * w].copy_from_slice(&tile[s..s + w]);
            }
        }
    }
}

/// LR pixels of context run around the replaced part (fewer at the tile's own edges, where the
/// whole tile has none either). FSRCNN's receptive field reaches 7 pixels, but the far taps
/// weigh little: with 2 the replaced part differs from a whole-tile run by about 53 dB PSNR on
/// the embedded branches (the load-time probe; 64 dB with 4), under what `cache-threshold`
/// lets through. On the clip of BENCHMARKS.md, 2 and 2 of [`MARGIN`] gave more PSNR for the
/// same MACs than 3 and 3 or 4 and 4 (a threshold a step higher buys back the MACs).
pub const HALO: usize = 2;

/// LR pixels around the changed blocks whose output is replaced too: the output there saw the
/// changed pixels (FSRCNN's taps reach 7 pixels, the near ones weigh the most; further out
/// the output keeps its cached value, plus, with the correction of reused outputs, the
/// bicubic upscale of those pixels' own change).
pub const MARGIN: usize = 2;

/// A crop is run only when its input is at most this share of the tile; a larger change
/// recomputes the whole tile, batched with the others.
pub const MAX_SHARE: f32 = 0.75;

/// One partial recompute: the part of the tile the branch runs on, the part of its output
/// that replaces the cached one (the changed blocks and [`MARGIN`] around them), and the
/// changed blocks (which alone take the new pixels as their reference without the correction
/// of reused outputs: a block half in the margin then keeps comparing against the pixels the
/// rest of its output came from; with it, the whole replaced part does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    pub input: Rect,
    pub keep: Rect,
    pub changed: Rect,
}

impl Crop {
    /// The crop for the `changed` part of a tile of side `t`, if it is small enough to pay.
    pub fn plan(changed: Rect, t: usize) -> Option<Crop> {
        let keep = changed.grown(MARGIN, t);
        let input = keep.grown(HALO, t);
        (input.area() as f32 <= MAX_SHARE * (t * t) as f32).then_some(Crop { input, keep, changed })
    }

    /// Every input size (height, width) a crop of a tile of side `t` can have: each is run once
    /// at load, so a branch that takes the tile but not one of these is never given crops.
    pub fn input_sizes(t: usize) -> Vec<(usize, usize)> {
        let edges: Vec<usize> = (0..t).step_by(BLOCK).chain([t]).collect();
        let mut sizes = Vec::new();
        for (a, &y0) in edges.iter().enumerate() {
            for &y1 in &edges[a + 1..] {
                for (b, &x0) in edges.iter().enumerate() {
                    for &x1 in &edges[b + 1..] {
                        if let Some(c) = Crop::plan(Rect { y0, y1, x0, x1 }, t) {
                            let size = (c.input.height(), c.input.width());
                            if !sizes.contains(&size) {
                                sizes.push(size);
                            }
                        }
                    }
                }
            }
        }
        sizes
    }

    /// `per_tile` (a branch's cost on a whole tile of side `t`) scaled to the crop's input.
    pub fn cost(&self, per_tile: u64, t: usize) -> u64 {
        per_tile * self.input.area() as u64 / (t * t) as u64
    }

    /// Pastes the kept part of the crop's branch output `out` into `hr`, the tile's output in
    /// the same layout: HR planes (3 of `s·h × s·w`) or, with `phases`, phase planes (3·s² of
    /// `h × w`, see onnx/phase_output.rs).
    pub fn paste(&self, out: &[f32], t: usize, s: usize, phases: bool, hr: &mut [f32]) {
        // in both layouts: `planes` planes, each `f` output rows and columns per LR pixel
        let (planes, f) = if phases { (3 * s * s, 1) } else { (3, s) };
        let (h, w) = (self.input.height() * f, self.input.width() * f);
        let tt = t * f;
        let (k, i) = (&self.keep, &self.input);
        let (dy, dx) = ((k.y0 - i.y0) * f, (k.x0 - i.x0) * f);
        let (rows, cols) = (k.height() * f, k.width() * f);
        for p in 0..planes {
            for y in 0..rows {
                let src = (p * h + dy + y) * w + dx;
                let dst = (p * tt + k.y0 * f + y) * tt + k.x0 * f;
                hr[dst..dst + cols].copy_from_slice(&out[src..src + cols]);
            }
        }
    }
}

/// A deterministic test tile of side `t` in `lo..hi` (smooth shapes, fine texture, and a
/// curved slope, so that no part of it has the tile's mean: a branch that uses the mean fails),
/// for the load-time check that a model's branches are local enough to be run on crops.
pub fn probe_tile(t: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut v = Vec::with_capacity(3 * t * t);
    let mut seed = 0x2545_f491_u32;
    for c in 0..3 {
        for y in 0..t {
            for x in 0..t {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let noise = (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
                let wave = ((x as f32 * 0.37 + c as f32).sin() * (y as f32 * 0.23).cos()) * 0.3;
                let (u, w) = (x as f32 / t as f32 - 0.5, y as f32 / t as f32 - 0.5);
                let slope = 0.6 * (u * u + w * w) - 0.1;
                v.push(lo + (hi - lo) * (0.5 + wave + slope + 0.1 * noise).clamp(0.0, 1.0));
            }
        }
    }
    v
}

/// PSNR (dB, against the value span `span`) of the kept part of `crop_out` against the same
/// pixels of `whole_out`, a whole-tile run: how far the crop's missing context moved them.
pub fn agreement(whole_out: &[f32], crop_out: &[f32], crop: &Crop, t: usize, s: usize, phases: bool, span: f32) -> f64 {
    let mut pasted = whole_out.to_vec();
    crop.paste(crop_out, t, s, phases, &mut pasted);
    let n = 3 * crop.keep.area() * s * s;
    let se: f64 = pasted
        .iter()
        .zip(whole_out)
        .map(|(a, b)| ((a - b) as f64 / span as f64).powi(2))
        .sum();
    if se.is_nan() {
        return 0.0;
    }
    let mse = se / n.max(1) as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        -10.0 * mse.log10()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crops_take_a_margin_inside_the_tile_and_only_when_small() {
        let block = Rect {
            y0: 8,
            y1: 16,
            x0: 0,
            x1: 8,
        };
        // the block and MARGIN around it are replaced, HALO more is run (cut at the tile's edge)
        let c = Crop::plan(block, 32).unwrap();
        let rect = |y0, y1, x0, x1| Rect { y0, y1, x0, x1 };
        assert_eq!(c.keep, rect(6, 18, 0, 10));
        assert_eq!(c.input, rect(4, 20, 0, 12));
        // with their margins, 2x2 blocks are at most 3/4 of the tile, 3x3 more
        assert!(Crop::plan(rect(8, 24, 8, 24), 32).is_some());
        assert!(Crop::plan(rect(0, 24, 0, 24), 32).is_none());
        assert_eq!(c.changed, block, "the changed blocks are kept apart from the margin");
        // the crop sizes of a 32-pixel tile, all probed at load: the blocks' sides plus up to
        // 2·(MARGIN + HALO), cut at the tile's edges
        let sizes = Crop::input_sizes(32);
        assert_eq!(sizes.len(), 32);
        for (h, w) in [(12, 12), (16, 20), (32, 24), (24, 28), (24, 32)] {
            assert!(sizes.contains(&(h, w)), "{h}x{w}");
        }
        assert!(!sizes.contains(&(32, 32)) && !sizes.contains(&(28, 28)));
    }

    #[test]
    fn stage_and_paste_move_the_right_pixels_in_both_layouts() {
        let t = 8;
        let tile: Vec<f32> = (0..3 * t * t).map(|v| v as f32).collect();
        let crop = Crop {
            input: Rect {
                y0: 2,
                y1: 6,
                x0: 1,
                x1: 8,
            },
            keep: Rect {
                y0: 3,
                y1: 5,
                x0: 4,
                x1: 8,
            },
            changed: Rect {
                y0: 3,
                y1: 5,
                x0: 4,
                x1: 8,
            },
        };
        let mut staged = vec![0.0; 3 * 4 * 7];
        crop.input.stage(&tile, t, &mut staged);
        assert_eq!(staged[0], tile[2 * t + 1]);
        assert_eq!(staged[2 * 28 + 3 * 7 + 6], tile[2 * t * t + 5 * t + 7]);
        // an identity "network" (scale 1): pasting the staged input back changes nothing, and
        // pasting something else changes exactly the kept part
        for phases in [false, true] {
            let mut hr = tile.clone();
            crop.paste(&staged, t, 1, phases, &mut hr);
            assert_eq!(hr, tile);
            let ones = vec![-1.0; staged.len()];
            crop.paste(&ones, t, 1, phases, &mut hr);
            let changed = hr.iter().zip(&tile).filter(|(a, b)| a != b).count();
            assert_eq!(changed, 3 * crop.keep.area());
            assert_eq!(hr[3 * t + 4], -1.0);
            assert_eq!(hr[3 * t + 3], tile[3 * t + 3]);
        }
        // scale 2: each crop output value lands where the whole tile's run would put it
        let s = 2;
        let (h, w) = (4, 7);
        let out: Vec<f32> = (0..3 * h * w * s * s).map(|v| 1000.0 + v as f32).collect();
        // HR planes [3, s·h, s·w]: HR pixel (colour 1, row 7, column 9) of the tile is row
        // 7 − 2·2 and column 9 − 2·1 of the crop's output
        let whole: Vec<f32> = (0..3 * (t * s) * (t * s)).map(|v| v as f32).collect();
        let mut hr = whole.clone();
        crop.paste(&out, t, s, false, &mut hr);
        let ts = t * s;
        assert_eq!(hr[(ts + 7) * ts + 9], out[((h * s) + 3) * (w * s) + 7]);
        assert_eq!(
            hr[(ts + 7) * ts + 7],
            whole[(ts + 7) * ts + 7],
            "column 7 is left of the kept part"
        );
        assert_eq!(
            hr.iter().zip(&whole).filter(|(a, b)| a != b).count(),
            3 * crop.keep.area() * s * s
        );
        // phase planes [3·s², h, w]: plane 5, LR row 4, column 6 of the tile is row 4 − 2 and
        // column 6 − 1 of the crop's plane 5
        let mut phased = whole.clone();
        crop.paste(&out, t, s, true, &mut phased);
        assert_eq!(phased[(5 * t + 4) * t + 6], out[(5 * h + 2) * w + 5]);
        assert_eq!(
            phased[(5 * t + 2) * t + 6],
            whole[(5 * t + 2) * t + 6],
            "row 2 is above it"
        );
        // agreement: infinite for the whole tile's own values, finite for others
        let mut own = vec![0.0; out.len()];
        for c in 0..3 {
            for y in 0..h * s {
                for x in 0..w * s {
                    own[(c * h * s + y) * w * s + x] = whole[(c * ts + 2 * s + y) * ts + s + x];
                }
            }
        }
        assert!(agreement(&whole, &own, &crop, t, s, false, 1.0).is_infinite());
        own[((h * s) + 3) * (w * s) + 7] += 0.5;
        let db = agreement(&whole, &own, &crop, t, s, false, 1.0);
        assert!(db.is_finite() && db > 20.0, "{db}");
    }
}
