// The `classsr` element through real GStreamer (Harness and pipelines) and real ONNX Runtime,
// with the known-answer model set: caps both ways, every format, odd sizes, exact pixels,
// routing and property changes while playing.

mod common;

use common::*;
use gst::prelude::*;
use gst_video::VideoFormat;

const KA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/known-answer");

fn ka(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![("model", KA), ("device", "cpu")];
    v.extend_from_slice(extra);
    v
}

/// A bus set on `h`'s element (messages posted from then on).
fn bus_of(h: &gst_check::Harness) -> gst::Bus {
    let bus = gst::Bus::new();
    h.element().unwrap().set_bus(Some(&bus));
    bus
}

/// The classsr-stats structures posted so far (other messages are dropped).
fn stats(bus: &gst::Bus) -> Vec<gst::Structure> {
    std::iter::from_fn(|| bus.pop_filtered(&[gst::MessageType::Element]))
        .filter_map(|m| m.structure().map(|s| s.to_owned()))
        .filter(|s| s.name() == "classsr-stats")
        .collect()
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
    // frame-graphs=true runs unpack/classify/branches/merge as ONNX graphs (the CUDA path);
    // on the CPU its frames equal the usual path's, in BGRx too, and settings it does not
    // cover (the class cache) quietly take the usual path.
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
        let mut plain = harness(&[("cache", "off")]);
        let mut graphs = harness(&[("cache", "off"), ("frame-graphs", "true")]);
        let a = run_one(&mut plain, &img, format);
        let b = run_one(&mut graphs, &img, format);
        assert_eq!(max_diff(&a, &b, false), 0, "{format:?}");
    }
    let a = upscale(&img, &[]);
    let b = upscale(&img, &[("frame-graphs", "true")]);
    assert_eq!(max_diff(&a, &b, false), 0);

    // That the graphs really ran shows in the runs of a frame: with a fixed branch and all
    // 12 tiles in one max-batch, the graphs make one branch run; the usual path shares the
    // tiles out between its threads=2 workers, one run each.
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
        (field(&st[0], "runs"), out)
    };
    let (plain_runs, plain) = runs("false");
    let (graph_runs, graphs) = runs("true");
    assert_eq!(plain, graphs);
    assert_eq!((plain_runs, graph_runs), (2, 1), "the frame graphs ran");
}
