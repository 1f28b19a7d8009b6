// The `classsr` element through real GStreamer (Harness and pipelines) and real ONNX Runtime,
// with the known-answer model set: caps both ways, every format, odd sizes, exact pixels,
// routing and property changes while playing.

mod common;

use common::*;
use gst::prelude::*;
use gst_video::VideoFormat;
use gstclasssr::classsr::ClassSrPrecision;

const KA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/known-answer");

fn ka(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![("model", KA), ("device", "cpu")];
    v.extend_from_slice(extra);
    v
}

fn field(s: &gst::Structure, f: &str) -> u32 {
    s.get::<u32>(f).unwrap()
}

/// Runs a pipeline and returns the caps the named element's pad ended up with.
fn negotiated(desc: &str, element: &str, pad: &str) -> Result<gst::Caps, String> {
    init();
    let pipeline = gst::parse::launch(desc).unwrap().downcast::<gst::Pipeline>().unwrap();
    let pad = pipeline.by_name(element).unwrap().static_pad(pad).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen2 = seen.clone();
    pad.add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
        if let Some(gst::PadProbeData::Event(ev)) = &info.data {
            if let gst::EventView::Caps(c) = ev.view() {
                *seen2.lock().unwrap() = Some(c.caps_owned());
            }
        }
        gst::PadProbeReturn::Ok
    });
    let bus = pipeline.bus().unwrap();
    let _ = pipeline.set_state(gst::State::Playing);
    let mut result = Err("timeout".to_string());
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(60)) {
        match msg.view() {
            gst::MessageView::Eos(_) => {
                result = seen.lock().unwrap().clone().ok_or_else(|| "no caps".to_string());
                break;
            }
            gst::MessageView::Error(e) => {
                result = Err(format!("{} ({:?})", e.error(), e.debug()));
                break;
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    result
}

#[test]
fn caps_multiply_downstream() {
    let caps = negotiated(
        &format!("videotestsrc num-buffers=1 ! video/x-raw,format=RGB,width=33,height=17,framerate=25/1,pixel-aspect-ratio=4/3 ! classsr name=c model={KA} ! fakesink"),
        "c",
        "src",
    )
    .unwrap();
    let s = caps.structure(0).unwrap();
    assert_eq!(s.get::<i32>("width").unwrap(), 132);
    assert_eq!(s.get::<i32>("height").unwrap(), 68);
    assert_eq!(s.get::<gst::Fraction>("framerate").unwrap(), gst::Fraction::new(25, 1));
    assert_eq!(
        s.get::<gst::Fraction>("pixel-aspect-ratio").unwrap(),
        gst::Fraction::new(4, 3)
    );
}

#[test]
fn caps_divide_upstream_and_refuse_sizes_that_do_not_divide() {
    let caps = negotiated(
        &format!("videotestsrc num-buffers=1 ! classsr name=c model={KA} ! video/x-raw,format=BGRx,width=400,height=200 ! fakesink"),
        "c",
        "sink",
    )
    .unwrap();
    let s = caps.structure(0).unwrap();
    assert_eq!(
        (s.get::<i32>("width").unwrap(), s.get::<i32>("height").unwrap()),
        (100, 50)
    );
    assert_eq!(s.get::<&str>("format").unwrap(), "BGRx");

    let err = negotiated(
        &format!(
            "videotestsrc num-buffers=1 ! classsr name=c model={KA} ! video/x-raw,width=401,height=200 ! fakesink"
        ),
        "c",
        "sink",
    )
    .unwrap_err();
    assert!(
        err.to_lowercase().contains("not-negotiated") || err.to_lowercase().contains("negotiat"),
        "{err}"
    );
}

#[test]
fn every_format_gives_the_same_colours_and_keeps_alpha() {
    let img = picture(37, 29, 7);
    let reference = reference_upscale(&img, 4, true);
    let alpha_img = Rgba::new(img.width, img.height, |x, y| {
        let a = img.at(x, y)[3];
        [a, a, a, 255]
    });
    let alpha_ref = reference_upscale(&alpha_img, 4, true);
    for format in FORMATS {
        let mut h = harness(&ka(&[("mode", "branch3")]));
        let out = run_one(&mut h, &img, format);
        assert_eq!((out.width, out.height), (148, 116), "{format:?}");
        assert!(
            max_diff(&out, &reference, false) <= 1,
            "{format:?}: colours differ from bicubic reference"
        );
        let has_alpha = matches!(format, VideoFormat::Rgba | VideoFormat::Bgra);
        for (o, r) in out.px.iter().zip(&alpha_ref.px) {
            if has_alpha {
                assert!(
                    o[3].abs_diff(r[0]) <= 1,
                    "{format:?}: alpha not upscaled ({} vs {})",
                    o[3],
                    r[0]
                );
            }
        }
    }
}

#[test]
fn odd_sizes_give_exactly_four_times_and_known_pixels() {
    for (w, hgt) in [(1, 1), (33, 17), (97, 61), (5, 40)] {
        let img = picture(w, hgt, (w * 31 + hgt) as u64);
        let near = upscale(&img, &ka(&[("mode", "branch1")]));
        assert_eq!(
            near,
            reference_upscale(&img, 4, false),
            "{w}x{hgt} nearest must be exact"
        );
        let cubic = upscale(&img, &ka(&[("mode", "branch3")]));
        let d = max_diff(&cubic, &reference_upscale(&img, 4, true), false);
        assert!(d <= 1, "{w}x{hgt} bicubic differs by {d} LSB");
    }
}

#[test]
fn full_hd_frame() {
    let img = picture(1920, 1080, 3);
    let out = upscale(&img, &ka(&[("mode", "branch1"), ("max-batch", "512")]));
    assert_eq!((out.width, out.height), (7680, 4320));
    assert_eq!(out, reference_upscale(&img, 4, false));
}

#[test]
fn bicubic_mode_matches_the_bicubic_branch() {
    let img = picture(70, 45, 11);
    let a = upscale(&img, &ka(&[("mode", "bicubic")]));
    let b = upscale(&img, &ka(&[("mode", "branch3")]));
    assert!(max_diff(&a, &b, false) <= 1);
    assert!(max_diff(&a, &reference_upscale(&img, 4, true), false) <= 1);
}

/// Left half: a faint gradient (std well below the variance classifier's t1); right half: texture.
fn flat_and_busy(w: usize, h: usize) -> Rgba {
    let mut rng = Rng(99);
    let noise: Vec<u8> = (0..w * h).map(|_| rng.below(200) as u8).collect();
    Rgba::new(w, h, |x, y| {
        if x < w / 2 {
            let v = 100 + (x % 4) as u8;
            [v, v, v + 1, 255]
        } else {
            let n = noise[y * w + x];
            [n, 255 - n, n / 2, 255]
        }
    })
}

#[test]
fn classsr_routes_flat_tiles_to_branch1_and_busy_tiles_to_branch3() {
    let img = flat_and_busy(128, 64);
    let classsr = upscale(&img, &ka(&[("mode", "classsr"), ("overlap", "0")]));
    let b1 = upscale(&img, &ka(&[("mode", "branch1"), ("overlap", "0")]));
    let b3 = upscale(&img, &ka(&[("mode", "branch3"), ("overlap", "0")]));
    // The branches really differ on both halves, so the comparison means something.
    let region = |img: &Rgba, x0: usize, x1: usize| -> Vec<[u8; 4]> {
        (0..img.height)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .map(|(x, y)| img.at(x, y))
            .collect()
    };
    assert_ne!(region(&b1, 0, 256), region(&b3, 0, 256));
    assert_ne!(region(&b1, 256, 512), region(&b3, 256, 512));
    // Tiles 0..2 of each row are flat (x < 64 LR), tiles 2..4 are busy.
    assert_eq!(
        region(&classsr, 0, 256),
        region(&b1, 0, 256),
        "flat tiles go to branch1"
    );
    assert_eq!(
        region(&classsr, 256, 512),
        region(&b3, 256, 512),
        "busy tiles go to branch3"
    );
}

#[test]
fn original_equals_branch3_everywhere() {
    let img = picture(90, 50, 5);
    assert_eq!(
        upscale(&img, &ka(&[("mode", "original")])),
        upscale(&img, &ka(&[("mode", "branch3")]))
    );
}

#[test]
fn property_changes_while_playing_apply_from_the_next_frame() {
    let img = flat_and_busy(96, 48);
    let b1 = upscale(&img, &ka(&[("mode", "branch1")]));
    let b3 = upscale(&img, &ka(&[("mode", "branch3")]));
    let mut h = harness(&ka(&[("mode", "branch3"), ("stats", "true")]));
    let bus = bus_of(&h);
    assert_eq!(run_one(&mut h, &img, VideoFormat::Rgb), b3);
    let element = h.element().unwrap();
    element.set_property_from_str("mode", "branch1");
    h.push(to_buffer(&img, VideoFormat::Rgb)).unwrap();
    let out = h.pull().unwrap();
    assert_eq!(from_buffer(&out, VideoFormat::Rgb, 384, 192), b1);
    // The tiles of a frame, from its stats; `grid(tile, overlap)`: how many there should be.
    let tiles = |bus: &gst::Bus| field(stats(bus).last().expect("stats of the frame"), "tiles") as usize;
    let grid = |t, o| gstclasssr::engine::TileGrid::new(96, 48, t, o, 4).unwrap().len();
    assert_eq!(tiles(&bus), grid(32, 4), "the default tiling");

    // Tiling properties too: the next frame is re-tiled (nearest is exact for any tiling, so
    // the tile count says whether they were used).
    assert_ne!(grid(16, 6), grid(32, 4));
    element.set_property("tile-size", 16u32);
    element.set_property("overlap", 6u32);
    element.set_property("max-batch", 3u32);
    h.push(to_buffer(&img, VideoFormat::Rgb)).unwrap();
    let out = from_buffer(&h.pull().unwrap(), VideoFormat::Rgb, 384, 192);
    assert_eq!(out, b1, "nearest is exact for any tiling");
    assert_eq!(tiles(&bus), grid(16, 6), "tile-size 16 with overlap 6");

    // A pair that cannot tile (overlap above half a tile) set while playing is not fatal:
    // refused with a warning, frames go on with the last good pair.
    element.set_property("overlap", 9u32);
    h.push(to_buffer(&img, VideoFormat::Rgb)).unwrap();
    let out = from_buffer(&h.pull().unwrap(), VideoFormat::Rgb, 384, 192);
    assert_eq!(out, b1);
    let warning = bus.pop_filtered(&[gst::MessageType::Warning]).expect("a warning");
    let gst::MessageView::Warning(w) = warning.view() else {
        unreachable!()
    };
    assert!(
        w.error().to_string().contains("Ignoring tile-size 16 with overlap 9"),
        "{}",
        w.error()
    );
    // (the warning was taken first: taking the stats drops other messages)
    assert_eq!(tiles(&bus), grid(16, 6), "the last good pair is kept");

    // The model cannot change under a running element: refused with a warning, value kept.
    element.set_property("model", "/nonexistent");
    assert_eq!(element.property::<String>("model"), KA);
    assert_eq!(element.property::<String>("active-device"), "cpu");
}

#[test]
fn caps_change_mid_stream_retiles_and_continues() {
    let mut h = harness(&ka(&[("mode", "branch1")]));
    let a = picture(40, 30, 1);
    let b = picture(77, 21, 2);
    assert_eq!(run_one(&mut h, &a, VideoFormat::Rgb), reference_upscale(&a, 4, false));
    assert_eq!(
        max_diff(
            &run_one(&mut h, &b, VideoFormat::Bgra),
            &reference_upscale(&b, 4, false),
            false
        ),
        0
    );
    assert_eq!(run_one(&mut h, &a, VideoFormat::Rgb), reference_upscale(&a, 4, false));
}

#[test]
fn flushing_and_eos_lose_nothing() {
    let mut h = harness(&ka(&[("mode", "branch2"), ("cache", "class"), ("stats", "true")]));
    let bus = bus_of(&h);
    let img = picture(50, 40, 4);
    let first = run_one(&mut h, &img, VideoFormat::Rgb);
    h.push(to_buffer(&img, VideoFormat::Rgb)).unwrap();
    assert_eq!(from_buffer(&h.pull().unwrap(), VideoFormat::Rgb, 200, 160), first);
    let st = stats(&bus);
    assert_eq!(st.len(), 2);
    assert!(
        field(&st[1], "class-cache-hits") > 0,
        "a repeated frame hits the cache before the flush"
    );
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    h.push_event(gst::event::Segment::new(&gst::FormattedSegment::<gst::ClockTime>::new()));
    h.push(to_buffer(&img, VideoFormat::Rgb)).unwrap();
    assert_eq!(from_buffer(&h.pull().unwrap(), VideoFormat::Rgb, 200, 160), first);
    let st = stats(&bus);
    assert_eq!(st.len(), 1);
    assert_eq!(
        field(&st[0], "class-cache-hits"),
        0,
        "a flush drops the cache (the frame after it may be another scene)"
    );

    // Every buffer of a finite stream comes out before EOS.
    init();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=7 ! video/x-raw,width=48,height=40 ! classsr model={KA} ! appsink name=out sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline.by_name("out").unwrap().downcast::<gst_app::AppSink>().unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut n = 0;
    while let Ok(sample) = sink.pull_sample() {
        let caps = sample.caps().unwrap();
        let info = gst_video::VideoInfo::from_caps(caps).unwrap();
        assert_eq!((info.width(), info.height()), (192, 160));
        n += 1;
    }
    assert!(sink.is_eos());
    pipeline.set_state(gst::State::Null).unwrap();
    assert_eq!(n, 7);
}

#[test]
fn embedded_default_runs_with_no_configuration() {
    run_pipeline("videotestsrc num-buffers=3 ! video/x-raw,width=64,height=48 ! classsr ! videoconvert ! fakesink")
        .unwrap();
}

#[test]
fn frame_graphs_give_the_same_frames_through_the_element() {
    // frame-graphs=on runs unpack/classify/branches/merge as ONNX graphs (the CUDA path,
    // where auto turns it on); on the CPU its frames equal the usual path's, in BGRx too,
    // with cache=class (not used by the graphs) as with off, and a setting it does not cover
    // (cache=full) quietly takes the usual path.
    let img = picture(100, 70, 77);
    for format in [gst_video::VideoFormat::Rgb, gst_video::VideoFormat::Bgrx] {
        // The element's settings here are ones the frame graphs take (else it would fall back).
        let cfg = gstclasssr::engine::FrameConfig {
            cache: gstclasssr::engine::CacheMode::Off,
            ..Default::default()
        };
        let layout = match format {
            gst_video::VideoFormat::Rgb => gstclasssr::engine::PixelLayout::Rgb,
            _ => gstclasssr::engine::PixelLayout::Bgrx,
        };
        assert_eq!(gstclasssr::engine::frame_graphs::supports(&cfg, layout), Ok(()));
        let mut plain = harness(&[("cache", "off"), ("device", "cpu")]);
        let mut graphs = harness(&[("cache", "off"), ("frame-graphs", "on"), ("device", "cpu")]);
        let a = run_one(&mut plain, &img, format);
        let b = run_one(&mut graphs, &img, format);
        assert_eq!(max_diff(&a, &b, false), 0, "{format:?}");
    }
    let a = upscale(&img, &[("device", "cpu")]);
    let b = upscale(&img, &[("frame-graphs", "on"), ("device", "cpu")]);
    assert_eq!(max_diff(&a, &b, false), 0);
    let full = gstclasssr::engine::FrameConfig {
        cache: gstclasssr::engine::CacheMode::Full,
        ..Default::default()
    };
    let rgb = gstclasssr::engine::PixelLayout::Rgb;
    assert!(gstclasssr::engine::frame_graphs::supports(&full, rgb).is_err());
    let b = upscale(&img, &[("frame-graphs", "on"), ("cache", "full"), ("device", "cpu")]);
    assert_eq!(max_diff(&a, &b, false), 0);

    // That the graphs really ran shows in the runs of a frame: with a fixed branch and all
    // 12 tiles in one max-batch, the graphs make one branch run; the usual path shares the
    // tiles out between its threads=2 workers, one run each.
    // Frames made by the graphs say where their time went; the others, only the time spent
    // classifying.
    const STAGES: [&str; 7] = [
        "upload-time",
        "classify-time",
        "branch1-time",
        "branch2-time",
        "branch3-time",
        "merge-time",
        "download-time",
    ];
    let runs = |graphs: &'static str| {
        let mut h = harness(&ka(&[
            ("mode", "branch3"),
            ("cache", "off"),
            ("threads", "2"),
            ("max-batch", "64"),
            ("stats", "true"),
            ("frame-graphs", graphs),
        ]));
        let bus = bus_of(&h);
        let out = run_one(&mut h, &img, VideoFormat::Rgb);
        let st = stats(&bus);
        assert_eq!(field(&st[0], "tiles"), 12);
        let stages: Vec<u64> = STAGES.iter().filter_map(|f| st[0].get::<u64>(*f).ok()).collect();
        if graphs == "on" {
            assert_eq!(stages.len(), STAGES.len(), "{:?}", st[0]);
            let total = st[0].get::<u64>("processing-time").unwrap();
            let sum: u64 = stages.iter().sum();
            assert!(
                sum > 0 && sum <= total,
                "steps {stages:?} within the frame's {total} ns"
            );
            // mode=branch3: no classifier, and only branch3 ran
            assert_eq!((stages[1], stages[2], stages[3]), (0, 0, 0), "{stages:?}");
            assert!(stages[4] > 0, "{stages:?}");
        } else {
            // the usual path times only the classification (here, with no classifier, the
            // gathering of the tiles), within the frame's time
            let total = st[0].get::<u64>("processing-time").unwrap();
            assert_eq!(stages.len(), 1, "only classify-time: {:?}", st[0]);
            assert!(stages[0] <= total, "{stages:?} within the frame's {total} ns");
        }
        (field(&st[0], "runs"), out)
    };
    let (plain_runs, plain) = runs("off");
    let (graph_runs, graphs) = runs("on");
    assert_eq!(plain, graphs);
    assert_eq!((plain_runs, graph_runs), (2, 1), "the frame graphs ran");
}

#[test]
fn precision_fp16_runs_the_branches_in_float16() {
    // precision=fp16 rewrites the trained default's branches to float16 (the classifier stays
    // float, so the routing is the same): its frames are within a few levels of fp32's, and not
    // equal to them (the rewrite took effect), through the usual path and the frame graphs.
    let img = picture(100, 70, 5);
    let a = upscale(&img, &[("cache", "off"), ("device", "cpu")]);
    for graphs in ["off", "on"] {
        let b = upscale(
            &img,
            &[
                ("cache", "off"),
                ("precision", "fp16"),
                ("frame-graphs", graphs),
                ("device", "cpu"),
            ],
        );
        let d = max_diff(&a, &b, false);
        println!("frame-graphs={graphs}: fp16 differs from fp32 by at most {d} levels");
        assert!((1..=3).contains(&d), "frame-graphs={graphs}: {d} levels");
    }
}

/// Stops `h`'s element (to NULL): start() runs again on the next `play`.
fn stop(h: &gst_check::Harness) {
    let e = h.element().unwrap();
    assert_eq!(e.set_state(gst::State::Null), Ok(gst::StateChangeSuccess::Success));
}

/// Starts `h`'s element again (to PLAYING) and begins a new stream on it (its sink pad lost
/// the sticky events when it was deactivated; the caps follow with `run_one`).
fn play(h: &mut gst_check::Harness) {
    let e = h.element().unwrap();
    assert_eq!(e.set_state(gst::State::Playing), Ok(gst::StateChangeSuccess::Success));
    assert!(h.push_event(gst::event::StreamStart::new("restarted")));
}

#[test]
fn stop_and_restart_reload_the_model_with_the_settings_made_while_stopped() {
    // 12 tiles with the default tiling: with max-batch 64, one branch run per worker.
    let img = picture(100, 70, 21);
    let mut h = harness(&ka(&[
        ("mode", "branch3"),
        ("cache", "off"),
        ("threads", "1"),
        ("max-batch", "64"),
        ("stats", "true"),
    ]));
    let bus = bus_of(&h);
    let e = h.element().unwrap();
    assert_eq!(e.property::<String>("active-device"), "cpu");
    let ka_out = run_one(&mut h, &img, VideoFormat::Rgb);
    assert!(max_diff(&ka_out, &reference_upscale(&img, 4, true), false) <= 1);
    let runs = |bus: &gst::Bus| {
        let st = stats(bus);
        assert_eq!(st.len(), 1);
        assert_eq!(field(&st[0], "tiles"), 12);
        field(&st[0], "runs")
    };
    assert_eq!(runs(&bus), 1, "threads=1: one worker");
    // A QoS level to be dropped by the restart (it degrades in mode=classsr only).
    e.set_property_from_str("mode", "classsr");
    let late = gst::event::Qos::new(
        gst::QOSType::Overflow,
        1.5,
        40_000_000,
        gst::ClockTime::from_mseconds(33),
    );
    assert!(h.push_upstream_event(late));
    assert_eq!(e.property::<u32>("qos-level"), 1);
    assert_eq!(warnings(&bus).len(), 1, "running late");
    e.set_property_from_str("mode", "branch3");
    // threads, device-id and precision are refused while running (the model would need
    // reloading).
    e.set_property("threads", 2u32);
    e.set_property("device-id", 1i32);
    e.set_property_from_str("precision", "fp16");
    assert_eq!((e.property::<u32>("threads"), e.property::<i32>("device-id")), (1, 0));
    assert_eq!(e.property::<ClassSrPrecision>("precision"), ClassSrPrecision::Fp32);
    let w = warnings(&bus);
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(
        w[0].contains("'threads'") && w[1].contains("'device-id'") && w[2].contains("'precision'"),
        "{w:?}"
    );

    stop(&h);
    assert_eq!(e.property::<String>("active-device"), "none");
    assert_eq!(e.property::<u32>("qos-level"), 0, "no QoS level when stopped");
    // Stopped, they are taken (device-id is only used with CUDA: read back here).
    e.set_property("model", "");
    e.set_property("threads", 2u32);
    e.set_property("device-id", 1i32);
    assert_eq!(e.property::<String>("model"), "");
    assert_eq!((e.property::<u32>("threads"), e.property::<i32>("device-id")), (2, 1));
    assert!(warnings(&bus).is_empty(), "no refusal while stopped");
    play(&mut h);
    assert_eq!(e.property::<String>("active-device"), "cpu");
    assert_eq!(e.property::<u32>("qos-level"), 0, "a restart starts at full quality");
    let embedded = run_one(&mut h, &img, VideoFormat::Rgb);
    assert!(
        max_diff(&embedded, &ka_out, false) > 8,
        "the embedded model (not the known-answer one) made the frame"
    );
    assert_eq!(runs(&bus), 2, "threads=2: the tiles shared out between two workers");

    // From READY too (stop() runs on PAUSED -> READY).
    assert_eq!(e.set_state(gst::State::Ready), Ok(gst::StateChangeSuccess::Success));
    assert_eq!(e.property::<String>("active-device"), "none");
    e.set_property("model", KA);
    e.set_property("threads", 1u32);
    play(&mut h);
    assert_eq!(max_diff(&run_one(&mut h, &img, VideoFormat::Rgb), &ka_out, true), 0);
    assert_eq!(runs(&bus), 1);
}

/// A copy of the known-answer set whose branch2 fails on runs of three tiles or more
/// ([`fails_above_two_tiles`]).
fn batch_of_two_model() -> ScratchDir {
    let dir = model_copy(KA, "element-batch-of-two");
    let path = dir.path().join("branch2.onnx");
    std::fs::write(&path, fails_above_two_tiles(&std::fs::read(&path).unwrap())).unwrap();
    dir
}

#[test]
fn a_branch_run_that_fails_mid_stream_is_an_element_error_and_the_stream_recovers() {
    let model = batch_of_two_model();
    let mut h = harness(&[
        ("model", model.as_str()),
        ("device", "cpu"),
        ("cache", "full"),
        ("cache-threshold", "0"),
        ("cache-refresh", "0"),
        ("threads", "2"),
    ]);
    let bus = bus_of(&h);
    let e = h.element().unwrap();
    // Flat (branch1) but for strong noise (branch3, `seed` its noise) on the right fifth, and
    // with `mild` a mildly noisy strip before it (branch2: 2x3 tiles, one batch of 6).
    let frame = |mild: bool, seed: u64| three_classes(320, 64, mild, seed);
    let want = |img: &Rgba| upscale(img, &ka(&[("cache", "off")]));
    let first = frame(false, 1);
    assert_eq!(
        max_diff(&run_one(&mut h, &first, VideoFormat::Rgb), &want(&first), true),
        0
    );
    // New noise on the right (merged by the branch3 worker) and branch2 failing on its batch.
    assert_eq!(
        h.push(to_buffer(&frame(true, 2), VideoFormat::Rgb)),
        Err(gst::FlowError::Error)
    );
    assert!(h.try_pull().is_none(), "no frame for the failed one");
    let msg = bus.pop_filtered(&[gst::MessageType::Error]).expect("an element error");
    let gst::MessageView::Error(err) = msg.view() else {
        unreachable!()
    };
    let text = err.error().to_string();
    assert!(
        err.error().matches(gst::LibraryError::Failed),
        "a run failed, not the set-up: {text}"
    );
    // (how many of the 6 tiles the failing run had depends on how they were shared out)
    assert!(
        text.contains("branch2 failed on") && text.contains("tiles of 32x32") && text.contains("broadcast"),
        "{text}"
    );
    assert_eq!(msg.src().map(|s| s.name()), Some(e.name()));
    // The problem gone (no branch2 tiles), the next frame is as a fresh element makes it: nothing
    // of the failed frame (its branch3 tiles merged and cached) is reused over the frame before.
    let next = frame(false, 2);
    h.push(to_buffer(&next, VideoFormat::Rgb)).unwrap();
    let out = from_buffer(&h.pull().unwrap(), VideoFormat::Rgb, 1280, 256);
    assert_eq!(
        max_diff(&out, &want(&next), true),
        0,
        "a stale tile of the failed frame"
    );
    // With runs of at most two tiles, branch2 runs too.
    e.set_property("max-batch", 2u32);
    let mild = frame(true, 3);
    h.push(to_buffer(&mild, VideoFormat::Rgb)).unwrap();
    let out = from_buffer(&h.pull().unwrap(), VideoFormat::Rgb, 1280, 256);
    assert_eq!(max_diff(&out, &want(&mild), true), 0);
    assert!(bus.pop_filtered(&[gst::MessageType::Error]).is_none());
}

#[test]
fn too_large_caps_are_warned_about_once_per_start() {
    let mut h = harness(&ka(&[]));
    let bus = bus_of(&h);
    let e = h.element().unwrap();
    let sink = e.static_pad("sink").unwrap();
    let big: gst::Caps = caps_str(VideoFormat::Rgb, 5000, 16).parse().unwrap();
    let also_big: gst::Caps = caps_str(VideoFormat::Rgb, 16, 4400).parse().unwrap();
    let fine: gst::Caps = caps_str(VideoFormat::Rgb, 64, 48).parse().unwrap();
    let offer = |bus: &gst::Bus| {
        assert!(sink.query_accept_caps(&fine));
        assert!(warnings(bus).is_empty(), "no warning for a size that fits");
        assert!(!sink.query_accept_caps(&big));
        assert!(!sink.query_accept_caps(&big));
        assert!(!sink.query_accept_caps(&also_big));
        let w = warnings(bus);
        assert_eq!(w.len(), 1, "once however often negotiation asks: {w:?}");
        assert!(w[0].contains("5000x16") && w[0].contains("too large"), "{w:?}");
    };
    offer(&bus);
    stop(&h);
    play(&mut h);
    offer(&bus);
    // and the element still runs after the refusals
    let img = picture(64, 48, 1);
    let out = run_one(&mut h, &img, VideoFormat::Rgb);
    assert_eq!(max_diff(&out, &upscale(&img, &ka(&[])), true), 0);
}

#[test]
fn the_sink_caps_hold_the_area_limit_so_that_videoscale_can_adapt() {
    // 4096 per side and 3840x2160 pixels: what the sink pad offers upstream (a videoscale in
    // front fixates within it) holds both limits, so no size it takes ends in an error later.
    let mut h = harness(&ka(&[]));
    let bus = bus_of(&h);
    let e = h.element().unwrap();
    let offered = e.static_pad("sink").unwrap().query_caps(None);
    for (w, ht, fits) in [
        (3840, 2160, true),
        (2160, 3840, true),
        (2025, 4096, true),
        (4096, 2025, true),
        (1920, 1080, true),
        (3841, 2160, false),
        (4096, 2160, false),
        (2160, 3841, false),
        (3000, 2700, false),
        (4097, 16, false),
    ] {
        let caps: gst::Caps = caps_str(VideoFormat::Rgb, w, ht).parse().unwrap();
        assert_eq!(offered.can_intersect(&caps), fits, "{w}x{ht} in {offered:?}");
        // the engine (and so the CLI) takes the same sizes
        assert_eq!(gstclasssr::engine::Engine::check_size(w, ht).is_ok(), fits, "{w}x{ht}");
    }
    // A size over the area limit offered mid-stream is refused with the reason on the bus, and
    // the element goes on with sizes that fit.
    let img = picture(64, 48, 1);
    run_one(&mut h, &img, VideoFormat::Rgb);
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 3841, 2160));
    let buffer = gst::Buffer::with_size(3841 * 3 * 2160).unwrap();
    assert_eq!(h.push(buffer), Err(gst::FlowError::NotNegotiated));
    let (warnings, errors) = warnings_and_errors(&bus);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        warnings.len() == 1 && warnings[0].contains("3841x2160") && warnings[0].contains("at most 2025 lines"),
        "{warnings:?}"
    );
    let out = run_one(&mut h, &img, VideoFormat::Rgb);
    assert_eq!(max_diff(&out, &upscale(&img, &ka(&[])), true), 0);
}

/// A custom meta type with `tags` whose transform adds a copy of it to the output buffer,
/// recording the transform it was asked for in a `transform` field.
fn register_custom_meta(name: &'static str, tags: &[&str]) {
    if !gst::meta::CustomMeta::is_registered(name) {
        gst::meta::CustomMeta::register_with_transform(name, tags, move |out, meta, _, transform| {
            let fields: Vec<(String, gst::glib::SendValue)> = meta
                .structure()
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            let mut copy = gst::meta::CustomMeta::add(out, name).unwrap();
            let s = copy.mut_structure();
            for (k, v) in fields {
                s.set_value(k.as_str(), v);
            }
            s.set("transform", transform.as_str().to_string());
            true
        });
    }
}

#[test]
fn metas_without_a_size_are_copied_and_sized_ones_scaled() {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    init();
    // colour space, no size: copied as it is; with a size: scaled; with a tag a scaler does
    // not know to keep (here "audio"): the base class's decision, which drops it.
    REGISTER.call_once(|| {
        register_custom_meta("classsr-test-colour", &["video", "colorspace"]);
        register_custom_meta("classsr-test-sized", &["video", "size"]);
        register_custom_meta("classsr-test-audio", &["audio"]);
    });
    let mut h = harness(&ka(&[("mode", "branch1")]));
    let img = picture(24, 20, 5);
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 24, 20));
    let mut buf = to_buffer(&img, VideoFormat::Rgb);
    let reference: gst::Caps = "timestamp/x-test".parse().unwrap();
    {
        let b = buf.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_mseconds(100));
        gst::ReferenceTimestampMeta::add(
            b,
            &reference,
            gst::ClockTime::from_seconds(7),
            Some(gst::ClockTime::from_mseconds(40)),
        );
        for name in ["classsr-test-colour", "classsr-test-sized", "classsr-test-audio"] {
            gst::meta::CustomMeta::add(b, name)
                .unwrap()
                .mut_structure()
                .set("value", 42i32);
        }
        gst_video::VideoCropMeta::add(b, (2, 3, 10, 8));
        gst_video::VideoMeta::add(b, gst_video::VideoFrameFlags::empty(), VideoFormat::Rgb, 24, 20).unwrap();
    }
    h.push(buf).unwrap();
    let out = h.pull().unwrap();
    let frame = from_buffer(&out, VideoFormat::Rgb, 96, 80);
    assert_eq!(max_diff(&frame, &reference_upscale(&img, 4, false), true), 0);
    // Without tags (a reference timestamp): copied unchanged.
    let ts = out
        .meta::<gst::ReferenceTimestampMeta>()
        .expect("the reference timestamp is kept");
    assert_eq!(ts.reference_owned(), reference);
    assert_eq!(ts.timestamp(), gst::ClockTime::from_seconds(7));
    assert_eq!(ts.duration(), Some(gst::ClockTime::from_mseconds(40)));
    assert_eq!(out.iter_meta::<gst::ReferenceTimestampMeta>().count(), 1);
    let custom = |name: &str| {
        // (each custom meta is its own API type, "<name>-api")
        let api = format!("{name}-api");
        let n = out.iter_meta::<gst::Meta>().filter(|m| m.api().name() == api).count();
        gst::meta::CustomMeta::from_buffer(&out, name).ok().map(|m| {
            let s = m.structure();
            (n, s.get::<i32>("value").unwrap(), s.get::<String>("transform").unwrap())
        })
    };
    assert_eq!(
        custom("classsr-test-colour"),
        Some((1, 42, "gst-copy".to_string())),
        "a size-less meta is copied"
    );
    assert_eq!(
        custom("classsr-test-sized"),
        Some((1, 42, "gst-video-scale".to_string())),
        "a sized meta is scaled, once, and not also copied"
    );
    assert_eq!(custom("classsr-test-audio"), None, "a meta of unknown kind is dropped");
    // A stock sized meta: the crop scales with the frame.
    let crop = out.meta::<gst_video::VideoCropMeta>().expect("the crop is kept");
    assert_eq!(crop.rect(), (8, 12, 40, 32));
    // The input's layout (a VideoMeta, tagged "memory") is not carried over to the output.
    for m in out.iter_meta::<gst_video::VideoMeta>() {
        assert_eq!((m.width(), m.height()), (96, 80), "the input's VideoMeta was copied");
    }
}

#[test]
fn stats_count_frames_from_each_start_and_give_the_input_size() {
    let mut h = harness(&ka(&[("mode", "branch1"), ("stats", "true")]));
    let bus = bus_of(&h);
    let frame_size = |bus: &gst::Bus| -> Vec<(u64, u32, u32)> {
        stats(bus)
            .iter()
            .map(|s| (s.get::<u64>("frame").unwrap(), field(s, "width"), field(s, "height")))
            .collect()
    };
    let (a, b) = (picture(40, 30, 1), picture(24, 36, 2));
    run_one(&mut h, &a, VideoFormat::Rgb);
    for _ in 0..2 {
        h.push(to_buffer(&a, VideoFormat::Rgb)).unwrap();
        h.pull().unwrap();
    }
    assert_eq!(frame_size(&bus), [(1, 40, 30), (2, 40, 30), (3, 40, 30)]);
    // A caps change: the count goes on, with the new size.
    run_one(&mut h, &b, VideoFormat::Bgra);
    assert_eq!(frame_size(&bus), [(4, 24, 36)]);
    // A flush does not restart the count (it resets the engine's caches only)…
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    h.push_event(gst::event::Segment::new(&gst::FormattedSegment::<gst::ClockTime>::new()));
    h.push(to_buffer(&b, VideoFormat::Bgra)).unwrap();
    h.pull().unwrap();
    assert_eq!(frame_size(&bus), [(5, 24, 36)]);
    // …a restart does.
    stop(&h);
    play(&mut h);
    run_one(&mut h, &a, VideoFormat::Rgb);
    assert_eq!(frame_size(&bus), [(1, 40, 30)]);
}

#[test]
fn pointer_positions_go_upstream_in_input_pixels() {
    let mut h = harness(&ka(&[]));
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 40, 30));
    h.push(to_buffer(&zones(40, 30), VideoFormat::Rgb)).unwrap();
    h.pull().unwrap();
    while h.try_pull_upstream_event().is_some() {}
    // a pointer at (100, 60) of the x4 picture is at (25, 15) of the input
    let moved = gst_video::NavigationEvent::new_mouse_move(100.0, 60.0).build();
    assert!(h.push_upstream_event(moved));
    let mut got = None;
    while let Some(e) = h.try_pull_upstream_event() {
        if let Ok(gst_video::NavigationEvent::MouseMove { x, y, .. }) = gst_video::NavigationEvent::parse(&e) {
            got = Some((x, y));
        }
    }
    assert_eq!(got, Some((25.0, 15.0)));
}

#[test]
fn the_default_tile_size_is_the_models() {
    // tile-size 0 (the default) takes the manifest's tile_size: a copy of the known-answer set
    // whose manifest says 48 cuts a 96x96 frame into 3 x 3 tiles of 48 (overlap 4), where an
    // explicit tile-size=32 gives 4 x 4; tile-size 1..7, or a manifest's tile size outside
    // 8..256, is refused with how to fix it.
    let dir = model_copy(KA, "element-tile-48");
    let manifest = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("\"tile_size\": 32"));
    std::fs::write(&manifest, text.replace("\"tile_size\": 32", "\"tile_size\": 48")).unwrap();
    let tiles = |extra: &[(&str, &str)]| {
        let mut props = vec![("model", dir.as_str()), ("device", "cpu"), ("stats", "true")];
        props.extend_from_slice(extra);
        let mut h = harness(&props);
        let bus = bus_of(&h);
        run_one(&mut h, &picture(96, 96, 3), VideoFormat::Rgb);
        field(&stats(&bus)[0], "tiles")
    };
    assert_eq!(tiles(&[]), 9);
    assert_eq!(tiles(&[("tile-size", "0")]), 9);
    assert_eq!(tiles(&[("tile-size", "32")]), 16);
    let refused = |model: &str, tile: &str, says: &str| {
        let mut h = harness(&[("model", model), ("device", "cpu"), ("tile-size", tile)]);
        let bus = bus_of(&h);
        h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 32, 32));
        assert!(h.push(to_buffer(&picture(32, 32, 1), VideoFormat::Rgb)).is_err());
        let (_, errors) = warnings_and_errors(&bus);
        assert!(errors.iter().any(|e| e.contains(says)), "{errors:?}");
    };
    refused(KA, "4", "tile-size 4 is too small: use 8 to 256, or 0 for the model's");
    // a manifest's tile size the element does not take, reached through the default (the
    // graphs take any size: tile-size fixes it; graphs fixed to it are refused at load)
    std::fs::write(&manifest, text.replace("\"tile_size\": 32", "\"tile_size\": 4")).unwrap();
    refused(
        dir.as_str(),
        "0",
        "the model's tile_size 4 is outside 8..256: set tile-size",
    );
}

#[test]
fn caps_follow_the_models_scale_before_it_loads() {
    // Links are made, and checked against the caps, before the element starts and loads its
    // model: the caps must already be those of the model set. A x2 manifest (only the
    // manifest is read for this: this one's graphs are x4 and would fail to load).
    init();
    let dir = model_copy(KA, "test-x2-caps");
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    std::fs::write(dir.join("manifest.json"), text.replace("\"scale\": 4", "\"scale\": 2")).unwrap();
    let link = |model: &str, (w, h): (u32, u32)| {
        gst::parse::launch(&format!(
            "videotestsrc ! video/x-raw,width=32,height=24 ! classsr model=\"{model}\" ! \
             video/x-raw,width={w},height={h} ! fakesink"
        ))
        .map(|_| ())
        .map_err(|e| e.to_string())
    };
    let x2 = dir.display().to_string();
    assert!(link(&x2, (64, 48)).is_ok(), "{:?}", link(&x2, (64, 48)));
    assert!(link(&x2, (128, 96)).is_err());
    // the embedded default (x4) again
    assert!(link("", (128, 96)).is_ok(), "{:?}", link("", (128, 96)));
    assert!(link("", (64, 48)).is_err());
}
