// The trainable networks in burn: one generic net per architecture holding its parameters as
// flat tensors in the exact layout of the ONNX writer (so export is a copy), with forward
// passes for FSRCNN, MSRResNet and the ClassSR classifier.

use std::collections::HashMap;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Int, Tensor, TensorData};

use super::rng::Rng;
use crate::onnx::{resampler_weight, Arch, Kernel, Tensor as OnnxTensor, Weights};

/// One network: its architecture and parameters (flattened; shapes from `Arch::params`).
#[derive(Clone, Debug)]
pub struct Net<B: Backend> {
    pub arch: Arch,
    pub params: Vec<Tensor<B, 1>>,
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    index: HashMap<String, usize>,
    /// The fixed global skip (MSRResNet: bilinear ×s; FSRCNN with skip: bicubic ×s) as a dense
    /// sub-pixel conv weight [3·s², 3, k, k] for the input edge-padded by k/2.
    skip: Option<Tensor<B, 4>>,
    /// FSRCNN: where each sub-pixel conv weight comes from in the flat ConvTranspose weight
    /// (the last index points at an appended zero).
    tail_index: Option<Tensor<B, 1, Int>>,
}

/// Sub-pixel form of FSRCNN's ConvTranspose (k9, stride s, pad 3, output_padding 1): output
/// phase (ry, rx) at LR position q is a 3×3 convolution (pad 1) of the input, with tap
/// W[ci, co, s·(1-ky) + ry + 3, s·(1-kx) + rx + 3] (zero outside the 9×9 kernel). Returns, for
/// the conv weight [3·s², d, 3, 3], the index of each entry in the flat ConvTranspose weight
/// [d, 3, 9, 9] (or d·3·81 for zero). Exact, and conv2d trains much faster than ConvTranspose
/// on the CPU backends.
fn tail_index(d: usize, s: usize) -> Vec<i64> {
    let zero = (d * 3 * 81) as i64;
    let mut idx = Vec::with_capacity(3 * s * s * d * 9);
    for co in 0..3 {
        for ry in 0..s {
            for rx in 0..s {
                for ci in 0..d {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let wy = (s * (2 - ky) + ry + 3) as i64 - s as i64;
                            let wx = (s * (2 - kx) + rx + 3) as i64 - s as i64;
                            idx.push(if (0..9).contains(&wy) && (0..9).contains(&wx) {
                                (((ci * 3 + co) * 9) as i64 + wy) * 9 + wx
                            } else {
                                zero
                            });
                        }
                    }
                }
            }
        }
    }
    idx
}

/// The exact ×s resampler (edge-clamped) as a dense sub-pixel conv weight [3·s², 3, k, k] for
/// the input padded by k/2: the ONNX writer's grouped weight, spread over all input channels
/// with zeros (Candle's conv has no groups).
fn dense_subpixel(kernel: Kernel, s: usize) -> (usize, Vec<f32>) {
    let (k, grouped) = resampler_weight(kernel, s);
    let per = k * k;
    let mut w = vec![0f32; 3 * s * s * 3 * per];
    for co in 0..3 * s * s {
        let ci = co / (s * s);
        w[(co * 3 + ci) * per..(co * 3 + ci + 1) * per].copy_from_slice(&grouped[co * per..(co + 1) * per]);
    }
    (k, w)
}

/// The fixed weight of [`dense_subpixel`] as a tensor on `device`.
fn subpixel_weight<B: Backend>(kernel: Kernel, s: usize, device: &B::Device) -> Tensor<B, 4> {
    let (k, w) = dense_subpixel(kernel, s);
    Tensor::from_data(TensorData::new(w, [3 * s * s, 3, k, k]), device)
}

/// Applies a fixed sub-pixel resampling `weight` [3·s², 3, k, k] to NCHW `x`: edge-pad by k/2,
/// then convolve. The result is in space-to-depth layout.
fn subpixel_resample<B: Backend>(x: Tensor<B, 4>, weight: Tensor<B, 4>) -> Tensor<B, 4> {
    let r = weight.dims()[2] / 2;
    conv2d(
        edge_pad(x, r),
        weight,
        None,
        ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
    )
}

/// Exact ×s resampling of NCHW `x` with a fixed kernel, in space-to-depth layout (e.g. the
/// bicubic baseline of the validation crops).
pub fn resample_packed<B: Backend>(x: Tensor<B, 4>, kernel: Kernel, s: usize) -> Tensor<B, 4> {
    let weight = subpixel_weight(kernel, s, &x.device());
    subpixel_resample(x, weight)
}

/// Replicates the border of NCHW `x` by `r` pixels on every side.
fn edge_pad<B: Backend>(x: Tensor<B, 4>, r: usize) -> Tensor<B, 4> {
    let [_, _, h, w] = x.dims();
    let mut rows = vec![x.clone().narrow(2, 0, 1); r];
    rows.push(x.clone());
    rows.extend(vec![x.narrow(2, h - 1, 1); r]);
    let rows = Tensor::cat(rows, 2);
    let mut cols = vec![rows.clone().narrow(3, 0, 1); r];
    cols.push(rows.clone());
    cols.extend(vec![rows.narrow(3, w - 1, 1); r]);
    Tensor::cat(cols, 3)
}

fn leaky<B: Backend, const D: usize>(x: Tensor<B, D>, slope: f64) -> Tensor<B, D> {
    x.clone().clamp_min(0.0) + x.clamp_max(0.0).mul_scalar(slope)
}

impl<B: Backend> Net<B> {
    fn assemble(arch: Arch, params: Vec<Tensor<B, 1>>, device: &B::Device) -> Self {
        let spec = arch.params();
        let names: Vec<String> = spec.iter().map(|(n, _)| n.clone()).collect();
        let shapes = spec.into_iter().map(|(_, s)| s).collect();
        let index = names.iter().enumerate().map(|(i, n)| (n.clone(), i)).collect();
        let s = arch.scale();
        let kernel = match arch {
            Arch::SrResNet { .. } => Some(Kernel::Bilinear),
            Arch::Fsrcnn { skip: true, .. } => Some(Kernel::Bicubic),
            _ => None,
        };
        let skip = kernel.map(|kernel| subpixel_weight(kernel, s, device));
        let tail_index = match arch {
            Arch::Fsrcnn { d, .. } => {
                let idx = tail_index(d, s);
                let n = idx.len();
                Some(Tensor::from_data(TensorData::new(idx, [n]), device))
            }
            _ => None,
        };
        Net {
            arch,
            params,
            names,
            shapes,
            index,
            skip,
            tail_index,
        }
    }

    /// Random initialisation, deterministic for a seed: convolutions N(0, sqrt(2/(cout·k·k))),
    /// FSRCNN's ConvTranspose N(0, 0.001), biases 0, PReLU slopes 0.25, the classifier's Linear
    /// U(±1/sqrt(32)).
    pub fn init(arch: Arch, device: &B::Device, rng: &mut Rng) -> Self {
        let params = arch
            .params()
            .iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let data: Vec<f32> = if name.ends_with(".bias") {
                    vec![0.0; n]
                } else if name.ends_with(".alpha") {
                    vec![0.25; n]
                } else if name == "tail.weight" {
                    (0..n).map(|_| rng.normal() * 0.001).collect()
                } else if name == "fc.weight" {
                    let b = 1.0 / (shape[1] as f32).sqrt();
                    (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) * b).collect()
                } else {
                    let fan = (shape[0] * shape[2] * shape[3]) as f32;
                    let mut scale = (2.0 / fan).sqrt();
                    if matches!(arch, Arch::SrResNet { .. }) && name.starts_with("body") {
                        scale *= 0.1; // residual blocks start close to identity
                    }
                    (0..n).map(|_| rng.normal() * scale).collect()
                };
                Tensor::from_data(TensorData::new(data, [n]), device)
            })
            .collect();
        Self::assemble(arch, params, device)
    }

    /// Builds the net from named weights (as exported or checkpointed).
    pub fn from_weights(arch: Arch, weights: &Weights, device: &B::Device) -> Result<Self, String> {
        let params = arch
            .params()
            .iter()
            .map(|(name, shape)| {
                let t = weights.get(name).ok_or_else(|| format!("missing weight '{name}'"))?;
                if &t.shape != shape {
                    return Err(format!("weight '{name}' has shape {:?}, expected {shape:?}", t.shape));
                }
                Ok(Tensor::from_data(
                    TensorData::new(t.data.clone(), [t.data.len()]),
                    device,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self::assemble(arch, params, device))
    }

    /// The parameters as named weights in ONNX layout.
    pub fn to_weights(&self) -> Weights {
        self.names
            .iter()
            .zip(&self.shapes)
            .zip(&self.params)
            .map(|((name, shape), p)| {
                let data = p.to_data().convert::<f32>().to_vec::<f32>().expect("f32 parameters");
                (
                    name.clone(),
                    OnnxTensor {
                        shape: shape.clone(),
                        data,
                    },
                )
            })
            .collect()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Maps every parameter (e.g. to mark it trainable or move it between backends).
    pub fn map_params(mut self, f: impl Fn(Tensor<B, 1>) -> Tensor<B, 1>) -> Self {
        self.params = self.params.into_iter().map(f).collect();
        self
    }

    fn p<const D: usize>(&self, name: &str) -> Tensor<B, D> {
        let i = self.index[name];
        let shape: [usize; D] = self.shapes[i].clone().try_into().expect("parameter rank");
        self.params[i].clone().reshape(shape)
    }

    fn conv(&self, x: Tensor<B, 4>, name: &str, stride: usize, pad: usize) -> Tensor<B, 4> {
        conv2d(
            x,
            self.p::<4>(&format!("{name}.weight")),
            Some(self.p::<1>(&format!("{name}.bias"))),
            ConvOptions::new([stride, stride], [pad, pad], [1, 1], 1),
        )
    }

    fn prelu(&self, x: Tensor<B, 4>, name: &str) -> Tensor<B, 4> {
        let a = self.p::<1>(&format!("{name}.alpha"));
        let c = a.dims()[0];
        x.clone().clamp_min(0.0) + x.clamp_max(0.0) * a.reshape([1, c, 1, 1])
    }

    /// Super-resolves NCHW `x` (a branch network): [N, 3, H·s, W·s].
    pub fn forward_sr(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self.arch {
            Arch::Fsrcnn { scale, .. } => pixel_shuffle(self.forward_packed(x), scale),
            _ => self.forward_full(x),
        }
    }

    /// The SR output in space-to-depth layout [N, 3·s², H, W] (channel c·s² + ry·s + rx holds
    /// HR pixel (y·s + ry, x·s + rx)): what training compares with targets packed the same way,
    /// which spares FSRCNN the strided PixelShuffle.
    pub fn forward_packed(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self.arch {
            Arch::Fsrcnn { m, scale, skip, .. } => {
                let base = skip.then(|| self.skip_packed(x.clone()));
                let (_, h) = self.fsrcnn_features(x, m);
                // ConvTranspose as a sub-pixel convolution + PixelShuffle (exactly equal)
                let d = h.dims()[1];
                let w = self.params[self.index["tail.weight"]].clone();
                let flat = Tensor::cat(vec![w.clone(), w.zeros_like().narrow(0, 0, 1)], 0);
                let s2 = scale * scale;
                let wc = flat
                    .select(0, self.tail_index.clone().expect("FSRCNN index"))
                    .reshape([3 * s2, d, 3, 3]);
                let b = self
                    .p::<1>("tail.bias")
                    .reshape([3, 1])
                    .repeat_dim(1, s2)
                    .reshape([3 * s2]);
                let out = conv2d(h, wc, Some(b), ConvOptions::new([1, 1], [1, 1], [1, 1], 1));
                match base {
                    Some(base) => out + base,
                    None => out,
                }
            }
            Arch::SrResNet { scale, .. } => space_to_depth(self.forward_full(x), scale),
            arch => panic!("{} is not a super-resolution network", arch.describe()),
        }
    }

    /// FSRCNN's activations after the head (feature extraction) and after the expanding layer:
    /// the two d-channel layers whose channels [`prune_fsrcnn`] selects.
    fn fsrcnn_features(&self, x: Tensor<B, 4>, m: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let head = self.prelu(self.conv(x, "head", 1, 2), "head");
        let mut h = self.prelu(self.conv(head.clone(), "shrink", 1, 0), "shrink");
        for i in 0..m {
            let name = format!("map{i}");
            h = self.prelu(self.conv(h, &name, 1, 1), &name);
        }
        (head, self.prelu(self.conv(h, "expand", 1, 0), "expand"))
    }

    /// Per-channel mean and standard deviation of FSRCNN's head and expand activations on `x`:
    /// ([head mean, head std], [expand mean, expand std]).
    pub fn fsrcnn_channel_stats(&self, x: Tensor<B, 4>) -> [[Vec<f32>; 2]; 2] {
        let Arch::Fsrcnn { m, .. } = self.arch else {
            panic!("{} is not FSRCNN", self.arch.describe())
        };
        let (head, expand) = self.fsrcnn_features(x, m);
        let stats = |a: Tensor<B, 4>| {
            let c = a.dims()[1];
            let a = a.swap_dims(0, 1).reshape([c as i32, -1]);
            let mean = a.clone().mean_dim(1);
            let sq = a.powi_scalar(2).mean_dim(1);
            let var = (sq - mean.clone().powi_scalar(2)).clamp_min(0.0);
            let v = |t: Tensor<B, 2>| t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
            [v(mean), v(var.sqrt())]
        };
        [stats(head), stats(expand)]
    }

    fn forward_full(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self.arch {
            Arch::SrResNet { nb, scale, .. } => {
                let mut h = leaky(self.conv(x.clone(), "conv_first", 1, 1), 0.1);
                for i in 0..nb {
                    let a = self.conv(h.clone(), &format!("body{i}.conv1"), 1, 1).clamp_min(0.0);
                    h = h + self.conv(a, &format!("body{i}.conv2"), 1, 1);
                }
                for up in ["upconv1", "upconv2"] {
                    h = leaky(pixel_shuffle(self.conv(h, up, 1, 1), 2), 0.1);
                }
                let out = self.conv(leaky(self.conv(h, "hrconv", 1, 1), 0.1), "conv_last", 1, 1);
                out + pixel_shuffle(self.skip_packed(x), scale)
            }
            arch => panic!("{} is not a super-resolution network", arch.describe()),
        }
    }

    /// The fixed skip upscale (exact, edge-clamped, equal to the ONNX graph's) in
    /// space-to-depth layout: edge-pad by k/2, then the fixed sub-pixel convolution.
    fn skip_packed(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        subpixel_resample(x, self.skip.clone().expect("skip weight"))
    }

    /// Class logits [N, 3] of NCHW tiles (the classifier).
    pub fn forward_logits(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        assert!(matches!(self.arch, Arch::Classifier { .. }), "not a classifier");
        let mut h = self.conv(x, "conv0", 4, 0);
        for i in 1..5 {
            h = self.conv(leaky(h, 0.1), &format!("conv{i}"), 1, 0);
        }
        let [n, c, _, _] = h.dims();
        let pooled: Tensor<B, 2> = h.mean_dim(3).mean_dim(2).reshape([n, c]);
        let w = self.p::<2>("fc.weight"); // [3, 32]
        pooled.matmul(w.transpose()) + self.p::<1>("fc.bias").reshape([1, 3])
    }
}

impl<B: AutodiffBackend> Net<B> {
    /// The same net on the inner backend: inference without autodiff bookkeeping.
    pub fn inner(&self) -> Net<B::InnerBackend> {
        Net {
            arch: self.arch,
            params: self.params.iter().map(|p| p.clone().inner()).collect(),
            names: self.names.clone(),
            shapes: self.shapes.clone(),
            index: self.index.clone(),
            skip: self.skip.clone().map(|s| s.inner()),
            tail_index: self.tail_index.clone().map(|t| t.inner()),
        }
    }
}

/// PixelShuffle(r) in the "CRD" order of ONNX DepthToSpace: [N, C·r², H, W] → [N, C, H·r, W·r].
pub fn pixel_shuffle<B: Backend>(x: Tensor<B, 4>, r: usize) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let oc = c / (r * r);
    x.reshape([n, oc, r, r, h, w])
        .permute([0, 1, 4, 2, 5, 3])
        .reshape([n, oc, h * r, w * r])
}

/// The inverse of [`pixel_shuffle`]: [N, C, H·r, W·r] → [N, C·r², H, W].
pub fn space_to_depth<B: Backend>(x: Tensor<B, 4>, r: usize) -> Tensor<B, 4> {
    let [n, c, hr, wr] = x.dims();
    let (h, w) = (hr / r, wr / r);
    x.reshape([n, c, h, r, w, r])
        .permute([0, 1, 3, 5, 2, 4])
        .reshape([n, c * r * r, h, w])
}

/// Initialises a narrower FSRCNN (d channels) from a trained wider one (`o`, same s, m and
/// scale): structured pruning. In each of the two d-channel layers (head and expand) it keeps
/// the channels that pass the most signal to the next layer (activation std on the branch's
/// own data × the norm of the next layer's weights for that channel) and folds the mean
/// output of the dropped channels into the next layer's bias. The mapping layers are shared
/// whole. The result starts close to `o` on that data instead of from noise, which is what
/// lets the cheap branches learn their class in a short schedule.
pub fn prune_fsrcnn(o: &Weights, o_d: usize, d: usize, stats: &[[Vec<f32>; 2]; 2], scale: usize) -> Weights {
    assert!(d <= o_d, "pruning {o_d} channels to {d}");
    let w = |name: &str| &o[name];
    let shrink_w = w("shrink.weight"); // [s, o_d, 1, 1]
    let s = shrink_w.shape[0];
    let tail_w = w("tail.weight"); // [o_d, 3, 9, 9]
                                   // importance of head channel k: std × ‖shrink.weight[:, k]‖; of expand channel k:
                                   // std × ‖tail.weight[k]‖
    let head_imp: Vec<f32> = (0..o_d)
        .map(|k| stats[0][1][k] * (0..s).map(|o| shrink_w.data[o * o_d + k].powi(2)).sum::<f32>().sqrt())
        .collect();
    let per = 3 * 81;
    let tail_imp: Vec<f32> = (0..o_d)
        .map(|k| {
            stats[1][1][k]
                * tail_w.data[k * per..(k + 1) * per]
                    .iter()
                    .map(|v| v * v)
                    .sum::<f32>()
                    .sqrt()
        })
        .collect();
    let keep = |imp: &[f32]| {
        let mut k = super::descending_order(imp)[..d].to_vec();
        k.sort_unstable();
        k
    };
    let (hk, ek) = (keep(&head_imp), keep(&tail_imp));
    let rows = |t: &OnnxTensor, keep: &[usize]| {
        let per: usize = t.shape[1..].iter().product();
        let mut shape = t.shape.clone();
        shape[0] = keep.len();
        let data = keep
            .iter()
            .flat_map(|&k| t.data[k * per..(k + 1) * per].iter().copied())
            .collect();
        OnnxTensor { shape, data }
    };
    let mut out = Weights::new();
    for (name, t) in o {
        let t = match name.as_str() {
            "head.weight" | "head.bias" | "head.alpha" => rows(t, &hk),
            "expand.weight" | "expand.bias" | "expand.alpha" => rows(t, &ek),
            "tail.weight" => rows(t, &ek),
            "shrink.weight" => {
                let data = (0..s)
                    .flat_map(|o| hk.iter().map(move |&k| (o, k)))
                    .map(|(o, k)| t.data[o * o_d + k])
                    .collect();
                OnnxTensor {
                    shape: vec![s, d, 1, 1],
                    data,
                }
            }
            "shrink.bias" => {
                // the dropped head channels' mean contribution
                let mut b = t.data.clone();
                for k in (0..o_d).filter(|k| !hk.contains(k)) {
                    for (o, bo) in b.iter_mut().enumerate() {
                        *bo += shrink_w.data[o * o_d + k] * stats[0][0][k];
                    }
                }
                OnnxTensor {
                    shape: t.shape.clone(),
                    data: b,
                }
            }
            "tail.bias" => {
                // a constant input c on channel k adds c·Σ taps / s² to each HR pixel on average
                let mut b = t.data.clone();
                for k in (0..o_d).filter(|k| !ek.contains(k)) {
                    for (c, bc) in b.iter_mut().enumerate() {
                        let taps: f32 = tail_w.data[k * per + c * 81..k * per + (c + 1) * 81].iter().sum();
                        *bc += stats[1][0][k] * taps / (scale * scale) as f32;
                    }
                }
                OnnxTensor {
                    shape: t.shape.clone(),
                    data: b,
                }
            }
            _ => t.clone(),
        };
        out.insert(name.clone(), t);
    }
    out
}
