// The model directory format: manifest.json (what the four graphs are and how to feed them)
// plus classifier.onnx and branch1..3.onnx. Shared by the runtime (loading) and the trainer
// (export). Also holds the embedded default model set.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;

/// File names of a model directory.
pub const MANIFEST_FILE: &str = "manifest.json";
pub const CLASSIFIER_FILE: &str = "classifier.onnx";
pub const BRANCH_FILES: [&str; 3] = ["branch1.onnx", "branch2.onnx", "branch3.onnx"];

/// Version of the manifest format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Accepted spans of `value_range` (hi − lo).
pub const MIN_VALUE_RANGE: f32 = 1e-3;
pub const MAX_VALUE_RANGE: f32 = 1e6;
/// Most MACs per LR pixel a graph may claim (far above any SR network; it keeps a frame's
/// MAC counts within u64).
pub const MAX_MACS_PER_PIXEL: u64 = 1 << 30;

/// One graph's tensors and cost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GraphInfo {
    pub file: String,
    /// Human-readable architecture, e.g. "FSRCNN(d=56, s=12, m=4) x4".
    pub arch: String,
    pub input: String,
    pub output: String,
    /// True multiply-adds to process one LR tile.
    pub macs_per_tile: u64,
    /// The ClassSR paper's FLOPs convention (2×MACs, FSRCNN's ConvTranspose charged at HR size).
    pub paper_flops_per_tile: u64,
    /// Validation PSNR (dB) of this branch alone, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_psnr: Option<f64>,
}

/// How the weights were made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Provenance {
    /// "known-answer" (fixed analytic weights, for tests) or "trained".
    pub kind: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// manifest.json.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    /// Network family of the branches ("fsrcnn", "srresnet", "known-answer").
    pub family: String,
    pub scale: u32,
    /// LR tile size the classifier and branches were made for.
    pub tile_size: u32,
    /// Tensor layout of inputs and outputs; only "NCHW" RGB is supported.
    pub layout: String,
    pub channels: u32,
    /// Pixel value range of inputs and outputs, e.g. [0, 1].
    pub value_range: [f32; 2],
    pub classifier: GraphInfo,
    pub branches: [GraphInfo; 3],
    pub provenance: Provenance,
    /// How far each QoS level lowers the element's `bias` for this model (logit units). Trained
    /// classifiers differ widely in how far apart their logits are, so the trainer measures it:
    /// three levels walk the routing from the model's operating point down to (nearly) all
    /// tiles on branch1. Absent: 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_bias_step: Option<f32>,
    /// Validation results of the whole model (PSNR per mode, class shares), when known.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub validation: serde_json::Map<String, serde_json::Value>,
}

impl Manifest {
    /// Checks the fields this build relies on.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what: String| Err(Error::Model(format!("manifest.json: {what}")));
        if self.format != FORMAT_VERSION {
            return bad(format!(
                "format {} is not supported (this build reads format {FORMAT_VERSION})",
                self.format
            ));
        }
        if !(1..=8).contains(&self.scale) {
            return bad(format!("scale {} is out of range 1..8", self.scale));
        }
        if !(4..=512).contains(&self.tile_size) {
            return bad(format!("tile_size {} is out of range 4..512", self.tile_size));
        }
        if self.layout != "NCHW" || self.channels != 3 {
            return bad(format!(
                "layout {} with {} channels is not supported (need NCHW, 3)",
                self.layout, self.channels
            ));
        }
        let [lo, hi] = self.value_range;
        if !(lo.is_finite() && hi.is_finite() && hi > lo) {
            return bad(format!("value_range {:?} is not an increasing pair", self.value_range));
        }
        // (the merge's fixed point needs a range it can scale to and bound: see accumulate.rs)
        if !(MIN_VALUE_RANGE..=MAX_VALUE_RANGE).contains(&(hi - lo)) {
            return bad(format!(
                "value_range {:?} spans {:?}; it must span {MIN_VALUE_RANGE:?} to {MAX_VALUE_RANGE:?} (e.g. [0, 1] or [0, 255])",
                self.value_range,
                hi - lo
            ));
        }
        let area = u64::from(self.tile_size).pow(2);
        for g in std::iter::once(&self.classifier).chain(self.branches.iter()) {
            if g.macs_per_tile / area > MAX_MACS_PER_PIXEL {
                return bad(format!(
                    "'{}' claims {} MACs per {}x{} tile, over {MAX_MACS_PER_PIXEL} per pixel: not a MAC count",
                    g.file, g.macs_per_tile, self.tile_size, self.tile_size
                ));
            }
            if g.input.is_empty() || g.output.is_empty() || g.file.is_empty() {
                return bad(format!("graph '{}' needs file, input and output names", g.file));
            }
            if g.file.contains('/') || g.file.contains("..") {
                return bad(format!(
                    "graph file '{}' must be a plain file name in the model directory",
                    g.file
                ));
            }
            if g.file == "manifest.json" {
                return bad("a graph file cannot be named manifest.json, the manifest's own name".to_string());
            }
        }
        Ok(())
    }

    pub fn is_known_answer(&self) -> bool {
        self.provenance.kind == "known-answer"
    }

    /// The bias step of one QoS level (see `qos_bias_step`).
    pub fn qos_step(&self) -> f32 {
        self.qos_bias_step.filter(|s| s.is_finite() && *s > 0.0).unwrap_or(0.5)
    }

    /// True multiply-adds of the largest branch ("original") on one tile.
    pub fn original_macs(&self) -> u64 {
        self.branches[2].macs_per_tile
    }
}

/// A manifest with the bytes of its four graphs.
#[derive(Debug, Clone)]
pub struct ModelSet {
    pub manifest: Manifest,
    pub classifier: Vec<u8>,
    pub branches: [Vec<u8>; 3],
    /// Where it came from, for messages ("embedded default" or the directory).
    pub origin: String,
}

impl ModelSet {
    /// Reads a model directory.
    pub fn load_dir(dir: &Path) -> Result<ModelSet, Error> {
        let fix = "point the element's `model` property (the CLI's --model) at a directory holding manifest.json, classifier.onnx and branch1..3.onnx (e.g. one written by classsr-train export), or leave it empty for the embedded default";
        if !dir.is_dir() {
            return Err(Error::Model(format!(
                "model directory '{}' does not exist or is not a directory; {fix}",
                dir.display()
            )));
        }
        let read = |name: &str| -> Result<Vec<u8>, Error> {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| Error::Model(format!("cannot read '{}': {e}; {fix}", p.display())))
        };
        let manifest = Self::read_manifest(dir, read)?;
        let classifier = read(&manifest.classifier.file)?;
        let branches = [
            read(&manifest.branches[0].file)?,
            read(&manifest.branches[1].file)?,
            read(&manifest.branches[2].file)?,
        ];
        Ok(ModelSet {
            manifest,
            classifier,
            branches,
            origin: dir.display().to_string(),
        })
    }

    /// The manifest of the model directory `dir` (read with `read`), validated.
    fn read_manifest(dir: &Path, read: impl Fn(&str) -> Result<Vec<u8>, Error>) -> Result<Manifest, Error> {
        let text = read(MANIFEST_FILE)?;
        let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
            Error::Model(format!(
                "'{}' is not a valid manifest: {e}",
                dir.join(MANIFEST_FILE).display()
            ))
        })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The manifest alone of what [`Self::load`] would load (the element's caps need the
    /// model's scale before the model loads).
    pub fn manifest_of(dir: &str) -> Result<Manifest, Error> {
        if dir.is_empty() {
            return Ok(embedded_manifest());
        }
        let dir = Path::new(dir);
        Self::read_manifest(dir, |name| {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| Error::Model(format!("cannot read '{}': {e}", p.display())))
        })
    }

    /// Writes the set as a model directory; refuses to replace an existing model unless `force`.
    pub fn save_dir(&self, dir: &Path, force: bool) -> Result<(), Error> {
        if dir.join(MANIFEST_FILE).exists() && !force {
            return Err(Error::Model(format!(
                "'{}' already holds a model; pass --force to overwrite it",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::Model(format!("cannot create '{}': {e}", dir.display())))?;
        // The manifest goes first and comes back last: a model being replaced is no model
        // until all its graphs are written, so an interrupted export cannot leave new graphs
        // under an old manifest that loads.
        let manifest = dir.join(MANIFEST_FILE);
        if manifest.exists() {
            std::fs::remove_file(&manifest)
                .map_err(|e| Error::Model(format!("cannot replace '{}': {e}", manifest.display())))?;
        }
        let write = |name: &str, bytes: &[u8]| -> Result<(), Error> {
            let path = dir.join(name);
            crate::files::write_bytes_atomically(&path, bytes)
                .map_err(|e| Error::Model(format!("cannot write '{}': {e}", path.display())))
        };
        write(&self.manifest.classifier.file, &self.classifier)?;
        for (info, bytes) in self.manifest.branches.iter().zip(&self.branches) {
            write(&info.file, bytes)?;
        }
        let json = serde_json::to_string_pretty(&self.manifest).expect("manifest serialises");
        write(MANIFEST_FILE, format!("{json}\n").as_bytes())
    }

    /// The model set compiled into the plugin: the trained FSRCNN-family ClassSR in models/fsrcnn.
    pub fn embedded() -> ModelSet {
        ModelSet {
            manifest: embedded_manifest(),
            classifier: include_bytes!("../models/fsrcnn/classifier.onnx").to_vec(),
            branches: [
                include_bytes!("../models/fsrcnn/branch1.onnx").to_vec(),
                include_bytes!("../models/fsrcnn/branch2.onnx").to_vec(),
                include_bytes!("../models/fsrcnn/branch3.onnx").to_vec(),
            ],
            origin: "embedded default".to_string(),
        }
    }

    /// The embedded default when `dir` is empty, else the directory.
    pub fn load(dir: &str) -> Result<ModelSet, Error> {
        if dir.is_empty() {
            Ok(ModelSet::embedded())
        } else {
            ModelSet::load_dir(Path::new(dir))
        }
    }
}

/// The embedded default's manifest.
fn embedded_manifest() -> Manifest {
    serde_json::from_slice(include_bytes!("../models/fsrcnn/manifest.json")).expect("embedded manifest is valid JSON")
}
