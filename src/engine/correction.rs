// Correction of reused outputs (cache=full with a threshold above 0): a reused tile's HR
// output came from LR pixels that may differ from the frame's by up to the threshold (noise,
// flicker, a slow change of light). The bicubic upscale of that difference is added to the
// packed output, so reused tiles follow such changes instead of holding them until they add
// up; recomputed pixels have no difference and get nothing.

use super::cache::TileCache;
use super::fixed16;
use super::pixels::{self, ImageMut, PixelLayout};
use super::resample::Upsampler;
use super::tiling::TileGrid;

/// The LR difference of one frame and what adds it to the packed output.
pub struct Correction {
    /// Padded LR size.
    pw: usize,
    ph: usize,
    /// Per tile column / row: the weight of each LR pixel in the merge (the HR merge weights
    /// averaged over the pixel's `scale` samples; they add up to 1 where tiles overlap).
    wx: Vec<Vec<f32>>,
    wy: Vec<Vec<f32>>,
    /// The frame minus the pixels each output came from (3 planes, 8-bit levels), weighted as
    /// the tiles' outputs are merged and scaled by the response gain of the branch that made
    /// each output.
    lr: Vec<f32>,
    /// The output layout `lr` was taken for.
    layout: Option<PixelLayout>,
    /// The bicubic kernel's taps of each phase in Q15 (the horizontal pass).
    taps: Vec<Vec<i16>>,
    /// Per output row, the vertical pass's taps.
    columns: Vec<Column>,
}

/// The LR rows that make an output row, their weights, how many there are, and the weights in
/// Q15 when there are 4.
type Column = ([usize; 8], [f32; 8], usize, [i16; 4]);

impl Correction {
    pub fn new(grid: &TileGrid) -> Correction {
        let s = grid.scale;
        let lr_weights = |w: &Vec<Vec<f32>>| -> Vec<Vec<f32>> {
            w.iter()
                .map(|hr| hr.chunks_exact(s).map(|c| c.iter().sum::<f32>() / s as f32).collect())
                .collect()
        };
        let up = Upsampler::new(crate::onnx::Kernel::Bicubic, s);
        Correction {
            pw: grid.padded_width,
            ph: grid.padded_height,
            wx: lr_weights(&grid.wx),
            wy: lr_weights(&grid.wy),
            lr: Vec::new(),
            layout: None,
            taps: up
                .phase_taps()
                .iter()
                .map(|t| t.iter().map(|&w| fixed16::q15(w)).collect())
                .collect(),
            columns: (0..grid.padded_height * s)
                .map(|y| {
                    let (rows, w, n) = up.column_taps(y, grid.padded_height);
                    (rows, w, n, [0, 1, 2, 3].map(|j| fixed16::q15(w[j])))
                })
                .collect(),
        }
    }

    /// Takes the difference between each tile of `tiles` (NCHW items, this frame's) and the
    /// pixels its cached output came from (`cache`'s references), leaving out the tiles for
    /// which `whole_now` is true (recomputed whole this frame: their output is this frame's),
    /// for an output of `layout`. Each tile's difference is scaled by the gain of the branch
    /// that made its output (`gains`, by class: see [`response_gain`]); `units` converts model
    /// values to 8-bit levels. Returns false when there is no difference anywhere (nothing to
    /// add).
    #[allow(clippy::too_many_arguments)]
    pub fn difference(
        &mut self,
        grid: &TileGrid,
        tiles: &[f32],
        cache: &TileCache,
        whole_now: impl Fn(usize) -> bool,
        gains: [f32; 3],
        units: f32,
        layout: PixelLayout,
    ) -> bool {
        let (t, plane) = (grid.tile, self.pw * self.ph);
        let item = 3 * t * t;
        self.lr.clear();
        self.lr.resize(3 * plane, 0.0);
        let mut any = false;
        for i in (0..grid.len()).filter(|&i| !whole_now(i)) {
            let (col, row) = grid.cell(i);
            let (x0, y0) = grid.origin(i);
            let (now, then) = (&tiles[i * item..(i + 1) * item], cache.reference_of(i));
            if now == then {
                continue;
            }
            any = true;
            for c in 0..3 {
                for (y, &wy) in self.wy[row].iter().enumerate() {
                    let a = (c * t + y) * t;
                    let dst = &mut self.lr[c * plane + (y0 + y) * self.pw + x0..][..t];
                    let w = wy * units * gains[cache.classes[i] as usize % 3];
                    // indexed over slices of one length: a zip of four iterators stays scalar
                    let (n, r, wx) = (&now[a..a + t], &then[a..a + t], &self.wx[col][..t]);
                    for x in 0..t {
                        dst[x] += w * wx[x] * (n[x] - r[x]);
                    }
                }
            }
        }
        if any {
            self.layout = Some(layout);
        }
        any
    }

    /// Writes `base` (the packed output without the correction, laid out as `out`; `None`:
    /// `out` itself) plus the upsampled difference into `out`, its rows cut into `bands`
    /// bands done in parallel. Each band upsamples the difference along the LR rows it needs
    /// as it goes, into a few rows laid out as the output's samples are (so they stay in the
    /// cache), and adds them up down the columns as it writes each output row.
    pub fn apply(&self, base: Option<&[u8]>, out: &mut ImageMut, bands: usize) {
        debug_assert_eq!(self.layout, Some(out.layout), "difference() was taken for this layout");
        let (stride, bpp, out_layout) = (out.stride, out.layout.bytes_per_pixel(), out.layout);
        // (with 3 bytes a pixel the horizontal pass needs 4 samples of slack)
        let row_len = self.pw * self.taps.len() * bpp + 4;
        let rad = self.taps[0].len() / 2;
        pixels::in_bands(out, bands, |y0, img| {
            let n = img.width * bpp;
            // LR row r upsampled along its row lives in slot r % SLOTS (a kernel's rows for
            // one output row are consecutive, at most SLOTS of them)
            let mut ring = vec![0i16; SLOTS * row_len];
            let mut held = [usize::MAX; SLOTS];
            let mut padded = Vec::with_capacity(self.pw + 2 * rad);
            for y in 0..img.height {
                let (rows, weights, taps, q15) = &self.columns[y0 + y];
                let taps = *taps;
                for &r in &rows[..taps] {
                    if held[r % SLOTS] != r {
                        held[r % SLOTS] = r;
                        // the row in fixed point, a pixel's colours in the lanes of their
                        // offsets in the output's pixels (0 for alpha and padding), its edge
                        // pixels repeated
                        let planes = [0, 1, 2].map(|c| &self.lr[(c * self.ph + r) * self.pw..][..self.pw]);
                        padded.resize(self.pw + 2 * rad, [0; 4]);
                        let inner = &mut padded[rad..rad + self.pw];
                        match out_layout.rgb_offsets() {
                            [0, 1, 2] => to_pixels::<0, 1, 2>(planes, inner),
                            [2, 1, 0] => to_pixels::<2, 1, 0>(planes, inner),
                            [1, 2, 3] => to_pixels::<1, 2, 3>(planes, inner),
                            [3, 2, 1] => to_pixels::<3, 2, 1>(planes, inner),
                            offs => unreachable!("colour offsets {offs:?}"),
                        }
                        let (first, last) = (padded[rad], padded[rad + self.pw - 1]);
                        padded[..rad].fill(first);
                        padded[rad + self.pw..].fill(last);
                        fixed16::row(&self.taps, &padded, bpp, &mut ring[r % SLOTS * row_len..][..row_len]);
                    }
                }
                let row = |j: usize| &ring[rows[j] % SLOTS * row_len..][..n];
                let dst = &mut img.data[y * stride..][..n];
                let base = base.map(|b| &b[(y0 + y) * stride..][..n]);
                if taps == 4 {
                    fixed16::add_rows([row(0), row(1), row(2), row(3)], *q15, base, dst);
                } else {
                    // other kernels and scales: in f32, from the same rows
                    if let Some(base) = base {
                        dst.copy_from_slice(base);
                    }
                    let rows: Vec<&[i16]> = (0..taps).map(row).collect();
                    for (x, d) in dst.iter_mut().enumerate() {
                        let a: f32 = rows.iter().zip(weights).map(|(r, w)| w * r[x] as f32).sum();
                        *d = pixels::to_u8(*d as f32 + a / fixed16::UNITS);
                    }
                }
            }
        });
    }
}

/// A row of the 3 planes in fixed point, as pixels with their colours in lanes `R`, `G` and
/// `B` (the others 0); the lanes are constants so that the loop vectorises.
fn to_pixels<const R: usize, const G: usize, const B: usize>(planes: [&[f32]; 3], out: &mut [[i16; 4]]) {
    for (((px, &r), &g), &b) in out.iter_mut().zip(planes[0]).zip(planes[1]).zip(planes[2]) {
        *px = [0; 4];
        px[R] = fixed16::units(r);
        px[G] = fixed16::units(g);
        px[B] = fixed16::units(b);
    }
}

/// A small change of a tile (NCHW, side `t`) for [`response_gain`]: noise of up to ±2 levels
/// of a value span `span`, the same every time.
pub fn probe_change(t: usize, span: f32) -> Vec<f32> {
    let mut seed = 0x9e37_79b9_u32;
    (0..3 * t * t)
        .map(|_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 4.0 / 255.0 * span
        })
        .collect()
}

/// How much a branch's output moves, against the bicubic upscale of its input's move: the
/// least-squares gain g for which g·bicubic(`change`) is closest to `after` − `before` (the
/// branch's outputs for a tile and for the tile plus `change`, laid out as the branch gives
/// them: HR planes, or phase planes with `phases`), away from the tile's edges (4 LR pixels).
/// The correction scales the difference of the tiles a branch made by it: an SR network
/// sharpens, and so moves more than bicubic with its input's fine changes. 1 when it cannot
/// be measured; kept within 0.5..=2.
pub fn response_gain(before: &[f32], after: &[f32], change: &[f32], t: usize, s: usize, phases: bool) -> f32 {
    let th = t * s;
    let mut bicubic = bicubic_tile(change, t, s);
    if phases {
        let hr = std::mem::take(&mut bicubic);
        bicubic = vec![0f32; 3 * th * th];
        super::accumulate::to_phases(&hr, (t, s), &mut bicubic);
    }
    if before.len() != bicubic.len() || after.len() != bicubic.len() {
        return 1.0;
    }
    // the LR pixel (row, column) of each output sample, in either layout
    let lr_of = |k: usize| {
        if phases {
            ((k / t) % t, k % t)
        } else {
            ((k / th) % th / s, k % th / s)
        }
    };
    let inside = |j: usize| (4..t.saturating_sub(4)).contains(&j);
    let (mut num, mut den) = (0f64, 0f64);
    for (k, ((&b, &a), &u)) in before.iter().zip(after).zip(&bicubic).enumerate() {
        let (y, x) = lr_of(k);
        if inside(y) && inside(x) {
            num += ((a - b) * u) as f64;
            den += (u * u) as f64;
        }
    }
    let g = (num / den) as f32;
    if g.is_finite() && den > 0.0 {
        g.clamp(0.5, 2.0)
    } else {
        1.0
    }
}

/// The bicubic ×`s` upscale of a tile (3 planes of side `t`), as 3 planes of side `t·s`.
fn bicubic_tile(tile: &[f32], t: usize, s: usize) -> Vec<f32> {
    let th = t * s;
    let mut up = Upsampler::new(crate::onnx::Kernel::Bicubic, s);
    let mut hr = vec![0f32; 3 * th * th];
    for (src, dst) in tile.chunks_exact(t * t).zip(hr.chunks_exact_mut(th * th)) {
        up.upscale(src, t, t, dst);
    }
    hr
}

/// Rows of the horizontal pass a band keeps (at least a kernel's taps, 8 at most).
const SLOTS: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uniform_difference_is_added_everywhere_but_where_tiles_were_recomputed() {
        // 40x24 LR in 16-pixel tiles overlapping by 4 (3 x 2 tiles), x4
        let grid = TileGrid::new(40, 24, 16, 4, 4).unwrap();
        let item = 3 * 16 * 16;
        let mut cache = TileCache::new(grid.len(), 16, 3 * 64 * 64);
        let then: Vec<f32> = (0..item).map(|v| (v % 7) as f32).collect();
        let mut tiles = Vec::new();
        for i in 0..grid.len() {
            cache.store(i, &then, 0, None);
            tiles.extend(then.iter().map(|v| v + 2.4));
        }
        let (w, h) = (160, 96);
        for (layout, skip_first) in [
            (PixelLayout::Rgba, false),
            (PixelLayout::Bgr, false),
            (PixelLayout::Rgb, true),
        ] {
            let mut c = Correction::new(&grid);
            let whole_now = |i: usize| skip_first && i == 0;
            assert!(c.difference(&grid, &tiles, &cache, whole_now, [1.0; 3], 1.0, layout));
            let bpp = layout.bytes_per_pixel();
            let mut data = vec![100u8; w * h * bpp];
            let mut out = ImageMut {
                data: &mut data,
                width: w,
                height: h,
                stride: w * bpp,
                layout,
            };
            c.apply(None, &mut out, 2);
            let alpha = layout.alpha_offset();
            for (p, px) in data.chunks_exact(bpp).enumerate() {
                let (x, y) = (p % w, p / w);
                for (b, &v) in px.iter().enumerate() {
                    let want = if Some(b) == alpha {
                        100
                    } else if skip_first && x < 4 * 10 && y < 4 * 10 {
                        // tile 0 (LR 0..16) was recomputed: no difference there, away from
                        // its overlaps (from 12 on) and the kernel's reach (2)
                        100
                    } else if skip_first {
                        continue;
                    } else {
                        102
                    };
                    assert_eq!(v, want, "{layout:?} pixel ({x}, {y}) byte {b}");
                }
            }
        }
        // nothing changed: nothing to add
        let mut c = Correction::new(&grid);
        let same: Vec<f32> = (0..grid.len()).flat_map(|_| then.iter().copied()).collect();
        assert!(!c.difference(&grid, &same, &cache, |_| false, [1.0; 3], 1.0, PixelLayout::Rgb));
    }

    #[test]
    fn the_response_gain_of_a_scaled_bicubic_branch_is_its_scale() {
        // a "branch" that upscales bicubically and multiplies by 1.3, in both output layouts
        let (t, s) = (16, 4);
        let tile = crate::engine::crop::probe_tile(t, 0.0, 1.0);
        let change = probe_change(t, 1.0);
        assert!(change.iter().all(|d| d.abs() <= 2.0 / 255.0) && change.iter().any(|d| d.abs() > 1.0 / 255.0));
        let branch = |x: &[f32], phases: bool| {
            let hr = bicubic_tile(x, t, s);
            let mut out: Vec<f32> = hr.iter().map(|v| 1.3 * v + 0.1).collect();
            if phases {
                let mut p = vec![0f32; out.len()];
                crate::engine::accumulate::to_phases(&out, (t, s), &mut p);
                out = p;
            }
            out
        };
        let moved: Vec<f32> = tile.iter().zip(&change).map(|(a, d)| a + d).collect();
        for phases in [false, true] {
            let g = response_gain(&branch(&tile, phases), &branch(&moved, phases), &change, t, s, phases);
            assert!((g - 1.3).abs() < 1e-3, "phases {phases}: {g}");
        }
        // an output that does not move with the input: the lowest gain; a wrong size: 1
        let still = branch(&tile, false);
        assert_eq!(response_gain(&still, &still, &change, t, s, false), 0.5);
        assert_eq!(response_gain(&still[1..], &still[1..], &change, t, s, false), 1.0);
    }

    #[test]
    fn column_taps_add_up_to_one_and_stay_inside() {
        let up = Upsampler::new(crate::onnx::Kernel::Bicubic, 4);
        for y in 0..40 {
            let (rows, weights, n) = up.column_taps(y, 10);
            assert_eq!(n, 4, "bicubic x4: 4 rows per output row");
            assert!((weights[..n].iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!(rows[..n].iter().all(|&r| r < 10));
        }
    }
}
