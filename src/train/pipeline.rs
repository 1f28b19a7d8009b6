// The staged ClassSR recipe: -O model on all sub-images → class split by its PSNR → each branch
// on its class (stage 1) → classifier with frozen branches (stage 2) → joint fine-tuning
// (stage 3) → export of the four ONNX graphs with a validated manifest. Every step checkpoints
// to the work folder and resumes from there.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use super::checkpoint;
use super::data::{Dataset, AUG_SCALES, LR_SIZE};
use super::losses::{average_loss, class_loss, l1, WEIGHTS};
use super::net::{prune_fsrcnn, resample_packed, Net};
use super::optim::{cosine_lr, Adam};
use super::report::{Progress, Row, TrainLog};
use super::rng::Rng;
use crate::engine::{Engine, FrameConfig, Mode, Model};
use crate::eval::{evaluate, EvalImage};
use crate::manifest::{GraphInfo, Manifest, ModelSet, Provenance, BRANCH_FILES, CLASSIFIER_FILE, FORMAT_VERSION};
use crate::onnx::{build_bytes, read_arch_weights, Arch, Kernel, Weights, BRANCH_OUTPUT, CLASSIFIER_OUTPUT, INPUT};
use crate::runtime::{DeviceRequest, Precision, SessionConfig};

/// Network family of the three branches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Fsrcnn,
    SrResNet,
}

impl Family {
    pub fn parse(s: &str) -> Option<Family> {
        match s {
            "fsrcnn" => Some(Family::Fsrcnn),
            "srresnet" => Some(Family::SrResNet),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Fsrcnn => "fsrcnn",
            Family::SrResNet => "srresnet",
        }
    }

    /// Branch architectures, cheapest first (the last is the "-O" model).
    pub fn branches(self, scale: usize, skip: bool) -> [Arch; 3] {
        match self {
            Family::Fsrcnn => [16, 36, 56].map(|d| Arch::Fsrcnn {
                d,
                s: 12,
                m: 4,
                scale,
                skip,
            }),
            Family::SrResNet => [36, 52, 64].map(|nf| Arch::SrResNet { nf, nb: 16, scale }),
        }
    }

    /// Peak learning rate of the cosine schedule.
    pub fn lr(self) -> f64 {
        match self {
            Family::Fsrcnn => 1e-3,
            Family::SrResNet => 2e-4,
        }
    }
}

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Options {
    pub data: PathBuf,
    pub val: PathBuf,
    pub out: PathBuf,
    pub work: PathBuf,
    pub family: Family,
    pub scale: usize,
    /// Iterations of the -O model and of each branch; the classifier gets half, the joint
    /// fine-tuning a quarter.
    pub iters: usize,
    /// Iterations of the -O model when they should differ from `iters`: it is the class
    /// split's judge and branch3's starting point, so it is worth training longest.
    pub iters_original: Option<usize>,
    /// FSRCNN exactly as in the paper, without the bicubic global skip.
    pub plain: bool,
    pub batch: usize,
    pub seed: u64,
    pub resume: bool,
    pub force: bool,
    pub checkpoint_secs: u64,
    pub device_name: String,
    /// Scale augmentation factors (the official five unless changed).
    pub aug: Vec<f64>,
    /// Whether --aug was given (export otherwise takes the factors the model was trained with).
    pub aug_given: bool,
    /// Width of the classifier's convolutions (128 in the official code; see `Arch::Classifier`).
    pub classifier_width: usize,
    /// A model directory of the same family whose branch3 the -O model starts from (e.g. to
    /// refine a shipped model on other data) instead of random weights.
    pub init_from: Option<PathBuf>,
    /// FSRCNN branches 1 and 2 start as channel-pruned copies of the -O model (else random).
    pub prune: bool,
    /// Peak learning rate of the branches that start from the -O model (branch3, and the
    /// pruned ones); None: the family's.
    pub finetune_lr: Option<f64>,
    /// Export calibrates the routing to this share of the -O model's true MACs (percent), on
    /// the training sub-images: see [`Trainer::calibrate`]. None leaves the routing as trained.
    pub macs_budget: Option<f64>,
    /// The class split cuts the PSNR quantiles over all sub-images, as in the paper (else
    /// within each training image).
    pub global_split: bool,
}

impl Options {
    /// Iterations of the -O model.
    pub fn original_iters(&self) -> usize {
        self.iters_original.unwrap_or(self.iters)
    }

    /// The three branch architectures of this run, cheapest first.
    pub fn branches(&self) -> [Arch; 3] {
        self.family.branches(self.scale, !self.plain)
    }

    /// The classifier architecture of this run.
    pub fn classifier(&self) -> Arch {
        Arch::Classifier {
            nf: self.classifier_width,
        }
    }

    /// The default work folder of a model directory: `<out>.work` beside it (`m/` gives
    /// `m.work`, not `m/.work` inside the model).
    pub fn work_of(out: &Path) -> PathBuf {
        let out: PathBuf = out.components().collect();
        PathBuf::from(format!("{}.work", out.display()))
    }

    pub fn new(data: PathBuf, val: PathBuf, out: PathBuf) -> Options {
        let work = Options::work_of(&out);
        Options {
            data,
            val,
            out,
            work,
            family: Family::Fsrcnn,
            scale: 4,
            iters: 2000,
            iters_original: None,
            plain: false,
            batch: 16,
            seed: 1,
            resume: false,
            force: false,
            checkpoint_secs: 120,
            device_name: "cpu".into(),
            aug: AUG_SCALES.to_vec(),
            aug_given: false,
            classifier_width: 32,
            init_from: None,
            prune: true,
            macs_budget: None,
            finetune_lr: None,
            global_split: false,
        }
    }
}

static STEPS: [&str; 8] = [
    "original",
    "split",
    "branch1",
    "branch2",
    "branch3",
    "warmup",
    "classifier",
    "joint",
];
/// The stage (subcommand) that makes a step.
fn stage_of(step: &str) -> &'static str {
    match step {
        "original" | "split" | "branch1" | "branch2" | "branch3" => "stage1",
        "warmup" | "classifier" => "stage2",
        _ => "stage3",
    }
}

/// Recorded options an interrupted step must be resumed with (its iterations too): what
/// shapes the rest of its training. Batch size and augmentation shape every step, the
/// branches' learning rate and class split the branches' (and, for the smaller two, whether
/// they start from -O, which picks their learning rate: --finetune-lr's or the usual). How a
/// step started otherwise (--init-from, --seed) does not matter once it has started: the
/// checkpoint's values stay on record.
fn resume_keys(step: &str) -> &'static [&'static str] {
    match step {
        "branch1" | "branch2" => &[
            "batch",
            "scale_augmentation",
            "finetune_lr",
            "class_split",
            "branch_init",
        ],
        "branch3" => &["batch", "scale_augmentation", "finetune_lr", "class_split"],
        _ => &["batch", "scale_augmentation"],
    }
}

/// At most `k` of `0..len`, spread evenly over it (all of it when `len <= k`): the crops of
/// the validation images, in image order, so every image and all of each take part.
fn spread(len: usize, k: usize) -> Vec<usize> {
    let k = k.min(len);
    (0..k).map(|i| i * len / k).collect()
}

/// Crops of the validation images scored during training.
const VAL_CROPS: usize = 192;

/// What one training iteration produced.
struct Losses<B: AutodiffBackend> {
    total: Tensor<B, 1>,
    l1: f64,
    class: f64,
    average: f64,
}

/// Makes a step's nets when it starts from scratch.
type InitFn<'a, B> = dyn FnMut(&mut Trainer<B>) -> Result<Vec<Net<B>>, String> + 'a;
/// One training iteration: samples a batch and returns the losses.
type BatchFn<'a, B> = dyn FnMut(&Trainer<B>, &[Net<B>], &mut Rng) -> Losses<B> + 'a;
/// Validation: PSNR (NaN when not applicable) and class shares.
type EvalFn<'a, B> = dyn FnMut(&Trainer<B>, &[Net<B>]) -> (f64, [f64; 3]) + 'a;

/// Saved progress of one step.
struct StepState<B: AutodiffBackend> {
    nets: Vec<Net<B>>,
    adams: Vec<Adam<B>>,
    iter: usize,
    /// The step's iterations (recorded, so that a resume with others is refused).
    iters: usize,
    /// The options the step started with (recorded in its checkpoints, for the manifest).
    options: serde_json::Value,
    rng: Rng,
}

pub struct Trainer<B: AutodiffBackend> {
    pub opts: Options,
    device: B::Device,
    train: Option<Dataset>,
    val: Option<Dataset>,
    val_ids: Vec<usize>,
    /// The training images' byte sizes (recorded in checkpoints; set with the data).
    data_files: serde_json::Value,
    log: TrainLog,
    started: Instant,
    /// Held while this run uses the work folder (see [`lock_work`]).
    _lock: std::fs::File,
}

/// Takes the work folder for this run: two runs writing one folder's checkpoints would mix
/// them. The lock goes with the process, also when it is killed.
fn lock_work(work: &Path) -> Result<std::fs::File, String> {
    let path = work.join(".lock");
    // (a work folder this user may only read, e.g. for `export`, is locked through a
    // read-only handle when the file is there)
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .or_else(|e| std::fs::File::open(&path).map_err(|_| e))
        .map_err(|e| format!("cannot open '{}': {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "the work folder '{}' is in use by another classsr-train run: wait for it to end, or give this one \
             another --work (or --out)",
            work.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock '{}': {e}", path.display())),
    }
}

fn to_tensor<B: Backend>(data: Vec<f32>, shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

fn scalar<B: AutodiffBackend>(t: &Tensor<B, 1>) -> f64 {
    t.clone().into_scalar().to_string().parse().unwrap_or(f64::NAN)
}

fn psnr_tensor<B: Backend>(sr: Tensor<B, 4>, hr: Tensor<B, 4>) -> Vec<f64> {
    // per item, on values rounded to 8 bits as a viewer would see them
    let n = sr.dims()[0];
    let q = |t: Tensor<B, 4>| t.clamp(0.0, 1.0).mul_scalar(255.0).round();
    let se = (q(sr) - q(hr)).powi_scalar(2).reshape([n as i32, -1]).mean_dim(1);
    let v = se.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
    v.into_iter()
        .map(|mse| {
            if mse <= 0.0 {
                99.0
            } else {
                10.0 * (255.0f64 * 255.0 / mse as f64).log10()
            }
        })
        .collect()
}

impl<B: AutodiffBackend> Trainer<B> {
    pub fn new(opts: Options, device: B::Device) -> Result<Self, String> {
        if opts.work.exists() && !opts.work.is_dir() {
            return Err(format!("work folder '{}' is a file, not a folder", opts.work.display()));
        }
        std::fs::create_dir_all(&opts.work)
            .map_err(|e| format!("cannot create work folder '{}': {e}", opts.work.display()))?;
        let lock = lock_work(&opts.work)?;
        let log = TrainLog::open(&opts.work)?;
        Ok(Trainer {
            _lock: lock,
            opts,
            device,
            train: None,
            data_files: serde_json::Value::Null,
            val: None,
            val_ids: Vec::new(),
            log,
            started: Instant::now(),
        })
    }

    fn ckpt(&self, step: &str, done: bool) -> PathBuf {
        self.opts.work.join(if done {
            format!("{step}.done.ckpt")
        } else {
            format!("{step}.ckpt")
        })
    }

    /// What a stage starts from must be there and fit this run before the stage changes the
    /// work folder (with --force it removes its own steps first): stage2 needs the class
    /// split of this data and the branches, stage3 the classifier stage.
    pub fn check_inputs(&mut self, cmd: &str) -> Result<(), String> {
        if self.opts.out.exists() && !self.opts.out.is_dir() {
            return Err(format!(
                "--out '{}' is a file: the model is a folder",
                self.opts.out.display()
            ));
        }
        if let (Some(budget), "export" | "all") = (self.opts.macs_budget, cmd) {
            // routing every tile to branch1 is the least any routing costs
            let cost = |a: &Arch| a.cost_per_tile(LR_SIZE).0 as f64;
            let archs = self.opts.branches();
            let floor = 100.0 * (cost(&self.opts.classifier()) + cost(&archs[0])) / cost(&archs[2]);
            if budget < floor {
                return Err(format!(
                    "--macs-budget {budget}: even routing every tile to branch1 costs {floor:.1} % of the -O model (classifier included); give at least {}",
                    floor.ceil()
                ));
            }
        }
        if cmd == "export" {
            return Ok(());
        }
        // the data first: --force below removes checkpoints
        self.datasets()?;
        if matches!(cmd, "stage1" | "all") {
            self.check_init_from()?;
            // (a split already made of this data is kept, unless --force redoes stage 1; one of
            // other data will be made again, so this data must split too)
            let redo = self.opts.force && !self.opts.resume;
            if redo || self.read_split().is_err() {
                self.check_split_sizes()?;
            }
        }
        let archs = self.opts.branches();
        let all_archs = [self.opts.classifier(), archs[0], archs[1], archs[2]];
        let needs: Vec<(&str, Vec<Arch>)> = match cmd {
            "stage2" => (0..3)
                .map(|j| (["branch1", "branch2", "branch3"][j], vec![archs[j]]))
                .collect(),
            "stage3" => vec![("classifier", all_archs.to_vec())],
            _ => return Ok(()),
        };
        for (step, archs) in &needs {
            let path = self.ckpt(step, true);
            if !path.exists() {
                return Err(format!(
                    "step '{step}' has not finished yet; run {} first",
                    stage_of(step)
                ));
            }
            self.check_archs(step, &path, &checkpoint::meta(&path)?, archs)?;
        }
        self.load_split().map(|_| ())
    }

    /// --init-from must hold a -O model of this run's architecture (a model with the bicubic
    /// skip loads into a plain network, the skip having no weights, and trains nonsense).
    fn check_init_from(&self) -> Result<(), String> {
        let Some(dir) = &self.opts.init_from else {
            return Ok(());
        };
        let want = self.opts.branches()[2].describe();
        let manifest = dir.join(crate::manifest::MANIFEST_FILE);
        if let Ok(text) = std::fs::read_to_string(&manifest) {
            let m: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| format!("--init-from: '{}' is not a manifest: {e}", manifest.display()))?;
            if let Some(arch) = m["branches"][2]["arch"].as_str() {
                if arch != want {
                    return Err(format!(
                        "--init-from '{}': its branch3 is {arch}, but this run's -O model is {want} (check --plain and --family)",
                        dir.display()
                    ));
                }
            }
        }
        let file = dir.join(BRANCH_FILES[2]);
        if !file.is_file() {
            return Err(format!("--init-from: '{}' does not exist", file.display()));
        }
        Ok(())
    }

    /// A checkpoint of other architectures (another --plain, --family or
    /// --classifier-width) could load (the bicubic skip has no weights) and train or export
    /// nonsense: refused, naming the options and the stage to redo.
    fn check_archs(&self, step: &str, path: &Path, meta: &serde_json::Value, archs: &[Arch]) -> Result<(), String> {
        let want: Vec<String> = archs.iter().map(|a| a.describe()).collect();
        if let Some(made) = meta["archs"].as_array() {
            let made: Vec<&str> = made.iter().filter_map(|v| v.as_str()).collect();
            if made != want {
                return Err(format!(
                    "{} holds {} but this run builds {}: use the --plain, --family and --classifier-width that made it, or redo it with `{} --force`",
                    path.display(),
                    made.join(", "),
                    want.join(", "),
                    stage_of(step)
                ));
            }
        }
        Ok(())
    }

    /// Refuses to build on finished step `step` when it was trained on other data than this
    /// run's (later steps would mix the two: a split of these images by a model of others).
    fn check_data(&self, step: &str) -> Result<(), String> {
        let meta = checkpoint::meta(&self.ckpt(step, true))?;
        if self.other_data(&meta) {
            return Err(format!(
                "step '{step}' was trained on other data (other --data images or --aug) than this run's{}; run \
                 with the data that made it, or redo it with `{} --force`",
                self.image_change(&meta["data"]),
                stage_of(step)
            ));
        }
        Ok(())
    }

    /// Which training images differ between the `recorded` data key and this run's, for the
    /// messages that refuse other data ("" when the image lists agree): images can drop out of
    /// the same folder (one skipped now, e.g. a JPEG without its end marker).
    fn image_change(&self, recorded: &serde_json::Value) -> String {
        let names = |v: &serde_json::Value| -> Vec<String> {
            v["images"]
                .as_array()
                .map(|a| a.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        let (then, now) = (names(recorded), names(&self.data_key()));
        let list = |a: &[String], b: &[String]| {
            let only: Vec<&str> = a.iter().filter(|n| !b.contains(n)).map(String::as_str).collect();
            let more = only.len().saturating_sub(3);
            let shown = only.iter().take(3).copied().collect::<Vec<_>>().join(", ");
            (!only.is_empty()).then(|| {
                if more > 0 {
                    format!("{shown} and {more} more")
                } else {
                    shown
                }
            })
        };
        let mut parts = Vec::new();
        if let Some(l) = list(&then, &now) {
            parts.push(format!("trained on but not used now: {l} (unreadable or skipped now?)"));
        }
        if let Some(l) = list(&now, &then) {
            parts.push(format!("new: {l}"));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" [{}]", parts.join("; "))
        }
    }

    /// Whether a checkpoint's `meta` records other training data than this run's (checkpoints
    /// written before the data was recorded are not compared).
    fn other_data(&self, meta: &serde_json::Value) -> bool {
        let other = |key: &str, now: serde_json::Value| !meta[key].is_null() && meta[key] != now;
        other("data", self.data_key()) || other("data_files", self.data_files.clone())
    }

    /// An interrupted step resumes only with the options it started with.
    fn check_resume(&self, step: &str, meta: &serde_json::Value, iters: usize) -> Result<(), String> {
        let own = self.run_options();
        let mut changed: Vec<String> = resume_keys(step)
            .iter()
            // (a family that is not pruned starts from random weights either way; older
            // versions recorded "pruned from -O" for it all the same)
            .filter(|k| **k != "branch_init" || self.prunes())
            // (a key the checkpoint lacks is from an older version: not compared)
            .filter_map(|k| {
                meta["options"]
                    .get(*k)
                    .filter(|was| **was != own[*k])
                    .map(|was| (k, was))
            })
            .map(|(k, was)| format!("{k} {was} (now {})", own[*k]))
            .collect();
        if let Some(was) = meta["iters"].as_u64().filter(|&n| n != iters as u64) {
            changed.push(format!("iterations {was} (now {iters})"));
        }
        if self.other_data(meta) {
            changed.push(format!(
                "the training data (other --data images or --aug){}",
                self.image_change(&meta["data"])
            ));
        }
        if changed.is_empty() {
            return Ok(());
        }
        Err(format!(
            "step '{step}' was interrupted in a run with other options: {}; resume with those, or redo it with `{} --force`",
            changed.join(", "),
            stage_of(step)
        ))
    }

    /// Those of `steps` with a checkpoint in the work folder (finished or not).
    fn with_checkpoints<'a>(&self, steps: &[&'a str]) -> Vec<&'a str> {
        steps
            .iter()
            .copied()
            .filter(|s| self.ckpt(s, false).exists() || self.ckpt(s, true).exists())
            .collect()
    }

    /// The steps a command runs: `prepare`, `stage1`, `stage2`, `stage3`, `all` (others none).
    pub fn steps_of(cmd: &str) -> &'static [&'static str] {
        match cmd {
            "stage1" => &STEPS[..5],
            "stage2" => &STEPS[5..7],
            "stage3" => &STEPS[7..],
            "all" => &STEPS,
            _ => &[],
        }
    }

    /// Refuses to silently restart or mix runs: a command whose steps have checkpoints (done
    /// or interrupted) needs --resume to continue them or --force to redo them. Earlier
    /// stages' finished steps are its inputs, not an earlier run: they are kept. --force
    /// removes the command's steps and every later one (made from them), with their log rows.
    pub fn check_work(&self, steps: &[&str]) -> Result<(), String> {
        let Some(first) = steps.first().and_then(|s| STEPS.iter().position(|x| x == s)) else {
            return Ok(());
        };
        if self.opts.force && !self.opts.resume {
            let redo = &STEPS[first..];
            for s in redo {
                for done in [false, true] {
                    let _ = std::fs::remove_file(self.ckpt(s, done));
                }
            }
            if redo.contains(&"split") {
                let _ = std::fs::remove_file(self.opts.work.join("split.json"));
            }
            self.log.drop_steps(redo)?;
            return Ok(());
        }
        if !self.opts.resume {
            let earlier = self.with_checkpoints(steps);
            if !earlier.is_empty() {
                return Err(format!(
                    "the work folder '{}' holds an earlier run of these steps ({earlier:?}); pass --resume to continue it or --force to redo them (and the later steps)",
                    self.opts.work.display()
                ));
            }
        }
        Ok(())
    }

    fn datasets(&mut self) -> Result<(), String> {
        if self.train.is_some() {
            return Ok(());
        }
        let mut warn = |m: String| eprintln!("warning: {m}");
        let t0 = Instant::now();
        let train = Dataset::load(&self.opts.data, self.opts.scale, &self.opts.aug, &mut warn)
            .map_err(|e| format!("--data: {e}"))?;
        let val =
            Dataset::load(&self.opts.val, self.opts.scale, &[1.0], &mut warn).map_err(|e| format!("--val: {e}"))?;
        // (validation on training images scores what the model saw: allowed, but said)
        let canon = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        let trained: std::collections::HashSet<PathBuf> = train.images.iter().map(canon).collect();
        let shared = val.images.iter().filter(|p| trained.contains(&canon(p))).count();
        if shared > 0 {
            warn(format!(
                "--val: {shared} of its {} images are also training images (--data): their validation scores \
                 are measured on images the model trains on",
                val.images.len()
            ));
        }
        self.val_ids = spread(val.subs.len(), VAL_CROPS);
        eprintln!(
            "data: {} training images ({} skipped) → {} sub-images; {} validation images ({} skipped), {} crops scored ({:.1} s)",
            train.images.len(),
            train.skipped.len(),
            train.subs.len(),
            val.images.len(),
            val.skipped.len(),
            self.val_ids.len(),
            t0.elapsed().as_secs_f64()
        );
        // The byte size of each training image, in the order of data_key's names: with them,
        // a resume from a folder of other images under the same names is told apart (read
        // once, with the images, not at every checkpoint).
        self.data_files = train
            .images
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .collect::<Vec<_>>()
            .into();
        self.train = Some(train);
        self.val = Some(val);
        let scale = self.opts.scale;
        eprintln!(
            "val: bicubic x{scale} scores {:.2} dB on the validation crops",
            self.val_psnr(|lr| resample_packed(lr, Kernel::Bicubic, scale))
        );
        Ok(())
    }

    /// `prepare`: load and index the data, report what was used and skipped.
    pub fn prepare(&mut self) -> Result<(), String> {
        self.datasets()?;
        let (t, v) = (self.train.as_ref().unwrap(), self.val.as_ref().unwrap());
        let report = serde_json::json!({
            "train_images": t.images.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "val_images": v.images.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "skipped": t.skipped.iter().chain(&v.skipped).map(|(p, why)| format!("{}: {why}", p.display())).collect::<Vec<_>>(),
            "sub_images": t.subs.len(),
            "scales": self.opts.aug,
        });
        let path = self.opts.work.join("prepare.json");
        std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).map_err(|e| e.to_string())?;
        eprintln!("prepare: wrote {}", path.display());
        Ok(())
    }

    fn save(&self, step: &str, st: &StepState<B>, done: bool) -> Result<(), String> {
        let mut tensors = Weights::new();
        for (k, net) in st.nets.iter().enumerate() {
            for (name, t) in net.to_weights() {
                tensors.insert(format!("net{k}/{name}"), t);
            }
            if !done {
                for (name, t) in st.adams[k].state(net) {
                    tensors.insert(format!("adam{k}/{name}"), t);
                }
            }
        }
        let meta = serde_json::json!({
            "step": step,
            "iter": st.iter,
            "iters": st.iters,
            "options": st.options,
            "rng": st.rng.state.to_string(),
            "adam_steps": st.adams.iter().map(|a| a.step).collect::<Vec<_>>(),
            "archs": st.nets.iter().map(|n| n.arch.describe()).collect::<Vec<_>>(),
            // what the step trains on: a resume with other --data or --aug is refused
            "data": self.data_key(),
            "data_files": self.data_files,
        });
        checkpoint::save(&self.ckpt(step, done), &meta, &tensors)?;
        if done {
            let _ = std::fs::remove_file(self.ckpt(step, false));
        }
        Ok(())
    }

    fn load(&self, step: &str, archs: &[Arch], trainable: &[bool], done: bool) -> Result<Option<StepState<B>>, String> {
        let path = self.ckpt(step, done);
        if !path.exists() {
            return Ok(None);
        }
        let (meta, tensors) = checkpoint::load(&path)?;
        self.check_archs(step, &path, &meta, archs)?;
        let mut nets = Vec::new();
        let mut adams = Vec::new();
        for (k, arch) in archs.iter().enumerate() {
            let prefix = format!("net{k}/");
            let w: Weights = tensors
                .iter()
                .filter_map(|(n, t)| n.strip_prefix(&prefix).map(|n| (n.to_string(), t.clone())))
                .collect();
            let mut net = Net::from_weights(*arch, &w, &self.device).map_err(|e| format!("{}: {e}", path.display()))?;
            if trainable[k] {
                net = net.map_params(|p| p.require_grad());
            }
            let adam = if done {
                Adam::new(&net)
            } else {
                let prefix = format!("adam{k}/");
                let a: Weights = tensors
                    .iter()
                    .filter_map(|(n, t)| n.strip_prefix(&prefix).map(|n| (n.to_string(), t.clone())))
                    .collect();
                let steps = meta["adam_steps"][k].as_u64().unwrap_or(0);
                Adam::restore(&net, &a, steps)?
            };
            nets.push(net);
            adams.push(adam);
        }
        let rng = Rng {
            state: meta["rng"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(self.opts.seed),
        };
        let iter = meta["iter"].as_u64().unwrap_or(0) as usize;
        let iters = meta["iters"].as_u64().unwrap_or(0) as usize;
        let options = match &meta["options"] {
            serde_json::Value::Null => self.run_options(),
            recorded => recorded.clone(),
        };
        Ok(Some(StepState {
            nets,
            adams,
            iter,
            iters,
            options,
            rng,
        }))
    }

    /// The finished nets of an earlier step.
    fn finished(&self, step: &str, archs: &[Arch]) -> Result<Vec<Net<B>>, String> {
        let no = vec![false; archs.len()];
        self.load(step, archs, &no, true)?
            .map(|s| s.nets)
            .ok_or_else(|| format!("step '{step}' has not finished yet; run the stage that makes it first"))
    }

    /// Runs (or resumes, or skips when finished) one training step.
    #[allow(clippy::too_many_arguments)]
    fn run_step(
        &mut self,
        step: &str,
        archs: &[Arch],
        trainable: &[bool],
        init: &mut InitFn<'_, B>,
        iters: usize,
        lr_max: f64,
        batch_fn: &mut BatchFn<'_, B>,
        eval_fn: &mut EvalFn<'_, B>,
    ) -> Result<Vec<Net<B>>, String> {
        if self.ckpt(step, true).exists() {
            // (a step finished with other iterations is kept as it is: say so)
            let done_iters = checkpoint::meta(&self.ckpt(step, true))?["iters"].as_u64();
            match done_iters {
                Some(n) if n as usize != iters => eprintln!(
                    "{step}: finished earlier after {n} iterations, reusing it (the {iters} asked for now change \
                     nothing for it; --force trains it again)"
                ),
                _ => eprintln!("{step}: finished earlier, reusing it"),
            }
            self.datasets()?;
            self.check_data(step)?;
            return self.finished(step, archs);
        }
        self.datasets()?;
        if self.ckpt(step, false).exists() {
            let meta = checkpoint::meta(&self.ckpt(step, false))?;
            self.check_resume(step, &meta, iters)?;
        }
        let mut st = match self.load(step, archs, trainable, false)? {
            Some(mut st) => {
                st.iters = iters;
                eprintln!("{step}: resuming at iteration {}/{iters}", st.iter);
                // the iterations after the checkpoint are run again: their rows go
                self.log.drop_rows_after(step, st.iter)?;
                st
            }
            None => {
                // started over: rows of an earlier, uncheckpointed attempt go
                self.log.drop_steps(&[step])?;
                let nets: Vec<Net<B>> = init(self)?
                    .into_iter()
                    .zip(trainable)
                    .map(|(n, &t)| if t { n.map_params(|p| p.require_grad()) } else { n })
                    .collect();
                let adams = nets.iter().map(Adam::new).collect();
                // each step its own stream (the name's bytes, not its length: the branches' are alike)
                let salt = step
                    .bytes()
                    .fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(u64::from(b)));
                let rng = Rng::new(self.opts.seed.wrapping_mul(31).wrapping_add(salt.wrapping_mul(7919)));
                StepState {
                    nets,
                    adams,
                    iter: 0,
                    iters,
                    options: self.run_options(),
                    rng,
                }
            }
        };
        let eval_every = (iters / 10).max(50);
        let mut progress = Progress::new(step, iters, st.iter);
        let mut last_ckpt = Instant::now();
        let mut window = (0.0, 0usize);
        while st.iter < iters {
            let lr = cosine_lr(st.iter, iters, lr_max, 1e-7);
            let losses = batch_fn(self, &st.nets, &mut st.rng);
            let total = scalar(&losses.total);
            if !total.is_finite() {
                return Err(format!(
                    "{step}: the loss became {total} at iteration {}; --resume would repeat it (its checkpoint keeps \
                     the random state): redo it with `{} --force --seed N` with another N (which redoes that whole \
                     stage and the ones after it)",
                    st.iter,
                    stage_of(step),
                ));
            }
            let grads = losses.total.backward();
            for (k, net) in st.nets.iter_mut().enumerate() {
                if trainable[k] {
                    st.adams[k].update(net, &grads, lr);
                }
            }
            st.iter += 1;
            window.0 += losses.l1;
            window.1 += 1;
            let mut row = Row {
                step: step.to_string(),
                iter: st.iter,
                loss: total,
                l1: losses.l1,
                class_loss: losses.class,
                average_loss: losses.average,
                lr,
                ..Default::default()
            };
            let evaluate_now = st.iter % eval_every == 0 || st.iter == iters;
            if evaluate_now {
                let (psnr, shares) = eval_fn(self, &st.nets);
                row.val_psnr = psnr.is_finite().then_some(psnr);
                row.shares = Some(shares);
                let psnr_text = if psnr.is_finite() {
                    format!("{psnr:.2} dB")
                } else {
                    "-".into()
                };
                progress.note(&format!(
                    "iter {}: loss {:.4}, L1 {:.4}, val PSNR {psnr_text}, shares {:.2}/{:.2}/{:.2}",
                    st.iter,
                    total,
                    window.0 / window.1 as f64,
                    shares[0],
                    shares[1],
                    shares[2]
                ));
                window = (0.0, 0);
            }
            if st.iter % 10 == 0 || evaluate_now {
                self.log.append(&row)?;
            }
            progress.tick(losses.l1);
            if last_ckpt.elapsed().as_secs() >= self.opts.checkpoint_secs && st.iter < iters {
                self.save(step, &st, false)?;
                last_ckpt = Instant::now();
            }
        }
        progress.finish();
        self.save(step, &st, true)?;
        Ok(st.nets)
    }

    fn lr_hr(&self, ids: &[usize], rng: Option<&mut Rng>, val: bool) -> (Tensor<B, 4>, Tensor<B, 4>) {
        self.lr_hr_on::<B>(ids, rng, val)
    }

    /// A batch as tensors of any backend on this device (the inner one for inference).
    fn lr_hr_on<C: Backend<Device = B::Device>>(
        &self,
        ids: &[usize],
        rng: Option<&mut Rng>,
        val: bool,
    ) -> (Tensor<C, 4>, Tensor<C, 4>) {
        let ds = if val { self.val.as_ref() } else { self.train.as_ref() }.expect("data loaded");
        let (lr, hr) = ds.batch(ids, rng);
        let (n, s) = (ids.len(), self.opts.scale);
        (
            to_tensor::<C>(lr, [n, 3, LR_SIZE, LR_SIZE], &self.device),
            to_tensor::<C>(hr, [n, 3 * s * s, LR_SIZE, LR_SIZE], &self.device),
        )
    }

    /// PSNR of one SR net on the validation crops.
    fn val_branch(&self, net: &Net<B>) -> f64 {
        let net = net.inner();
        self.val_psnr(|lr| net.forward_packed(lr))
    }

    /// Mean PSNR on the validation crops of `sr`, a map from LR crops to packed HR outputs.
    fn val_psnr(&self, sr: impl Fn(Tensor<B::InnerBackend, 4>) -> Tensor<B::InnerBackend, 4>) -> f64 {
        let mut all = Vec::new();
        for ids in self.val_ids.chunks(32) {
            let (lr, hr) = self.lr_hr_on::<B::InnerBackend>(ids, None, true);
            all.extend(psnr_tensor(sr(lr), hr));
        }
        all.iter().sum::<f64>() / all.len().max(1) as f64
    }

    /// PSNR of hard-routed ClassSR on the validation crops, and the class shares.
    fn val_classsr(&self, nets: &[Net<B>]) -> (f64, [f64; 3]) {
        let nets: Vec<Net<B::InnerBackend>> = nets.iter().map(|n| n.inner()).collect();
        let mut all = Vec::new();
        let mut counts = [0usize; 3];
        for ids in self.val_ids.chunks(32) {
            let (lr, hr) = self.lr_hr_on::<B::InnerBackend>(ids, None, true);
            let cls = nets[0]
                .forward_logits(lr.clone())
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .to_vec::<i64>()
                .unwrap();
            let srs: Vec<Tensor<B::InnerBackend, 4>> = (0..3).map(|j| nets[1 + j].forward_packed(lr.clone())).collect();
            let mut picked = Vec::with_capacity(ids.len());
            for (i, &c) in cls.iter().enumerate() {
                counts[c as usize] += 1;
                picked.push(srs[c as usize].clone().narrow(0, i, 1));
            }
            all.extend(psnr_tensor(Tensor::cat(picked, 0), hr));
        }
        let n = counts.iter().sum::<usize>().max(1) as f64;
        (
            all.iter().sum::<f64>() / all.len().max(1) as f64,
            counts.map(|c| c as f64 / n),
        )
    }

    fn sample(&self, rng: &mut Rng, pool: &[usize], n: usize) -> Vec<usize> {
        (0..n).map(|_| pool[rng.below(pool.len())]).collect()
    }

    /// Every training sub-image index (loads the data if needed).
    fn all_ids(&mut self) -> Result<Vec<usize>, String> {
        self.datasets()?;
        Ok((0..self.train.as_ref().expect("loaded").subs.len()).collect())
    }

    /// L1 of one SR net on a batch drawn from `pool`.
    fn sr_losses(&self, net: &Net<B>, rng: &mut Rng, pool: &[usize], batch: usize) -> Losses<B> {
        let ids = self.sample(rng, pool, batch);
        let (x, y) = self.lr_hr(&ids, Some(rng), false);
        let loss = l1(net.forward_packed(x), y);
        let v = scalar(&loss);
        Losses {
            total: loss,
            l1: v,
            class: 0.0,
            average: 0.0,
        }
    }

    /// Stage 1: the -O model, the class split, then each branch on its class.
    pub fn stage1(&mut self) -> Result<(), String> {
        let archs = self.opts.branches();
        let (iters, batch, lr) = (self.opts.iters, self.opts.batch, self.opts.family.lr());
        let seed = self.opts.seed;
        let device = self.device.clone();
        let o_arch = archs[2];
        let all = self.all_ids()?;
        if let Some(dir) = &self.opts.init_from {
            if !self.with_checkpoints(&["original"]).is_empty() {
                eprintln!(
                    "original: --init-from {} is not used: the work folder's -O model is continued (stage1 --force starts over from it)",
                    dir.display()
                );
            }
        }
        let original = self.run_step(
            "original",
            &[o_arch],
            &[true],
            &mut |t| {
                Ok(vec![match &t.opts.init_from {
                    Some(dir) => {
                        let file = dir.join(BRANCH_FILES[2]);
                        let bytes = std::fs::read(&file)
                            .map_err(|e| format!("--init-from: cannot read '{}': {e}", file.display()))?;
                        let w = read_arch_weights(&o_arch, &bytes)
                            .map_err(|e| format!("--init-from '{}': {e}", file.display()))?;
                        eprintln!("original: starting from {}", file.display());
                        Net::from_weights(o_arch, &w, &device)?
                    }
                    None => Net::init(o_arch, &device, &mut Rng::new(seed)),
                }])
            },
            self.opts.original_iters(),
            lr,
            &mut |t, nets, rng| t.sr_losses(&nets[0], rng, &all, batch),
            &mut |t, nets| (t.val_branch(&nets[0]), [0.0, 0.0, 1.0]),
        )?;
        let classes = self.split(&original[0])?;
        for (j, arch) in archs.iter().enumerate() {
            let pool: Vec<usize> = classes
                .iter()
                .enumerate()
                .filter(|(_, &c)| c as usize == j)
                .map(|(i, _)| i)
                .collect();
            let o = original[0].clone();
            let arch = *arch;
            let step = format!("branch{}", j + 1);
            // branches that start from the -O model are fine-tuned
            let from_o =
                j == 2 || (self.opts.prune && matches!((arch, o.arch), (Arch::Fsrcnn { .. }, Arch::Fsrcnn { .. })));
            let branch_lr = if from_o {
                self.opts.finetune_lr.unwrap_or(lr)
            } else {
                lr
            };
            self.run_step(
                &step,
                &[arch],
                &[true],
                &mut |t| {
                    // branch3 is the -O architecture and starts from its weights; the smaller
                    // FSRCNN branches start as pruned copies of it
                    Ok(vec![match (j, arch, o.arch) {
                        (2, _, _) => o.clone(),
                        (_, Arch::Fsrcnn { d, .. }, Arch::Fsrcnn { d: o_d, .. }) if from_o => {
                            let ids: Vec<usize> = spread(pool.len(), 64).into_iter().map(|k| pool[k]).collect();
                            let (x, _) = t.lr_hr_on::<B::InnerBackend>(&ids, None, false);
                            let stats = o.inner().fsrcnn_channel_stats(x);
                            let w = prune_fsrcnn(&o.to_weights(), o_d, d, &stats, t.opts.scale);
                            eprintln!("{step}: starts as the -O model pruned to {d} of {o_d} channels");
                            Net::from_weights(arch, &w, &device)?
                        }
                        _ => Net::init(arch, &device, &mut Rng::new(seed.wrapping_add(1 + j as u64))),
                    }])
                },
                iters,
                branch_lr,
                &mut |t, nets, rng| t.sr_losses(&nets[0], rng, &pool, batch),
                &mut |t, nets| {
                    let mut sh = [0.0; 3];
                    sh[j] = 1.0;
                    (t.val_branch(&nets[0]), sh)
                },
            )?;
        }
        Ok(())
    }

    /// Cuts the sub-images into three classes by the -O model's PSNR on them (highest third →
    /// class 1), within each training image (each scale of it) unless `global_split`: see
    /// [`class_split`]. The split is stored and reused by later stages and re-runs.
    fn split(&mut self, original: &Net<B>) -> Result<Vec<u8>, String> {
        let path = self.opts.work.join("split.json");
        let scope = self.split_scope();
        let n = self.train.as_ref().unwrap().subs.len();
        if path.exists() {
            let why = match self.read_split() {
                Ok((classes, stored)) if stored == scope => return Ok(classes),
                Ok((_, stored)) => format!(
                    "{} was made with the {stored} split, this run asks for {scope}",
                    path.display()
                ),
                Err(e) => e,
            };
            // the steps after the split were trained on it: a new split would mix in
            let made = self.with_checkpoints(&STEPS[2..]);
            if !made.is_empty() {
                return Err(format!(
                    "{why}, and the work folder's {made:?} were trained on it: run with the data and options \
                     that made it, or stage1 --force to redo the stages"
                ));
            }
            eprintln!("split: {why}: recomputing");
        }
        let net = original.inner();
        let mut psnr = Vec::with_capacity(n);
        let mut progress = Progress::new("split", n.div_ceil(64), 0).counting("batches of 64 sub-images");
        let ids: Vec<usize> = (0..n).collect();
        for chunk in ids.chunks(64) {
            let (x, y) = self.lr_hr_on::<B::InnerBackend>(chunk, None, false);
            psnr.extend(psnr_tensor(net.forward_packed(x), y));
            progress.advance();
        }
        progress.finish();
        let classes = class_split(&psnr, &self.split_groups());
        let counts = Self::split_counts(&classes, scope)?;
        let mean_db = [0u8, 1, 2].map(|c| {
            let v: Vec<f64> = (0..n).filter(|&i| classes[i] == c).map(|i| psnr[i]).collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        });
        let json = serde_json::json!({
            "scope": scope, "data": self.data_key(), "mean_db": mean_db, "counts": counts, "classes": classes,
        });
        crate::files::write_bytes_atomically(&path, json.to_string().as_bytes())
            .map_err(|e| format!("cannot write '{}': {e}", path.display()))?;
        eprintln!(
            "split ({scope}): mean -O PSNR of the classes {:.2} / {:.2} / {:.2} dB, counts {counts:?} → {}",
            mean_db[0],
            mean_db[1],
            mean_db[2],
            path.display()
        );
        Ok(classes)
    }

    fn classsr_losses(&self, nets: &[Net<B>], x: Tensor<B, 4>, y: Tensor<B, 4>, frozen_branches: bool) -> Losses<B> {
        let logits = nets[0].forward_logits(x.clone());
        let p = softmax(logits, 1);
        let n = p.dims()[0];
        let mut out: Option<Tensor<B, 4>> = None;
        for j in 0..3 {
            let sr = if frozen_branches {
                Tensor::from_inner(nets[1 + j].inner().forward_packed(x.clone().inner()))
            } else {
                nets[1 + j].forward_packed(x.clone())
            };
            let w = p.clone().narrow(1, j, 1).reshape([n, 1, 1, 1]);
            let term = sr * w;
            out = Some(match out {
                Some(o) => o + term,
                None => term,
            });
        }
        let rec = l1(out.expect("three branches"), y);
        let cl = class_loss(p.clone());
        let av = average_loss(p);
        let (v1, v2, v3) = (scalar(&rec), scalar(&cl), scalar(&av));
        let total = rec.mul_scalar(WEIGHTS.0) + cl.mul_scalar(WEIGHTS.1) + av.mul_scalar(WEIGHTS.2);
        Losses {
            total,
            l1: v1,
            class: v2,
            average: v3,
        }
    }

    /// Stage 2 (classifier, branches frozen) or 3 (everything jointly).
    pub fn stage23(&mut self, joint: bool) -> Result<(), String> {
        let archs = self.opts.branches();
        let all_archs = [self.opts.classifier(), archs[0], archs[1], archs[2]];
        let (step, iters, trainable, lr) = if joint {
            (
                "joint",
                (self.opts.iters / 4).max(1),
                vec![true; 4],
                self.opts.family.lr() / 10.0,
            )
        } else {
            (
                "classifier",
                (self.opts.iters / 2).max(1),
                vec![true, false, false, false],
                self.opts.family.lr(),
            )
        };
        let batch = if joint {
            self.opts.batch
        } else {
            (self.opts.batch * 2).max(8)
        };
        if !joint {
            // cheap (no branch runs): as long as a branch's schedule
            self.warmup(self.opts.iters, batch)?;
        }
        let all = self.all_ids()?;
        let nets = self.run_step(
            step,
            &all_archs,
            &trainable,
            &mut |t| {
                if joint {
                    return t.finished("classifier", &all_archs);
                }
                let mut nets = t.finished("warmup", &[t.opts.classifier()])?;
                for (j, arch) in archs.iter().enumerate() {
                    nets.extend(t.finished(&format!("branch{}", j + 1), &[*arch])?);
                }
                Ok(nets)
            },
            iters,
            lr,
            &mut |t, nets, rng| {
                let ids = t.sample(rng, &all, batch);
                let (x, y) = t.lr_hr(&ids, Some(rng), false);
                t.classsr_losses(nets, x, y, !joint)
            },
            &mut |t, nets| t.val_classsr(nets),
        )?;
        // where the routing ended up on the training data (the validation crops are few)
        let logits = self.train_logits(&nets[0])?;
        let mut counts = [0usize; 3];
        for l in &logits {
            counts[crate::engine::route(l, 0.0) as usize] += 1;
        }
        let n = logits.len().max(1) as f64;
        eprintln!(
            "{step}: class shares on {} training sub-images {:.3}/{:.3}/{:.3}",
            logits.len(),
            counts[0] as f64 / n,
            counts[1] as f64 / n,
            counts[2] as f64 / n
        );
        Ok(())
    }

    /// Warm start of the classifier: cross-entropy on the stage-1 class split, so stage 2 starts
    /// from balanced routing instead of collapsing onto the largest branch while it is still
    /// random (the official code's known failure).
    fn warmup(&mut self, iters: usize, batch: usize) -> Result<(), String> {
        let labels = self.load_split()?;
        let all: Vec<usize> = (0..labels.len()).collect();
        let (seed, device, lr) = (self.opts.seed, self.device.clone(), self.opts.family.lr());
        let arch = self.opts.classifier();
        self.run_step(
            "warmup",
            &[arch],
            &[true],
            &mut |_| Ok(vec![Net::init(arch, &device, &mut Rng::new(seed.wrapping_add(10)))]),
            iters.max(1),
            lr,
            &mut |t, nets, rng| {
                let ids = t.sample(rng, &all, batch);
                let (x, _) = t.lr_hr(&ids, Some(rng), false);
                let mut onehot = vec![0f32; ids.len() * 3];
                for (k, &i) in ids.iter().enumerate() {
                    onehot[k * 3 + labels[i] as usize] = 1.0;
                }
                let target = Tensor::<B, 2>::from_data(TensorData::new(onehot, [ids.len(), 3]), &t.device);
                let logp = log_softmax(nets[0].forward_logits(x), 1);
                let loss = (logp * target).sum().neg().div_scalar(ids.len() as f64);
                let v = scalar(&loss);
                Losses {
                    total: loss,
                    l1: 0.0,
                    class: v,
                    average: 0.0,
                }
            },
            &mut |t, nets| {
                let (_, shares) = t.val_classsr_shares(&nets[0]);
                (f64::NAN, shares)
            },
        )?;
        Ok(())
    }

    /// Whether branches 1 and 2 start as pruned copies of -O (FSRCNN only; the others start
    /// from random weights whatever --random-init says).
    fn prunes(&self) -> bool {
        self.opts.prune && matches!(self.opts.branches()[0], Arch::Fsrcnn { .. })
    }

    /// How this run makes its nets, recorded in its checkpoints for the manifest.
    fn run_options(&self) -> serde_json::Value {
        serde_json::json!({
            "original_init": self.opts.init_from.as_ref().map(|d| d.display().to_string()),
            "branch_init": if self.prunes() {
                "pruned from -O"
            } else {
                "random"
            },
            "class_split": self.split_scope(),
            "finetune_lr": self.opts.finetune_lr,
            "batch": self.opts.batch,
            "seed": self.opts.seed,
            "scale_augmentation": self.opts.aug,
        })
    }

    /// How the class split groups the sub-images: "per-image", or "global" (--global-split).
    fn split_scope(&self) -> &'static str {
        if self.opts.global_split {
            "global"
        } else {
            "per-image"
        }
    }

    /// The groups the class split cuts into thirds: each training image (at each scale), or
    /// all sub-images together with --global-split.
    fn split_groups(&self) -> Vec<u32> {
        let subs = &self.train.as_ref().expect("loaded").subs;
        if self.opts.global_split {
            vec![0; subs.len()]
        } else {
            subs.iter().map(|s| s.pair).collect()
        }
    }

    /// The sub-images per class of a split, or why the split cannot be used (an empty class).
    fn split_counts(classes: &[u8], scope: &str) -> Result<[usize; 3], String> {
        let counts = [0u8, 1, 2].map(|c| classes.iter().filter(|&&k| k == c).count());
        if let Some(empty) = counts.iter().position(|&c| c == 0) {
            return Err(format!(
                "the {scope} class split of {} sub-images leaves class {} empty (counts {counts:?}): \
                 the training images give too few sub-images each (images of at least 256x128 px \
                 give three); use larger images or --global-split",
                classes.len(),
                empty + 1,
            ));
        }
        Ok(counts)
    }

    /// Whether the class split can fill three classes, known before the -O model is trained:
    /// the class sizes depend only on the group sizes (thirds of each group by rank).
    fn check_split_sizes(&self) -> Result<(), String> {
        let groups = self.split_groups();
        let scope = self.split_scope();
        Self::split_counts(&class_split(&vec![0.0; groups.len()], &groups), scope).map(|_| ())
    }

    /// The stored split, for the data of this run (loaded if needed).
    fn load_split(&mut self) -> Result<Vec<u8>, String> {
        self.datasets()?;
        self.read_split()
            .map(|(classes, _)| classes)
            .map_err(|e| format!("{e}; run stage1 with this --data and --aug (with --force to redo it)"))
    }

    /// What the class split depends on in the data: the training images, the scales and the
    /// sub-image count.
    fn data_key(&self) -> serde_json::Value {
        let t = self.train.as_ref().expect("data loaded");
        // names within --data, so that `train`, `./train` and its absolute path agree
        let name = |p: &PathBuf| p.strip_prefix(&self.opts.data).unwrap_or(p).display().to_string();
        let mut key = serde_json::json!({
            "images": t.images.iter().map(name).collect::<Vec<_>>(),
            "aug": self.opts.aug,
            "sub_images": t.subs.len(),
        });
        // images read upright by their EXIF orientation (before, they were read as stored: a
        // split made then indexes other tiles); absent when none, so other splits still match
        if !t.turned.is_empty() {
            key["upright"] = t.turned.iter().map(name).collect::<Vec<_>>().into();
        }
        key
    }

    /// The stored split (classes and scope; splits written before the scope was recorded
    /// were global), checked against the data of this run (loaded).
    fn read_split(&self) -> Result<(Vec<u8>, String), String> {
        let path = self.opts.work.join("split.json");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let classes: Vec<u8> =
            serde_json::from_value(v["classes"].clone()).map_err(|e| format!("{}: {e}", path.display()))?;
        let n = self.train.as_ref().expect("data loaded").subs.len();
        // splits written before the data was recorded are checked by their length alone
        let other_data = !v["data"].is_null() && v["data"] != self.data_key();
        if classes.len() != n || other_data {
            return Err(format!(
                "{} was made from other training data ({} sub-images, this run has {n}; or other images or \
                 --aug){}",
                path.display(),
                classes.len(),
                self.image_change(&v["data"])
            ));
        }
        Ok((classes, v["scope"].as_str().unwrap_or("global").to_string()))
    }

    /// Class shares of the classifier alone on the validation crops.
    fn val_classsr_shares(&self, classifier: &Net<B>) -> (f64, [f64; 3]) {
        let net = classifier.inner();
        let mut counts = [0usize; 3];
        for ids in self.val_ids.chunks(64) {
            let (lr, _) = self.lr_hr_on::<B::InnerBackend>(ids, None, true);
            for c in net
                .forward_logits(lr)
                .argmax(1)
                .into_data()
                .convert::<i64>()
                .to_vec::<i64>()
                .unwrap()
            {
                counts[c as usize] += 1;
            }
        }
        let n = counts.iter().sum::<usize>().max(1) as f64;
        (f64::NAN, counts.map(|c| c as f64 / n))
    }

    /// The final four nets: the joint fine-tuning if it ran, else the classifier stage.
    fn final_nets(&self) -> Result<(Vec<Net<B>>, &'static str), String> {
        let archs = self.opts.branches();
        let all = [self.opts.classifier(), archs[0], archs[1], archs[2]];
        if self.ckpt("joint", true).exists() {
            Ok((self.finished("joint", &all)?, "joint"))
        } else {
            if self.ckpt("joint", false).exists() {
                eprintln!("export: stage3 (joint) was interrupted: exporting the classifier stage; finish it with `stage3 --resume` to export it");
            }
            Ok((self.finished("classifier", &all)?, "classifier"))
        }
    }

    /// Writes the model directory: the four graphs and a manifest validated through ONNX
    /// Runtime on the full validation images.
    pub fn export(&mut self) -> Result<(), String> {
        let out = self.opts.out.clone();
        if out.join(crate::manifest::MANIFEST_FILE).exists() && !self.opts.force {
            return Err(format!(
                "'{}' already holds a model; pass --force to overwrite it",
                out.display()
            ));
        }
        let (mut nets, from) = self.final_nets()?;
        // The routing is calibrated on the data the model was trained on: without --aug, at
        // the scales it was trained at; data other than its training data is refused, as by
        // the training steps.
        if !self.opts.aug_given {
            let meta = checkpoint::meta(&self.ckpt(from, true))?;
            // (checkpoints from before the data was recorded have it among their options)
            let recorded: Option<Vec<f64>> = [&meta["data"]["aug"], &meta["options"]["scale_augmentation"]]
                .into_iter()
                .find_map(|v| v.as_array().and_then(|a| a.iter().map(|v| v.as_f64()).collect()));
            if let Some(aug) = recorded {
                self.opts.aug = aug;
            }
        }
        self.datasets()?;
        self.check_data(from)?;
        let (offset, qos_step) = self.calibrate(&mut nets, self.opts.macs_budget)?;
        let tile = LR_SIZE;
        let info = |arch: &Arch, file: &str, output: &str| {
            let (macs, flops) = arch.cost_per_tile(tile);
            GraphInfo {
                file: file.into(),
                arch: arch.describe(),
                input: INPUT.into(),
                output: output.into(),
                macs_per_tile: macs,
                paper_flops_per_tile: flops,
                val_psnr: None,
            }
        };
        let bytes = |net: &Net<B>| build_bytes(&net.arch, &net.to_weights());
        // the finished steps' checkpoint headers, each read once: how they ran (the stages may
        // have run with other options than this command's; older checkpoints: this command's)
        let metas: std::collections::HashMap<&str, serde_json::Value> =
            ["original", "branch1", "warmup", "classifier", "joint"]
                .into_iter()
                .filter_map(|step| checkpoint::meta(&self.ckpt(step, true)).ok().map(|m| (step, m)))
                .collect();
        let run_of = |step: &str| metas.get(step).and_then(|m| m["iter"].as_u64()).unwrap_or(0);
        let own = self.run_options();
        let recorded = |step: &str, key: &str| {
            metas
                .get(step)
                .map(|m| m["options"][key].clone())
                .filter(|v| !v.is_null())
                .unwrap_or_else(|| own[key].clone())
        };
        let iterations = serde_json::json!({
            "original": run_of("original"), "branch": run_of("branch1"),
            "warmup": run_of("warmup"), "classifier": run_of("classifier"),
            "joint": if from == "joint" { run_of("joint") } else { 0 },
        });
        let mut set = ModelSet {
            manifest: Manifest {
                format: FORMAT_VERSION,
                family: self.opts.family.name().into(),
                scale: self.opts.scale as u32,
                tile_size: tile as u32,
                layout: "NCHW".into(),
                channels: 3,
                value_range: [0.0, 1.0],
                classifier: info(&nets[0].arch, CLASSIFIER_FILE, CLASSIFIER_OUTPUT),
                branches: [0, 1, 2].map(|j| info(&nets[1 + j].arch, BRANCH_FILES[j], BRANCH_OUTPUT)),
                provenance: Provenance {
                    kind: "trained".into(),
                    description: format!(
                        "ClassSR {} x{} trained by classsr-train (burn) on {}",
                        self.opts.family.name(),
                        self.opts.scale,
                        self.opts.data.display()
                    ),
                    details: serde_json::json!({
                        "data": self.opts.data.display().to_string(),
                        "val": self.opts.val.display().to_string(),
                        // the images used (calibrate loaded them), not the files
                        "train_images": self.train.as_ref().map_or(0, |t| t.images.len()),
                        "val_images": self.val.as_ref().map_or(0, |v| v.images.len()),
                        "iterations": iterations,
                        "final_stage": from,
                        "batch": recorded("branch1", "batch"),
                        "seed": recorded("original", "seed"),
                        "scale_augmentation": recorded("original", "scale_augmentation"),
                        "device": self.opts.device_name,
                        "date": today(),
                        "loss_weights": [WEIGHTS.0, WEIGHTS.1, WEIGHTS.2],
                        "classifier_width": self.opts.classifier_width,
                        "original_init": recorded("original", "original_init"),
                        "branch_init": recorded("branch1", "branch_init"),
                        "class_split": recorded("branch1", "class_split"),
                        "macs_budget_percent": self.opts.macs_budget,
                        "finetune_lr": recorded("branch1", "finetune_lr"),
                        "routing_offset": offset,
                    })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                },
                qos_bias_step: Some(qos_step),
                validation: Default::default(),
            },
            classifier: bytes(&nets[0])?,
            branches: [bytes(&nets[1])?, bytes(&nets[2])?, bytes(&nets[3])?],
            origin: "classsr-train export".into(),
        };
        // the -O model itself (branch3 is -O fine-tuned on the hardest class), if stage 1 kept it
        let minus_o = match self.finished("original", &[self.opts.branches()[2]]) {
            Ok(o) => Some(bytes(&o[0])?),
            Err(e) => {
                eprintln!("export: the -O model is not scored ({e})");
                None
            }
        };
        validate_set(&mut set, &self.opts.val, minus_o)?;
        set.save_dir(&out, self.opts.force).map_err(|e| e.to_string())?;
        for f in ["training.csv", "training.png"] {
            let src = self.opts.work.join(f);
            if src.exists() {
                let _ = std::fs::copy(&src, out.join(f));
            }
        }
        eprintln!(
            "export: wrote {} ({} s since start)",
            out.display(),
            self.started.elapsed().as_secs()
        );
        Ok(())
    }

    /// The classifier's logits on (up to 4096, evenly spread) training sub-images.
    fn train_logits(&mut self, classifier: &Net<B>) -> Result<Vec<[f32; 3]>, String> {
        self.datasets()?;
        let n = self.train.as_ref().expect("loaded").subs.len();
        let ids = spread(n, 4096);
        let classifier = classifier.inner();
        let mut logits: Vec<[f32; 3]> = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(128) {
            let (x, _) = self.lr_hr_on::<B::InnerBackend>(chunk, None, false);
            let l = classifier
                .forward_logits(x)
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| format!("{e:?}"))?;
            logits.extend(l.chunks_exact(3).map(|c| [c[0], c[1], c[2]]));
        }
        Ok(logits)
    }

    /// Calibrates the routing on the training sub-images. With a compute `budget`: finds the
    /// largest offset b (the element's `bias`, applied as logits [l1 − b, l2, l3 + b]) whose
    /// routing costs at most `budget` percent of the -O model's true MACs (classifier
    /// included) and folds it into the classifier's output bias: the same knob the element
    /// exposes, set once at export so the model's own operating point meets the budget.
    /// Always: the QoS bias step, a third of the offset that takes the routing from there to
    /// (nearly) the cheapest. Returns (the offset, the QoS step).
    fn calibrate(&mut self, nets: &mut [Net<B>], budget: Option<f64>) -> Result<(Option<f64>, f32), String> {
        let logits = self.train_logits(&nets[0])?;
        let cost = |a: &Arch| a.cost_per_tile(LR_SIZE).0 as f64;
        let costs = [0, 1, 2, 3].map(|k| cost(&nets[k].arch));
        let cheapest = routing_offset(&logits, costs, 0.0).err().unwrap_or(0.0);
        let Some(budget) = budget else {
            return Ok((None, qos_step(&logits, costs, 0.0, cheapest)));
        };
        let (b, got) = routing_offset(&logits, costs, budget).map_err(|cheapest| {
            format!("--macs-budget {budget}: even routing every tile to branch1 costs {cheapest:.1} % of the -O model")
        })?;
        let step = qos_step(&logits, costs, b, cheapest);
        let mut w = nets[0].to_weights();
        let fc = w.get_mut("fc.bias").ok_or("the classifier has no fc.bias")?;
        fc.data[0] -= b;
        fc.data[2] += b;
        nets[0] = Net::from_weights(nets[0].arch, &w, &self.device)?;
        eprintln!(
            "calibrate: routing offset {b:+.2} → {got:.1} % of the -O model's MACs on {} training sub-images (budget {budget} %); QoS bias step {step:.2}",
            logits.len()
        );
        Ok((Some(b as f64), step))
    }

    /// Plots the training log (nothing before the first logged iteration).
    pub fn finish_report(&self) {
        if self.log.is_empty() {
            return;
        }
        if let Err(e) = self.log.plot(&self.opts.work.join("training.png")) {
            eprintln!("warning: no plot: {e}");
        }
    }
}

/// Scores a model set on full validation images through ONNX Runtime and records the results
/// in its manifest: PSNR per mode, per-branch PSNR, class shares and MACs, and with `minus_o`
/// (the -O model's graph) its PSNR as `psnr_db.minus_o`.
pub fn validate_set(set: &mut ModelSet, val: &Path, minus_o: Option<Vec<u8>>) -> Result<(), String> {
    let scale = set.manifest.scale as usize;
    let images: Vec<EvalImage> = crate::eval::list_images(val)?
        .iter()
        .filter_map(|p| EvalImage::load(p, scale).map_err(|e| eprintln!("warning: {e}")).ok())
        .collect();
    if images.is_empty() {
        return Err(format!("no usable validation images in '{}'", val.display()));
    }
    let cfg = SessionConfig {
        device: DeviceRequest::Cpu,
        device_id: 0,
        precision: Precision::Fp32,
        threads: 0,
    };
    let mut engine = Engine::new(Model::load(set, &cfg).map_err(|e| e.to_string())?);
    let frame = FrameConfig::default();
    let mut psnr = serde_json::Map::new();
    let mut lines = Vec::new();
    for mode in [
        Mode::Bicubic,
        Mode::Original,
        Mode::ClassSR,
        Mode::Branch(0),
        Mode::Branch(1),
        Mode::Branch(2),
    ] {
        let r = evaluate(&mut engine, &images, mode, &frame).map_err(|e| e.to_string())?;
        psnr.insert(
            mode.name().into(),
            serde_json::json!((r.psnr * 1000.0).round() / 1000.0),
        );
        if let Mode::Branch(j) = mode {
            set.manifest.branches[j].val_psnr = Some((r.psnr * 1000.0).round() / 1000.0);
        }
        if mode == Mode::ClassSR {
            let m = &set.manifest;
            let paper_o = m.branches[2].paper_flops_per_tile as f64;
            let sh = r.shares();
            let paper: f64 = (0..3)
                .map(|j| sh[j] * m.branches[j].paper_flops_per_tile as f64)
                .sum::<f64>()
                + m.classifier.paper_flops_per_tile as f64;
            let mut v = serde_json::Map::new();
            v.insert(
                "class_shares".into(),
                serde_json::json!(sh.map(|s| (s * 1000.0).round() / 1000.0)),
            );
            v.insert(
                "macs_percent_of_original".into(),
                serde_json::json!((r.macs_percent() * 10.0).round() / 10.0),
            );
            v.insert(
                "paper_flops_percent_of_original".into(),
                serde_json::json!((1000.0 * paper / paper_o).round() / 10.0),
            );
            set.manifest
                .validation
                .insert("classsr".into(), serde_json::Value::Object(v));
        }
        lines.push(format!("{:>9}: {:.3} dB", mode.name(), r.psnr));
    }
    if let Some(bytes) = minus_o {
        let mut o_set = set.clone();
        o_set.branches[2] = bytes;
        let mut o_engine = Engine::new(Model::load(&o_set, &cfg).map_err(|e| e.to_string())?);
        let r = evaluate(&mut o_engine, &images, Mode::Branch(2), &frame).map_err(|e| e.to_string())?;
        psnr.insert("minus_o".into(), serde_json::json!((r.psnr * 1000.0).round() / 1000.0));
        lines.push(format!(
            "{:>9}: {:.3} dB (the -O model before branch3's class fine-tuning)",
            "-O", r.psnr
        ));
    }
    set.manifest
        .validation
        .insert("psnr_db".into(), serde_json::Value::Object(psnr));
    set.manifest.validation.insert(
        "protocol".into(),
        serde_json::json!(format!(
            "{} images of {}: mod-{scale} crop, antialiased bicubic x1/{scale} LR, RGB PSNR with {scale}-pixel border shaved",
            images.len(),
            val.display()
        )),
    );
    eprintln!("validation:\n  {}", lines.join("\n  "));
    Ok(())
}

/// Classes by PSNR rank within each group (highest third → 0, lowest → 2); rank-based so ties
/// cannot unbalance the classes. With one group it is the paper's global split. Per image it
/// keeps a few photographs' overall noise, blur or brightness — which make every sub-image of
/// an image easy or hard alike — out of the classes, so that the classifier learns what makes
/// a tile hard within a picture (the paper's 800 DIV2K images average that out; 7 do not).
pub fn class_split(psnr: &[f64], groups: &[u32]) -> Vec<u8> {
    let mut members: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for (i, &g) in groups.iter().enumerate() {
        members.entry(g).or_default().push(i);
    }
    let mut classes = vec![0u8; psnr.len()];
    for ids in members.values() {
        let v: Vec<f64> = ids.iter().map(|&i| psnr[i]).collect();
        let m = ids.len();
        for (rank, &k) in super::descending_order(&v).iter().enumerate() {
            classes[ids[k]] = (3 * rank / m).min(2) as u8;
        }
    }
    classes
}

/// The largest routing offset b (logits [l1 − b, l2, l3 + b], routed by `engine::route` as the
/// element routes) on a 0.01 grid in [−20, 20] whose routing of `logits` costs
/// at most `budget` percent of branch3, with `costs` = true MACs of [classifier, branch1,
/// branch2, branch3] per tile. Returns (b, the cost in percent), or the cheapest cost found
/// when no offset fits.
pub fn routing_offset(logits: &[[f32; 3]], costs: [f64; 4], budget: f64) -> Result<(f32, f64), f64> {
    let percent = |b: f32| {
        let routed: f64 = logits
            .iter()
            .map(|l| costs[1 + crate::engine::route(l, b) as usize])
            .sum();
        100.0 * (costs[0] + routed / logits.len().max(1) as f64) / costs[3]
    };
    // the cost only grows with b: walk down from "everything to branch3"
    let mut step = 0;
    while step < 4000 && percent(20.0 - 0.01 * step as f32) > budget {
        step += 1;
    }
    let b = 20.0 - 0.01 * step as f32;
    let got = percent(b);
    if got > budget {
        Err(got)
    } else {
        Ok((b, got))
    }
}

/// The QoS bias step for routing at offset `b`: a third of the way from `b` to the offset at
/// which the routing costs within 1 point of `cheapest` percent, in [0.05, 10].
fn qos_step(logits: &[[f32; 3]], costs: [f64; 4], b: f32, cheapest: f64) -> f32 {
    let floor = routing_offset(logits, costs, cheapest + 1.0)
        .map(|r| r.0)
        .unwrap_or(-20.0);
    ((b - floor) / 3.0).clamp(0.05, 10.0)
}

/// Today's date (UTC) as YYYY-MM-DD.
fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86400)
        .unwrap_or(0) as i64;
    // civil-from-days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
