// Correction of reused outputs (cache=full with a threshold above 0): a reused tile's HR
// output came from LR pixels that may differ from the frame's by up to the threshold (noise,
// flicker, a slow change of light). The bicubic upscale of that difference is added to the
// packed output, so reused tiles follow such changes instead of holding them until they add
// up; recomputed pixels have no difference and get nothing.

use super::cache::TileCache;
use super::pixels::{self, ImageMut, PixelLayout};
use super::resample::{RowScratch, Upsampler};
use super::tiling::TileGrid;

/// The LR difference of one frame and what adds it to the packed output.
pub struct Correction {
    /// Padded LR size.
    pw: usize,
    ph: usize,
    scale: usize,
    /// Per tile column / row: the weight of each LR pixel in the merge (the HR merge weights
    /// averaged over the pixel's `scale` samples; they add up to 1 where tiles overlap).
    wx: Vec<Vec<f32>>,
    wy: Vec<Vec<f32>>,
    /// The frame minus the pixels each output came from (3 planes, 8-bit units), weighted as
    /// the tiles' outputs are merged.
    lr: Vec<f32>,
    /// `lr` upsampled along its rows, interleaved as the output's bytes are (`ph` rows of
    /// `pw·scale` pixels of `layout`; 0 for alpha and padding bytes).
    rows: Vec<f32>,
    layout: Option<PixelLayout>,
    up: Upsampler,
}

impl Correction {
    pub fn new(grid: &TileGrid) -> Correction {
        let s = grid.scale;
        let lr_weights = |w: &Vec<Vec<f32>>| -> Vec<Vec<f32>> {
            w.iter()
                .map(|hr| hr.chunks_exact(s).map(|c| c.iter().sum::<f32>() / s as f32).collect())
                .collect()
        };
        Correction {
            pw: grid.padded_width,
            ph: grid.padded_height,
            scale: s,
            wx: lr_weights(&grid.wx),
            wy: lr_weights(&grid.wy),
            lr: Vec::new(),
            rows: Vec::new(),
            layout: None,
            up: Upsampler::new(crate::onnx::Kernel::Bicubic, s),
        }
    }

    /// Takes the difference between each tile of `tiles` (NCHW items, this frame's) and the
    /// pixels its cached output came from (`cache`'s references), leaving out the tiles for
    /// which `whole_now` is true (recomputed whole this frame: their output is this frame's),
    /// and upsamples it along its rows for an output of `layout`. `units` converts model
    /// values to 8-bit units. Returns false when there is no difference anywhere (nothing to
    /// add).
    pub fn difference(
        &mut self,
        grid: &TileGrid,
        tiles: &[f32],
        cache: &TileCache,
        whole_now: impl Fn(usize) -> bool,
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
                    let w = wy * units;
                    for (((d, &n), &r), &wx) in dst
                        .iter_mut()
                        .zip(&now[a..a + t])
                        .zip(&then[a..a + t])
                        .zip(&self.wx[col])
                    {
                        *d += w * wx * (n - r);
                    }
                }
            }
        }
        if any {
            let (bpp, offs) = (layout.bytes_per_pixel(), layout.rgb_offsets());
            let ow = self.pw * self.scale;
            let row_len = ow * bpp;
            self.rows.clear();
            self.rows.resize(self.ph * row_len, 0.0);
            let mut scratch = RowScratch::default();
            for (y, dst) in self.rows.chunks_exact_mut(row_len).enumerate() {
                for (c, &o) in offs.iter().enumerate() {
                    let src = &self.lr[c * plane + y * self.pw..][..self.pw];
                    self.up.row_into(src, &mut scratch, &mut dst[o..], bpp);
                }
            }
            self.layout = Some(layout);
        }
        any
    }

    /// Writes `base` (the packed output without the correction, laid out as `out`; `None`:
    /// `out` itself) plus the upsampled difference into `out`, its rows cut into `bands`
    /// bands done in parallel.
    pub fn apply(&self, base: Option<&[u8]>, out: &mut ImageMut, bands: usize) {
        debug_assert_eq!(self.layout, Some(out.layout), "difference() was taken for this layout");
        let (stride, bpp) = (out.stride, out.layout.bytes_per_pixel());
        let row_len = self.pw * self.scale * bpp;
        pixels::in_bands(out, bands, |y0, img| {
            let n = img.width * bpp;
            for y in 0..img.height {
                let at = y * stride;
                let (rows, weights, taps) = self.up.column_taps(y0 + y, self.ph);
                let row = |j: usize| &self.rows[rows[j] * row_len..][..n];
                let dst = &mut img.data[at..at + n];
                if let Some(base) = base {
                    dst.copy_from_slice(&base[(y0 + y) * stride..][..n]);
                }
                if taps == 4 {
                    add_bicubic(
                        [row(0), row(1), row(2), row(3)],
                        [weights[0], weights[1], weights[2], weights[3]],
                        dst,
                    );
                } else {
                    // other kernels and scales
                    let rows: Vec<&[f32]> = (0..taps).map(row).collect();
                    for (x, d) in dst.iter_mut().enumerate() {
                        let a: f32 = rows.iter().zip(&weights).map(|(r, w)| w * r[x]).sum();
                        *d = pixels::to_u8(*d as f32 + a);
                    }
                }
            }
        });
    }
}

/// `dst` plus the four `rows` weighted by `w` (the usual vertical pass: bicubic, 4 rows), in
/// one pass; with AVX2 where the CPU has it (the same arithmetic, in wider registers).
fn add_bicubic(rows: [&[f32]; 4], w: [f32; 4], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { add_bicubic_avx2(rows, w, dst) };
    }
    add_bicubic_any(rows, w, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn add_bicubic_avx2(rows: [&[f32]; 4], w: [f32; 4], dst: &mut [u8]) {
    add_bicubic_any(rows, w, dst)
}

#[inline(always)]
fn add_bicubic_any([r0, r1, r2, r3]: [&[f32]; 4], [w0, w1, w2, w3]: [f32; 4], dst: &mut [u8]) {
    let n = dst.len();
    let (r0, r1, r2, r3) = (&r0[..n], &r1[..n], &r2[..n], &r3[..n]);
    for (x, d) in dst.iter_mut().enumerate() {
        let a = w0 * r0[x] + w1 * r1[x] + w2 * r2[x] + w3 * r3[x];
        *d = pixels::to_u8(*d as f32 + a);
    }
}

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
            assert!(c.difference(&grid, &tiles, &cache, whole_now, 1.0, layout));
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
        assert!(!c.difference(&grid, &same, &cache, |_| false, 1.0, PixelLayout::Rgb));
    }

    #[test]
    fn the_wide_paths_compute_what_the_plain_ones_do() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 8.0 - 4.0
        };
        let rows: Vec<Vec<f32>> = (0..4).map(|_| (0..1001).map(|_| next()).collect()).collect();
        let w = [-0.07, 0.53, 0.6, -0.06];
        let base: Vec<u8> = (0..1001).map(|i| (i * 37 % 256) as u8).collect();
        let (mut a, mut b) = (base.clone(), base);
        let r = [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]];
        add_bicubic(r, w, &mut a);
        add_bicubic_any(r, w, &mut b);
        assert_eq!(a, b);
        assert!(a.contains(&0) && a.contains(&255), "clamped at both ends");
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
