// Benchmarks through the real element (used by scripts/bench.sh to write BENCHMARKS.md):
// fps of cache off/class/full on a static-camera clip with each run's PSNR against cache=off,
// cache=class against cache=off frame by frame (two elements, each frame pushed to both),
// fps of classsr/original/bicubic on the clip, on videotestsrc and on photographs (--photos), and branch tiles/s batched
// against one tile per ONNX Runtime call (the official test code's way). The clip is decoded
// and scaled once to raw RGB first, so the decoder's time is not counted as the element's.
// Runs are alternated and the median of several repetitions is reported, with ratios from the
// same run.
//
//   cargo run --release --example bench -- CLIP [--frames N] [--reps R] [--model DIR] [--photos DIR] [--cache-only] [--paired-rounds N]

use std::time::Instant;

use gst::prelude::*;

struct Run {
    frames: Vec<Vec<u8>>,
    seconds: f64,
    /// Share of tiles whose HR output came from the cache (with stats=true).
    hit_share: f64,
    /// Share of tiles recomputed only in their changed part (with stats=true).
    partial_share: f64,
    /// MACs spent against -O's on the same frames (with stats=true).
    macs_share: f64,
    /// The element's processing time of each frame in ms (with stats=true).
    frame_ms: Vec<f64>,
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
    let bus = p.bus().ok_or("no bus")?;
    let (mut hits, mut tiles, mut err, mut frame_ms) = (0u64, 0u64, None, Vec::new());
    let (mut partial, mut macs, mut original_macs) = (0u64, 0u64, 0u64);
    while let Some(m) = bus.pop() {
        match m.view() {
            gst::MessageView::Error(e) => err = Some(e.error().to_string()),
            gst::MessageView::Element(_) => {
                if let Some(st) = m.structure().filter(|s| s.name() == "classsr-stats") {
                    hits += st.get::<u32>("full-cache-hits").unwrap_or(0) as u64;
                    tiles += st.get::<u32>("tiles").unwrap_or(0) as u64;
                    partial += st.get::<u32>("partial-tiles").unwrap_or(0) as u64;
                    macs += st.get::<u64>("macs").unwrap_or(0);
                    original_macs += st.get::<u64>("original-macs").unwrap_or(0);
                    frame_ms.push(st.get::<u64>("processing-time").unwrap_or(0) as f64 / 1e6);
                }
            }
            _ => {}
        }
    }
    p.set_state(gst::State::Null).map_err(|e| e.to_string())?;
    if let Some(e) = err {
        return Err(e);
    }
    if !keep {
        frames = vec![Vec::new(); n];
    }
    let share = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(Run {
        frames,
        seconds,
        hit_share: share(hits, tiles),
        partial_share: share(partial, tiles),
        macs_share: share(macs, original_macs),
        frame_ms,
    })
}

/// The frames of the media file `path` (at most `limit`), decoded and scaled to RGB `w`x`h`.
fn decode(path: &str, (w, h): (u32, u32), limit: Option<usize>) -> Result<Run, String> {
    let limit = limit.map_or(String::new(), |n| format!("! identity eos-after={n} "));
    run(
        &format!(
            "filesrc location={path} ! decodebin ! videoconvert ! videoscale ! video/x-raw,format=RGB,width={w},height={h} \
             {limit}! appsink name=s sync=false"
        ),
        true,
    )
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

/// Frame-by-frame timings of two `classsr` elements, cache=off and cache=class.
struct Paired {
    /// Seconds per frame: [off, class].
    secs: Vec<[f64; 2]>,
    /// Class-cache hits and tiles of the class element.
    hits: (u64, u64),
    /// Per element [off, class], the `classify-time` and `processing-time` of its frames
    /// (seconds, the same frames as `secs`).
    classify: [Vec<f64>; 2],
    processing: [Vec<f64>; 2],
}

impl Paired {
    fn row(&self, w: u32, h: u32) -> String {
        let n = self.secs.len();
        let total = |s: &[[f64; 2]]| {
            let (off, class) = s.iter().fold((0.0, 0.0), |(a, b), p| (a + p[0], b + p[1]));
            off / class
        };
        let mut per: Vec<f64> = self.secs.iter().map(|p| p[0] / p[1]).collect();
        per.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median_per = |s: &[[f64; 2]]| median(s.iter().map(|p| p[0] / p[1]).collect());
        let (lo, hi) = self.interval(total);
        let (mlo, mhi) = self.interval(median_per);
        let faster = per.iter().filter(|&&r| r > 1.0).count();
        let ms = |k: usize| median(self.secs.iter().map(|p| p[k] * 1e3).collect());
        format!(
            "| {w}x{h} | {n} | {:.0}% | {faster} ({:.0}%) | {:.4} ({lo:.4} – {hi:.4}) | {:.4} ({mlo:.4} – {mhi:.4}) | {:.4}, {:.4} | {:.2} / {:.2} |",
            100.0 * self.hits.0 as f64 / self.hits.1.max(1) as f64,
            100.0 * faster as f64 / n as f64,
            total(&self.secs),
            median_per(&self.secs),
            per[n / 4],
            per[3 * n / 4],
            ms(0),
            ms(1),
        )
    }

    /// Per element, the time spent classifying (the only work cache=class changes) against
    /// the element's processing time, and the difference as a share of cache=off's.
    fn classify_rows(&self) -> String {
        let sum = |v: &[f64]| v.iter().sum::<f64>();
        let ms = |v: &[f64]| median(v.iter().map(|s| s * 1e3).collect());
        let mut rows = String::new();
        for (k, name) in ["off", "class"].iter().enumerate() {
            rows += &format!(
                "| {name} | {:.3} | {:.2} | {:.2} % |\n",
                ms(&self.classify[k]),
                ms(&self.processing[k]),
                100.0 * sum(&self.classify[k]) / sum(&self.processing[k]),
            );
        }
        let saved = (sum(&self.classify[0]) - sum(&self.classify[1])) / sum(&self.processing[0]);
        rows + &format!(
            "\nClassifying took {:.2} % {} of cache=off's processing time with cache=class (the rest of a frame is the same work when the classes agree).",
            100.0 * saved.abs(),
            if saved >= 0.0 { "less" } else { "more" }
        )
    }

    /// 95 % interval of `stat` over the frames: 2000 resamplings of the frames with
    /// replacement (a fixed LCG, so the interval is the same for the same timings).
    fn interval(&self, stat: impl Fn(&[[f64; 2]]) -> f64) -> (f64, f64) {
        let n = self.secs.len();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut sample = vec![[0.0; 2]; n];
        let mut draws: Vec<f64> = (0..2000)
            .map(|_| {
                for s in sample.iter_mut() {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    *s = self.secs[((seed >> 33) as usize) % n];
                }
                stat(&sample)
            })
            .collect();
        draws.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (draws[draws.len() * 25 / 1000], draws[draws.len() * 975 / 1000])
    }
}

/// Pushes each RGB frame of `frames` (`w`x`h`, one after the other) through a cache=off and a
/// cache=class element in turn (which goes first alternates from frame to frame) and times
/// each push to its output buffer; `rounds` times, with new elements each round, leaving out
/// each round's first frame.
fn paired_frames(frames: &[u8], (w, h): (usize, usize), model: &str, rounds: usize) -> Result<Paired, String> {
    let caps = format!("video/x-raw,format=RGB,width={w},height={h},framerate=25/1");
    let mut secs = Vec::new();
    let mut hits = (0u64, 0u64);
    let mut classify = [Vec::new(), Vec::new()];
    let mut processing = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let mut elements = Vec::new();
        for cache in ["off", "class"] {
            let mut b = gst::ElementFactory::make("classsr")
                .property_from_str("device", "cpu")
                .property_from_str("cache", cache)
                .property_from_str("stats", "true");
            if !model.is_empty() {
                b = b.property_from_str("model", model);
            }
            let element = b.build().map_err(|e| e.to_string())?;
            let bus = gst::Bus::new();
            element.set_bus(Some(&bus));
            let mut harness = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
            harness.set_src_caps_str(&caps);
            elements.push((harness, bus));
        }
        for (k, frame) in frames.chunks_exact(w * h * 3).enumerate() {
            let mut t = [0.0; 2];
            let first = (k + round) % 2;
            for e in [first, 1 - first] {
                let harness = &mut elements[e].0;
                let buffer = gst::Buffer::from_slice(frame.to_vec());
                let started = Instant::now();
                harness.push(buffer).map_err(|e| format!("push: {e:?}"))?;
                harness.pull().map_err(|e| format!("pull: {e}"))?;
                t[e] = started.elapsed().as_secs_f64();
            }
            if k > 0 {
                secs.push(t);
            }
        }
        for (e, (_, bus)) in elements.iter().enumerate() {
            while let Some(m) = bus.pop_filtered(&[gst::MessageType::Element]) {
                let Some(st) = m.structure().filter(|s| s.name() == "classsr-stats") else {
                    continue;
                };
                let ns = |f: &str| st.get::<u64>(f).map_err(|err| format!("stats {f}: {err}"));
                // (the first frame, left out of `secs`, computes every tile)
                if st.get::<u64>("frame").map_err(|err| err.to_string())? > 1 {
                    classify[e].push(ns("classify-time")? as f64 * 1e-9);
                    processing[e].push(ns("processing-time")? as f64 * 1e-9);
                }
                if e == 1 {
                    hits.0 += st.get::<u32>("class-cache-hits").unwrap_or(0) as u64;
                    hits.1 += st.get::<u32>("tiles").unwrap_or(0) as u64;
                }
            }
        }
        for (harness, _) in &elements {
            if let Some(e) = harness.element() {
                let _ = e.set_state(gst::State::Null);
            }
        }
    }
    if secs.is_empty() {
        return Err("no frames to pair: the clip has one frame".into());
    }
    if classify.iter().any(|c| c.len() != secs.len()) {
        return Err(format!(
            "{} frames timed, but stats for {} and {}",
            secs.len(),
            classify[0].len(),
            classify[1].len()
        ));
    }
    Ok(Paired {
        secs,
        hits,
        classify,
        processing,
    })
}

/// Sizes the clip is scaled to (192x144 gives the 768x576 output).
const CLIP_SIZES: [(u32, u32); 2] = [(192, 144), (384, 288)];
/// Size the photographs of --photos are scaled to (2560x1600 photographs: their x4 LR).
const PHOTO_SIZE: (u32, u32) = (640, 400);

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let clip = args
        .first()
        .ok_or(
            "usage: bench CLIP [--frames N] [--reps R] [--model DIR] [--photos DIR] [--cache-only] [--paired-rounds N]",
        )?
        .clone();
    let opt = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    let frames: usize = opt("--frames", "200").parse().map_err(|_| "--frames")?;
    let photos = opt("--photos", "");
    let reps: usize = opt("--reps", "3").parse().map_err(|_| "--reps")?;
    let model = opt("--model", "");
    let cache_only = args.iter().any(|a| a == "--cache-only");
    gst::init().map_err(|e| e.to_string())?;
    gstclasssr::plugin_register_static().map_err(|e| e.to_string())?;
    let model_prop = if model.is_empty() {
        String::new()
    } else {
        format!("model={model}")
    };
    // The clip's first frames, decoded and scaled once per size to a raw RGB file.
    let tmp = std::env::temp_dir().join(format!("classsr-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let mut raw = std::collections::HashMap::new();
    for (w, h) in CLIP_SIZES {
        let file = tmp.join(format!("clip-{w}x{h}.rgb"));
        let decoded = decode(&clip, (w, h), Some(frames))?;
        std::fs::write(&file, decoded.frames.concat()).map_err(|e| e.to_string())?;
        raw.insert((w, h), file);
    }
    // The photographs of --photos (each decoded and scaled to PHOTO_SIZE once), one after the
    // other, each repeated for an equal part of the frames, as one raw RGB file.
    let mut photo_names = Vec::new();
    if !photos.is_empty() {
        let mut files: Vec<_> = std::fs::read_dir(&photos)
            .map_err(|e| format!("{photos}: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        let (w, h) = PHOTO_SIZE;
        let mut all = Vec::new();
        for (k, f) in files.iter().enumerate() {
            let one = decode(&f.display().to_string(), (w, h), None)?;
            let frame = one.frames.first().ok_or(format!("{}: no frame", f.display()))?;
            let count = (k + 1) * frames / files.len() - k * frames / files.len();
            for _ in 0..count {
                all.extend_from_slice(frame);
            }
            photo_names.push(
                f.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
        let file = tmp.join("photos.rgb");
        std::fs::write(&file, all).map_err(|e| e.to_string())?;
        raw.insert(PHOTO_SIZE, file);
    }
    let clip_src = |w: u32, h: u32| {
        format!(
            "filesrc location={} ! rawvideoparse format=rgb width={w} height={h} framerate=25/1",
            raw[&(w, h)].display()
        )
    };

    println!("## Per-tile cache on a static-camera clip\n");
    println!("`{clip}` decoded and scaled once to raw RGB (192x144: output 768x576, the issue's size; 384x288: output 1536x1152), first {frames} frames, {reps} rounds of timed runs (one run of each setting in turn), median fps; x cache=off: the median over the rounds of the run's fps over that round's cache=off run; PSNR of each setting's frames against cache=off, and the hits, from one more run before them (which keeps the frames and posts stats, so it is not timed); the element's processing time per frame (its `processing-time` stat: median, 95th percentile and slowest of the frames after the first, which computes every tile whatever the cache) from another untimed run that posts stats only. Recomputed in part: the share of tiles whose branch ran only around their changed 8x8 blocks (cache=full with a threshold above 0), the rest of their output kept; MACs % of -O: the MACs spent (classifier and branches) against those of the -O model on every tile of the same frames. The cache's default threshold is 2; the higher thresholds trade PSNR for reuse: a reused block may differ from the frame by up to the threshold (on this clip mostly compression noise, which cache=off follows frame by frame). With the default `cache-correction=true`, reused outputs get the bicubic upscale of that difference, scaled by their branch's response gain (the rows with `cache-correction=false` go without it). The default `cache-refresh=30` recomputes 1/30 of the tiles each frame (staggered), not every tile every 30th frame.\n");
    println!("| input | cache | fps (median) | x cache=off | full-cache hits | recomputed in part | MACs % of -O | PSNR vs off (dB) | frame ms: median / p95 / slowest |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let settings = [
        ("off", ""),
        ("class", ""),
        ("full", ""),
        ("full", "cache-threshold=1"),
        ("full", "cache-threshold=4"),
        ("full", "cache-threshold=6"),
        ("full", "cache-threshold=8"),
        ("full", "cache-threshold=2 cache-correction=false"),
        ("full", "cache-threshold=8 cache-correction=false"),
    ];
    for (w, h) in CLIP_SIZES {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); settings.len()];
        let mut outputs: Vec<Vec<Vec<u8>>> = vec![Vec::new(); settings.len()];
        let mut hits = vec![(0f64, 0f64, 0f64); settings.len()];
        let mut frame_ms: Vec<Vec<f64>> = vec![Vec::new(); settings.len()];
        // run 0 keeps the frames (for PSNR) and posts stats (for the hits), run 1 posts stats
        // only (for the element's time per frame, without run 0's copying beside it): neither
        // is timed
        for r in 0..reps + 2 {
            for (k, (cache, extra)) in settings.iter().enumerate() {
                let desc = format!(
                    "{} ! classsr {model_prop} device=cpu cache={cache} {extra} stats={} ! appsink name=s sync=false",
                    clip_src(w, h),
                    r < 2
                );
                let out = run(&desc, r == 0)?;
                if r == 0 {
                    outputs[k] = out.frames;
                    hits[k] = (out.hit_share, out.partial_share, out.macs_share);
                } else if r == 1 {
                    frame_ms[k] = out.frame_ms;
                } else {
                    times[k].push(out.frames.len() as f64 / out.seconds);
                }
            }
        }
        for (k, (cache, extra)) in settings.iter().enumerate() {
            let fps = median(times[k].clone());
            // each round's runs are close in time: the ratio to that round's cache=off run
            // cancels the machine's slower spells better than a ratio of medians
            let ratio = median(times[k].iter().zip(&times[0]).map(|(t, off)| t / off).collect());
            let p = if k == 0 {
                "reference".to_string()
            } else {
                match psnr(&outputs[k], &outputs[0]) {
                    p if p.is_infinite() => "identical".to_string(),
                    p => format!("{p:.2}"),
                }
            };
            let name = if extra.is_empty() {
                cache.to_string()
            } else {
                format!("{cache}, {extra}")
            };
            // the first frame computes every tile whatever the cache
            let mut later = frame_ms[k][1..].to_vec();
            later.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let p95 = later[(later.len() * 95 / 100).min(later.len() - 1)];
            let slowest = later[later.len() - 1];
            println!(
                "| {w}x{h} | {name} | {fps:.1} | {ratio:.2} | {:.0}% | {:.0}% | {:.1} | {p} | {:.1} / {p95:.1} / {slowest:.1} |",
                100.0 * hits[k].0,
                100.0 * hits[k].1,
                100.0 * hits[k].2,
                median(frame_ms[k].clone())
            );
        }
    }
    // cache=class against cache=off: what class skips (the classifier on unchanged tiles) is
    // a small part of a frame, within the noise of whole runs on a shared machine, so the two
    // are compared frame by frame (see `paired_frames`)
    let (w, h) = CLIP_SIZES[0];
    let frames_rgb = std::fs::read(&raw[&(w, h)]).map_err(|e| e.to_string())?;
    let rounds: usize = opt("--paired-rounds", &(2 * reps).to_string())
        .parse()
        .ok()
        .filter(|&r| r > 0)
        .ok_or("--paired-rounds takes a number of rounds, at least 1")?;
    let paired = paired_frames(&frames_rgb, (w as usize, h as usize), &model, rounds)?;
    let set = gstclasssr::manifest::ModelSet::load(&model).map_err(|e| e.to_string())?;
    let of_o = |macs: u64| 100.0 * macs as f64 / set.manifest.branches[2].macs_per_tile as f64;
    println!("\n### cache=class against cache=off, frame by frame\n");
    println!(
        "`cache=class` reuses the class of a tile that did not change and leaves it out of the classifier's batch; its output is the same as cache=off's (PSNR \"identical\" above). The classifier is a small part of a frame's work ({:.1} % of the MACs of -O per tile against {:.0} % for branch1, plus a cost per run that does not depend on the tiles), so whole runs, as above, cannot tell the two apart on this machine. Here each frame of the clip at {w}x{h} goes through two elements in the same process, one with cache=off and one with cache=class (gst_check Harness, device=cpu, stats=true on both), in turn, the first of the two alternating from frame to frame; each push is timed to its output buffer. {rounds} rounds of the {frames} frames, each round with new elements, without each round's first frame (every tile is computed). Time ratio: the total time of cache=off over that of cache=class (above 1: class faster), and per frame: the median of the same ratio frame by frame (less swayed by the frames another process on the machine slowed down), each with its 95 % interval from 2000 bootstrap resamplings of the frames; quartiles of the ratio frame by frame.\n",
        of_o(set.manifest.classifier.macs_per_tile),
        of_o(set.manifest.branches[0].macs_per_tile)
    );
    println!("| input | frames paired | class-cache hits | class faster in | time ratio off / class (95 % interval) | per frame: median ratio (95 % interval) | per frame: quartiles | ms per frame: off / class (medians) |");
    println!("|---|---|---|---|---|---|---|---|");
    println!("{}", paired.row(w, h));
    println!(
        "\nWhere cache=class differs from cache=off: the elements' own `classify-time` (gathering the tiles, comparing them with the cache, the classifier's runs on the changed ones, routing) against their `processing-time`, from their stats for the same frames (medians per frame; share: totals).\n"
    );
    println!("| cache | classify ms per frame | processing ms per frame | classify share of processing |");
    println!("|---|---|---|---|");
    println!("{}", paired.classify_rows());
    if cache_only {
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(());
    }
    // the any-time knob three QoS steps towards the cheaper branches (see the bias table)
    let bias = -3.0 * set.manifest.qos_step();
    println!("\n## Modes (cache off)\n");
    println!(
        "Median fps of {reps} alternated runs of {frames} frames; ratios against `original` from the same runs. The photographs (with --photos) are scaled to {}x{} and shown one after the other, each for an equal part of the frames. `classsr bias={bias:.2}` is the element with its routing knob three QoS steps towards the cheaper branches (its PSNR on photographs is in the bias table below).\n",
        PHOTO_SIZE.0,
        PHOTO_SIZE.1
    );
    println!("| source | input | mode | fps (median) | x original |");
    println!("|---|---|---|---|---|");
    let mut sources: Vec<(String, String, String)> = vec![
        ("vtest.avi".into(), "192x144".into(), clip_src(192, 144)),
        ("vtest.avi".into(), "384x288".into(), clip_src(384, 288)),
        (
            "videotestsrc".into(),
            "320x240".into(),
            format!("videotestsrc num-buffers={frames} ! video/x-raw,format=RGB,width=320,height=240"),
        ),
    ];
    if !photo_names.is_empty() {
        let (w, h) = PHOTO_SIZE;
        sources.push((
            format!("photographs ({})", photo_names.join(", ")),
            format!("{w}x{h}"),
            clip_src(w, h),
        ));
    }
    // (label, element properties)
    let modes: Vec<(String, String)> = ["classsr", "original", "bicubic"]
        .iter()
        .map(|m| (m.to_string(), format!("mode={m}")))
        .chain(std::iter::once((
            format!("classsr bias={bias:.2}"),
            format!("mode=classsr bias={bias}"),
        )))
        .collect();
    for (name, size, src) in &sources {
        let mut t: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
        for _ in 0..reps {
            for (k, (_, props)) in modes.iter().enumerate() {
                let desc =
                    format!("{src} ! classsr {model_prop} device=cpu cache=off {props} ! appsink name=s sync=false");
                let out = run(&desc, false)?;
                t[k].push(out.frames.len() as f64 / out.seconds);
            }
        }
        let orig = median(t[1].clone());
        for (k, (mode, _)) in modes.iter().enumerate() {
            let fps = median(t[k].clone());
            println!("| {name} | {size} | {mode} | {fps:.1} | {:.2} |", fps / orig);
        }
    }

    const BATCHES: [usize; 5] = [1, 8, 32, 128, 256];
    println!("\n## Batched branch runs against one tile per call\n");
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "Each branch of the model on the same 256 random 32x32 tiles, ONNX Runtime on the CPU, one warm-up pass, median of {reps} runs. B = tiles per call on one session with ONNX Runtime's default threads (one per core); B = 1 is the official test code's way. \"As written\" runs the model file as it is; the other columns run it after the element's load-time rewrites (PReLU in its CPU form, the x4 tail as phase planes). The element column is the element's way: the tiles shared out between {workers} one-thread sessions (one per core), each running its share in calls of at most {} tiles (max-batch's automatic value on the CPU).\n",
        gstclasssr::engine::CPU_BATCH
    );
    println!(
        "| branch | tiles/s as written B=1 | {} | tiles/s element ({workers} x 1 thread) | element x as written B=1 | best x B=1 |",
        BATCHES.map(|b| format!("tiles/s B={b}")).join(" | ")
    );
    println!("|---|---|{}---|---|---|", "---|".repeat(BATCHES.len()));
    let t = set.manifest.tile_size as usize;
    let item = 3 * t * t;
    let n = 256;
    let mut seed = 1u64;
    let tiles: Vec<f32> = (0..n * item)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    let run_on = |session: &mut ort::session::Session, chunk: &[f32]| -> Result<(), String> {
        let x = ort::value::TensorRef::from_array_view(([chunk.len() / item, 3, t, t], chunk))
            .map_err(|e| e.to_string())?;
        session.run(ort::inputs![x]).map_err(|e| e.to_string())?;
        Ok(())
    };
    let timed = |pass: &mut dyn FnMut() -> Result<(), String>| -> Result<f64, String> {
        pass()?;
        let mut rates = Vec::new();
        for _ in 0..reps {
            let t0 = Instant::now();
            pass()?;
            rates.push(n as f64 / t0.elapsed().as_secs_f64());
        }
        Ok(median(rates))
    };
    for j in 0..3 {
        let written = &set.branches[j];
        let mut as_written = gstclasssr::runtime::cpu_session_as_is(written, "branch", 0).map_err(|e| e.to_string())?;
        let official = timed(&mut || {
            for chunk in tiles.chunks(item) {
                run_on(&mut as_written, chunk)?;
            }
            Ok(())
        })?;
        let phased = gstclasssr::onnx::phase_output::phase_output(
            written,
            &set.manifest.branches[j].output,
            set.manifest.scale as usize,
        );
        let bytes = phased.as_deref().unwrap_or(written);
        let mut single = gstclasssr::runtime::cpu_session(bytes, "branch", 0).map_err(|e| e.to_string())?;
        let mut rates = Vec::new();
        for b in BATCHES {
            rates.push(timed(&mut || {
                for chunk in tiles.chunks(b * item) {
                    run_on(&mut single, chunk)?;
                }
                Ok(())
            })?);
        }
        let mut ones = (0..workers)
            .map(|_| gstclasssr::runtime::cpu_session(bytes, "branch", 1).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let share = n.div_ceil(workers) * item;
        let element = timed(&mut || {
            std::thread::scope(|s| {
                let handles: Vec<_> = ones
                    .iter_mut()
                    .zip(tiles.chunks(share))
                    .map(|(session, part)| {
                        s.spawn(move || {
                            gstclasssr::engine::batch_calls(part.len() / item, gstclasssr::engine::CPU_BATCH)
                                .try_for_each(|r| run_on(session, &part[r.start * item..r.end * item]))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .try_for_each(|h| h.join().map_err(|_| "worker panicked".to_string())?)
            })
        })?;
        let best = rates.iter().cloned().fold(element, f64::max);
        println!(
            "| branch{} | {official:.0} | {} | {element:.0} | {:.1} | {:.1} |",
            j + 1,
            rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(" | "),
            element / official,
            best / rates[0]
        );
    }
    std::fs::remove_dir_all(&tmp).ok();
    Ok(())
}
