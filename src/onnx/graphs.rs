// Architecture descriptions and their ONNX graphs: the trainable families (FSRCNN branch,
// ClassSR classifier) written from named weights, and the known-answer models used as the
// test fixtures (fixed-kernel resamplers and a variance classifier).

use std::collections::BTreeMap;

use super::builder::{to_bytes, Attr, Dim, GraphBuilder};
use super::proto::ModelProto;

/// Name of the LR input of every graph.
pub const INPUT: &str = "lr";
/// Name of the HR output of a branch graph.
pub const BRANCH_OUTPUT: &str = "sr";
/// Name of the logits output of a classifier graph.
pub const CLASSIFIER_OUTPUT: &str = "logits";

/// A named f32 tensor (row-major, PyTorch/ONNX layout).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Weights by parameter name.
pub type Weights = BTreeMap<String, Tensor>;

/// One network of the project.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arch {
    /// FSRCNN(d, s, m) with PReLU and a ×scale ConvTranspose (k9, p3, output_padding 1: exactly
    /// ×4 for scale 4, as in the official code). With `skip`, a fixed bicubic ×scale upscale of
    /// the input is added to the output (global residual learning: the net only learns the
    /// detail bicubic misses, which trains many times faster).
    Fsrcnn {
        d: usize,
        s: usize,
        m: usize,
        scale: usize,
        skip: bool,
    },
    /// MSRResNet: conv 3→nf, `nb` residual blocks (conv-ReLU-conv), 2× [conv nf→4nf,
    /// PixelShuffle(2), LeakyReLU(0.1)], conv-LReLU-conv to 3 channels, plus a bilinear ×4 skip.
    SrResNet { nf: usize, nb: usize, scale: usize },
    /// The ClassSR classifier: Conv 3→nf k4 s4, 3× Conv1×1 nf→nf, Conv1×1 nf→32, GAP, Linear
    /// 32→3, LeakyReLU(0.1) between the convolutions. The official code has nf = 128 (3.8 M
    /// MACs per 32×32 tile, 15 % of FSRCNN-56); nf = 32 costs 0.36 M.
    Classifier { nf: usize },
    /// Known-answer branch: exact ×scale resampling with a fixed separable kernel.
    Resampler { kernel: Kernel, scale: usize },
    /// Known-answer classifier: routes by the standard deviation of the tile (per channel, RMS over channels) (thresholds t1 < t2,
    /// in the graph's value range): std < t1 → class 1, t1 ≤ std < t2 → class 2, else class 3.
    VarianceClassifier { t1: f32, t2: f32 },
}

/// The 1-D kernels of the known-answer resamplers (half-pixel centres, edges clamped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Nearest,
    Bilinear,
    /// Keys cubic convolution with a = -0.5.
    Bicubic,
}

impl Kernel {
    /// Taps each side of the centre sample.
    pub fn radius(self) -> usize {
        match self {
            Kernel::Nearest => 0,
            Kernel::Bilinear => 1,
            Kernel::Bicubic => 2,
        }
    }

    /// Kernel value at distance `t` (in input samples).
    pub fn eval(self, t: f64) -> f64 {
        let t = t.abs();
        match self {
            Kernel::Nearest => {
                if t < 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Kernel::Bilinear => (1.0 - t).max(0.0),
            Kernel::Bicubic => {
                let a = -0.5;
                if t <= 1.0 {
                    (a + 2.0) * t * t * t - (a + 3.0) * t * t + 1.0
                } else if t < 2.0 {
                    a * t * t * t - 5.0 * a * t * t + 8.0 * a * t - 4.0 * a
                } else {
                    0.0
                }
            }
        }
    }

    /// Weights of input samples i-R..=i+R for output phase `r` of `scale` (output 4i+r for ×4).
    pub fn phase_taps(self, scale: usize, r: usize) -> Vec<f64> {
        let rad = self.radius() as i64;
        let offset = (r as f64 + 0.5) / scale as f64 - 0.5;
        (-rad..=rad).map(|d| self.eval(offset - d as f64)).collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Nearest => "nearest",
            Kernel::Bilinear => "bilinear",
            Kernel::Bicubic => "bicubic",
        }
    }
}

impl Arch {
    /// Parameter names and shapes, in a fixed order (empty for the known-answer models).
    pub fn params(&self) -> Vec<(String, Vec<usize>)> {
        let mut p = Vec::new();
        let mut conv = |name: &str, cout: usize, cin: usize, k: usize, prelu: bool| {
            p.push((format!("{name}.weight"), vec![cout, cin, k, k]));
            p.push((format!("{name}.bias"), vec![cout]));
            if prelu {
                p.push((format!("{name}.alpha"), vec![cout]));
            }
        };
        match *self {
            Arch::Fsrcnn { d, s, m, .. } => {
                conv("head", d, 3, 5, true);
                conv("shrink", s, d, 1, true);
                for i in 0..m {
                    conv(&format!("map{i}"), s, s, 3, true);
                }
                conv("expand", d, s, 1, true);
                p.push(("tail.weight".into(), vec![d, 3, 9, 9]));
                p.push(("tail.bias".into(), vec![3]));
            }
            Arch::SrResNet { nf, nb, .. } => {
                conv("conv_first", nf, 3, 3, false);
                for i in 0..nb {
                    conv(&format!("body{i}.conv1"), nf, nf, 3, false);
                    conv(&format!("body{i}.conv2"), nf, nf, 3, false);
                }
                conv("upconv1", 4 * nf, nf, 3, false);
                conv("upconv2", 4 * nf, nf, 3, false);
                conv("hrconv", nf, nf, 3, false);
                conv("conv_last", 3, nf, 3, false);
            }
            Arch::Classifier { nf } => {
                conv("conv0", nf, 3, 4, false);
                for i in 1..4 {
                    conv(&format!("conv{i}"), nf, nf, 1, false);
                }
                conv("conv4", 32, nf, 1, false);
                p.push(("fc.weight".into(), vec![3, 32]));
                p.push(("fc.bias".into(), vec![3]));
            }
            Arch::Resampler { .. } | Arch::VarianceClassifier { .. } => {}
        }
        p
    }

    /// Multiply-adds to process one `tile`×`tile` LR tile: (true MACs, the paper's FLOPs).
    /// The paper counts FLOPs as 2×MACs and charges FSRCNN's ConvTranspose at HR size.
    pub fn cost_per_tile(&self, tile: usize) -> (u64, u64) {
        let px = (tile * tile) as u64;
        match *self {
            Arch::Fsrcnn { d, s, m, scale, skip } => {
                let (d, s, m) = (d as u64, s as u64, m as u64);
                let body = px * (25 * 3 * d + d * s + m * 9 * s * s + s * d);
                let tail_lr = px * d * 3 * 81;
                let tail_hr = px * (scale * scale) as u64 * d * 3 * 81;
                let skip = if skip {
                    Arch::Resampler {
                        kernel: Kernel::Bicubic,
                        scale,
                    }
                    .cost_per_tile(tile)
                    .0
                } else {
                    0
                };
                (body + tail_lr + skip, 2 * (body + tail_hr + skip))
            }
            Arch::SrResNet { nf, nb, .. } => {
                let (nf, nb) = (nf as u64, nb as u64);
                let lr = px * (27 * nf + nb * 2 * 9 * nf * nf + 9 * nf * 4 * nf);
                let x2 = 4 * px * 9 * nf * 4 * nf;
                let x4 = 16 * px * (9 * nf * nf + 9 * nf * 3);
                let skip = 16 * px * 3 * 4;
                let macs = lr + x2 + x4 + skip;
                (macs, 2 * macs)
            }
            Arch::Classifier { nf } => {
                let (pos, nf) = (px / 16, nf as u64);
                let macs = pos * 3 * nf * 16 + 3 * pos * nf * nf + pos * nf * 32 + 32 * 3;
                (macs, 2 * macs)
            }
            Arch::Resampler { kernel, scale } => {
                // grouped sub-pixel conv: s² phases per colour, (2R+1)² taps each
                let k = (2 * kernel.radius() + 1) as u64;
                let macs = px * 3 * (scale * scale) as u64 * k * k;
                (macs, 2 * macs)
            }
            Arch::VarianceClassifier { .. } => {
                let macs = px * 3 * 3;
                (macs, 2 * macs)
            }
        }
    }

    /// Upscaling factor of a branch (1 for classifiers).
    pub fn scale(&self) -> usize {
        match *self {
            Arch::Fsrcnn { scale, .. } | Arch::SrResNet { scale, .. } | Arch::Resampler { scale, .. } => scale,
            _ => 1,
        }
    }

    pub fn is_classifier(&self) -> bool {
        matches!(self, Arch::Classifier { .. } | Arch::VarianceClassifier { .. })
    }

    pub fn describe(&self) -> String {
        match *self {
            Arch::Fsrcnn { d, s, m, scale, skip } => format!(
                "FSRCNN(d={d}, s={s}, m={m}) x{scale}{}",
                if skip { " + bicubic skip" } else { "" }
            ),
            Arch::SrResNet { nf, nb, scale } => format!("MSRResNet(nf={nf}, nb={nb}) x{scale}"),
            Arch::Classifier { nf: 128 } => "ClassSR classifier".to_string(),
            Arch::Classifier { nf } => format!("ClassSR classifier (width {nf})"),
            Arch::Resampler { kernel, scale } => {
                format!(
                    "known-answer: exact {} x{scale} (fixed sub-pixel convolution weights)",
                    kernel.name()
                )
            }
            Arch::VarianceClassifier { t1, t2 } => {
                format!("known-answer: routes by tile standard deviation (t1={t1}, t2={t2})")
            }
        }
    }
}

fn lr_dims() -> [Dim<'static>; 4] {
    [
        Dim::Symbolic("batch"),
        Dim::Fixed(3),
        Dim::Symbolic("height"),
        Dim::Symbolic("width"),
    ]
}

fn hr_dims() -> [Dim<'static>; 4] {
    [
        Dim::Symbolic("batch"),
        Dim::Fixed(3),
        Dim::Symbolic("out_height"),
        Dim::Symbolic("out_width"),
    ]
}

/// The grouped sub-pixel convolution weight [3·s², 1, 2R+1, 2R+1] of an exact ×s resampler:
/// output channel c·s² + ry·s + rx holds phase (ry, rx) of colour c, i.e.
/// out[s·i + r] = Σ_d in[i + d] · k(offset_r − d), |d| ≤ R, on the input edge-padded by R.
pub fn resampler_weight(kernel: Kernel, scale: usize) -> (usize, Vec<f32>) {
    let taps: Vec<Vec<f64>> = (0..scale).map(|r| kernel.phase_taps(scale, r)).collect();
    let k = 2 * kernel.radius() + 1;
    let mut w = Vec::with_capacity(3 * scale * scale * k * k);
    for _ in 0..3 {
        for ry in 0..scale {
            for rx in 0..scale {
                for ky in 0..k {
                    for kx in 0..k {
                        w.push((taps[ry][ky] * taps[rx][kx]) as f32);
                    }
                }
            }
        }
    }
    (k, w)
}

/// Exact resampling as Pad(edge, R) → grouped Conv (3 groups of s² phases) → DepthToSpace(s, CRD):
/// exactly s times the input, and far faster in ONNX Runtime than a grouped ConvTranspose.
fn resample(g: &mut GraphBuilder, x: &str, kernel: Kernel, scale: usize, name: &str) -> String {
    let rad = kernel.radius();
    let (k, w) = resampler_weight(kernel, scale);
    let w = g.weight(&format!("{name}.weight"), &[3 * scale * scale, 1, k, k], &w);
    let padded = if rad > 0 {
        let r = rad as i64;
        let pads = g.int64s(&format!("{name}.pads"), &[0, 0, r, r, 0, 0, r, r]);
        g.op("Pad", &[x, &pads], &[("mode", Attr::Str("edge"))])
    } else {
        x.to_string()
    };
    let k = k as i64;
    let phases = g.op(
        "Conv",
        &[&padded, &w],
        &[("kernel_shape", Attr::Ints(&[k, k])), ("group", Attr::Int(3))],
    );
    g.op(
        "DepthToSpace",
        &[&phases],
        &[("blocksize", Attr::Int(scale as i64)), ("mode", Attr::Str("CRD"))],
    )
}

fn get<'w>(w: &'w Weights, name: &str, shape: &[usize]) -> Result<&'w Tensor, String> {
    let t = w.get(name).ok_or_else(|| format!("missing weight '{name}'"))?;
    if t.shape != shape {
        return Err(format!("weight '{name}' has shape {:?}, expected {shape:?}", t.shape));
    }
    if t.data.len() != shape.iter().product::<usize>() {
        return Err(format!(
            "weight '{name}' has {} values for shape {shape:?}",
            t.data.len()
        ));
    }
    Ok(t)
}

/// Writes the ONNX graph of `arch` with `weights` (ignored by the known-answer models).
pub fn build(arch: &Arch, weights: &Weights) -> Result<ModelProto, String> {
    let params = arch.params();
    let mut g = GraphBuilder::new(&arch.describe());
    // Validates and adds every parameter up front; the code below refers to them by name.
    for (name, shape) in &params {
        let t = get(weights, name, shape)?;
        match name.rsplit('.').next() {
            Some("alpha") => g.weight(name, &[shape[0], 1, 1], &t.data),
            _ => g.weight(name, shape, &t.data),
        };
    }
    let x = g.input(INPUT, &lr_dims());
    match *arch {
        Arch::Fsrcnn { m, scale, skip, .. } => {
            let mut h = x.clone();
            let layer = |g: &mut GraphBuilder, h: &str, name: &str, k: i64| {
                let c = g.conv(h, &format!("{name}.weight"), &format!("{name}.bias"), k, 1, k / 2);
                g.op("PRelu", &[&c, &format!("{name}.alpha")], &[])
            };
            h = layer(&mut g, &h, "head", 5);
            h = layer(&mut g, &h, "shrink", 1);
            for i in 0..m {
                h = layer(&mut g, &h, &format!("map{i}"), 3);
            }
            h = layer(&mut g, &h, "expand", 1);
            let s = scale as i64;
            let mut y = g.conv_transpose(&h, "tail.weight", Some("tail.bias"), 9, s, 3, 1, 1);
            if skip {
                let base = resample(&mut g, &x, Kernel::Bicubic, scale, "skip");
                y = g.op("Add", &[&y, &base], &[]);
            }
            g.output(BRANCH_OUTPUT, &y, &hr_dims());
        }
        Arch::Classifier { .. } => {
            let mut h = g.conv(&x, "conv0.weight", "conv0.bias", 4, 4, 0);
            for i in 1..5 {
                h = g.leaky_relu(&h, 0.1);
                h = g.conv(&h, &format!("conv{i}.weight"), &format!("conv{i}.bias"), 1, 1, 0);
            }
            let pooled = g.op("GlobalAveragePool", &[&h], &[]);
            let flat = g.op("Flatten", &[&pooled], &[("axis", Attr::Int(1))]);
            let logits = g.op("Gemm", &[&flat, "fc.weight", "fc.bias"], &[("transB", Attr::Int(1))]);
            g.output(CLASSIFIER_OUTPUT, &logits, &[Dim::Symbolic("batch"), Dim::Fixed(3)]);
        }
        Arch::Resampler { kernel, scale } => {
            let y = resample(&mut g, &x, kernel, scale, "resample");
            g.output(BRANCH_OUTPUT, &y, &hr_dims());
        }
        Arch::SrResNet { nb, scale, .. } => {
            let conv3 = |g: &mut GraphBuilder, h: &str, name: &str| {
                g.conv(h, &format!("{name}.weight"), &format!("{name}.bias"), 3, 1, 1)
            };
            let c = conv3(&mut g, &x, "conv_first");
            let mut h = g.leaky_relu(&c, 0.1);
            for i in 0..nb {
                let a = conv3(&mut g, &h, &format!("body{i}.conv1"));
                let a = g.op("Relu", &[&a], &[]);
                let b = conv3(&mut g, &a, &format!("body{i}.conv2"));
                h = g.op("Add", &[&h, &b], &[]);
            }
            for up in ["upconv1", "upconv2"] {
                let c = conv3(&mut g, &h, up);
                let d = g.op(
                    "DepthToSpace",
                    &[&c],
                    &[("blocksize", Attr::Int(2)), ("mode", Attr::Str("CRD"))],
                );
                h = g.leaky_relu(&d, 0.1);
            }
            let c = conv3(&mut g, &h, "hrconv");
            let c = g.leaky_relu(&c, 0.1);
            let out = conv3(&mut g, &c, "conv_last");
            let base = resample(&mut g, &x, Kernel::Bilinear, scale, "skip");
            let y = g.op("Add", &[&out, &base], &[]);
            g.output(BRANCH_OUTPUT, &y, &hr_dims());
        }
        Arch::VarianceClassifier { t1, t2 } => {
            // Per-channel variance around each channel's mean, averaged over the channels
            // (a flat tile of any colour has zero variance).
            let spatial = [2i64, 3];
            let mean = g.op(
                "ReduceMean",
                &[&x],
                &[("axes", Attr::Ints(&spatial)), ("keepdims", Attr::Int(1))],
            );
            let d = g.op("Sub", &[&x, &mean], &[]);
            let d2 = g.op("Mul", &[&d, &d], &[]);
            let all = [1i64, 2, 3];
            let var = g.op(
                "ReduceMean",
                &[&d2],
                &[("axes", Attr::Ints(&all)), ("keepdims", Attr::Int(1))],
            );
            let std = g.op("Sqrt", &[&var], &[]);
            let flat = g.op("Flatten", &[&std], &[("axis", Attr::Int(1))]);
            // logits = [0, std - t1, 2 std - t1 - t2]: argmax is 1 below t1, 2 up to t2, 3 above.
            let w = g.weight("route.weight", &[1, 3], &[0.0, 1.0, 2.0]);
            let b = g.weight("route.bias", &[3], &[0.0, -t1, -(t1 + t2)]);
            let logits = g.op("Gemm", &[&flat, &w, &b], &[]);
            g.output(CLASSIFIER_OUTPUT, &logits, &[Dim::Symbolic("batch"), Dim::Fixed(3)]);
        }
    }
    Ok(g.finish(&arch.describe(), &[("arch", &arch.describe())]))
}

/// The values of a FLOAT tensor (raw_data or float_data); None for other element types.
pub(crate) fn float_values(t: &super::proto::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != Some(1) {
        return None;
    }
    Some(match &t.raw_data {
        Some(raw) if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        _ => t.float_data.clone(),
    })
}

/// A FLOAT tensor named `name` of shape `dims` holding `values` (as raw data).
pub(crate) fn float_tensor(name: &str, dims: Vec<i64>, values: &[f32]) -> super::proto::TensorProto {
    super::proto::TensorProto {
        name: Some(name.to_string()),
        dims,
        data_type: Some(1),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// Whether a serialised ONNX model keeps tensors in separate files (ONNX "external data"),
/// which a graph loaded from memory cannot find.
pub fn uses_external_data(bytes: &[u8]) -> bool {
    use prost::Message;
    let external = super::proto::tensor_proto::DataLocation::External as i32;
    ModelProto::decode(bytes).is_ok_and(|m| {
        m.graph.is_some_and(|g| {
            g.initializer
                .iter()
                .any(|t| t.data_location == Some(external) || !t.external_data.is_empty())
        })
    })
}

/// The f32 initializers of a serialised ONNX model, by name (e.g. to start training from an
/// exported model). Reads raw_data and float_data; other element types are skipped.
pub fn read_weights(bytes: &[u8]) -> Result<Weights, String> {
    use prost::Message;
    let model = ModelProto::decode(bytes).map_err(|e| format!("not an ONNX model: {e}"))?;
    let graph = model.graph.ok_or("the ONNX model has no graph")?;
    let mut out = Weights::new();
    for t in graph.initializer {
        let Some(data) = float_values(&t) else {
            continue; // FLOAT only
        };
        let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        if data.len() != shape.iter().product::<usize>() {
            return Err(format!(
                "initializer '{}' has {} values for shape {shape:?}",
                t.name.unwrap_or_default(),
                data.len()
            ));
        }
        out.insert(t.name.unwrap_or_default(), Tensor { shape, data });
    }
    Ok(out)
}

/// The parameters of `arch` (in `Arch::params` shapes) from a serialised ONNX model that
/// [`build`] wrote for the same architecture: the inverse of export.
pub fn read_arch_weights(arch: &Arch, bytes: &[u8]) -> Result<Weights, String> {
    let all = read_weights(bytes)?;
    arch.params()
        .into_iter()
        .map(|(name, shape)| {
            let t = all
                .get(&name)
                .ok_or_else(|| format!("the model has no weight '{name}': not a {}", arch.describe()))?;
            if t.data.len() != shape.iter().product::<usize>() {
                return Err(format!(
                    "weight '{name}' has shape {:?}, expected {shape:?}: not a {}",
                    t.shape,
                    arch.describe()
                ));
            }
            Ok((
                name,
                Tensor {
                    shape,
                    data: t.data.clone(),
                },
            ))
        })
        .collect()
}

/// [`build`] and serialise.
pub fn build_bytes(arch: &Arch, weights: &Weights) -> Result<Vec<u8>, String> {
    build(arch, weights).map(|m| to_bytes(&m))
}
