// Benchmarks through the real element (used by scripts/bench.sh to write BENCHMARKS.md):
// fps of cache off/class/full on a static-camera clip with each run's PSNR against cache=off,
// fps of classsr/original/bicubic on the clip and on videotestsrc, and branch tiles/s batched
// against one tile per ONNX Runtime call (the official test code's way). Runs are alternated and
// the median of several repetitions is reported, with ratios from the same run.
//
//   cargo run --release --example bench -- CLIP [--frames N] [--reps R] [--model DIR]

use std::time::Instant;

use gst::prelude::*;

struct Run {
    frames: Vec<Vec<u8>>,
    seconds: f64,
}

fn run(desc: &str, keep: bool) -> Result<Run, String> {
    let p = gst::parse::launch(desc)
        .map_err(|e| e.to_string())?
        .downcast::<gst::Pipeline>()
        .map_err(|_| "not a pipeline")?;
    let sink = p
        .by_name("s")
        .ok_or("no sink")?
        .downcast::<gst_app::AppSink>()
        .map_err(|_| "not an appsink")?;
    p.set_state(gst::State::Paused).map_err(|e| e.to_string())?;
    // Preroll (negotiation, model loading) is not timed; the first frame is.
    let _ = p.state(gst::ClockTime::from_seconds(60));
    let t0 = Instant::now();
    p.set_state(gst::State::Playing).map_err(|e| e.to_string())?;
    let mut frames = Vec::new();
    let mut n = 0usize;
    while let Ok(s) = sink.pull_sample() {
        n += 1;
        if keep {
            frames.push(s.buffer().unwrap().map_readable().unwrap().to_vec());
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let err = p.bus().and_then(|b| b.pop_filtered(&[gst::MessageType::Error]));
    p.set_state(gst::State::Null).map_err(|e| e.to_string())?;
    if let Some(e) = err {
        if let gst::MessageView::Error(e) = e.view() {
            return Err(e.error().to_string());
        }
    }
    if !keep {
        frames = vec![Vec::new(); n];
    }
    Ok(Run { frames, seconds })
}

fn psnr(a: &[Vec<u8>], b: &[Vec<u8>]) -> f64 {
    let (mut se, mut n) = (0f64, 0usize);
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.iter().zip(y) {
            let d = *p as f64 - *q as f64;
            se += d * d;
            n += 1;
        }
    }
    if se == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0f64 * 255.0 / (se / n as f64)).log10()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let clip = args
        .first()
        .ok_or("usage: bench CLIP [--frames N] [--reps R] [--model DIR]")?
        .clone();
    let opt = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let frames: usize = opt("--frames", "200").parse().map_err(|_| "--frames")?;
    let reps: usize = opt("--reps", "3").parse().map_err(|_| "--reps")?;
    let model = opt("--model", "");
    gst::init().map_err(|e| e.to_string())?;
    gstclasssr::plugin_register_static().map_err(|e| e.to_string())?;
    let model_prop = if model.is_empty() {
        String::new()
    } else {
        format!("model={model}")
    };
    let clip_src = |w: u32, h: u32| {
        format!(
            "filesrc location={clip} ! decodebin ! videoconvert ! videoscale ! video/x-raw,format=RGB,width={w},height={h} \
             ! identity eos-after={frames}"
        )
    };

    println!("## Per-tile cache on a static-camera clip\n");
    println!("`{clip}` scaled to 192x144 (output 768x576), first {frames} frames, {reps} alternated runs per setting, median fps; PSNR of each setting's frames against cache=off.\n");
    println!("| cache | fps (median) | x cache=off | PSNR vs off (dB) |");
    println!("|---|---|---|---|");
    let settings = [("off", ""), ("class", ""), ("full", "")];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); settings.len()];
    let mut outputs: Vec<Vec<Vec<u8>>> = vec![Vec::new(); settings.len()];
    for r in 0..reps {
        for (k, (cache, extra)) in settings.iter().enumerate() {
            let desc = format!(
                "{} ! classsr {model_prop} device=cpu cache={cache} {extra} ! appsink name=s sync=false",
                clip_src(192, 144)
            );
            let out = run(&desc, r == 0)?;
            times[k].push(out.frames.len() as f64 / out.seconds);
            if r == 0 {
                outputs[k] = out.frames;
            }
        }
    }
    let base = median(times[0].clone());
    for (k, (cache, _)) in settings.iter().enumerate() {
        let fps = median(times[k].clone());
        let p = if k == 0 {
            "reference".to_string()
        } else {
            format!("{:.2}", psnr(&outputs[k], &outputs[0]))
        };
        println!("| {cache} | {fps:.1} | {:.2} | {p} |", fps / base);
    }

    println!("\n## Modes (cache off)\n");
    println!(
        "Median fps of {reps} alternated runs of {frames} frames; ratios against `original` from the same runs.\n"
    );
    println!("| source | input | mode | fps (median) | x original |");
    println!("|---|---|---|---|---|");
    let sources: Vec<(String, String, String)> = vec![
        ("vtest.avi".into(), "192x144".into(), clip_src(192, 144)),
        ("vtest.avi".into(), "384x288".into(), clip_src(384, 288)),
        (
            "videotestsrc".into(),
            "320x240".into(),
            format!("videotestsrc num-buffers={frames} ! video/x-raw,format=RGB,width=320,height=240"),
        ),
    ];
    let modes = ["classsr", "original", "bicubic"];
    for (name, size, src) in &sources {
        let mut t: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
        for _ in 0..reps {
            for (k, mode) in modes.iter().enumerate() {
                let desc = format!(
                    "{src} ! classsr {model_prop} device=cpu cache=off mode={mode} ! appsink name=s sync=false"
                );
                let out = run(&desc, false)?;
                t[k].push(out.frames.len() as f64 / out.seconds);
            }
        }
        let orig = median(t[1].clone());
        for (k, mode) in modes.iter().enumerate() {
            let fps = median(t[k].clone());
            println!("| {name} | {size} | {mode} | {fps:.1} | {:.2} |", fps / orig);
        }
    }

    const BATCHES: [usize; 5] = [1, 8, 32, 128, 256];
    println!("\n## Batched branch runs against one tile per call\n");
    println!(
        "Each branch of the model on the same 256 random 32x32 tiles in calls of B tiles (B = 1 is the official test code's way), ONNX Runtime on the CPU, one warm-up pass, median of {reps} runs.\n"
    );
    println!(
        "| branch | {} | best x one tile per call |",
        BATCHES.map(|b| format!("tiles/s B={b}")).join(" | ")
    );
    println!("|---|{}---|", "---|".repeat(BATCHES.len()));
    let set = gstclasssr::manifest::ModelSet::load(&model).map_err(|e| e.to_string())?;
    let cfg = gstclasssr::runtime::SessionConfig {
        device: gstclasssr::runtime::DeviceRequest::Cpu,
        device_id: 0,
        threads: 0,
    };
    let mut m = gstclasssr::engine::Model::load(&set, &cfg).map_err(|e| e.to_string())?;
    let t = set.manifest.tile_size as usize;
    let n = 256;
    let mut seed = 1u64;
    let tiles: Vec<f32> = (0..n * 3 * t * t)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    for j in 0..3 {
        let session = &mut m.branches[j];
        let mut rates = Vec::new();
        for b in BATCHES {
            let mut pass = || -> Result<f64, String> {
                let t0 = Instant::now();
                for chunk in tiles.chunks(b * 3 * t * t) {
                    let x = ort::value::TensorRef::from_array_view(([chunk.len() / (3 * t * t), 3, t, t], chunk))
                        .map_err(|e| e.to_string())?;
                    session.run(ort::inputs![x]).map_err(|e| e.to_string())?;
                }
                Ok(n as f64 / t0.elapsed().as_secs_f64())
            };
            pass()?;
            let runs = (0..reps).map(|_| pass()).collect::<Result<Vec<_>, _>>()?;
            rates.push(median(runs));
        }
        let best = rates.iter().cloned().fold(0.0, f64::max);
        println!(
            "| branch{} | {} | {:.1} |",
            j + 1,
            rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" | "),
            best / rates[0]
        );
    }
    Ok(())
}
