// classsr-train: ClassSR's staged training, writing a model directory the element loads.
//
//   classsr-train all --data data/train --val data/val --out models/fsrcnn [--family fsrcnn|srresnet]
//       [--scale 4] [--iters N] [--batch B] [--device cpu|flex|cuda] [--seed S] [--resume] [--force]
//       [--work DIR] [--checkpoint-secs S] [--iters-original N] [--plain] [--classifier-width W]
//       [--init-from MODEL_DIR] [--random-init] [--macs-budget PERCENT] [--finetune-lr LR]
//       [--global-split]
//
// --plain trains FSRCNN exactly as in the paper; by default the fsrcnn family adds a fixed
// bicubic global skip (the branches learn only the residual over bicubic).
// --classifier-width W: the classifier's width (default 32; the official code's is 128, which
// alone costs 14.5 % of an FSRCNN-56 tile). --init-from DIR starts the -O model from DIR's
// branch3.onnx. FSRCNN branches 1 and 2 start as channel-pruned copies of the -O model unless
// --random-init. --macs-budget P: export calibrates the routing (the element's bias, folded
// into the classifier) so that it costs at most P % of the -O model's MACs on the training data.
// --finetune-lr LR: peak learning rate of the branches that start from the -O model.
// --global-split: the class split cuts the -O PSNR quantiles over all sub-images, as in the
// paper, instead of within each training image.
//
// Subcommands: prepare, stage1, stage2, stage3, export, all (all in order).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use gstclasssr::train::pipeline::{Family, Options, Trainer};

const USAGE: &str = "usage: classsr-train <prepare|stage1|stage2|stage3|export|all> --data DIR --val DIR --out DIR \
[--family fsrcnn|srresnet] [--scale 4] [--iters N] [--batch B] [--device cpu|flex|cuda (default cpu)] [--seed S] [--resume] [--force] \
[--work DIR] [--checkpoint-secs S] [--aug 1.0,0.9,...] [--iters-original N] [--plain] [--classifier-width W] \
[--init-from MODEL_DIR] [--random-init] [--macs-budget PERCENT] [--finetune-lr LR] [--global-split]
defaults: --iters 2000 per step, --batch 16 (at most 256), --seed 1, --checkpoint-secs 120, --classifier-width 32 (at most 512);
--out is never replaced without --force, and an interrupted step goes on with --resume (README: \"Training your own models\")";

/// Largest --batch: a step's activations grow with it (stage 3 holds all four networks'), and
/// a batch of tens of thousands of sub-images fills any machine's memory.
const MAX_BATCH: usize = 256;
/// The widest classifier accepted.
const MAX_CLASSIFIER_WIDTH: usize = 512;

fn parse(args: &[String]) -> Result<(String, Options), String> {
    let cmd = args.first().ok_or("missing subcommand")?.clone();
    if !["prepare", "stage1", "stage2", "stage3", "export", "all"].contains(&cmd.as_str()) {
        return Err(format!("unknown subcommand '{cmd}'"));
    }
    let mut o = Options::new(PathBuf::new(), PathBuf::new(), PathBuf::new());
    let (mut data, mut val, mut out, mut work) = (None, None, None, None);
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let mut v = |n: &str| it.next().cloned().ok_or_else(|| format!("{n} needs a value"));
        let num = |n: &str, s: String| {
            s.parse::<usize>()
                .map_err(|_| format!("{n}: '{s}' is not a whole number"))
        };
        // options that only some subcommands use are refused by the others
        let used_by: &[&str] = match a.as_str() {
            "--init-from" | "--random-init" | "--finetune-lr" | "--global-split" | "--iters-original" => {
                &["stage1", "all"]
            }
            "--macs-budget" => &["export", "all"],
            _ => &[],
        };
        if !used_by.is_empty() && !used_by.contains(&cmd.as_str()) {
            return Err(format!("{a} is used by {}, not by {cmd}", used_by.join(" and ")));
        }
        // options of the training steps, which prepare and export do not run (export reads
        // what the checkpoints record)
        if matches!(cmd.as_str(), "prepare" | "export")
            && matches!(
                a.as_str(),
                "--iters" | "--batch" | "--seed" | "--checkpoint-secs" | "--resume"
            )
        {
            eprintln!("note: {a} changes nothing for {cmd}");
        }
        match a.as_str() {
            "--data" => data = Some(PathBuf::from(v("--data")?)),
            "--val" => val = Some(PathBuf::from(v("--val")?)),
            "--out" => out = Some(PathBuf::from(v("--out")?)),
            "--work" => work = Some(PathBuf::from(v("--work")?)),
            "--family" => {
                let f = v("--family")?;
                o.family = Family::parse(&f).ok_or_else(|| format!("unknown family '{f}' (fsrcnn or srresnet)"))?;
            }
            "--scale" => o.scale = num("--scale", v("--scale")?)?,
            "--iters" => o.iters = num("--iters", v("--iters")?)?,
            "--iters-original" => o.iters_original = Some(num("--iters-original", v("--iters-original")?)?),
            "--plain" => o.plain = true,
            "--classifier-width" => o.classifier_width = num("--classifier-width", v("--classifier-width")?)?,
            "--init-from" => o.init_from = Some(PathBuf::from(v("--init-from")?)),
            "--random-init" => o.prune = false,
            "--global-split" => o.global_split = true,
            "--finetune-lr" => {
                let s = v("--finetune-lr")?;
                let lr = s
                    .parse::<f64>()
                    .ok()
                    .filter(|l| *l > 0.0 && *l < 1.0)
                    .ok_or_else(|| format!("--finetune-lr: '{s}' is not a learning rate in (0, 1)"))?;
                o.finetune_lr = Some(lr);
            }
            "--macs-budget" => {
                let b = v("--macs-budget")?;
                let pct = b
                    .parse::<f64>()
                    .ok()
                    .filter(|p| *p > 0.0 && *p <= 100.0)
                    .ok_or_else(|| format!("--macs-budget: '{b}' is not a percentage in (0, 100]"))?;
                o.macs_budget = Some(pct);
            }
            "--batch" => o.batch = num("--batch", v("--batch")?)?,
            "--seed" => o.seed = num("--seed", v("--seed")?)? as u64,
            "--checkpoint-secs" => o.checkpoint_secs = num("--checkpoint-secs", v("--checkpoint-secs")?)? as u64,
            "--device" => {
                let d = v("--device")?;
                if !["cpu", "flex", "cuda"].contains(&d.as_str()) {
                    return Err(format!("unknown device '{d}' (cpu, flex or cuda)"));
                }
                o.device_name = d;
            }
            "--aug" => {
                o.aug_given = true;
                o.aug = v("--aug")?
                    .split(',')
                    .map(|s| {
                        s.parse::<f64>()
                            .ok()
                            .filter(|a| *a > 0.0 && *a <= 1.0)
                            .ok_or_else(|| format!("--aug: '{s}' is not a scale factor in (0, 1]"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--resume" => o.resume = true,
            "--force" => o.force = true,
            s => return Err(format!("unknown option '{s}'")),
        }
    }
    o.data = data.ok_or("--data DIR is required")?;
    o.val = val.ok_or("--val DIR is required")?;
    o.out = out.ok_or("--out DIR is required")?;
    o.work = work.unwrap_or_else(|| Options::work_of(&o.out));
    if o.work == o.out {
        return Err("--work must not be --out: the model folder is written from the work folder".into());
    }
    if o.scale != 4 {
        return Err("only --scale 4 is supported (the sub-image geometry is LR 32 / HR 128)".into());
    }
    if o.iters == 0 || o.batch == 0 || o.iters_original == Some(0) || o.classifier_width == 0 {
        return Err("--iters, --iters-original, --batch and --classifier-width must be at least 1".into());
    }
    if o.batch > MAX_BATCH {
        return Err(format!(
            "--batch {}: at most {MAX_BATCH} sub-images per step (the memory a step needs grows with it; \
             the paper trains with 16)",
            o.batch
        ));
    }
    if o.classifier_width > MAX_CLASSIFIER_WIDTH {
        return Err(format!(
            "--classifier-width {}: at most {MAX_CLASSIFIER_WIDTH} (the official code's is 128; a classifier \
             wider than the branches costs more than it saves)",
            o.classifier_width
        ));
    }
    Ok((cmd, o))
}

/// burn's CUDA backend loads the driver library lazily and panics in a worker thread when it is
/// missing: check for it first and say what to do.
#[cfg(feature = "cuda")]
fn cuda_driver() -> Result<(), String> {
    for name in ["libcuda.so.1", "libcuda.so"] {
        // SAFETY: the NVIDIA driver library has no initialisers that assume anything of us
        if unsafe { libloading::Library::new(name) }.is_ok() {
            return Ok(());
        }
    }
    Err(
        "--device cuda: the NVIDIA driver library (libcuda.so.1) cannot be loaded: this machine has no \
usable NVIDIA GPU or driver (install the driver, or put its folder on LD_LIBRARY_PATH), or train with \
--device flex|cpu"
            .into(),
    )
}

fn run<B: burn::tensor::backend::AutodiffBackend>(cmd: &str, opts: Options, device: B::Device) -> Result<(), String> {
    // `all` ends in an export: refuse an existing model before training, not after.
    if cmd == "all" && opts.out.join(gstclasssr::manifest::MANIFEST_FILE).exists() && !opts.force {
        return Err(format!(
            "'{}' already holds a model; pass --force to overwrite it (with `all`, --force also redoes the training: add --resume to keep what the work folder holds)",
            opts.out.display()
        ));
    }
    if cmd == "export" && !opts.work.is_dir() {
        return Err(format!(
            "no training to export: the work folder '{}' does not exist (train first, or point --work at it)",
            opts.work.display()
        ));
    }
    // A work folder made by this run is removed again when the inputs are refused (it holds
    // nothing but what the checks wrote).
    let work = opts.work.clone();
    let made_work = !work.exists();
    let mut t = Trainer::<B>::new(opts, device)?;
    if let Err(e) = t
        .check_inputs(cmd)
        .and_then(|()| t.check_work(Trainer::<B>::steps_of(cmd)))
    {
        drop(t);
        if made_work {
            let _ = std::fs::remove_dir_all(&work);
        }
        return Err(e);
    }
    let result = (|| {
        match cmd {
            "prepare" => t.prepare(),
            "stage1" => t.stage1(),
            "stage2" => t.stage23(false),
            "stage3" => t.stage23(true),
            "export" => Ok(()),
            _ => {
                t.prepare()?;
                t.stage1()?;
                t.stage23(false)?;
                t.stage23(true)
            }
        }?;
        t.finish_report();
        if cmd == "export" || cmd == "all" {
            t.export()?;
        }
        Ok(())
    })();
    if result.is_err() {
        t.finish_report();
    }
    result
}

fn main() -> ExitCode {
    let args = match gstclasssr::utf8_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.is_empty() {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        // (a reader that stopped early, `| head`, is no error)
        let _ = writeln!(std::io::stdout().lock(), "{USAGE}");
        return ExitCode::SUCCESS;
    }
    let (cmd, opts) = match parse(&args) {
        Ok(x) => x,
        Err(e) => {
            // a usage error, as without arguments
            eprintln!("error: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match opts.device_name.as_str() {
        "cpu" => run::<gstclasssr::train::CpuBackend>(&cmd, opts, Default::default()),
        "flex" => run::<gstclasssr::train::FlexBackend>(&cmd, opts, Default::default()),
        #[cfg(feature = "cuda")]
        "cuda" => cuda_driver().and_then(|()| run::<gstclasssr::train::CudaBackend>(&cmd, opts, Default::default())),
        #[cfg(not(feature = "cuda"))]
        "cuda" => {
            Err("this build has no CUDA backend: rebuild with --features cuda (CUDARC_CUDA_VERSION=13000)".into())
        }
        d => Err(format!("unknown device '{d}' (cpu, flex or cuda)")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
