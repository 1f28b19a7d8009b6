// Separable ×scale upsampling of a planar f32 image on the CPU (half-pixel centres, clamped
// edges) with the same kernels as the known-answer ONNX branches: the `bicubic` mode, the
// alpha channel and the correction of reused tiles (correction.rs) use it.

use crate::onnx::Kernel;

/// Precomputed taps for one kernel and scale.
#[derive(Debug, Clone)]
pub struct Upsampler {
    scale: usize,
    radius: isize,
    /// taps[r] = weights of input samples i-R..=i+R for output phase r.
    taps: Vec<Vec<f32>>,
    scratch: Vec<f32>,
}

impl Upsampler {
    pub fn new(kernel: Kernel, scale: usize) -> Self {
        Upsampler {
            scale,
            radius: kernel.radius() as isize,
            taps: (0..scale)
                .map(|r| kernel.phase_taps(scale, r).into_iter().map(|w| w as f32).collect())
                .collect(),
            scratch: Vec::new(),
        }
    }

    /// Upsamples the `w`×`h` plane `src` into `dst` (`w*scale`×`h*scale`).
    pub fn upscale(&mut self, src: &[f32], w: usize, h: usize, dst: &mut [f32]) {
        let (ow, oh) = (w * self.scale, h * self.scale);
        assert!(src.len() >= w * h && dst.len() >= ow * oh);
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(ow * h, 0.0);
        self.rows(src, w, h, &mut scratch);
        for (y, out) in dst[..ow * oh].chunks_exact_mut(ow).enumerate() {
            self.column(&scratch, ow, h, y, out);
        }
        self.scratch = scratch;
    }

    /// [`Self::upscale`] with both passes shared out between `bands` threads of the process's
    /// pool (rayon's) by bands of rows: every sample is computed as there, so the result is the
    /// same. One band, on this thread, for outputs under ~0.1 megapixel.
    pub fn upscale_bands(&mut self, src: &[f32], w: usize, h: usize, dst: &mut [f32], bands: usize) {
        use rayon::prelude::*;
        let (ow, oh) = (w * self.scale, h * self.scale);
        if bands <= 1 || ow * oh < 100_000 {
            return self.upscale(src, w, h, dst);
        }
        assert!(src.len() >= w * h && dst.len() >= ow * oh);
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(ow * h, 0.0);
        let this = &*self;
        let per = h.div_ceil(bands);
        scratch[..ow * h]
            .par_chunks_mut(per * ow)
            .enumerate()
            .for_each(|(k, out)| {
                let (y0, n) = (k * per, out.len() / ow);
                this.rows(&src[y0 * w..(y0 + n) * w], w, n, out);
            });
        let per = oh.div_ceil(bands);
        dst[..ow * oh]
            .par_chunks_mut(per * ow)
            .enumerate()
            .for_each(|(k, out)| {
                for (j, row) in out.chunks_exact_mut(ow).enumerate() {
                    this.column(&scratch, ow, h, k * per + j, row);
                }
            });
        self.scratch = scratch;
    }

    /// The horizontal pass: each of the `h` rows of the `w`-wide plane `src` upsampled into
    /// `dst` (`h` rows of `w*scale`).
    fn rows(&self, src: &[f32], w: usize, h: usize, dst: &mut [f32]) {
        let (rad, s) = (self.radius as usize, self.scale);
        let ow = w * s;
        assert!(w > 0 && src.len() >= w * h && dst.len() >= ow * h);
        let (mut padded, mut phase) = (Vec::with_capacity(w + 2 * rad), vec![0f32; w]);
        for (row, out) in src.chunks_exact(w).zip(dst.chunks_exact_mut(ow)).take(h) {
            // the row with its edge samples repeated `rad` times on both sides (clamped
            // edges), so that each phase is a sum of shifted rows (a loop that vectorises)
            padded.clear();
            padded.extend(std::iter::repeat_n(row[0], rad));
            padded.extend_from_slice(row);
            padded.extend(std::iter::repeat_n(row[w - 1], rad));
            for (r, taps) in self.taps.iter().enumerate() {
                phase.fill(0.0);
                for (j, &t) in taps.iter().enumerate() {
                    add_scaled(&mut phase, t, &padded[j..j + w]);
                }
                // output sample i·s + r is phase r of input sample i
                for (d, &v) in out[r..].iter_mut().step_by(s).zip(&phase) {
                    *d = v;
                }
            }
        }
    }

    /// The taps of each output phase r (`scale` of them): the weights of input samples
    /// i − R..=i + R for output sample i·scale + r.
    pub fn phase_taps(&self) -> &[Vec<f32>] {
        &self.taps
    }

    /// The rows of the horizontal pass's output (of `h` rows) that make output row `y` in the
    /// vertical pass, and their weights: `n` of them, the rest unused.
    pub fn column_taps(&self, y: usize, h: usize) -> ([usize; 8], [f32; 8], usize) {
        let (i, r) = ((y / self.scale) as isize, y % self.scale);
        let (mut rows, mut weights, mut n) = ([0; 8], [0.0; 8], 0);
        for (j, &t) in self.taps[r].iter().enumerate() {
            if t != 0.0 && n < 8 {
                rows[n] = (i + j as isize - self.radius).clamp(0, h as isize - 1) as usize;
                weights[n] = t;
                n += 1;
            }
        }
        (rows, weights, n)
    }

    /// The vertical pass for one output row: row `y` (of `h*scale`) from `rows` (`h` rows of
    /// `ow`, the horizontal pass's output) into `out` (`ow` samples).
    fn column(&self, rows: &[f32], ow: usize, h: usize, y: usize, out: &mut [f32]) {
        let (at, weights, n) = self.column_taps(y, h);
        out.fill(0.0);
        for (&sy, &t) in at.iter().zip(&weights).take(n) {
            for (o, &v) in out.iter_mut().zip(&rows[sy * ow..(sy + 1) * ow]) {
                *o += t * v;
            }
        }
    }
}

/// `acc += t · src` (as long as `acc`), with AVX2 where the CPU has it (the same arithmetic,
/// in wider registers).
fn add_scaled(acc: &mut [f32], t: f32, src: &[f32]) {
    #[inline(always)]
    fn any(acc: &mut [f32], t: f32, src: &[f32]) {
        let src = &src[..acc.len()];
        for (a, &v) in acc.iter_mut().zip(src) {
            *a += t * v;
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn avx2(acc: &mut [f32], t: f32, src: &[f32]) {
        any(acc, t, src)
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { avx2(acc, t, src) };
    }
    any(acc, t, src)
}

/// MATLAB-style `imresize` with the bicubic kernel (a = -0.5): antialiased when shrinking (the
/// kernel is widened by 1/scale), symmetric (mirror) edges, separable. Resizes the `w`×`h`
/// plane `src` to `ow`×`oh`. Used to make LR images for training and evaluation.
pub fn imresize(src: &[f32], w: usize, h: usize, ow: usize, oh: usize) -> Vec<f32> {
    assert!(src.len() >= w * h && w > 0 && h > 0 && ow > 0 && oh > 0);
    let cols = contributions(w, ow);
    let rows = contributions(h, oh);
    let mut tmp = vec![0f32; ow * h];
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        for (x, (start, ws)) in cols.iter().enumerate() {
            tmp[y * ow + x] = ws.iter().enumerate().map(|(k, &c)| c * row[start[k]]).sum();
        }
    }
    let mut out = vec![0f32; ow * oh];
    for (y, (start, ws)) in rows.iter().enumerate() {
        let o = &mut out[y * ow..(y + 1) * ow];
        for (k, &c) in ws.iter().enumerate() {
            let r = &tmp[start[k] * ow..(start[k] + 1) * ow];
            for (a, &v) in o.iter_mut().zip(r) {
                *a += c * v;
            }
        }
    }
    out
}

/// [`imresize`] of interleaved 8-bit RGB (`w`×`h` → `ow`×`oh`), per channel, rounded to 8 bits.
pub fn imresize_rgb8(rgb: &[u8], w: usize, h: usize, ow: usize, oh: usize) -> Vec<u8> {
    let mut out = vec![0u8; ow * oh * 3];
    for c in 0..3 {
        let plane: Vec<f32> = rgb.iter().skip(c).step_by(3).map(|&v| v as f32 / 255.0).collect();
        for (i, v) in imresize(&plane, w, h, ow, oh).iter().enumerate() {
            out[i * 3 + c] = (v * 255.0 + 0.5).clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// For each output sample: the input indices and normalised weights that make it.
#[allow(clippy::type_complexity)]
fn contributions(n_in: usize, n_out: usize) -> Vec<(Vec<usize>, Vec<f32>)> {
    let scale = n_out as f64 / n_in as f64;
    let shrink = scale.min(1.0);
    let width = 4.0 / shrink;
    let mirror = |j: i64| -> usize {
        let n = n_in as i64;
        let mut j = j.rem_euclid(2 * n);
        if j >= n {
            j = 2 * n - 1 - j;
        }
        j as usize
    };
    (0..n_out)
        .map(|u| {
            let x = (u as f64 + 0.5) / scale - 0.5;
            let left = (x - width / 2.0).floor() as i64;
            let taps = width.ceil() as i64 + 2;
            let mut idx = Vec::with_capacity(taps as usize);
            let mut ws = Vec::with_capacity(taps as usize);
            for j in left..left + taps {
                let w = shrink * Kernel::Bicubic.eval(shrink * (x - j as f64));
                if w != 0.0 {
                    idx.push(mirror(j));
                    ws.push(w);
                }
            }
            let sum: f64 = ws.iter().sum();
            (idx, ws.into_iter().map(|w| (w / sum) as f32).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upscale_in_bands_gives_the_same_samples() {
        // 170x150 → 680x600 (over the size where the bands start), bands that do not divide
        // the rows, and a plane with structure in both directions
        let (w, h) = (170, 150);
        let src: Vec<f32> = (0..w * h).map(|i| ((i * 7919) % 1000) as f32 / 1000.0).collect();
        let mut one = Upsampler::new(Kernel::Bicubic, 4);
        let mut want = vec![0f32; 16 * w * h];
        one.upscale(&src, w, h, &mut want);
        for bands in [2, 3, 7] {
            let mut got = vec![1f32; 16 * w * h];
            Upsampler::new(Kernel::Bicubic, 4).upscale_bands(&src, w, h, &mut got, bands);
            assert!(got == want, "{bands} bands");
        }
    }

    #[test]
    fn imresize_keeps_constants_and_averages_when_shrinking() {
        let flat = vec![0.25f32; 40 * 30];
        let out = imresize(&flat, 40, 30, 10, 7);
        assert!(out.iter().all(|v| (v - 0.25).abs() < 1e-6));
        // A 1-pixel checkerboard shrinks ×1/4 to (nearly) its mean: the antialiasing works.
        let check: Vec<f32> = (0..64 * 64).map(|i| ((i % 64 + i / 64) % 2) as f32).collect();
        let out = imresize(&check, 64, 64, 16, 16);
        assert!(out.iter().all(|v| (v - 0.5).abs() < 0.02), "{:?}", &out[..4]);
    }

    #[test]
    fn imresize_upscale_matches_the_upsampler_inside() {
        let src: Vec<f32> = (0..12 * 9).map(|i| ((i * 37) % 17) as f32 / 17.0).collect();
        let a = imresize(&src, 12, 9, 48, 36);
        let mut b = vec![0f32; 48 * 36];
        Upsampler::new(Kernel::Bicubic, 4).upscale(&src, 12, 9, &mut b);
        // Edges differ (mirror vs clamp); away from them both are plain bicubic.
        for y in 8..28 {
            for x in 8..40 {
                assert!((a[y * 48 + x] - b[y * 48 + x]).abs() < 1e-5);
            }
        }
    }
}
