// Video behaviour of `classsr` through real GStreamer and ONNX Runtime: the per-tile cache
// (hits on static scenes, identical output, scene cuts, caps changes), per-frame statistics,
// the class-map view and QoS degradation.

mod common;

use common::*;
use gst::prelude::*;
use gst_video::VideoFormat;

const KA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/known-answer");

fn element(props: &[(&str, &str)]) -> (gst_check::Harness, gst::Bus) {
    let mut all = vec![("model", KA), ("device", "cpu"), ("stats", "true")];
    all.extend_from_slice(props);
    let h = harness(&all);
    let bus = bus_of(&h);
    (h, bus)
}

/// The classsr-stats structures and the number of warnings posted so far (`stats` and a
/// filtered pop each drop the other kind).
fn stats_and_warnings(bus: &gst::Bus) -> (Vec<gst::Structure>, usize) {
    let (mut v, mut warnings) = (Vec::new(), 0);
    while let Some(m) = bus.pop() {
        match m.view() {
            gst::MessageView::Warning(_) => warnings += 1,
            gst::MessageView::Element(_) => {
                if let Some(s) = m.structure().filter(|s| s.name() == "classsr-stats") {
                    v.push(s.to_owned());
                }
            }
            _ => {}
        }
    }
    (v, warnings)
}

fn u(s: &gst::Structure, f: &str) -> u64 {
    s.get::<u32>(f).map(u64::from).or_else(|_| s.get::<u64>(f)).unwrap()
}

fn push(h: &mut gst_check::Harness, img: &Rgba) -> Rgba {
    h.push(to_buffer(img, VideoFormat::Rgb)).unwrap();
    from_buffer(&h.pull().unwrap(), VideoFormat::Rgb, img.width * 4, img.height * 4)
}

#[test]
fn static_scene_hits_the_cache_and_full_cache_is_exact() {
    let img = zones(160, 96);
    let (mut off, _) = element(&[("cache", "off")]);
    let (mut full, bus) = element(&[("cache", "full"), ("cache-threshold", "0")]);
    off.set_src_caps_str(&caps_str(VideoFormat::Rgb, 160, 96));
    full.set_src_caps_str(&caps_str(VideoFormat::Rgb, 160, 96));
    let reference = push(&mut off, &img);
    for frame in 0..5 {
        assert_eq!(
            push(&mut full, &img),
            reference,
            "frame {frame}: full cache must equal cache=off"
        );
    }
    let st = stats(&bus);
    assert_eq!(st.len(), 5);
    let tiles = u(&st[0], "tiles");
    assert_eq!(u(&st[0], "full-cache-hits"), 0, "first frame computes everything");
    for s in &st[1..] {
        assert!(u(s, "full-cache-hits") * 10 > tiles * 9, "> 90% hits: {s:?}");
        assert!(u(s, "class-cache-hits") * 10 > tiles * 9);
        // only the staggered refresh (1/30 of the tiles per frame) runs anything
        let fresh = tiles - u(s, "full-cache-hits");
        assert!(
            fresh <= tiles.div_ceil(30),
            "{fresh} of {tiles} recomputed on a static frame"
        );
        // (one classifier call, then at most one branch call per recomputed tile)
        assert!(u(s, "runs") <= if fresh == 0 { 0 } else { 1 + fresh }, "{s:?}");
    }
}

#[test]
fn moving_ball_full_cache_matches_cache_off_frame_by_frame() {
    init();
    let run = |cache: &str| -> (Vec<Vec<u8>>, Vec<u64>) {
        let p = gst::parse::launch(&format!(
            "videotestsrc pattern=ball num-buffers=8 ! video/x-raw,format=RGB,width=128,height=96 \
             ! classsr name=c model={KA} device=cpu cache={cache} cache-threshold=0 stats=true ! appsink name=s sync=false"
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let sink = p.by_name("s").unwrap().downcast::<gst_app::AppSink>().unwrap();
        let bus = p.bus().unwrap();
        p.set_state(gst::State::Playing).unwrap();
        let mut frames = Vec::new();
        while let Ok(sample) = sink.pull_sample() {
            frames.push(sample.buffer().unwrap().map_readable().unwrap().to_vec());
        }
        let hits = stats(&bus).iter().map(|s| u(s, "full-cache-hits")).collect();
        p.set_state(gst::State::Null).unwrap();
        (frames, hits)
    };
    let (off, _) = run("off");
    let (full, hits) = run("full");
    assert_eq!(off.len(), 8);
    assert!(off == full, "cache=full must be pixel-identical to cache=off");
    assert_eq!(hits.len(), 8, "one classsr-stats message per frame: {hits:?}");
    assert!(
        hits[1..].iter().all(|&h| h > 0),
        "the still background is reused: {hits:?}"
    );
}

#[test]
fn a_small_change_inside_a_static_tile_is_recomputed() {
    // An 8x8 patch (a person stepping into a corner of a tile) moves the tile-wide mean absolute
    // difference by < 1 level, but the default threshold compares 8x8 blocks, so the tiles that
    // hold it are recomputed (around the patch only) and their output is cache=off's.
    let (w, h) = (160, 96);
    let a = picture(w, h, 5);
    let mut b = a.clone();
    for y in 36..44 {
        for x in 52..60 {
            for v in &mut b.px[y * w + x][..3] {
                *v = v.saturating_add(14);
            }
        }
    }
    let (mut off, _) = element(&[("cache", "off")]);
    let (mut full, bus) = element(&[("cache", "full")]);
    off.set_src_caps_str(&caps_str(VideoFormat::Rgb, w, h));
    full.set_src_caps_str(&caps_str(VideoFormat::Rgb, w, h));
    push(&mut full, &a);
    let got = push(&mut full, &b);
    let want = push(&mut off, &b);
    for y in 4 * 36..4 * 44 {
        for x in 4 * 52..4 * 60 {
            let i = y * 4 * w + x;
            assert_eq!(
                got.px[i], want.px[i],
                "HR pixel ({x}, {y}) of the changed patch is stale"
            );
        }
    }
    // The whole frame, not only the patch: the reused tiles are bit-identical in `a` and `b`
    // and the fixed-point merge is order-free, so every HR pixel away from the patch equals
    // cache=off's. Near it (within the 2 LR pixels of margin, the 2 of context and FSRCNN's
    // reach of 7) the part recomputed with less context than a whole tile may round the other
    // way.
    let near = |x: usize, y: usize| (52 - 15..60 + 15).contains(&(x / 4)) && (36 - 15..44 + 15).contains(&(y / 4));
    for (i, (g, o)) in got.px.iter().zip(&want.px).enumerate() {
        let (x, y) = (i % (4 * w), i / (4 * w));
        let off = (0..3).map(|c| g[c].abs_diff(o[c])).max().unwrap();
        let allowed = if near(x, y) { 1 } else { 0 };
        assert!(off <= allowed, "HR pixel ({x}, {y}) is {off} levels from cache=off's");
    }
    let st = stats(&bus);
    let hits = u(&st[1], "full-cache-hits");
    assert!(
        hits > 0 && hits < u(&st[1], "tiles"),
        "only the changed tiles rerun: {hits}"
    );
    assert!(u(&st[1], "partial-tiles") > 0, "{:?}", st[1]);
}

#[test]
fn scene_cut_and_caps_change_invalidate_the_cache() {
    let (mut h, bus) = element(&[("cache", "class")]);
    let a = zones(96, 64);
    let b = picture(96, 64, 77);
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 96, 64));
    push(&mut h, &a);
    push(&mut h, &a);
    push(&mut h, &b); // cut
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 64, 64));
    let c = zones(64, 64);
    push(&mut h, &c);
    let st = stats(&bus);
    let hits: Vec<u64> = st.iter().map(|s| u(s, "class-cache-hits")).collect();
    assert_eq!(hits[0], 0);
    assert_eq!(hits[1], u(&st[1], "tiles"), "an identical frame is all hits");
    assert!(hits[2] < u(&st[2], "tiles") / 4, "a scene cut recomputes: {hits:?}");
    assert_eq!(hits[3], 0, "a caps change resets the cache");
}

#[test]
fn a_format_change_at_the_same_size_invalidates_the_cache() {
    // Same size and tiling, same picture, only RGB -> BGR: nothing but the caps change itself
    // can drop the cache (the engine keeps its tiles while the geometry stays).
    let img = zones(96, 64);
    for cache in ["class", "full"] {
        let (mut h, bus) = element(&[("cache", cache), ("cache-threshold", "0")]);
        h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 96, 64));
        let rgb = push(&mut h, &img);
        push(&mut h, &img);
        let before = stats(&bus);
        assert_eq!(before.len(), 2);
        let tiles = u(&before[1], "tiles");
        assert_eq!(
            u(&before[1], "class-cache-hits"),
            tiles,
            "{cache}: a repeat is all hits"
        );
        if cache == "full" {
            assert_eq!(u(&before[1], "full-cache-hits"), tiles);
        }
        h.set_src_caps_str(&caps_str(VideoFormat::Bgr, 96, 64));
        h.push(to_buffer(&img, VideoFormat::Bgr)).unwrap();
        let bgr = from_buffer(&h.pull().unwrap(), VideoFormat::Bgr, 384, 256);
        assert_eq!(bgr, rgb, "{cache}: the same colours in BGR");
        let after = stats(&bus);
        assert_eq!(after.len(), 1);
        assert_eq!(
            u(&after[0], "class-cache-hits"),
            0,
            "{cache}: a caps change (RGB -> BGR) resets the cache"
        );
        assert_eq!(u(&after[0], "full-cache-hits"), 0, "{cache}");
        // …and it fills again from there.
        h.push(to_buffer(&img, VideoFormat::Bgr)).unwrap();
        h.pull().unwrap();
        assert_eq!(u(&stats(&bus)[0], "class-cache-hits"), tiles, "{cache}");
    }
}

/// The first frame of `img` through a fresh cache=off element with `props`.
fn cache_off(img: &Rgba, props: &[(&str, &str)]) -> Rgba {
    let mut all = vec![("cache", "off")];
    all.extend_from_slice(props);
    let (mut h, _) = element(&all);
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, img.width, img.height));
    push(&mut h, img)
}

#[test]
fn a_mode_or_bias_change_mid_stream_invalidates_the_full_cache() {
    let img = zones(96, 64);
    /// (property, value before, value after, the settings of the frame after the change)
    type Change<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)]);
    let changes: [Change; 2] = [
        ("mode", "branch1", "branch3", &[("mode", "branch3")]),
        ("bias", "0", "1", &[("mode", "classsr"), ("bias", "1")]),
    ];
    for (prop, from, to, after) in changes {
        let props = [
            ("cache", "full"),
            ("cache-threshold", "0"),
            ("cache-refresh", "0"),
            (prop, from),
        ];
        let (mut h, bus) = element(&props);
        h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 96, 64));
        for _ in 0..3 {
            push(&mut h, &img);
        }
        let st = stats(&bus);
        assert!(
            st[1..].iter().all(|s| u(s, "full-cache-hits") == u(s, "tiles")),
            "{prop}={from}: a static frame is all hits"
        );
        h.element().unwrap().set_property_from_str(prop, to);
        let got = push(&mut h, &img);
        let st = stats(&bus);
        assert_eq!(st.len(), 1);
        assert_eq!(u(&st[0], "full-cache-hits"), 0, "{prop} {from} -> {to} drops the cache");
        assert_eq!(u(&st[0], "class-cache-hits"), 0, "{prop} {from} -> {to}");
        let want = cache_off(&img, after);
        assert!(got == want, "{prop} {from} -> {to}: the frame equals cache=off's");
        // The routing really changed (else a stale cache would give the same frame).
        let mut before: Vec<(&str, &str)> = after.to_vec();
        before.retain(|(k, _)| *k != prop);
        before.push((prop, from));
        assert!(
            cache_off(&img, &before) != want,
            "{prop} {from} -> {to} changes the frame"
        );
    }
    // Changes that leave every tile's output as it was keep the cache: `original` runs branch3
    // as `branch3` does, and the bias routes nothing in a mode of one branch.
    for (prop, to) in [("mode", "branch3"), ("bias", "1")] {
        let props = [
            ("cache", "full"),
            ("cache-threshold", "0"),
            ("cache-refresh", "0"),
            ("mode", "original"),
        ];
        let (mut h, bus) = element(&props);
        h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 96, 64));
        push(&mut h, &img);
        h.element().unwrap().set_property_from_str(prop, to);
        let got = push(&mut h, &img);
        let st = stats(&bus);
        assert_eq!(
            u(&st[1], "full-cache-hits"),
            u(&st[1], "tiles"),
            "{prop} -> {to} keeps the cache"
        );
        let want = cache_off(&img, &[("mode", "original"), (prop, to)]);
        assert!(got == want, "{prop} -> {to}: the frame equals cache=off's");
    }
}

/// `img` with ±1 level on the colours of about one pixel in `every` (a change under a cache
/// threshold of 2 in every block, but not bit-identical).
fn nudged(img: &Rgba, seed: u64, every: u64) -> Rgba {
    let mut out = img.clone();
    let mut rng = Rng(seed);
    for p in &mut out.px {
        if rng.below(every) == 0 {
            for v in &mut p[..3] {
                *v = if rng.below(2) == 0 {
                    v.saturating_add(1)
                } else {
                    v.saturating_sub(1)
                };
            }
        }
    }
    out
}

#[test]
fn a_cache_threshold_reuses_tiles_that_changed_slightly() {
    // A static picture, then the same with ±1 level on about a tenth of the pixels (in every
    // tile): below a threshold of 2 everywhere, but not bit-identical. (Without the
    // correction: with it, see the next test.)
    let a = picture(128, 96, 9);
    let b = nudged(&a, 77, 10);
    assert_ne!(a, b);
    for (threshold, reused) in [("2", true), ("0", false)] {
        let props = [
            ("cache", "full"),
            ("cache-threshold", threshold),
            ("cache-refresh", "0"),
            ("cache-correction", "false"),
        ];
        let (mut h, bus) = element(&props);
        h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 128, 96));
        let first = push(&mut h, &a);
        let second = push(&mut h, &b);
        let st = stats(&bus);
        let (hits, tiles) = (u(&st[1], "full-cache-hits"), u(&st[1], "tiles"));
        if reused {
            assert_eq!(hits, tiles, "threshold {threshold}: every tile is reused");
            assert_eq!(u(&st[1], "runs"), 0);
            assert!(second == first, "reused tiles give the cached frame");
        } else {
            assert_eq!(hits, 0, "threshold 0: only bit-identical tiles are reused");
            assert!(second == cache_off(&b, &[]), "threshold 0 recomputes exactly");
        }
    }
}

/// The largest difference of any colour of any pixel between `a` and `b`, and the alpha
/// values that differ.
fn largest_difference(a: &Rgba, b: &Rgba) -> (u8, usize) {
    let colour =
        a.px.iter()
            .zip(&b.px)
            .flat_map(|(p, q)| (0..3).map(move |c| p[c].abs_diff(q[c])))
            .max()
            .unwrap();
    (colour, a.px.iter().zip(&b.px).filter(|(p, q)| p[3] != q[3]).count())
}

#[test]
fn the_correction_makes_reused_tiles_follow_small_changes() {
    // A picture brightening by one level a frame (a slow change of light) with ±1 level of
    // noise on a tenth of its pixels: under a threshold of 4 every tile is reused for 3 frames.
    // The known-answer branch3 is a bicubic upscaler, which is linear: a reused output plus
    // the bicubic upscale of its pixels' change is what running it again gives, so with the
    // correction the frames are cache=off's (within a level: the packed output and the
    // correction are rounded apart), and without it they stay the first frame's. Formats
    // with alpha (alpha upscaled, not corrected) and with padding take the same path, and so
    // does a frame smaller than a tile (its input rows padded in memory).
    let cases = [
        ((128, 96), VideoFormat::Rgb),
        ((128, 96), VideoFormat::Rgba),
        ((128, 96), VideoFormat::Xbgr),
        ((21, 13), VideoFormat::Rgb),
    ];
    for ((w, h), format) in cases {
        let a = picture(w, h, 9);
        let frames: Vec<Rgba> = (1..4u8)
            .map(|k| {
                let mut f = nudged(&a, 77 + k as u64, 10);
                for p in &mut f.px {
                    for v in &mut p[..3] {
                        *v = v.saturating_add(k);
                    }
                }
                f
            })
            .collect();
        let run = |props: &[(&str, &str)], img: &[&Rgba]| -> (Vec<Rgba>, Vec<gst::Structure>) {
            let (mut el, bus) = element(props);
            el.set_src_caps_str(&caps_str(format, w, h));
            let out = img
                .iter()
                .map(|f| {
                    el.push(to_buffer(f, format)).unwrap();
                    from_buffer(&el.pull().unwrap(), format, 4 * w, 4 * h)
                })
                .collect();
            (out, stats(&bus))
        };
        let all: Vec<&Rgba> = std::iter::once(&a).chain(&frames).collect();
        let full = [
            ("mode", "branch3"),
            ("cache", "full"),
            ("cache-threshold", "4"),
            ("cache-refresh", "0"),
        ];
        let (corrected, st) = run(&full, &all);
        let (stale, _) = run(&[&full[..], &[("cache-correction", "false")]].concat(), &all);
        for (k, f) in frames.iter().enumerate() {
            let k = k + 1;
            assert_eq!(
                u(&st[k], "full-cache-hits"),
                u(&st[k], "tiles"),
                "{format:?} {w}x{h} frame {k} is reused whole"
            );
            assert_eq!(u(&st[k], "runs"), 0);
            let (want, _) = run(&[("mode", "branch3"), ("cache", "off")], &[f]);
            let (off_by, alphas) = largest_difference(&corrected[k], &want[0]);
            assert!(
                off_by <= 1 && alphas == 0,
                "{format:?} {w}x{h} frame {k}: {off_by} levels, {alphas} alphas from cache=off"
            );
            assert!(
                stale[k] == stale[0],
                "{format:?} {w}x{h} frame {k}: without the correction the first frame stays"
            );
            let (stale_by, _) = largest_difference(&stale[k], &want[0]);
            assert!(
                stale_by >= k as u8,
                "{format:?} frame {k}: the stale frame is {stale_by} levels off"
            );
        }
    }
}

#[test]
fn a_tile_made_again_without_a_cached_output_takes_its_pixels_as_reference() {
    // cache=class keeps no outputs: switched to cache=full on a frame whose tiles changed only
    // slightly, every tile is unchanged but has no output to reuse, so it is made again from
    // this frame's pixels (and merged once: it was merged a second time, as a reused tile,
    // 128 levels off), which become its reference. The same frame once more is then reused
    // with nothing to correct: exactly cache=off's frame (with the pixels of the frame before
    // as reference, the correction would add their difference again).
    let a = picture(128, 96, 9);
    let b = nudged(&a, 78, 10);
    let props = [("mode", "branch3"), ("cache-threshold", "2"), ("cache-refresh", "0")];
    let (mut h, bus) = element(&[&props[..], &[("cache", "class")]].concat());
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 128, 96));
    push(&mut h, &a);
    h.element().unwrap().set_property_from_str("cache", "full");
    let second = push(&mut h, &b);
    let third = push(&mut h, &b);
    let want = cache_off(&b, &props[..1]);
    assert!(second == want && third == want);
    let st = stats(&bus);
    assert_eq!(u(&st[1], "full-cache-hits"), 0, "no outputs were cached");
    assert_eq!(u(&st[2], "full-cache-hits"), u(&st[2], "tiles"), "every tile is reused");
}

#[test]
fn cache_refresh_recomputes_every_tile_staggered() {
    // A picture, then the same with ±1 level on some pixels: under the threshold, so only the
    // refresh recomputes tiles. With cache-refresh=3 each frame recomputes about a third of
    // the tiles; after 3 frames of the changed picture every tile has been recomputed from
    // it, so the frame equals cache=off's of it, and not before.
    let a = picture(96, 64, 5);
    let b = nudged(&a, 3, 4);
    let props = [("cache", "full"), ("cache-threshold", "2"), ("cache-refresh", "3")];
    let (mut h, bus) = element(&props);
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 96, 64));
    let first = push(&mut h, &a);
    let want = cache_off(&b, &[]);
    assert!(first != want, "the change shows in the output");
    let mut frames = Vec::new();
    for _ in 0..4 {
        frames.push(push(&mut h, &b));
    }
    let st = stats(&bus);
    let tiles = u(&st[0], "tiles");
    assert_eq!(u(&st[0], "full-cache-hits"), 0);
    for (k, s) in st[1..].iter().enumerate() {
        let fresh = tiles - u(s, "full-cache-hits");
        assert!(
            fresh == tiles / 3 || fresh == tiles.div_ceil(3),
            "frame {}: {fresh} of {tiles} tiles recomputed, a third expected",
            k + 1
        );
    }
    assert!(
        frames[0] != want && frames[1] != want,
        "not every tile is refreshed yet"
    );
    assert!(
        frames[2] == want,
        "after 3 frames every tile was recomputed from the new picture"
    );
    assert!(frames[3] == want);
}

#[test]
fn stats_add_up() {
    let (mut h, bus) = element(&[("cache", "off")]);
    let img = zones(150, 90);
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 150, 90));
    push(&mut h, &img);
    let st = &stats(&bus)[0];
    let m = gstclasssr::manifest::ModelSet::load(KA).unwrap().manifest;
    let t = [u(st, "tiles-class1"), u(st, "tiles-class2"), u(st, "tiles-class3")];
    let n = u(st, "tiles");
    assert_eq!(t.iter().sum::<u64>(), n);
    assert!(t.iter().all(|&k| k > 0), "{t:?}");
    let expect = m.classifier.macs_per_tile * n + (0..3).map(|c| m.branches[c].macs_per_tile * t[c]).sum::<u64>();
    assert_eq!(u(st, "macs"), expect);
    assert_eq!(u(st, "original-macs"), m.branches[2].macs_per_tile * n);
    assert_eq!(u(st, "frame"), 1);
    assert!(u(st, "processing-time") > 0);
    // the classifier ran, within the frame's time
    assert!(
        u(st, "classify-time") > 0 && u(st, "classify-time") < u(st, "processing-time"),
        "{st:?}"
    );

    // With the cache, the MACs leave out what was skipped: cache=class runs the branches but
    // not the classifier on an unchanged frame, cache=full (no refresh) runs nothing.
    for (cache, classifier, branches) in [("class", false, true), ("full", false, false)] {
        let (mut h, bus) = element(&[("cache", cache), ("cache-refresh", "0"), ("cache-threshold", "0")]);
        h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 150, 90));
        push(&mut h, &img);
        push(&mut h, &img);
        let st = &stats(&bus)[1];
        let t = [u(st, "tiles-class1"), u(st, "tiles-class2"), u(st, "tiles-class3")];
        assert_eq!(t.iter().sum::<u64>(), n, "{cache}");
        assert_eq!(u(st, "class-cache-hits"), n, "{cache}");
        let mut expect = (0..3).map(|c| m.branches[c].macs_per_tile * t[c]).sum::<u64>();
        if !branches {
            assert_eq!(u(st, "full-cache-hits"), n);
            expect = 0;
        }
        if classifier {
            expect += m.classifier.macs_per_tile * n;
        }
        assert_eq!(u(st, "macs"), expect, "cache={cache}");
        assert_eq!(u(st, "original-macs"), m.branches[2].macs_per_tile * n);
        assert_eq!(u(st, "partial-tiles"), 0, "cache={cache}");
    }

    // A small change with a threshold (in the noisy zone, so that its tiles keep their class):
    // the tiles it touches are recomputed in part, for more than their classifier runs and less
    // than their whole tiles would cost even on the dearest branch.
    let (mut h, bus) = element(&[("cache", "full"), ("cache-refresh", "0"), ("cache-threshold", "2")]);
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 150, 90));
    push(&mut h, &img);
    let mut changed = img.clone();
    for y in 40..44 {
        for x in 120..124 {
            changed.px[y * img.width + x] = [255, 0, 255, 255];
        }
    }
    push(&mut h, &changed);
    let st = &stats(&bus)[1];
    let (hits, partial) = (u(st, "full-cache-hits"), u(st, "partial-tiles"));
    let fresh = n - hits;
    assert!(partial >= 1 && partial <= fresh && fresh <= 4, "{st:?}");
    let classifier = m.classifier.macs_per_tile * fresh;
    let whole = m.branches[2].macs_per_tile * fresh;
    assert!(
        u(st, "macs") > classifier && u(st, "macs") < classifier + whole,
        "{st:?}"
    );
}

#[test]
fn a_seek_resets_the_cache_and_latency_is_upstreams_plus_its_own() {
    init();
    let launch = |live: bool| {
        let p = gst::parse::launch(&format!(
            "videotestsrc pattern=smpte is-live={live} ! video/x-raw,format=RGB,width=96,height=64,framerate=100/1 \
             ! classsr name=c model={KA} device=cpu cache=class stats=true ! appsink name=s max-buffers=1 sync={live}"
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let sink = p.by_name("s").unwrap().downcast::<gst_app::AppSink>().unwrap();
        p.set_state(gst::State::Playing).unwrap();
        for _ in 0..3 {
            sink.pull_sample().unwrap();
        }
        (p, sink)
    };
    // The element holds no frame back: by default a live pipeline's latency is its source's.
    let (p, sink) = launch(true);
    let latency = |pad: gst::Pad| {
        let mut q = gst::query::Latency::new();
        assert!(pad.peer_query(&mut q));
        q.result()
    };
    let upstream = p.by_name("c").unwrap().static_pad("sink").unwrap();
    let (live, min, max) = latency(sink.static_pad("sink").unwrap());
    assert!(live, "a live source's pipeline is live");
    assert_eq!((live, min, max), latency(upstream.clone()));
    // With `latency` set (a frame time over the sink's deadline), it is added, and the
    // pipeline is told to ask again.
    let bus = p.bus().unwrap();
    while bus.pop_filtered(&[gst::MessageType::Latency]).is_some() {}
    let c = p.by_name("c").unwrap();
    c.set_property("latency", 50_000_000u64);
    assert!(
        bus.pop_filtered(&[gst::MessageType::Latency]).is_some(),
        "a latency message"
    );
    let (live2, min2, max2) = latency(sink.static_pad("sink").unwrap());
    assert!(live2);
    assert_eq!(min2, min + gst::ClockTime::from_mseconds(50));
    assert_eq!(max2, max.map(|m| m + gst::ClockTime::from_mseconds(50)));
    p.set_state(gst::State::Null).unwrap();

    // A flushing seek starts the cache over: the static scene's next frame has no hits.
    let (p, sink) = launch(false);
    let bus = p.bus().unwrap();
    let mut st = stats(&bus);
    p.seek_simple(gst::SeekFlags::FLUSH, gst::ClockTime::ZERO).unwrap();
    let first = sink.pull_sample().unwrap();
    assert_eq!(
        first.buffer().unwrap().pts(),
        Some(gst::ClockTime::ZERO),
        "the seek happened"
    );
    sink.pull_sample().unwrap();
    st.extend(stats(&bus));
    p.set_state(gst::State::Null).unwrap();
    let mut hits: Vec<u64> = st.iter().map(|s| u(s, "class-cache-hits")).collect();
    assert!(hits.len() >= 5, "{hits:?}");
    assert_eq!(hits.remove(0), 0, "the first frame computes everything");
    let resets = hits.iter().filter(|&&h| h == 0).count();
    assert_eq!(
        resets, 1,
        "one reset, by the seek, and hits on every other frame: {hits:?}"
    );
}

#[test]
fn branch3_share_is_monotonic_in_bias_through_the_element() {
    let img = zones(160, 96);
    let mut last = 0;
    for bias in ["-1", "-0.03", "0", "0.03", "1"] {
        let (mut h, bus) = element(&[("bias", bias)]);
        h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 160, 96));
        push(&mut h, &img);
        let st = &stats(&bus)[0];
        let (k, tiles) = (u(st, "tiles-class3"), u(st, "tiles"));
        assert!(k >= last, "bias {bias}: {k} < {last}");
        last = k;
        // The extremes: a bias of -1 outweighs any logit of the variance classifier (no tile
        // goes to branch3), one of +1 sends every tile there.
        match bias {
            "-1" => assert_eq!(k, 0, "bias -1: no tile on branch3"),
            "0" => assert!(k > 0 && k < tiles, "bias 0 routes to several classes: {k} of {tiles}"),
            "1" => assert_eq!(k, tiles, "bias 1: every tile on branch3"),
            _ => {}
        }
    }
    // Strictly, in steps: each 0.05 of bias moves one strip of graded() (one tile each) onto
    // branch3.
    let img = graded(32);
    for (k, bias) in ["-0.25", "-0.2", "-0.15", "-0.1", "-0.05", "0", "0.1"]
        .iter()
        .enumerate()
    {
        let (mut h, bus) = element(&[("bias", bias), ("tile-size", "32"), ("overlap", "0")]);
        h.set_src_caps_str(&caps_str(VideoFormat::Rgb, img.width, img.height));
        push(&mut h, &img);
        let st = &stats(&bus)[0];
        assert_eq!(u(st, "tiles"), 6);
        assert_eq!(u(st, "tiles-class3"), k as u64, "bias {bias}");
    }
}

#[test]
fn classmap_tints_tiles_by_class() {
    let img = zones(96, 32);
    let (mut h, _) = element(&[("mode", "classmap"), ("overlap", "0")]);
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 96, 32));
    let out = push(&mut h, &img);
    // Tile centres: flat → green tint, mild → yellow, busy → red.
    let flat = out.at(64, 64);
    assert!(flat[1] > flat[0] && flat[1] > flat[2], "flat tile is green: {flat:?}");
    let bicubic = upscale(&img, &[("model", KA), ("mode", "bicubic")]);
    let busy = out.at(320, 64);
    let b = bicubic.at(320, 64);
    assert!(
        busy[0] as i32 - b[0] as i32 > 20,
        "busy tile is tinted red: {busy:?} vs {b:?}"
    );
    // The middle tile (mild noise, class 2) is yellow: red and green raised, blue lowered
    // (green would lower red, red would lower green).
    let mild = out.at(192, 64);
    let m = bicubic.at(192, 64);
    let d = |c: usize| mild[c] as i32 - m[c] as i32;
    assert!(
        d(0) > 20 && d(1) > 20 && d(2) < -10,
        "mild tile is tinted yellow: {mild:?} vs {m:?}"
    );
}

#[test]
fn classmap_tints_every_pixel_with_overlapping_tiles() {
    // With the default overlap every HR pixel belongs to some tile, corners of overlaps included.
    let (w, h) = (100, 70);
    let img = Rgba::new(w, h, |_, _| [40, 90, 160, 255]);
    let (mut hn, _) = element(&[("mode", "classmap")]);
    hn.set_src_caps_str(&caps_str(VideoFormat::Rgb, w, h));
    let out = push(&mut hn, &img);
    for y in 0..4 * h {
        for x in 0..4 * w {
            assert_ne!(out.at(x, y)[..3], [40, 90, 160], "HR pixel ({x}, {y}) is not tinted");
        }
    }
}

/// The known-answer model with a `qos_bias_step` of `step`, in a scratch directory. Its own
/// manifest has none (0.5), which already sends every tile of any picture to branch1 at
/// level 1, so levels 2 and 3 could not be told apart.
fn ka_with_qos_step(step: f32) -> ScratchDir {
    let mut set = gstclasssr::manifest::ModelSet::load(KA).unwrap();
    set.manifest.qos_bias_step = Some(step);
    let dir = ScratchDir::new("video-qos-step");
    set.save_dir(dir.path(), true).unwrap();
    dir
}

/// Vertical strips of 32 pixels (one tile each with tile-size 32, overlap 0): a flat one, then
/// uniform noise of standard deviation 0.085, 0.135, 0.185, 0.235 and 0.285 (values in [0, 1]).
/// The variance classifier sends a tile to branch3 when its std > 0.06 − bias, so with a bias
/// lowered by 0.05 per QoS level, one strip leaves branch3 per level.
fn graded(height: usize) -> Rgba {
    let mut rng = Rng(4321);
    let noise: Vec<[u8; 3]> = (0..6 * 32 * height)
        .map(|_| [0, 1, 2].map(|_| rng.below(256) as u8))
        .collect();
    Rgba::new(6 * 32, height, |x, y| {
        let strip = x / 32;
        if strip == 0 {
            return [120, 120, 120, 255];
        }
        // uniform over `a` levels: std = a / sqrt(12) / 255
        let sigma = 0.085 + 0.05 * (strip - 1) as f64;
        let a = (sigma * 255.0 * 12f64.sqrt()).round() as u32;
        let base = (255 - a) / 2;
        let n = noise[y * 6 * 32 + x];
        let v = |c: usize| (base + n[c] as u32 % a) as u8;
        [v(0), v(1), v(2), 255]
    })
}

#[test]
fn qos_lateness_degrades_with_a_warning_and_recovers() {
    let model = ka_with_qos_step(0.05);
    let (mut h, bus) = element(&[("model", model.as_str()), ("cache", "off"), ("overlap", "0")]);
    let img = graded(32);
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, img.width, img.height));
    push(&mut h, &img);
    let e = h.element().unwrap();
    // every change of the level is notified (an application can follow it)
    let notified = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = notified.clone();
    e.connect_notify(Some("qos-level"), move |e, _| {
        seen.lock().unwrap().push(e.property::<u32>("qos-level"))
    });
    let late = gst::event::Qos::new(
        gst::QOSType::Overflow,
        1.5,
        40_000_000,
        gst::ClockTime::from_mseconds(33),
    );
    // (tiles-class3, macs) at each level 0..=4, one frame made after each late report.
    let mut per_level = Vec::new();
    let mut warned = 0;
    let st = stats(&bus);
    per_level.push((u(&st[0], "tiles-class3"), u(&st[0], "macs")));
    for level in 1..=4u32 {
        assert!(h.push_upstream_event(late.clone()));
        assert_eq!(e.property::<u32>("qos-level"), level);
        push(&mut h, &img);
        let (st, w) = stats_and_warnings(&bus);
        warned += w;
        assert_eq!(st.len(), 1);
        per_level.push((u(&st[0], "tiles-class3"), u(&st[0], "macs")));
    }
    assert!(h.push_upstream_event(late.clone()));
    assert_eq!(e.property::<u32>("qos-level"), 4, "4 is the last level");
    warned += stats_and_warnings(&bus).1;
    // Levels 1-3 lower the bias: fewer branch3 tiles and fewer MACs at each; level 4 keeps
    // level 3's routing and also upscales class 1 bicubically (no branch1 MACs).
    assert_eq!(per_level[0].0, 5, "{per_level:?}");
    for l in 1..=3 {
        assert!(
            per_level[l].0 < per_level[l - 1].0 && per_level[l].1 < per_level[l - 1].1,
            "level {l} routes cheaper than level {}: {per_level:?}",
            l - 1
        );
    }
    assert_eq!(per_level[4].0, per_level[3].0, "{per_level:?}");
    assert!(per_level[4].1 < per_level[3].1, "{per_level:?}");
    // One warning for the burst of degradation (at most one per 10 s), not one per level.
    assert_eq!(warned, 1, "one warning for the degradation burst");
    for _ in 0..5 {
        h.push_upstream_event(recovered(66));
    }
    assert_eq!(e.property::<u32>("qos-level"), 0, "recovers when on time");
    assert_eq!(
        *notified.lock().unwrap(),
        [1, 2, 3, 4, 3, 2, 1, 0],
        "one notify per change"
    );
    push(&mut h, &img);
    let full = u(&stats(&bus)[0], "macs");
    assert_eq!(full, per_level[0].1, "full quality again");
    // Late again within 10 s: degraded, but no second warning yet.
    assert!(h.push_upstream_event(late));
    assert_eq!(e.property::<u32>("qos-level"), 1);
    assert_eq!(stats_and_warnings(&bus).1, 0, "warnings are rate-limited");
    // On time, but at a proportion the sink's running average still holds above 1.05 after
    // the late spell: the level holds (neither lateness nor recovery), however many come.
    let behind = gst::event::Qos::new(
        gst::QOSType::Underflow,
        1.2,
        -10_000_000,
        gst::ClockTime::from_mseconds(99),
    );
    for _ in 0..12 {
        assert!(h.push_upstream_event(behind.clone()));
    }
    assert_eq!(e.property::<u32>("qos-level"), 1, "held, not raised nor lowered");
}

#[test]
fn qos_steps_keep_the_cache_and_reroute_cached_tiles() {
    init();
    let model = ka_with_qos_step(0.05);
    let img = graded(32);
    // the element on `img`'s caps, one tile per strip, with the cache `cache` and no refresh
    let start = |cache: &str| {
        let props = [
            ("model", model.as_str()),
            ("overlap", "0"),
            ("cache", cache),
            ("cache-threshold", "0"),
            ("cache-refresh", "0"),
        ];
        let (mut h, bus) = element(&props);
        h.set_src_caps_str(&caps_str(VideoFormat::Rgb, img.width, img.height));
        (h, bus)
    };
    // cache=full: a QoS step keeps every cached output (the frame costs nothing).
    let (mut h, bus) = start("full");
    let first = push(&mut h, &img);
    assert!(h.push_upstream_event(late(gst::QOSType::Overflow, 33)));
    assert_eq!(h.element().unwrap().property::<u32>("qos-level"), 1);
    assert!(push(&mut h, &img) == first, "the cached frame");
    let st = stats(&bus);
    assert_eq!(u(&st[1], "full-cache-hits"), u(&st[1], "tiles"), "{:?}", st[1]);
    assert_eq!(u(&st[1], "runs"), 0);
    // cache=class: unchanged tiles skip the classifier and are routed again from their
    // cached logits at the lowered bias (one strip leaves branch3).
    let (mut h, bus) = start("class");
    push(&mut h, &img);
    assert!(h.push_upstream_event(late(gst::QOSType::Overflow, 33)));
    push(&mut h, &img);
    let st = stats(&bus);
    assert_eq!(u(&st[0], "tiles-class3"), 5);
    assert_eq!(u(&st[1], "class-cache-hits"), u(&st[1], "tiles"), "{:?}", st[1]);
    assert_eq!(u(&st[1], "tiles-class3"), 4, "{:?}", st[1]);
    // cache=full from level 4 back to 0: the bicubic stand-ins (strips 0-2) are redone by
    // their branch at the restored bias, and so is strip 3, whose level-4 output came from
    // branch2 while its logits pick branch3 again: then the frame is cache=off's, and the
    // stats count each reused tile by the branch that made its output.
    let (mut h, bus) = start("full");
    for k in 1..=4 {
        assert!(h.push_upstream_event(late(gst::QOSType::Overflow, 33 * k)));
    }
    assert_eq!(h.element().unwrap().property::<u32>("qos-level"), 4);
    push(&mut h, &img);
    for _ in 0..5 {
        h.push_upstream_event(recovered(200));
    }
    assert_eq!(h.element().unwrap().property::<u32>("qos-level"), 0);
    push(&mut h, &img);
    push(&mut h, &img);
    let st = stats(&bus);
    let classes = |s: &gst::Structure| [1, 2, 3].map(|c| u(s, &format!("tiles-class{c}")));
    assert_eq!(classes(&st[0]), [3, 1, 2], "level 4: {:?}", st[0]);
    assert_eq!(u(&st[1], "full-cache-hits"), 2, "strips 4-5 keep their outputs");
    assert_eq!(u(&st[2], "full-cache-hits"), u(&st[2], "tiles"));
    assert_eq!(classes(&st[2]), [1, 0, 5], "{:?}", st[2]);
    let off = cache_off(&img, &[("model", model.as_str()), ("overlap", "0")]);
    assert!(push(&mut h, &img) == off, "cache=off's frame");
}

/// `img` as a buffer at frame `n` of a 30 fps stream.
fn timed(img: &Rgba, n: u64) -> gst::Buffer {
    let mut b = to_buffer(img, VideoFormat::Rgb);
    let m = b.get_mut().unwrap();
    m.set_pts(gst::ClockTime::from_mseconds(33 * n));
    m.set_duration(gst::ClockTime::from_mseconds(33));
    b
}

/// A downstream report of frames on time with headroom (proportion 0.5), at time `at_ms`.
fn recovered(at_ms: u64) -> gst::Event {
    gst::event::Qos::new(
        gst::QOSType::Underflow,
        0.5,
        -20_000_000,
        gst::ClockTime::from_mseconds(at_ms),
    )
}

/// A downstream report that the frame of time `at_ms` was rendered 200 ms late.
fn late(kind: gst::QOSType, at_ms: u64) -> gst::Event {
    gst::event::Qos::new(kind, 1.5, 200_000_000, gst::ClockTime::from_mseconds(at_ms))
}

/// The lateness of the last QoS event the element sent upstream.
fn forwarded_diff(h: &mut gst_check::Harness) -> i64 {
    let mut diff = None;
    while let Some(e) = h.try_pull_upstream_event() {
        if let gst::EventView::Qos(q) = e.view() {
            diff = Some(q.get().2);
        }
    }
    diff.expect("a QoS event went upstream")
}

/// Pushes frame `n`; whether an output came out (the base class drops frames known late).
fn passes(h: &mut gst_check::Harness, img: &Rgba, n: u64) -> bool {
    h.push(timed(img, n)).unwrap();
    h.try_pull().is_some()
}

#[test]
fn a_qos_report_passed_on_as_on_time_keeps_its_time() {
    // A report whose running time is offset (a pad offset between the sink and the element)
    // reaches upstream with the same time as the element read it: the offset counted once.
    // (Negative: GStreamer 1.22 reads a positive offset as a time of 0.)
    let (mut h, _) = element(&[]);
    let img = zones(96, 64);
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 96, 64));
    assert!(passes(&mut h, &img, 0));
    let offset_ms: i64 = -100;
    let report = gst::event::Qos::builder(gst::QOSType::Overflow, 1.5, 200_000_000)
        .timestamp(gst::ClockTime::from_mseconds(300))
        .running_time_offset(offset_ms * 1_000_000)
        .build();
    assert!(h.push_upstream_event(report));
    assert_eq!(h.element().unwrap().property::<u32>("qos-level"), 1);
    let mut seen = None;
    while let Some(e) = h.try_pull_upstream_event() {
        if let gst::EventView::Qos(q) = e.view() {
            let (_, _, diff, ts) = q.get();
            seen = Some((diff, ts));
        }
    }
    let (diff, ts) = seen.expect("a QoS event went upstream");
    assert!(diff < 0, "passed on as on time: {diff}");
    assert_eq!(ts, Some(gst::ClockTime::from_mseconds((300 + offset_ms) as u64)));
}

#[test]
fn qos_degrades_before_any_frame_is_dropped() {
    let (mut h, _) = element(&[]);
    let img = zones(96, 64);
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 96, 64));
    let e = h.element().unwrap();
    assert!(passes(&mut h, &img, 0));
    // Each late report says frames until its time + 200 ms are hopeless; until the last
    // level they are still made, cheaper.
    for k in 1..=3 {
        assert!(h.push_upstream_event(late(gst::QOSType::Overflow, 33 * k)));
        assert_eq!(e.property::<u32>("qos-level"), k as u32);
        // upstream (a decoder, videoconvert) hears it as on time too
        assert!(forwarded_diff(&mut h) < 0, "level {k}");
        assert!(passes(&mut h, &img, k), "frame {k} made at level {k}");
    }
    // At the last level the base class drops what is known to be late…
    assert!(h.push_upstream_event(late(gst::QOSType::Overflow, 4 * 33)));
    assert_eq!(e.property::<u32>("qos-level"), 4);
    assert_eq!(forwarded_diff(&mut h), 200_000_000, "the last level passes lateness on");
    // A late report about time 0 is passed on as on time at 0 (no earlier time exists).
    let (mut h0, _) = element(&[]);
    h0.set_src_caps_str(&caps_str(VideoFormat::Rgb, 96, 64));
    assert!(passes(&mut h0, &img, 0));
    assert!(h0.push_upstream_event(late(gst::QOSType::Underflow, 0)));
    assert_eq!(forwarded_diff(&mut h0), 0);
    assert!(passes(&mut h0, &img, 1));
    assert!(
        !passes(&mut h, &img, 5),
        "a frame known late is dropped at the last level"
    );
    // …and frames after the late window still come out.
    assert!(passes(&mut h, &img, 20));
    // Recovery without much headroom (proportion 0.95) takes a run of on-time reports.
    let on_time = |at: u64| {
        gst::event::Qos::new(
            gst::QOSType::Underflow,
            0.95,
            -5_000_000,
            gst::ClockTime::from_mseconds(at),
        )
    };
    for k in 0..7 {
        h.push_upstream_event(on_time(700 + k));
    }
    assert_eq!(
        e.property::<u32>("qos-level"),
        4,
        "7 on-time reports are not yet a trend"
    );
    h.push_upstream_event(on_time(710));
    assert_eq!(e.property::<u32>("qos-level"), 3, "the 8th steps back up");
    // Below the last level again, frames are made even after a very late report at it.
    assert!(h.push_upstream_event(late(gst::QOSType::Overflow, 720)));
    assert_eq!(e.property::<u32>("qos-level"), 4);
    let very_late = gst::event::Qos::new(
        gst::QOSType::Overflow,
        1.5,
        2_000_000_000,
        gst::ClockTime::from_mseconds(730),
    );
    assert!(h.push_upstream_event(very_late));
    h.push_upstream_event(gst::event::Qos::new(
        gst::QOSType::Underflow,
        0.5,
        -5_000_000,
        gst::ClockTime::from_mseconds(740),
    ));
    assert_eq!(e.property::<u32>("qos-level"), 3);
    assert!(passes(&mut h, &img, 25), "made at level 3 though 2 s late at level 4");
    // Switching qos off returns to full quality at once.
    e.set_property("qos", false);
    assert!(passes(&mut h, &img, 26));
    assert_eq!(e.property::<u32>("qos-level"), 0);
    e.set_property("qos", true);
    // A flush starts the stream on time.
    assert!(h.push_event(gst::event::FlushStart::new()));
    assert!(h.push_event(gst::event::FlushStop::new(true)));
    assert_eq!(e.property::<u32>("qos-level"), 0);
}

#[test]
fn qos_off_throttle_reports_and_fixed_modes_do_not_degrade() {
    let img = zones(96, 64);
    // qos=false (the base class's switch): no degradation and no dropped frames.
    let (mut h, _) = element(&[("qos", "false")]);
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 96, 64));
    assert!(passes(&mut h, &img, 0));
    for k in 1..=6 {
        h.push_upstream_event(late(gst::QOSType::Overflow, 33 * k));
    }
    assert_eq!(h.element().unwrap().property::<u32>("qos-level"), 0);
    assert!(passes(&mut h, &img, 2), "nothing is dropped with qos=false");
    // A throttle report is a requested rate, not lateness.
    let (mut h, _) = element(&[]);
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 96, 64));
    assert!(passes(&mut h, &img, 0));
    for k in 1..=6 {
        h.push_upstream_event(late(gst::QOSType::Throttle, 33 * k));
    }
    assert_eq!(h.element().unwrap().property::<u32>("qos-level"), 0);
    // mode=original has no cheaper routing: it drops late frames as any filter does.
    let (mut h, _) = element(&[("mode", "original")]);
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 96, 64));
    assert!(passes(&mut h, &img, 0));
    h.push_upstream_event(late(gst::QOSType::Overflow, 33));
    assert_eq!(h.element().unwrap().property::<u32>("qos-level"), 0);
    assert!(!passes(&mut h, &img, 2), "late frame dropped");
    assert!(passes(&mut h, &img, 20));
}

#[test]
fn region_of_interest_metas_are_scaled_with_the_frame() {
    let (mut h, _) = element(&[]);
    let img = zones(96, 64);
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 96, 64));
    let mut b = timed(&img, 0);
    gst_video::VideoRegionOfInterestMeta::add(b.get_mut().unwrap(), "face", (10, 12, 20, 16));
    h.push(b).unwrap();
    let out = h.pull().unwrap();
    let roi = out
        .meta::<gst_video::VideoRegionOfInterestMeta>()
        .expect("the ROI is kept");
    assert_eq!(roi.rect(), (40, 48, 80, 64));
    assert_eq!(roi.roi_type(), "face");
}

#[test]
fn gap_buffers_stay_gaps_skip_the_networks_and_leave_the_cache_alone() {
    // A GAP buffer carries no meaningful picture: it comes out as a GAP of the right size
    // (the input upscaled bicubically, no network run), and the cache does not learn from it.
    let a = zones(96, 64);
    let junk = picture(96, 64, 11);
    let (mut h, bus) = element(&[("cache", "full"), ("cache-threshold", "0"), ("cache-refresh", "0")]);
    h.set_src_caps_str(&caps_str(VideoFormat::Rgb, 96, 64));
    let first = push(&mut h, &a);
    let mut gap = to_buffer(&junk, VideoFormat::Rgb);
    gap.get_mut().unwrap().set_flags(gst::BufferFlags::GAP);
    h.push(gap).unwrap();
    let out = h.pull().unwrap();
    assert!(out.flags().contains(gst::BufferFlags::GAP), "the output is a GAP too");
    let got = from_buffer(&out, VideoFormat::Rgb, 96 * 4, 64 * 4);
    assert!(
        got == cache_off(&junk, &[("mode", "bicubic")]),
        "a GAP is upscaled bicubically"
    );
    let again = push(&mut h, &a);
    assert!(again == first, "the frame after the GAP reuses the cache as before it");
    let st = stats(&bus);
    assert_eq!(st.len(), 3);
    assert_eq!(u(&st[1], "runs"), 0, "no network runs on a GAP");
    assert_eq!(u(&st[1], "macs"), 0);
    assert_eq!(u(&st[2], "full-cache-hits"), u(&st[2], "tiles"), "{:?}", st[2]);
    // A GAP without memory (nothing to map) comes out as a black GAP frame, with no warning.
    let mut empty = gst::Buffer::new();
    empty.get_mut().unwrap().set_flags(gst::BufferFlags::GAP);
    h.push(empty).unwrap();
    let out = h.pull().unwrap();
    assert!(out.flags().contains(gst::BufferFlags::GAP));
    assert_eq!(out.size(), 96 * 4 * 64 * 4 * 3);
    assert!(out.map_readable().unwrap().iter().all(|&b| b == 0), "black");
    let (_, warnings) = stats_and_warnings(&bus);
    assert_eq!(warnings, 0);
    assert!(push(&mut h, &a) == first, "and the stream goes on");
    // With alpha (and padding bytes) the black is opaque, as the element writes them.
    for (format, full) in [(VideoFormat::Rgba, 3), (VideoFormat::Xrgb, 0)] {
        let (mut h, _) = element(&[]);
        h.set_src_caps_str(&caps_str(format, 96, 64));
        let mut empty = gst::Buffer::new();
        empty.get_mut().unwrap().set_flags(gst::BufferFlags::GAP);
        h.push(empty).unwrap();
        let out = h.pull().unwrap();
        let map = out.map_readable().unwrap();
        assert_eq!(map.len(), 96 * 4 * 64 * 4 * 4);
        assert!(
            map.chunks_exact(4)
                .all(|px| (0..4).all(|k| px[k] == if k == full { 255 } else { 0 })),
            "{format:?}: opaque black"
        );
    }
}
