// Reliability: two elements in one pipeline and two pipelines at once, hundreds of random frame sizes and
// formats through the Harness, and property changes from another thread while playing.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use common::*;
use gst::prelude::*;

const KA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/known-answer");

#[test]
fn two_elements_in_one_pipeline_and_two_pipelines_at_once() {
    init();
    // Two pipelines in two threads, one of them with two classsr in a row; each must deliver
    // every frame at its size. They run at once for sure: the streaming thread of each waits,
    // after its last classsr made its first frame, until the other's has too.
    let chained = format!(
        "videotestsrc num-buffers=60 ! video/x-raw,format=RGB,width=16,height=12 ! classsr model={KA} mode=branch1 \
         ! classsr name=last model={KA} mode=branch3 ! appsink name=s sync=false"
    );
    let single = format!(
        "videotestsrc num-buffers=60 ! video/x-raw,format=RGB,width=96,height=64 ! classsr name=last model={KA} \
         ! appsink name=s sync=false"
    );
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = [(chained, 256usize, 192usize), (single, 384, 256)]
        .into_iter()
        .map(|(desc, w, h)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let p = gst::parse::launch(&desc).unwrap().downcast::<gst::Pipeline>().unwrap();
                let sink = p.by_name("s").unwrap().downcast::<gst_app::AppSink>().unwrap();
                let src = p.by_name("last").unwrap().static_pad("src").unwrap();
                src.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                    barrier.wait();
                    gst::PadProbeReturn::Remove
                });
                p.set_state(gst::State::Playing).unwrap();
                let mut frames = 0;
                while let Ok(sample) = sink.pull_sample() {
                    let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
                    assert_eq!((info.width() as usize, info.height() as usize), (w, h));
                    assert_eq!(sample.buffer().unwrap().size(), w * h * 3);
                    frames += 1;
                }
                let eos = p.bus().unwrap().timed_pop_filtered(
                    gst::ClockTime::from_seconds(30),
                    &[gst::MessageType::Eos, gst::MessageType::Error],
                );
                p.set_state(gst::State::Null).unwrap();
                assert!(
                    matches!(eos.as_ref().map(|m| m.view()), Some(gst::MessageView::Eos(_))),
                    "{eos:?}"
                );
                frames
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 60);
    }
}

/// Keys cubic kernel (a = −0.5) and the triangle (bilinear) kernel, with their supports.
fn cubic(t: f64) -> f64 {
    let t = t.abs();
    if t < 1.0 {
        (1.5 * t - 2.5) * t * t + 1.0
    } else if t < 2.0 {
        ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0
    } else {
        0.0
    }
}

fn triangle(t: f64) -> f64 {
    (1.0 - t.abs()).max(0.0)
}

/// Reference ×s upscale of RGB by a separable `kernel` of `support` (2 for cubic, 1 for the
/// triangle), half-pixel centres, clamped edges, in f64 and rounded once (alpha 255): fast
/// enough for hundreds of frames of up to 1200x1200.
fn reference_resample(img: &Rgba, s: usize, kernel: fn(f64) -> f64, support: i64) -> Rgba {
    let (w, h) = (img.width, img.height);
    // per output position along an axis of n input samples: (input index, weight) taps
    let taps = |n: usize| -> Vec<Vec<(usize, f64)>> {
        (0..n * s)
            .map(|o| {
                let src = (o as f64 + 0.5) / s as f64 - 0.5;
                let i = src.floor() as i64;
                (i - support + 1..=i + support)
                    .map(|k| (k.clamp(0, n as i64 - 1) as usize, kernel(src - k as f64)))
                    .collect()
            })
            .collect()
    };
    let (tx, ty) = (taps(w), taps(h));
    // horizontal pass: h rows of w·s samples per colour
    let rows: Vec<[f64; 3]> = (0..h)
        .flat_map(|y| {
            tx.iter().map(move |t| {
                let mut acc = [0.0; 3];
                for &(x, wt) in t {
                    let p = img.at(x, y);
                    for c in 0..3 {
                        acc[c] += wt * p[c] as f64;
                    }
                }
                acc
            })
        })
        .collect();
    let ow = w * s;
    Rgba::new(ow, h * s, |ox, oy| {
        let mut acc = [0.0; 3];
        for &(y, wt) in &ty[oy] {
            let r = rows[y * ow + ox];
            for c in 0..3 {
                acc[c] += wt * r[c];
            }
        }
        let v = |c: usize| acc[c].round().clamp(0.0, 255.0) as u8;
        [v(0), v(1), v(2), 255]
    })
}

#[test]
fn random_sizes_formats_and_contents_never_panic() {
    // Every mode on random sizes (1..300 a side, most smaller than a tile along one axis or
    // not a multiple of the tile stride) and formats. The known-answer branches are exact
    // resamplers, so where a mode runs one branch (or bicubic) on every tile the output is
    // checked against an independent reference: nearest exactly, bilinear and bicubic within
    // one level (rounding: the tiled fixed-point merge against the reference's f64).
    const MODES: [&str; 7] = [
        "classsr", "original", "bicubic", "branch1", "branch2", "branch3", "classmap",
    ];
    // the separable bicubic reference is common's direct 2-D one (dyadic weights: exact sums)
    let small = picture(23, 17, 5);
    let cubic_ref = reference_resample(&small, 4, cubic, 2);
    assert_eq!(max_diff(&cubic_ref, &reference_upscale(&small, 4, true), false), 0);
    let mut rng = Rng(2024);
    let mut h = harness(&[("model", KA), ("device", "cpu")]);
    let mut checked = [0usize; 7];
    let mut worst = [0u8; 7];
    for round in 0..210 {
        let w = 1 + rng.below(300) as usize;
        let hgt = 1 + rng.below(300) as usize;
        let format = FORMATS[rng.below(FORMATS.len() as u64) as usize];
        let seed = rng.next();
        // (every other noise frame may hold fully transparent pixels: those take their
        // visible neighbours' colour before the upscale, which the references here do not;
        // such frames go through that fill, only checked for size and panics here, against a
        // plain implementation in the pixels tests; the others have none)
        let transparent = round % 3 != 0 && round % 2 == 1;
        let img = if round % 3 == 0 {
            picture(w, hgt, seed)
        } else {
            let mut r = Rng(seed | 1);
            let px: Vec<[u8; 4]> = (0..w * hgt)
                .map(|_| {
                    let mut p: [u8; 4] = r.next().to_le_bytes()[..4].try_into().unwrap();
                    if !transparent {
                        p[3] = p[3].max(1);
                    }
                    p
                })
                .collect();
            Rgba {
                width: w,
                height: hgt,
                px,
            }
        };
        // every mode in turn (7 is prime to 3: each meets pictures and noise)
        let m = round % MODES.len();
        let mode = MODES[m];
        h.element().unwrap().set_property_from_str("mode", mode);
        let out = run_one(&mut h, &img, format);
        let what = format!("round {round}: {mode} {w}x{hgt} {format:?}");
        assert_eq!((out.width, out.height), (w * 4, hgt * 4), "{what}");
        if transparent && matches!(format, gst_video::VideoFormat::Rgba | gst_video::VideoFormat::Bgra) {
            continue;
        }
        let (reference, most) = match mode {
            "branch1" => (reference_upscale(&img, 4, false), 0),
            "branch2" => (reference_resample(&img, 4, triangle, 1), 1),
            "bicubic" | "branch3" | "original" => (reference_resample(&img, 4, cubic, 2), 1),
            _ => continue,
        };
        let d = max_diff(&out, &reference, false);
        assert!(d <= most, "{what}: {d} levels off the reference (at most {most})");
        checked[m] += 1;
        worst[m] = worst[m].max(d);
    }
    println!("frames checked against a reference per mode {checked:?}, largest differences {worst:?}");
}

#[test]
fn property_changes_from_another_thread_while_playing() {
    init();
    let p = gst::parse::launch(&format!(
        "videotestsrc num-buffers=150 pattern=ball ! video/x-raw,format=RGB,width=80,height=60 \
         ! classsr name=c model={KA} device=cpu ! appsink name=s sync=false max-buffers=1"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let c = p.by_name("c").unwrap();
    let sink = p.by_name("s").unwrap().downcast::<gst_app::AppSink>().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicU32::new(0));
    let (d2, c2) = (done.clone(), changes.clone());
    let changer = std::thread::spawn(move || {
        let mut i = 0u32;
        while !d2.load(Ordering::SeqCst) {
            let mode = [
                "classsr", "original", "bicubic", "branch1", "branch2", "branch3", "classmap",
            ][(i % 7) as usize];
            c.set_property_from_str("mode", mode);
            c.set_property_from_str("cache", ["off", "class", "full"][(i % 3) as usize]);
            c.set_property("tile-size", [32u32, 16, 24][(i % 3) as usize]);
            c.set_property("overlap", [4u32, 2, 8][(i % 3) as usize]);
            c.set_property("bias", (i % 5) as f32 * 0.1 - 0.2);
            c.set_property("max-batch", 1 + i % 9);
            i += 1;
            c2.store(i, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    });
    p.set_state(gst::State::Playing).unwrap();
    let (mut n, mut first) = (0, None);
    while let Ok(s) = sink.pull_sample() {
        assert_eq!(s.buffer().unwrap().size(), 320 * 240 * 3);
        n += 1;
        let now = changes.load(Ordering::SeqCst);
        first.get_or_insert(now);
        // every 10th frame, wait for a change: with one frame held by the appsink, the
        // element is blocked until it is pulled, so the changes fall between frames it makes
        if n % 10 == 0 {
            let t0 = std::time::Instant::now();
            while changes.load(Ordering::SeqCst) == now && t0.elapsed().as_secs() < 10 {
                std::thread::yield_now();
            }
        }
    }
    let during = changes.load(Ordering::SeqCst) - first.unwrap_or(0);
    done.store(true, Ordering::SeqCst);
    changer.join().unwrap();
    let err = p.bus().unwrap().pop_filtered(&[gst::MessageType::Error]);
    p.set_state(gst::State::Null).unwrap();
    assert!(err.is_none(), "{err:?}");
    assert_eq!(n, 150);
    assert!(
        during >= 14,
        "properties changed {during} times between the first and last frame"
    );
}
