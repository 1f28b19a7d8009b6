// The known-answer model set: branches that compute exact nearest / bilinear / bicubic ×4
// with fixed sub-pixel convolution weights and a classifier that routes by tile variance. They are
// written by our ONNX writer, labelled as known-answer in the manifest, and used by the tests.

use crate::manifest::{GraphInfo, Manifest, ModelSet, Provenance, BRANCH_FILES, CLASSIFIER_FILE, FORMAT_VERSION};
use crate::onnx::{build_bytes, Arch, Kernel, Weights, BRANCH_OUTPUT, CLASSIFIER_OUTPUT, INPUT};

/// Routing thresholds of the variance classifier (tile standard deviation, values in [0, 1]):
/// below `T1` → branch1, below `T2` → branch2, else branch3.
pub const T1: f32 = 0.02;
pub const T2: f32 = 0.06;
pub const SCALE: usize = 4;
pub const TILE: usize = 32;

/// The three branches, cheapest first.
pub const KERNELS: [Kernel; 3] = [Kernel::Nearest, Kernel::Bilinear, Kernel::Bicubic];

fn info(arch: &Arch, file: &str, output: &str) -> GraphInfo {
    let (macs, flops) = arch.cost_per_tile(TILE);
    GraphInfo {
        file: file.to_string(),
        arch: arch.describe(),
        input: INPUT.to_string(),
        output: output.to_string(),
        macs_per_tile: macs,
        paper_flops_per_tile: flops,
        val_psnr: None,
    }
}

/// Writes the known-answer model set in memory.
pub fn model_set() -> ModelSet {
    let none = Weights::new();
    let classifier = Arch::VarianceClassifier { t1: T1, t2: T2 };
    let branches = KERNELS.map(|kernel| Arch::Resampler { kernel, scale: SCALE });
    let manifest = Manifest {
        format: FORMAT_VERSION,
        family: "known-answer".to_string(),
        scale: SCALE as u32,
        tile_size: TILE as u32,
        layout: "NCHW".to_string(),
        channels: 3,
        value_range: [0.0, 1.0],
        classifier: info(&classifier, CLASSIFIER_FILE, CLASSIFIER_OUTPUT),
        branches: [0, 1, 2].map(|i| info(&branches[i], BRANCH_FILES[i], BRANCH_OUTPUT)),
        provenance: Provenance {
            kind: "known-answer".to_string(),
            description: "NOT TRAINED: fixed analytic weights for tests. Branches compute exact nearest, bilinear \
                          and bicubic (Keys, a=-0.5) x4 with half-pixel centres and clamped edges; the classifier \
                          routes by tile standard deviation. Written by gst-classsr's ONNX writer."
                .to_string(),
            details: Default::default(),
        },
        qos_bias_step: None,
        validation: Default::default(),
    };
    ModelSet {
        classifier: build_bytes(&classifier, &none).expect("known-answer classifier"),
        branches: branches.map(|a| build_bytes(&a, &none).expect("known-answer branch")),
        manifest,
        origin: "known-answer (generated)".to_string(),
    }
}
