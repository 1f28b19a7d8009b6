// Separable ×scale upsampling of a planar f32 image on the CPU (half-pixel centres, clamped
// edges) with the same kernels as the known-answer ONNX branches: the `bicubic` mode and the
// alpha channel use it.

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
        let s = self.scale;
        let (ow, oh) = (w * s, h * s);
        assert!(src.len() >= w * h && dst.len() >= ow * oh);
        self.scratch.resize(ow * h, 0.0);
        let rad = self.radius;
        let clamp = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
        // Horizontal pass: h rows of ow.
        for y in 0..h {
            let row = &src[y * w..y * w + w];
            let out = &mut self.scratch[y * ow..y * ow + ow];
            for i in 0..w {
                for (r, taps) in self.taps.iter().enumerate() {
                    let mut acc = 0.0;
                    for (j, &t) in taps.iter().enumerate() {
                        acc += t * row[clamp(i as isize + j as isize - rad, w)];
                    }
                    out[i * s + r] = acc;
                }
            }
        }
        // Vertical pass: combine whole rows.
        for i in 0..h {
            for (r, taps) in self.taps.iter().enumerate() {
                let out = &mut dst[(i * s + r) * ow..(i * s + r + 1) * ow];
                out.fill(0.0);
                for (j, &t) in taps.iter().enumerate() {
                    if t == 0.0 {
                        continue;
                    }
                    let sy = clamp(i as isize + j as isize - rad, h);
                    let src_row = &self.scratch[sy * ow..sy * ow + ow];
                    for (o, v) in out.iter_mut().zip(src_row) {
                        *o += t * v;
                    }
                }
            }
        }
    }
}
