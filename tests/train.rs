// classsr-train (feature `train`): exported ONNX equals burn's forward pass for all graphs of
// both families, the ClassSR losses against hand-computed values, and a short real run that
// lowers L1, logs class shares, exports a model the runtime loads, refuses to overwrite
// it without --force, and resumes after being killed.
#![cfg(feature = "train")]

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::{Tensor, TensorData};
use gstclasssr::onnx::{build_bytes, read_arch_weights, Arch, Tensor as OnnxTensor, Weights};
use gstclasssr::runtime::{self, DeviceRequest, Precision, SessionConfig};
use gstclasssr::train::losses::{average_loss, class_loss};
use gstclasssr::train::net::{prune_fsrcnn, Net};
use gstclasssr::train::pipeline::{class_split, routing_offset};
use gstclasssr::train::rng::Rng;
use ort::value::TensorRef;

const KA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/known-answer");

mod common;
use common::ScratchDir;

#[allow(deprecated)]
type B = burn::backend::Candle;

const CPU: SessionConfig = SessionConfig {
    device: DeviceRequest::Cpu,
    device_id: 0,
    precision: Precision::Fp32,
    threads: 2,
};

/// Random weights of a realistic scale for `arch`.
fn random_weights(arch: &Arch, rng: &mut Rng) -> Weights {
    arch.params()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with(".bias") {
                (0..n).map(|_| rng.normal() * 0.05).collect()
            } else if name.ends_with(".alpha") {
                (0..n).map(|_| 0.1 + 0.2 * rng.uniform()).collect()
            } else {
                let fan = if shape.len() == 4 {
                    shape[1] * shape[2] * shape[3]
                } else {
                    shape[1]
                } as f32;
                let fan = if name == "tail.weight" {
                    (shape[0] * 81 / 16) as f32
                } else {
                    fan
                };
                (0..n).map(|_| rng.normal() / fan.sqrt()).collect()
            };
            (name, OnnxTensor { shape, data })
        })
        .collect()
}

fn ort_run(bytes: &[u8], input: &[f32], shape: [usize; 4]) -> (Vec<i64>, Vec<f32>) {
    let (mut s, _) = runtime::session(bytes, "test graph", &CPU).unwrap();
    let t = TensorRef::from_array_view((shape, input)).unwrap();
    let out = s.run(ort::inputs![t]).unwrap();
    let (shape, data) = out[0].try_extract_tensor::<f32>().unwrap();
    (shape.to_vec(), data.to_vec())
}

#[test]
fn exported_onnx_equals_burn_forward_for_both_families() {
    let device = Default::default();
    let mut rng = Rng::new(5);
    let shape = [2usize, 3, 32, 32];
    let input: Vec<f32> = (0..shape.iter().product()).map(|_| rng.uniform()).collect();
    let x = || Tensor::<B, 4>::from_data(TensorData::new(input.clone(), shape), &device);
    let mut archs = vec![Arch::Classifier { nf: 128 }, Arch::Classifier { nf: 32 }];
    archs.extend([16, 36, 56].map(|d| Arch::Fsrcnn {
        d,
        s: 12,
        m: 4,
        scale: 4,
        skip: d != 36,
    }));
    archs.extend([36, 52, 64].map(|nf| Arch::SrResNet { nf, nb: 16, scale: 4 }));
    for arch in archs {
        let w = random_weights(&arch, &mut rng);
        let net = Net::<B>::from_weights(arch, &w, &device).unwrap();
        let (burn_shape, burn_out): (Vec<usize>, Vec<f32>) = if arch.is_classifier() {
            let y = net.forward_logits(x());
            (y.dims().to_vec(), y.into_data().to_vec().unwrap())
        } else {
            let y = net.forward_sr(x());
            (y.dims().to_vec(), y.into_data().to_vec().unwrap())
        };
        let bytes = build_bytes(&arch, &w).unwrap();
        // reading the exported graph back gives the same parameters (--init-from relies on it)
        assert_eq!(read_arch_weights(&arch, &bytes).unwrap(), w, "{}", arch.describe());
        let (ort_shape, ort_out) = ort_run(&bytes, &input, shape);
        assert_eq!(
            ort_shape,
            burn_shape.iter().map(|&d| d as i64).collect::<Vec<_>>(),
            "{}",
            arch.describe()
        );
        let diff = burn_out
            .iter()
            .zip(&ort_out)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let scale = burn_out.iter().map(|v| v.abs()).fold(0f32, f32::max);
        println!(
            "{}: max |burn - onnx| = {diff:.2e} (outputs up to {scale:.2})",
            arch.describe()
        );
        assert!(
            scale > 0.05,
            "{}: outputs should not be trivially small",
            arch.describe()
        );
        assert!(diff <= 1e-4, "{}: max abs diff {diff}", arch.describe());
    }
}

#[test]
fn classsr_losses_match_hand_computed_values() {
    let device = Default::default();
    let p = Tensor::<B, 2>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 0.5, 0.3, 0.2], [2, 3]), &device);
    // row 1 one-hot: 2 - (1 + 1 + 0) = 0; row 2: 2 - (0.2 + 0.3 + 0.1) = 1.4; mean 0.7
    let c: f32 = class_loss(p.clone()).into_scalar();
    assert!((c - 0.7).abs() < 1e-6, "{c}");
    // column sums 1.5, 0.3, 0.2 against n/3 = 2/3: (5/6 + 11/30 + 7/15) / (8/3) = 0.625
    let a: f32 = average_loss(p).into_scalar();
    assert!((a - 0.625).abs() < 1e-6, "{a}");
    // a perfectly even batch costs nothing
    let even = Tensor::<B, 2>::from_data(
        TensorData::new(vec![1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], [3, 3]),
        &device,
    );
    assert!(average_loss(even.clone()).into_scalar().abs() < 1e-6);
    assert!(class_loss(even).into_scalar().abs() < 1e-6);
}

fn scratch(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("train-test-{name}"))
}

/// A few photo-like images: smooth areas, edges and texture, so the classes differ.
fn make_images(dir: &Path, n: usize, size: u32, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng::new(seed);
    for i in 0..n {
        let noise: Vec<u8> = (0..size * size).map(|_| (rng.uniform() * 90.0) as u8).collect();
        let img = image::RgbImage::from_fn(size, size, |x, y| {
            let smooth = x < size / 3;
            let edge = (x / (7 + i as u32) + y / 5).is_multiple_of(3);
            let t = if x > 2 * size / 3 {
                noise[(y * size + x) as usize]
            } else {
                0
            };
            let base = (x * 120 / size + y * 60 / size) as u8;
            if smooth {
                image::Rgb([40 + base / 4, 90, 140])
            } else {
                let e = if edge { 90 } else { 0 };
                image::Rgb([
                    base.saturating_add(e).saturating_add(t),
                    120u8.saturating_add(t / 2),
                    200 - base / 2,
                ])
            }
        });
        img.save(dir.join(format!("img{i}.png"))).unwrap();
    }
    std::fs::write(dir.join("corrupt.jpg"), b"\xff\xd8 truncated").unwrap();
}

/// `--data DATA --val VAL --out OUT`.
fn io_args<'a>(data: &'a Path, val: &'a Path, out: &'a str) -> [&'a str; 6] {
    [
        "--data",
        data.to_str().unwrap(),
        "--val",
        val.to_str().unwrap(),
        "--out",
        out,
    ]
}

/// Runs `classsr-train` with `args`: (success, stderr).
fn train_cmd(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_classsr-train"))
        .args(args)
        .output()
        .expect("classsr-train runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
}

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

#[test]
fn short_run_learns_uses_all_classes_exports_and_protects_the_model() {
    let root = scratch("run");
    make_images(&root.join("train"), 3, 256, 1);
    make_images(&root.join("val"), 1, 128, 9);
    // an image with a transparent pixel: the colour under it is not to be learnt
    let mut clear = image::RgbaImage::from_pixel(256, 256, image::Rgba([50, 60, 70, 255]));
    clear.put_pixel(9, 9, image::Rgba([0, 0, 0, 0]));
    clear.save(root.join("train").join("clear.png")).unwrap();
    let out = root.join("model");
    let (data, val, out_s) = (root.join("train"), root.join("val"), out.display().to_string());
    let mut common = io_args(&data, &val, &out_s).to_vec();
    common.extend([
        "--iters", "120", "--batch", "4", "--aug", "1.0", "--seed", "3",
        // the paper's FSRCNN from random weights, so the L1 has far to fall in a short run (the
        // default bicubic skip starts at bicubic's L1; its graphs are checked above)
        "--plain",
    ]);
    let mut args = vec!["all"];
    args.extend_from_slice(&common);
    let (ok, log) = train_cmd(&args);
    assert!(ok, "{log}");
    assert!(
        log.contains("skipping") && log.contains("corrupt.jpg"),
        "corrupt images are skipped with a warning: {log}"
    );
    assert!(
        log.contains("clear.png") && log.contains("transparent"),
        "images with transparent pixels are skipped with a warning: {log}"
    );

    // L1 went down during the -O model's training.
    let rows = csv_rows(&PathBuf::from(format!("{out_s}.work")).join("training.csv"));
    let l1: Vec<f64> = rows
        .iter()
        .filter(|r| r[0] == "original")
        .map(|r| r[3].parse().unwrap())
        .collect();
    assert!(l1.len() >= 6, "{rows:?}");
    let (first, last) = (l1[..3].iter().sum::<f64>(), l1[l1.len() - 3..].iter().sum::<f64>());
    assert!(last < first * 0.8, "L1 should fall: {l1:?}");
    // Stage 2 ends with all three classes in use on the training sub-images.
    let line = log
        .lines()
        .find(|l| l.starts_with("classifier: class shares on"))
        .unwrap_or_else(|| panic!("no class shares line: {log}"));
    println!("{line}");
    let shares: Vec<f64> = line
        .rsplit(' ')
        .next()
        .unwrap()
        .split('/')
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(shares.iter().all(|&s| s > 0.02), "a class is unused: {line}");
    // Every stage logs its class shares on the validation crops (to spot collapse onto one
    // branch).
    for step in ["warmup", "classifier", "joint"] {
        let row = rows
            .iter()
            .rev()
            .find(|r| r[0] == step && !r[8].is_empty())
            .expect("an eval row per step");
        let shares: Vec<f64> = row[8..11].iter().map(|v| v.parse().unwrap()).collect();
        assert!((shares.iter().sum::<f64>() - 1.0).abs() < 0.01, "{step}: {shares:?}");
    }

    // The exported model loads in the runtime and says how it was made.
    let set = gstclasssr::manifest::ModelSet::load_dir(&out).unwrap();
    assert_eq!(set.manifest.provenance.kind, "trained");
    assert_eq!(set.manifest.family, "fsrcnn");
    assert!(set.manifest.validation.contains_key("psnr_db"));
    gstclasssr::engine::Model::load(&set, &CPU).unwrap();

    // Never overwritten without --force.
    let mut args = vec!["export"];
    args.extend_from_slice(&common);
    let (ok, log) = train_cmd(&args);
    assert!(!ok && log.contains("--force"), "{log}");
    args.push("--force");
    assert!(train_cmd(&args).0);

    // Export with a compute budget: the routing offset is folded into the classifier, the
    // manifest records it and a QoS step for the element.
    args.extend(["--macs-budget", "70"]);
    let (ok, log) = train_cmd(&args);
    assert!(ok, "{log}");
    assert!(log.contains("calibrate: routing offset"), "{log}");
    let m = gstclasssr::manifest::ModelSet::load_dir(&out).unwrap().manifest;
    assert_eq!(m.classifier.arch, "ClassSR classifier (width 32)");
    assert!(
        m.provenance.details["routing_offset"].is_number(),
        "{:?}",
        m.provenance.details
    );
    assert!(m.qos_step() > 0.0 && m.qos_bias_step.is_some());
    // the -O model itself is scored next to its fine-tuned branch3, and the split is recorded
    let psnr = &m.validation["psnr_db"];
    assert!(
        psnr["minus_o"].as_f64().is_some_and(|v| v > 10.0) && psnr["branch3"].is_number(),
        "{psnr}"
    );
    assert_eq!(m.provenance.details["class_split"], "per-image");

    // --init-from names what is wrong with a model of another architecture.
    let mut args = vec!["stage1", "--init-from", KA, "--work"];
    let work = root.join("other.work").display().to_string();
    args.push(&work);
    args.extend_from_slice(&common);
    let (ok, log) = train_cmd(&args);
    assert!(!ok);
    assert!(
        log.contains("--init-from") && log.contains("its branch3 is known-answer") && log.contains("FSRCNN(d=56"),
        "{log}"
    );
    // ... also without a manifest to compare with: by the weights themselves.
    let bare = root.join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(format!("{KA}/branch3.onnx"), bare.join("branch3.onnx")).unwrap();
    let bare = bare.display().to_string();
    let mut args = vec!["stage1", "--init-from", &bare, "--work"];
    args.push(&work);
    args.extend_from_slice(&common);
    let (ok, log) = train_cmd(&args);
    assert!(!ok);
    assert!(
        log.contains("--init-from") && log.contains("branch3.onnx") && log.contains("head.weight"),
        "{log}"
    );
}

#[test]
fn killed_training_resumes_where_it_stopped() {
    let root = scratch("resume");
    make_images(&root.join("train"), 2, 160, 4);
    make_images(&root.join("val"), 1, 128, 5);
    let out = root.join("model").display().to_string();
    let work = PathBuf::from(format!("{out}.work"));
    let (data, val) = (root.join("train"), root.join("val"));
    let args = [
        "stage1",
        "--data",
        data.to_str().unwrap(),
        "--val",
        val.to_str().unwrap(),
        "--out",
        &out,
        "--iters",
        "150",
        "--batch",
        "2",
        "--aug",
        "1.0",
        "--checkpoint-secs",
        "0",
    ];
    // A checkpoint after every iteration, and a kill as soon as the first one is there: the
    // kill falls early in the step on a machine of any speed (a fixed delay after the first
    // checkpoint could outlast the whole step on a fast one).
    let mut child = Command::new(env!("CARGO_BIN_EXE_classsr-train"))
        .args(args)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = work.join("original.ckpt");
    let t0 = std::time::Instant::now();
    while !ckpt.exists() && t0.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ckpt.exists(), "a checkpoint was written before the kill");
    assert!(!work.join("original.done.ckpt").exists(), "killed before finishing");

    // A second run on the folder while one holds it would mix their checkpoints: refused (the
    // lock held here, as a running trainer holds it).
    let lock = std::fs::File::open(work.join(".lock")).unwrap();
    lock.try_lock().expect("the killed trainer's lock is gone");
    let (ok, log) = train_cmd(&args);
    assert!(!ok && log.contains("in use by another classsr-train run"), "{log}");
    drop(lock);

    // Without --resume it refuses to silently start over.
    let (ok, log) = train_cmd(&args);
    assert!(!ok && log.contains("--resume"), "{log}");

    // Resuming with other options (batch size, iterations, training images) would mix two
    // runs: refused.
    let other_data = root.join("other");
    make_images(&other_data, 2, 160, 6);
    for (k, v) in [
        ("--batch", "4"),
        ("--iters", "200"),
        ("--data", other_data.to_str().unwrap()),
    ] {
        let mut other: Vec<&str> = args.to_vec();
        let at = other.iter().position(|a| *a == k).unwrap();
        other[at + 1] = v;
        other.push("--resume");
        let (ok, log) = train_cmd(&other);
        assert!(!ok && log.contains("interrupted in a run with other options"), "{log}");
        assert!(ckpt.exists());
    }

    // How the step started (here --seed) does not matter once it has: accepted.
    let mut resumed = args.to_vec();
    resumed.extend_from_slice(&["--resume", "--seed", "9"]);
    let (ok, log) = train_cmd(&resumed);
    assert!(ok, "{log}");
    let at: usize = log
        .split("resuming at iteration ")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("resumed from a checkpoint: {log}"));
    assert!(at > 0 && at < 150, "{at}");
    for step in ["original", "branch1", "branch2", "branch3"] {
        assert!(work.join(format!("{step}.done.ckpt")).exists(), "{step} finished");
    }
    // The log has each iteration once: the rows after the checkpoint, run again, were
    // replaced, not repeated.
    let iters: Vec<usize> = csv_rows(&work.join("training.csv"))
        .iter()
        .filter(|r| r[0] == "original")
        .map(|r| r[1].parse().unwrap())
        .collect();
    assert!(iters.windows(2).all(|w| w[0] < w[1]), "{iters:?}");
    assert_eq!(iters.last(), Some(&150));

    // The later stages go on from the resumed step's checkpoints, and the model loads.
    for stage in ["stage2", "stage3", "export"] {
        let mut next: Vec<&str> = args.to_vec();
        next[0] = stage;
        let at = next.iter().position(|a| *a == "--iters").unwrap();
        next[at + 1] = "10";
        let (ok, log) = train_cmd(&next);
        assert!(ok, "{stage}: {log}");
    }
    let set = gstclasssr::manifest::ModelSet::load_dir(Path::new(&out)).unwrap();
    assert_eq!(set.manifest.provenance.kind, "trained");
    gstclasssr::engine::Model::load(&set, &CPU).unwrap();
    // A finished step is reused as it is, saying so when asked for other iterations.
    let mut longer: Vec<&str> = args.to_vec();
    let at = longer.iter().position(|a| *a == "--iters").unwrap();
    longer[at + 1] = "300";
    longer.push("--resume");
    let (ok, log) = train_cmd(&longer);
    assert!(ok, "{log}");
    assert!(
        log.contains("original: finished earlier after 150 iterations") && log.contains("--force trains it again"),
        "{log}"
    );
}

#[test]
fn pruning_drops_constant_channels_without_changing_the_output() {
    // A d=8 FSRCNN whose head channels 5-7 are constant (zero weights) and whose expand
    // channels 5-7 are zero: pruned to d=5 the importance ranking must drop exactly those,
    // and folding the constant head outputs into shrink's bias must keep the output.
    let device = Default::default();
    let mut rng = Rng::new(11);
    let fsrcnn = |d| Arch::Fsrcnn {
        d,
        s: 12,
        m: 4,
        scale: 4,
        skip: true,
    };
    let wide = fsrcnn(8);
    let mut w = random_weights(&wide, &mut rng);
    for name in ["head.weight", "expand.weight"] {
        let t = w.get_mut(name).unwrap();
        let per = t.data.len() / 8;
        t.data[5 * per..].iter_mut().for_each(|v| *v = 0.0);
    }
    let head_bias = w["head.bias"].data.clone();
    assert!(
        head_bias[5..].iter().any(|b| b.abs() > 1e-3),
        "the dropped head channels carry a constant"
    );
    w.get_mut("expand.bias").unwrap().data[5..]
        .iter_mut()
        .for_each(|v| *v = 0.0);
    let shape = [2usize, 3, 32, 32];
    let input: Vec<f32> = (0..shape.iter().product()).map(|_| rng.uniform()).collect();
    let x = || Tensor::<B, 4>::from_data(TensorData::new(input.clone(), shape), &device);
    let net = Net::<B>::from_weights(wide, &w, &device).unwrap();
    let stats = net.fsrcnn_channel_stats(x());
    let pruned = prune_fsrcnn(&w, 8, 5, &stats, 4);
    let narrow = fsrcnn(5);
    let small = Net::<B>::from_weights(narrow, &pruned, &device).unwrap();
    let a: Vec<f32> = net.forward_sr(x()).into_data().to_vec().unwrap();
    let b: Vec<f32> = small.forward_sr(x()).into_data().to_vec().unwrap();
    let diff = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    println!("pruned 8 → 5 channels: max |difference| = {diff:.2e}");
    assert!(diff < 1e-4, "pruning constant channels changed the output by {diff}");
    assert_eq!(pruned["head.weight"].data, w["head.weight"].data[..5 * 75].to_vec());
    // and dropping live channels does change it (the test can fail)
    let live = prune_fsrcnn(&w, 8, 4, &stats, 4);
    let four = Net::<B>::from_weights(fsrcnn(4), &live, &device).unwrap();
    let c: Vec<f32> = four.forward_sr(x()).into_data().to_vec().unwrap();
    assert!(a.iter().zip(&c).any(|(p, q)| (p - q).abs() > 1e-3));
}

#[test]
fn routing_offset_meets_the_budget_with_the_most_quality() {
    // costs per tile: classifier 1, branches 10 / 20 / 40
    let costs = [1.0, 10.0, 20.0, 40.0];
    let logits = [[0.0, 0.0, 5.0], [0.0, 1.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.505]];
    // b = 0 routes 3/2/1/3: (1 + 110/4)/40 = 71.25 %; the last tile leaves class 3 for class 1
    // below b = -0.2525, giving (1 + 80/4)/40 = 52.5 %
    let (b, pct) = routing_offset(&logits, costs, 60.0).unwrap();
    assert!((b + 0.26).abs() < 0.006, "offset {b}");
    assert!((pct - 52.5).abs() < 1e-9, "cost {pct}");
    let (b, pct) = routing_offset(&logits, costs, 71.25).unwrap();
    assert!(
        b > 0.985 && b < 1.0 + 1e-4,
        "offset {b}: tile 2 goes to class 3 above b = 1"
    );
    assert!((pct - 71.25).abs() < 1e-9);
    assert_eq!(routing_offset(&logits, costs, 200.0).unwrap(), (20.0, 102.5));
    // everything on branch1 costs (1 + 10)/40 = 27.5 %
    assert_eq!(routing_offset(&logits, costs, 20.0), Err(27.5));
}

#[test]
fn class_split_cuts_thirds_within_each_image() {
    // image 0 is sharp (high PSNR everywhere), image 1 noisy (low everywhere)
    let psnr = [40.0, 38.0, 36.0, 30.0, 28.0, 26.0, 41.0, 29.0, 37.0];
    let groups = [0, 0, 0, 1, 1, 1, 0, 1, 0];
    // per image: each image gives a third of its sub-images to every class
    let per_image = class_split(&psnr, &groups);
    assert_eq!(per_image, vec![0, 1, 2, 0, 1, 2, 0, 0, 1]);
    // globally (the paper's split): the sharp image gets no hard class, the noisy one no easy
    let global = class_split(&psnr, &[0; 9]);
    assert_eq!(global, vec![0, 0, 1, 1, 2, 2, 0, 2, 1]);
}

#[test]
fn stages_run_one_by_one_and_checkpoints_must_match_the_options() {
    let root = scratch("stages");
    make_images(&root.join("train"), 2, 200, 6);
    make_images(&root.join("small"), 3, 128, 7);
    make_images(&root.join("val"), 1, 128, 8);
    // a trailing slash on --out still puts the work folder beside the model
    let out = format!("{}/", root.join("model").display());
    let (data, small, val) = (root.join("train"), root.join("small"), root.join("val"));
    let run = |cmd: &str, data: &Path, extra: &[&str]| {
        let mut args = vec![cmd];
        args.extend(io_args(data, &val, &out));
        args.extend_from_slice(&["--iters", "2", "--batch", "2", "--aug", "1.0"]);
        if matches!(cmd, "stage1" | "all") {
            args.extend_from_slice(&["--iters-original", "2"]);
        }
        args.extend_from_slice(extra);
        train_cmd(&args)
    };
    // Images too small for three sub-images each: a clear error, not a panic.
    let (ok, log) = run("stage1", &small, &["--work", root.join("small.work").to_str().unwrap()]);
    assert!(
        !ok && log.contains("leaves class") && log.contains("--global-split"),
        "{log}"
    );
    assert!(!log.contains("original:"), "known before the -O model trains: {log}");
    assert!(
        !root.join("small.work").exists(),
        "a refused run leaves no work folder behind"
    );
    // Scale factors that leave every image under one sub-image are named.
    let (ok, log) = run(
        "prepare",
        &small,
        &["--aug", "0.5", "--work", root.join("small.work").to_str().unwrap()],
    );
    assert!(
        !ok && log.contains("--data: ") && log.contains("at every scale of --aug"),
        "{log}"
    );
    // A bad scale factor, or an option the subcommand does not use, is refused before
    // anything runs.
    let (ok, log) = run("prepare", &data, &["--aug", "0"]);
    assert!(!ok && log.contains("--aug: '0'"), "{log}");
    let (ok, log) = run("stage2", &data, &["--macs-budget", "50"]);
    assert!(!ok && log.contains("--macs-budget is used by export and all"), "{log}");
    // An unknown device is a usage error (exit 2), as an unknown option is.
    let code = Command::new(env!("CARGO_BIN_EXE_classsr-train"))
        .args(["all", "--data", "x", "--val", "y", "--out", "z", "--device", "gpu"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&code.stderr);
    assert!(
        code.status.code() == Some(2) && err.contains("unknown device 'gpu'"),
        "{err}"
    );
    // A name that is not UTF-8 is a usage error too, not a panic.
    let code = Command::new(env!("CARGO_BIN_EXE_classsr-train"))
        .arg("prepare")
        .arg("--data")
        .arg(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
            b"caf\xe9",
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&code.stderr);
    assert!(
        code.status.code() == Some(2) && err.contains("is not valid UTF-8") && !err.contains("panicked"),
        "{err}"
    );
    // A batch that would fill the machine's memory is refused up front.
    let (ok, log) = run("stage1", &data, &["--batch", "100000"]);
    assert!(!ok && log.contains("--batch 100000: at most 256"), "{log}");
    // Validation images that are also training images are said (allowed: a smoke test may).
    let same = root.join("same").display().to_string();
    let mut args = vec!["prepare"];
    args.extend(io_args(&data, &data, &same));
    let (ok, log) = train_cmd(&args);
    assert!(
        ok && log.contains("--val: 2 of its 2 images are also training images"),
        "{log}"
    );
    // Each stage on its own, no --resume needed for the next one.
    for stage in ["stage1", "stage2", "stage3"] {
        let (ok, log) = run(stage, &data, &[]);
        assert!(ok, "{stage}: {log}");
    }
    let work = root.join("model.work");
    assert!(work.join("joint.done.ckpt").exists() && !root.join("model").join(".work").exists());
    // Redoing stage2 keeps stage 1.
    let (ok, log) = run("stage2", &data, &["--force"]);
    assert!(ok, "{log}");
    assert!(work.join("branch3.done.ckpt").exists() && !work.join("joint.done.ckpt").exists());
    // A checkpoint made with other options is refused, not exported as nonsense.
    let (ok, log) = run("export", &data, &["--plain"]);
    assert!(!ok && log.contains("but this run builds"), "{log}");
    let (ok, log) = run("export", &data, &["--iters", "7"]);
    assert!(ok, "{log}");
    // the manifest says how many iterations each step ran, not what export was told
    let m = gstclasssr::manifest::ModelSet::load_dir(&root.join("model"))
        .unwrap()
        .manifest;
    let its = &m.provenance.details["iterations"];
    assert_eq!(
        (its["original"].as_u64(), its["classifier"].as_u64()),
        (Some(2), Some(1)),
        "{its}"
    );
    // export calibrates on the data the model was trained on: other images are refused, and
    // without --aug it takes the scales the model was trained at (here 1.0 only, not the
    // default five, which would be other data).
    let (ok, log) = run("export", &small, &["--force"]);
    assert!(!ok && log.contains("was trained on other data"), "{log}");
    let mut args = vec!["export"];
    args.extend(io_args(&data, &val, &out));
    args.extend_from_slice(&["--force"]);
    let (ok, log) = train_cmd(&args);
    assert!(ok, "{log}");
    // stage2 reads the split of the data it was made from: other data is refused clearly,
    // before --force removes anything; the same folder spelt otherwise is the same data.
    let (ok, log) = run("stage2", &small, &["--force"]);
    assert!(!ok && log.contains("made from other training data"), "{log}");
    assert!(work.join("classifier.done.ckpt").exists());
    let (ok, log) = run("stage3", &data.join("."), &["--force"]);
    assert!(ok, "{log}");
    // stage1 does not put a new split under branches trained on the old one; data that cannot
    // be split is refused before anything runs, also beside a split of other data.
    let (ok, log) = run("stage1", &data, &["--resume", "--global-split"]);
    assert!(!ok && log.contains("were trained on it"), "{log}");
    let (ok, log) = run("stage1", &small, &["--resume"]);
    assert!(!ok && log.contains("leaves class"), "{log}");
    // `all` over an existing model is refused before any training.
    let (ok, log) = run("all", &data, &[]);
    assert!(
        !ok && log.contains("already holds a model") && !log.contains("original:"),
        "{log}"
    );
    // Options that cannot work are refused before --force removes anything: checkpoints of
    // other architectures (naming the stage to redo), missing data, a -O model to start from
    // of another architecture, a budget under the cheapest routing, --work = --out.
    let (ok, log) = run("stage2", &data, &["--plain", "--force"]);
    assert!(
        !ok && log.contains("but this run builds") && log.contains("`stage1 --force`"),
        "{log}"
    );
    let (ok, log) = run("stage3", &data, &["--classifier-width", "16", "--force"]);
    assert!(!ok && log.contains("`stage2 --force`"), "{log}");
    let (ok, log) = run("stage1", &root.join("no-such-data"), &["--force"]);
    assert!(!ok, "{log}");
    let skip_model = concat!(env!("CARGO_MANIFEST_DIR"), "/models/fsrcnn");
    let (ok, log) = run("stage1", &data, &["--force", "--plain", "--init-from", skip_model]);
    assert!(!ok && log.contains("--init-from") && log.contains("--plain"), "{log}");
    for step in ["original", "branch3", "classifier", "joint"] {
        assert!(work.join(format!("{step}.done.ckpt")).exists(), "{step} kept");
    }
    let (ok, log) = run("all", &data, &["--force", "--resume", "--macs-budget", "5"]);
    assert!(
        !ok && log.contains("give at least") && !log.contains("original:"),
        "{log}"
    );
    let model = root.join("model").display().to_string();
    let (ok, log) = run("export", &data, &["--work", &model]);
    assert!(!ok && log.contains("--work must not be --out"), "{log}");
    // A finished -O model is not built on with other data: as if stage1 had been stopped
    // right after it (no split, no branches yet), then run again on other images.
    make_images(&root.join("other"), 2, 200, 9);
    for entry in std::fs::read_dir(&work).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if (name.ends_with(".ckpt") && name != "original.done.ckpt") || name == "split.json" {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let (ok, log) = run("stage1", &root.join("other"), &["--resume"]);
    assert!(
        !ok && log.contains("step 'original' was trained on other data") && log.contains("`stage1 --force`"),
        "{log}"
    );
    assert!(!work.join("split.json").exists(), "no split of the other images");
    let (ok, log) = run("stage1", &data, &["--resume"]);
    assert!(ok && log.contains("original: finished earlier, reusing it"), "{log}");
    // The refusal of other data names the images that differ (an image can also drop out of
    // the same folder, e.g. one skipped now).
    let more = root.join("more");
    std::fs::create_dir_all(&more).unwrap();
    for f in ["img0.png", "img1.png"] {
        std::fs::copy(data.join(f), more.join(f)).unwrap();
    }
    std::fs::copy(data.join("img0.png"), more.join("extra.png")).unwrap();
    let (ok, log) = run("stage2", &more, &[]);
    assert!(!ok && log.contains("new: extra.png"), "{log}");
}

#[test]
fn training_photographs_are_read_upright_and_the_turned_ones_are_known() {
    // 300x200 stored with EXIF orientation 6 (turn 90° clockwise): 200x300 upright, the way
    // `classsr eval` reads the held-out ones.
    let dir = scratch("upright");
    let img = common::picture(300, 200, 3);
    std::fs::write(dir.join("side.jpg"), common::jpeg_with_orientation(&img, 6)).unwrap();
    std::fs::write(dir.join("plain.jpg"), common::jpeg_with_orientation(&img, 1)).unwrap();
    let ds = gstclasssr::train::data::Dataset::load(dir.path(), 4, &[1.0], &mut |_| {}).unwrap();
    assert_eq!(ds.images.len(), 2);
    assert_eq!(ds.turned, vec![dir.join("side.jpg")]);
    let (side, _) = gstclasssr::train::data::read_rgb(&dir.join("side.jpg")).unwrap();
    let (plain, _) = gstclasssr::train::data::read_rgb(&dir.join("plain.jpg")).unwrap();
    assert_eq!((side.width, side.height), (200, 300));
    assert_eq!((plain.width, plain.height), (300, 200));
}

#[test]
fn an_augmentation_factor_too_small_for_an_image_skips_it() {
    // ×0.002 makes nothing of a 300x300 photograph (not even a pixel): that scale is left out
    // for it, and ×1.0 still gives its sub-images.
    let dir = scratch("tiny-aug");
    make_images(dir.path(), 1, 300, 8);
    let load = |aug: &[f64]| gstclasssr::train::data::Dataset::load(dir.path(), 4, aug, &mut |_| {});
    let alone = load(&[1.0]).unwrap().subs.len();
    assert!(alone > 0);
    assert_eq!(load(&[1.0, 0.002]).unwrap().subs.len(), alone);
    assert!(load(&[0.002]).is_err(), "no sub-image at any scale is an error");
    // A panorama whose longer side is brought to 2560 comes out 83 lines high: no sub-image
    // at any scale, so it is skipped (named), not counted as a training image.
    image::RgbImage::from_fn(4000, 130, |x, y| image::Rgb([(x % 256) as u8, (y * 2) as u8, 90]))
        .save(dir.path().join("panorama.png"))
        .unwrap();
    let mut warnings = Vec::new();
    let ds = gstclasssr::train::data::Dataset::load(dir.path(), 4, &[1.0], &mut |w| warnings.push(w)).unwrap();
    assert_eq!((ds.images.len(), ds.subs.len()), (1, alone));
    assert!(
        ds.skipped
            .iter()
            .any(|(f, why)| f.ends_with("panorama.png") && why.contains("no 128x128 sub-image")),
        "{:?}",
        ds.skipped
    );
    assert!(warnings.iter().any(|w| w.contains("panorama.png")), "{warnings:?}");
}
