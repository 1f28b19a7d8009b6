// The GStreamer-free engine on real ONNX Runtime sessions: seams (tiled vs whole-frame runs of
// one branch), batched routing (per tile worker, one classifier run and one run per branch
// group), statistics, and the committed known-answer fixtures matching what the ONNX writer
// produces.

mod common;

use common::*;
use gstclasssr::engine::{CacheMode, Engine, FrameConfig, Image, ImageMut, Mode, Model, PixelLayout};
use gstclasssr::manifest::ModelSet;
use gstclasssr::runtime::{self, DeviceRequest, Precision, SessionConfig};
use ort::value::TensorRef;

const KA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/known-answer");
const CPU: SessionConfig = SessionConfig {
    device: DeviceRequest::Cpu,
    device_id: 0,
    precision: Precision::Fp32,
    threads: 2,
};

fn rgb_bytes(img: &Rgba) -> Vec<u8> {
    img.px.iter().flat_map(|p| [p[0], p[1], p[2]]).collect()
}

fn from_rgb(data: &[u8], w: usize, h: usize) -> Rgba {
    Rgba::new(w, h, |x, y| {
        let o = (y * w + x) * 3;
        [data[o], data[o + 1], data[o + 2], 255]
    })
}

fn run_engine(engine: &mut Engine, img: &Rgba, cfg: &FrameConfig) -> (Rgba, gstclasssr::engine::FrameStats) {
    try_engine(engine, img, cfg).unwrap()
}

fn try_engine(
    engine: &mut Engine,
    img: &Rgba,
    cfg: &FrameConfig,
) -> Result<(Rgba, gstclasssr::engine::FrameStats), gstclasssr::Error> {
    let data = rgb_bytes(img);
    let s = engine.scale();
    let mut out = vec![0u8; img.width * img.height * s * s * 3];
    let input = Image {
        data: &data,
        width: img.width,
        height: img.height,
        stride: img.width * 3,
        layout: PixelLayout::Rgb,
    };
    let mut output = ImageMut {
        data: &mut out,
        width: img.width * s,
        height: img.height * s,
        stride: img.width * s * 3,
        layout: PixelLayout::Rgb,
    };
    let stats = engine.process(cfg, &input, &mut output)?;
    Ok((from_rgb(&out, img.width * s, img.height * s), stats))
}

/// One branch run on the whole frame in a single call (no tiling), as u8.
fn whole_frame(set: &ModelSet, branch: usize, img: &Rgba) -> Rgba {
    let (mut session, _) = runtime::session(&set.branches[branch], "branch", &CPU).unwrap();
    let (w, h) = (img.width, img.height);
    let mut planar = vec![0f32; 3 * w * h];
    for (i, p) in img.px.iter().enumerate() {
        for c in 0..3 {
            planar[c * w * h + i] = p[c] as f32 / 255.0;
        }
    }
    let t = TensorRef::from_array_view(([1usize, 3, h, w], &planar[..])).unwrap();
    let out = session.run(ort::inputs![t]).unwrap();
    let (shape, data) = out["sr"].try_extract_tensor::<f32>().unwrap();
    assert_eq!(&**shape, &[1, 3, 4 * h as i64, 4 * w as i64]);
    let (ow, oh) = (4 * w, 4 * h);
    Rgba::new(ow, oh, |x, y| {
        let v = |c: usize| (data[c * ow * oh + y * ow + x] * 255.0 + 0.5).clamp(0.0, 255.0) as u8;
        [v(0), v(1), v(2), 255]
    })
}

#[test]
fn tiled_branches_match_whole_frame_runs() {
    // The known-answer branches are exact resamplers, so a tiled run must give the whole-frame
    // run's bytes but for rounding. Nearest needs no neighbours: identical. Bilinear and bicubic
    // see clamped tile edges where the whole frame has neighbours, but those samples lie in the
    // outer quarter of each overlap, which the feather never uses (weight 1e-6), or, for bicubic
    // (2 LR pixels of support), in the first steps of the ramp, where the weight keeps the
    // error under half a level; and the fixed-point merge rounds a value exactly between two
    // levels (bilinear makes many: multiples of 1/64) the other way to the f32 `+ 0.5` here.
    // Measured (150x90, tile 32, overlap 4): 0 / 1 / 1 levels at most, 65.9 and 86.9 dB; a
    // seam or alignment bug costs tens of levels.
    let set = ModelSet::load(KA).unwrap();
    let mut engine = Engine::new(Model::load(&set, &CPU).unwrap());
    let img = picture(150, 90, 21);
    for (branch, mode) in [(0, Mode::Branch(0)), (1, Mode::Branch(1)), (2, Mode::Branch(2))] {
        let whole = whole_frame(&set, branch, &img);
        let cfg = FrameConfig {
            mode,
            ..FrameConfig::default()
        };
        let (tiled, _) = run_engine(&mut engine, &img, &cfg);
        let p = psnr(&tiled, &whole);
        let d = max_diff(&tiled, &whole, false);
        println!(
            "branch{}: tiled vs whole frame {p:.2} dB, max difference {d}",
            branch + 1
        );
        let most = if branch == 0 { 0 } else { 1 };
        assert!(d <= most, "branch{}: max difference {d} (at most {most})", branch + 1);
        assert!(p >= 60.0, "branch{}: {p:.2} dB", branch + 1);
    }
}

#[test]
fn tiles_classified_and_run_in_batches_per_worker() {
    let set = ModelSet::load(KA).unwrap();
    // One tile worker: one classifier run and one run per non-empty branch group.
    let one = SessionConfig { threads: 1, ..CPU };
    let mut engine = Engine::new(Model::load(&set, &one).unwrap());
    assert!(engine.model().workers.is_empty());
    let img = zones(320, 224);
    let cfg = FrameConfig {
        max_batch: 256,
        ..Default::default()
    };
    let (single, stats) = run_engine(&mut engine, &img, &cfg);
    let (grid, classes) = engine.last_classes().unwrap();
    let n = grid.len();
    assert_eq!(stats.tiles.iter().sum::<usize>(), n);
    assert_eq!(classes.len(), n);
    // A tile wholly inside a zone (flat, mild noise, strong noise) gets that zone's class from
    // the variance classifier; tiles across a border may go either way.
    let zone = |x: usize| 3 * x / img.width;
    let mut inside = [0usize; 3];
    for (i, &class) in classes.iter().enumerate() {
        let (x0, _) = grid.origin(i);
        let z = zone(x0);
        if z == zone(x0 + grid.tile - 1) {
            assert_eq!(class as usize, z, "tile {i} at x {x0}, wholly in zone {z}");
            inside[z] += 1;
        }
    }
    for z in 0..3 {
        assert!(inside[z] > 0, "zone {z} holds a whole tile: {inside:?}");
        assert!(stats.tiles[z] >= inside[z], "{:?} vs {inside:?}", stats.tiles);
    }
    let groups = stats.tiles.iter().filter(|&&k| k > 0).count();
    assert_eq!(groups, 3, "test picture should use several branches: {:?}", stats.tiles);
    assert_eq!(
        stats.runs,
        1 + groups,
        "one classifier run + one run per non-empty branch group"
    );

    // max-batch 0 (the default) splits each group into calls of at most CPU_BATCH tiles on the
    // CPU; the frame is the same.
    let big = zones(400, 240);
    let (whole, _) = run_engine(&mut engine, &big, &cfg);
    let (auto, st) = run_engine(&mut engine, &big, &FrameConfig::default());
    let calls: usize = st
        .tiles
        .iter()
        .map(|&k| k.div_ceil(gstclasssr::engine::CPU_BATCH))
        .sum();
    assert!(
        calls > 3,
        "the picture has a group larger than one call: {:?}",
        st.tiles
    );
    assert_eq!(st.runs, 1 + calls);
    assert!(auto == whole, "automatic batches give another frame");

    // MACs add up from the manifest.
    let m = &set.manifest;
    let expect: u64 = m.classifier.macs_per_tile * n as u64
        + (0..3)
            .map(|c| m.branches[c].macs_per_tile * stats.tiles[c] as u64)
            .sum::<u64>();
    assert_eq!(stats.macs, expect);
    assert_eq!(stats.original_macs, m.branches[2].macs_per_tile * n as u64);

    // With W tile workers (CPU has 2) the frame's tiles, in class order, are cut into W
    // shares of about equal cost: each cut splits at most one group's run in two, and every
    // run is split by max-batch. The classifier's batch is cut into W shares (of at least
    // CLASSIFIER_SHARE tiles). The frame is the same byte for byte.
    let mut workers = Engine::new(Model::load(&set, &CPU).unwrap());
    let w = workers.model().workers.len() + 1;
    assert_eq!((w, workers.model().classifier_workers.len() + 1), (2, 2));
    assert!(n >= w * gstclasssr::engine::CLASSIFIER_SHARE);
    for max_batch in [256, 4] {
        let c = FrameConfig { max_batch, ..cfg };
        let (frame, split) = run_engine(&mut workers, &img, &c);
        assert_eq!(split.tiles, stats.tiles);
        let least: usize = w + split.tiles.iter().map(|&k| k.div_ceil(max_batch)).sum::<usize>();
        assert!(
            (least..least + w).contains(&split.runs),
            "max-batch {max_batch}: {} runs, {least} without cuts",
            split.runs
        );
        assert!(
            frame == single,
            "max-batch {max_batch}: the workers' frame differs from one worker's"
        );
    }
}

#[test]
fn bias_moves_tiles_between_branches() {
    let set = ModelSet::load(KA).unwrap();
    let mut engine = Engine::new(Model::load(&set, &CPU).unwrap());
    let img = zones(160, 96);
    let mut last = 0;
    for bias in [-1.0f32, -0.02, 0.0, 0.02, 1.0] {
        let cfg = FrameConfig {
            bias,
            ..FrameConfig::default()
        };
        let (_, stats) = run_engine(&mut engine, &img, &cfg);
        assert!(stats.tiles[2] >= last, "branch3 share is monotonic in bias");
        last = stats.tiles[2];
        if bias == -1.0 {
            assert_eq!(stats.tiles[2], 0);
        }
        if bias == 1.0 {
            assert_eq!(stats.tiles[2], stats.tiles.iter().sum::<usize>());
        }
    }
}

#[test]
fn committed_known_answer_models_are_what_the_writer_produces() {
    let committed = ModelSet::load(KA).unwrap();
    let fresh = gstclasssr::known_answer::model_set();
    assert_eq!(committed.manifest, fresh.manifest);
    assert!(
        committed.classifier == fresh.classifier,
        "classifier.onnx is stale: cargo run --example write_known_answer -- models/known-answer --force"
    );
    for i in 0..3 {
        assert!(
            committed.branches[i] == fresh.branches[i],
            "branch{}.onnx is stale",
            i + 1
        );
    }
    assert!(committed.manifest.is_known_answer());
}

#[test]
fn graph_costs_follow_the_paper_convention() {
    use gstclasssr::onnx::Arch;
    // The paper's FLOPs per 32x32 tile for FSRCNN d = 16 / 36 / 56: 141 / 304 / 468 M.
    for (d, paper) in [(16, 141), (36, 304), (56, 468)] {
        let (_, flops) = Arch::Fsrcnn {
            d,
            s: 12,
            m: 4,
            scale: 4,
            skip: false,
        }
        .cost_per_tile(32);
        assert!((flops as f64 / 1e6 - paper as f64).abs() < 1.0, "d={d}: {flops}");
    }
}

/// Packs `img` into `layout` with `pad` extra bytes per row (filled with 0x5a).
fn pack(img: &Rgba, layout: PixelLayout, pad: usize) -> (Vec<u8>, usize) {
    let bpp = layout.bytes_per_pixel();
    let stride = img.width * bpp + pad;
    let mut data = vec![0x5a; stride * img.height];
    for y in 0..img.height {
        for x in 0..img.width {
            let p = img.at(x, y);
            let o = y * stride + x * bpp;
            for (c, &off) in layout.rgb_offsets().iter().enumerate() {
                data[o + off] = p[c];
            }
        }
    }
    (data, stride)
}

#[test]
fn frame_graphs_match_the_cpu_engine_bit_for_bit() {
    // unpack → classifier → branches → merge as ONNX graphs (the CUDA path's steps) against
    // the CPU engine: the same bytes, for the trained default and the known-answer model, odd
    // sizes (one smaller than a tile), strided rows and 3- and 4-byte layouts.
    let sets = [
        ("trained default", ModelSet::embedded()),
        ("known-answer", ModelSet::load_dir(std::path::Path::new(KA)).unwrap()),
    ];
    let cases = [
        (97, 61, PixelLayout::Rgb, 0, Mode::ClassSR),
        (20, 17, PixelLayout::Bgrx, 8, Mode::ClassSR),
        (64, 45, PixelLayout::Xrgb, 0, Mode::Original),
        (70, 40, PixelLayout::Bgr, 3, Mode::Branch(0)),
    ];
    for (name, set) in sets {
        let mut cpu = Engine::new(Model::load(&set, &CPU).unwrap());
        let mut graphs = Engine::new(Model::load(&set, &CPU).unwrap());
        for (k, &(w, h, layout, pad, mode)) in cases.iter().enumerate() {
            let img = picture(w, h, 40 + k as u64);
            let (data, stride) = pack(&img, layout, pad);
            let cfg = FrameConfig {
                mode,
                max_batch: 7,
                ..Default::default()
            };
            let input = Image {
                data: &data,
                width: w,
                height: h,
                stride,
                layout,
            };
            let s = cpu.scale();
            let ostride = w * s * layout.bytes_per_pixel() + pad;
            let mut a = vec![0u8; ostride * h * s];
            let mut b = vec![1u8; ostride * h * s];
            let out = |data| ImageMut {
                data,
                width: w * s,
                height: h * s,
                stride: ostride,
                layout,
            };
            let sa = cpu.process(&cfg, &input, &mut out(&mut a)).unwrap();
            let sb = graphs.process_graphs(&cfg, &input, &mut out(&mut b)).unwrap();
            assert_eq!(sa.tiles, sb.tiles, "{name} {w}x{h}: same routing");
            assert_eq!(sa.macs, sb.macs);
            let row = w * s * layout.bytes_per_pixel();
            let differ = (0..h * s)
                .flat_map(|y| (0..row).map(move |x| y * ostride + x))
                .filter(|&i| a[i] != b[i])
                .count();
            println!(
                "{name} {w}x{h} {} {}: tiles {:?}, {differ} bytes differ",
                layout.name(),
                mode.name(),
                sa.tiles
            );
            assert_eq!(
                differ,
                0,
                "{name} {w}x{h} {}: the frame graphs differ from the engine",
                layout.name()
            );
        }
    }
}

#[test]
fn frame_graphs_bound_broken_outputs_as_the_cpu_merge_does() {
    // A broken model's NaN, infinite or huge outputs go into the frame graphs' accumulator
    // exactly as the engine's merge puts them (NaN as the lower bound, the rest clamped), so
    // the frame stays bounded and the two paths stay bit-identical.
    use gstclasssr::engine::accumulate::{merge_tile, TileFx, FX_ONE};
    use gstclasssr::engine::TileGrid;
    use gstclasssr::onnx::frame_graphs::{acc_len, accumulate_graph, ACC, ACC_OUT, IDS, SR};
    let grid = TileGrid::new(50, 40, 32, 4, 4).unwrap();
    let (lo, hi) = (-0.5f32, 1.5f32);
    let th = grid.tile * grid.scale;
    let (n, item) = (grid.len(), 3 * th * th);
    let special = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e30,
        -1e30,
        0.25,
        1.75,
        -0.7,
    ];
    let sr: Vec<f32> = (0..n * item)
        .map(|k| special[(k * 7 + k / 13) % special.len()])
        .collect();
    let m = TileFx {
        lo,
        k: FX_ONE / (hi - lo),
        phases: false,
    };
    let len = acc_len(&grid);
    let mut cpu = vec![0i32; len];
    for i in 0..n {
        merge_tile(&grid, &mut cpu, i, &sr[i * item..(i + 1) * item], m);
    }
    let bytes = gstclasssr::onnx::to_bytes(&accumulate_graph(&grid, lo, hi, false));
    let mut s = runtime::cpu_session_as_is(&bytes, "accumulate graph", 1).unwrap();
    let ids: Vec<i64> = (0..n as i64).collect();
    let acc = vec![0i32; len];
    let out = s
        .run(ort::inputs![
            ACC => TensorRef::from_array_view(([len], &acc[..])).unwrap(),
            SR => TensorRef::from_array_view(([n, 3, th, th], &sr[..])).unwrap(),
            IDS => TensorRef::from_array_view(([n], &ids[..])).unwrap(),
        ])
        .unwrap();
    let (_, graph) = out[ACC_OUT].try_extract_tensor::<i32>().unwrap();
    let planes = 3 * grid.padded_width * grid.padded_height * grid.scale * grid.scale;
    assert!(
        cpu[..planes].iter().any(|&v| v < 0),
        "NaN and -inf pull samples below lo"
    );
    let differ = (0..planes).filter(|&i| cpu[i] != graph[i]).count();
    assert_eq!(differ, 0, "of {planes} accumulator samples");
}

/// Runs each (picture, settings) frame through two engines of the trained default, one with
/// cache=off and one with cache=full (threshold 0: only bit-identical tiles are reused; no
/// refresh), asserts that every frame is the same byte for byte and returns the full-cache
/// engine's statistics.
fn full_cache_against_off(frames: &[(&Rgba, FrameConfig)]) -> Vec<gstclasssr::engine::FrameStats> {
    let set = ModelSet::embedded();
    let mut off = Engine::new(Model::load(&set, &CPU).unwrap());
    let mut full = Engine::new(Model::load(&set, &CPU).unwrap());
    let mut stats = Vec::new();
    for (frame, (img, cfg)) in frames.iter().enumerate() {
        let (want, _) = run_engine(&mut off, img, cfg);
        let fcfg = FrameConfig {
            cache: CacheMode::Full,
            cache_threshold: 0.0,
            cache_refresh: 0,
            ..*cfg
        };
        let (got, st) = run_engine(&mut full, img, &fcfg);
        assert!(got == want, "frame {frame}: cache=full differs from cache=off: {st:?}");
        assert_eq!(st.partial_tiles, 0, "threshold 0 recomputes whole tiles only");
        stats.push(st);
    }
    stats
}

#[test]
fn full_cache_updates_only_changed_tiles_and_stays_exact() {
    // A patch moving across a still picture: with cache=full each frame equals cache=off's
    // byte for byte, though only the tiles the patch touches are recomputed and repacked over
    // the previous output.
    let pictures = moving_patch();
    let frames: Vec<_> = pictures.iter().map(|p| (p, FrameConfig::default())).collect();
    for (frame, st) in full_cache_against_off(&frames).iter().enumerate().skip(1) {
        let n = st.tiles.iter().sum::<usize>();
        assert!(
            st.full_cache_hits > 0 && st.full_cache_hits * 2 >= n,
            "frame {frame}: only the tiles the patch touched rerun ({} of {n} reused)",
            st.full_cache_hits
        );
    }
}

#[test]
fn full_cache_follows_cache_off_again_after_a_qos_step() {
    // A QoS step (qos_bias) keeps the cache: a still picture made while QoS sent every tile to
    // branch1 keeps those outputs only while the routing still picks branch1. Once QoS
    // recovers, the tiles its logits send to a costlier branch are made again, and cache=full
    // (threshold 0) gives cache=off's frames byte for byte again.
    let img = picture(200, 120, 5);
    let cfg = FrameConfig {
        bias: 4.0,
        ..FrameConfig::default()
    };
    let late = FrameConfig { qos_bias: -40.0, ..cfg };
    let frames = [(&img, late), (&img, cfg), (&img, cfg)];
    let stats = full_cache_against_off(&frames);
    let n: usize = stats[0].tiles.iter().sum();
    assert_eq!(stats[0].tiles[0], n, "the late frame sends every tile to branch1");
    let costlier = n - stats[1].tiles[0];
    assert!(
        costlier > 0,
        "on time, some tiles go to costlier branches: {:?}",
        stats[1].tiles
    );
    assert_eq!(
        stats[1].full_cache_hits,
        n - costlier,
        "those are made again, the rest reused"
    );
    assert_eq!(stats[2].full_cache_hits, n, "then every tile is reused");
}

/// A 12x12 patch moving across a still 200x120 picture, 6 frames.
fn moving_patch() -> Vec<Rgba> {
    let base = picture(200, 120, 9);
    (0..6)
        .map(|frame| {
            let mut img = base.clone();
            for y in 40..52 {
                for x in 20 + 25 * frame..32 + 25 * frame {
                    img.px[y * img.width + x] = [250, 20, 40, 255];
                }
            }
            img
        })
        .collect()
}

#[test]
fn a_small_change_reruns_only_its_part_of_the_tile() {
    // The moving patch with cache=full and a threshold: the tiles it touches are recomputed
    // only around their changed blocks, for fewer MACs than whole tiles (threshold 0 runs the
    // same tiles whole), and the frames stay within 45 dB of cache=off's; the parts are pasted
    // where the patch is, not elsewhere.
    let set = ModelSet::embedded();
    let model = Model::load(&set, &CPU).unwrap();
    assert!(model.crops, "the embedded branches are local enough for crops");
    // (the README quotes 53.5 dB)
    let db = model.crop_agreement.unwrap();
    assert!(db > 50.0 && db.is_finite(), "{db}");
    let mut off = Engine::new(model);
    let mut whole = Engine::new(Model::load(&set, &CPU).unwrap());
    let mut part = Engine::new(Model::load(&set, &CPU).unwrap());
    let cfg = |threshold| FrameConfig {
        cache: CacheMode::Full,
        cache_threshold: threshold,
        cache_refresh: 0,
        ..FrameConfig::default()
    };
    let mut partial = 0;
    for (frame, img) in moving_patch().iter().enumerate() {
        let (want, _) = run_engine(&mut off, img, &FrameConfig::default());
        let (_, w) = run_engine(&mut whole, img, &cfg(0.0));
        let (got, p) = run_engine(&mut part, img, &cfg(2.0));
        let quality = psnr(&got, &want);
        assert!(quality >= 45.0, "frame {frame}: {quality:.2} dB against cache=off");
        if frame == 0 {
            assert_eq!(p.partial_tiles, 0, "nothing is cached yet");
            continue;
        }
        assert_eq!(
            p.full_cache_hits, w.full_cache_hits,
            "frame {frame}: the same tiles change"
        );
        assert!(
            p.macs < w.macs,
            "frame {frame}: {} MACs in part, {} whole",
            p.macs,
            w.macs
        );
        partial += p.partial_tiles;
        // where the patch now is, the output is the new one (red), not the cached picture
        let (x, y) = (4 * (26 + 25 * frame), 4 * 46);
        let px = got.px[y * got.width + x];
        assert!(px[0] > 200 && px[1] < 80, "frame {frame}: {px:?} at the patch");
    }
    assert!(partial > 0, "some tiles are recomputed in part");
    // Set to 0 mid-stream, the threshold asks for cache=off's frame: the tiles recomputed in
    // part before are not reused as if they had been run whole (the cache starts again).
    let last = moving_patch().pop().unwrap();
    let (want, _) = run_engine(&mut off, &last, &FrameConfig::default());
    let (got, st) = run_engine(&mut part, &last, &cfg(0.0));
    assert_eq!(st.full_cache_hits, 0, "the cache started again");
    assert!(
        got == want,
        "threshold 0 after parts: {:.2} dB against cache=off",
        psnr(&got, &want)
    );
}

/// A flat grey 96x64 frame, 100 + `k` levels.
fn grey(k: u8) -> Rgba {
    Rgba::new(96, 64, |_, _| [100 + k, 100 + k, 100 + k, 255])
}

#[test]
fn a_tile_made_bicubically_under_qos_is_classified_again_when_it_drifts() {
    // At the last QoS level the cheapest class is made bicubically, so no output of it is kept:
    // the tile is made again every frame. A slow change (under the threshold from one frame to
    // the next) still adds up against the pixels its class was decided on, and the tile is
    // classified again once it is over the threshold.
    let mut engine = Engine::new(Model::load(&ModelSet::load(KA).unwrap(), &CPU).unwrap());
    let cfg = FrameConfig {
        cache: CacheMode::Full,
        cache_threshold: 2.0,
        cache_refresh: 0,
        class1_bicubic: true,
        ..FrameConfig::default()
    };
    // flat (branch1 for the known-answer classifier), one level brighter each frame
    let (_, first) = run_engine(&mut engine, &grey(0), &cfg);
    let n: usize = first.tiles.iter().sum();
    assert_eq!(first.tiles[0], n, "all flat: {:?}", first.tiles);
    let hits: Vec<usize> = (1..6)
        .map(|k| run_engine(&mut engine, &grey(k), &cfg).1.class_cache_hits)
        .collect();
    // (2 levels is at the threshold, which float rounding may put on either side)
    assert_eq!(hits[0], n, "one level: under the threshold ({hits:?})");
    assert_eq!(
        hits[2], 0,
        "three levels from where they were classified: all again ({hits:?})"
    );
    assert_eq!(hits[3], n, "one level from where they were classified again ({hits:?})");
}

#[test]
fn a_tile_made_again_is_classified_on_the_pixels_it_is_made_from() {
    // cache=class keeps the classes of tiles under the threshold but no outputs. Switched to
    // cache=full (the same cache), such a tile is made from this frame's pixels, which become
    // its reference: it is classified on them too (its class came from pixels up to the
    // threshold away, and a drift could otherwise go on under the threshold from there).
    let mut engine = Engine::new(Model::load(&ModelSet::load(KA).unwrap(), &CPU).unwrap());
    let class = FrameConfig {
        cache: CacheMode::Class,
        cache_threshold: 8.0,
        cache_refresh: 0,
        ..FrameConfig::default()
    };
    let full = FrameConfig {
        cache: CacheMode::Full,
        ..class
    };
    let (_, first) = run_engine(&mut engine, &grey(0), &class);
    let n: usize = first.tiles.iter().sum();
    let (_, st) = run_engine(&mut engine, &grey(5), &class);
    assert_eq!(st.class_cache_hits, n, "5 levels: under the threshold");
    let (_, st) = run_engine(&mut engine, &grey(5), &full);
    assert_eq!(st.class_cache_hits, 0, "made again, so classified again");
    assert_eq!(st.full_cache_hits, 0);
    // 5 levels from where they were made and classified: all kept now
    let (_, st) = run_engine(&mut engine, &grey(10), &full);
    assert_eq!((st.class_cache_hits, st.full_cache_hits), (n, n));
    // 9 levels from there: over the threshold, made and classified again
    let (_, st) = run_engine(&mut engine, &grey(14), &full);
    assert_eq!((st.class_cache_hits, st.full_cache_hits), (0, 0));
}

#[test]
fn a_branch_that_looks_at_the_whole_tile_is_never_run_on_parts() {
    // A branch whose output depends on the whole tile (its mean) fails the load-time probe:
    // cache=full then recomputes whole tiles, whatever the threshold.
    let mut set = ModelSet::embedded();
    set.branches[1] = looks_at_the_whole_tile(&set.branches[1]);
    let model = Model::load(&set, &CPU).unwrap();
    assert!(!model.crops);
    assert!(model.crop_agreement.unwrap() < 45.0, "{:?}", model.crop_agreement);
    let mut engine = Engine::new(model);
    let cfg = FrameConfig {
        cache: CacheMode::Full,
        cache_threshold: 2.0,
        cache_refresh: 0,
        ..FrameConfig::default()
    };
    for img in moving_patch() {
        let (_, st) = run_engine(&mut engine, &img, &cfg);
        assert_eq!(st.partial_tiles, 0);
    }
    let ka = ModelSet::load(KA).unwrap();
    let ka = Model::load(&ka, &CPU).unwrap();
    assert!(ka.crops, "the known-answer branches are local");
    // The correction's gain: 1 for the bicubic branch3 (exactly what the correction adds), and
    // more for the trained FSRCNN branches, which sharpen (the README quotes about 1.12).
    assert!((ka.correction_gains[2] - 1.0).abs() < 1e-3, "{:?}", ka.correction_gains);
    let trained = Model::load(&ModelSet::embedded(), &CPU).unwrap().correction_gains;
    assert!(trained.iter().all(|g| (1.02..1.5).contains(g)), "{trained:?}");
}

#[test]
fn prelu_rewrites_give_the_same_values() {
    // The load-time rewrites of PRelu against the graphs as written, every branch of the trained
    // default on tiles with negative and positive activations: the Max form (for CUDA) bit for
    // bit, the CPU's ReluSum form ((1 − a)·Relu(x) + a·x) within float rounding.
    use gstclasssr::onnx::rewrite::{prelu, PreluForm};
    let set = ModelSet::embedded();
    let t = 32;
    let mut rng = 7u64;
    let tiles: Vec<f32> = (0..5 * 3 * t * t)
        .map(|_| {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 40) as f32 / (1u64 << 24) as f32 * 1.4 - 0.2
        })
        .collect();
    let ops_of = |bytes: &[u8]| -> Vec<String> {
        let graph = <gstclasssr::onnx::proto::ModelProto as prost::Message>::decode(bytes)
            .unwrap()
            .graph
            .unwrap();
        graph.node.iter().filter_map(|n| n.op_type.clone()).collect()
    };
    let count = |ops: &[String], op: &str| ops.iter().filter(|o| *o == op).count();
    let run = |mut s: ort::session::Session| -> Vec<f32> {
        let x = TensorRef::from_array_view(([5usize, 3, t, t], &tiles[..])).unwrap();
        let out = s.run(ort::inputs![x]).unwrap();
        out["sr"].try_extract_tensor::<f32>().unwrap().1.to_vec()
    };
    for (j, bytes) in set.branches.iter().enumerate() {
        let want = run(runtime::cpu_session_as_is(bytes, "as written", 1).unwrap());
        let spread = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(spread > 0.5, "branch{}: outputs too small to compare ({spread})", j + 1);

        let max = prelu(bytes, PreluForm::Max).expect("FSRCNN has PRelu to rewrite");
        let ops = ops_of(&max);
        assert_eq!(
            (count(&ops, "PRelu"), count(&ops, "Max")),
            (0, 7),
            "branch{}: {ops:?}",
            j + 1
        );
        let got = run(runtime::cpu_session_as_is(&max, "Max form", 1).unwrap());
        assert!(
            want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()),
            "branch{}: the Max form differs",
            j + 1
        );

        let sum = prelu(bytes, PreluForm::ReluSum).expect("FSRCNN has PRelu to rewrite");
        let ops = ops_of(&sum);
        assert_eq!(
            (
                count(&ops, "PRelu"),
                count(&ops, "Relu"),
                count(&ops, "BatchNormalization")
            ),
            (0, 7, 14),
            "branch{}: {ops:?}",
            j + 1
        );
        // what the element's CPU sessions load (the Max form where there is no blocked layout)
        let cpu_form = if runtime::cpu_blocked_layout() { &sum } else { &max };
        assert_eq!(&runtime::rewritten(bytes, DeviceRequest::Cpu)[..], &cpu_form[..]);
        let got = run(runtime::cpu_session_as_is(&sum, "ReluSum form", 1).unwrap());
        let diff = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(diff <= 1e-5, "branch{}: the ReluSum form differs by {diff}", j + 1);
    }
}

#[test]
fn prelu_cpu_form_only_where_it_is_close() {
    // The CPU's ReluSum form only after a 2-D convolution (BatchNormalization scales axis 1,
    // PRelu's [C, 1, 1] slope the third axis from the right: the same axis only in NCHW) and
    // for slopes in [-1, 1]; elsewhere the Max form, or PRelu itself for slopes on both sides
    // of 1; one slope for all channels as LeakyRelu. Node names may be empty or repeat: the
    // new tensors are named after the (unique) outputs, and the graph loads and computes PRelu.
    use gstclasssr::onnx::proto::ModelProto;
    use gstclasssr::onnx::rewrite::{prelu, PreluForm};
    use gstclasssr::onnx::{to_bytes, Dim, GraphBuilder};
    use prost::Message;
    let c = 4;
    let shape = [Dim::Symbolic("n"), Dim::Fixed(c as i64), Dim::Fixed(8), Dim::Fixed(8)];
    let mut g = GraphBuilder::new("prelu forms");
    let x = g.input("lr", &shape);
    let w: Vec<f32> = (0..c * c * 9).map(|i| ((i * 37 % 17) as f32 - 8.0) / 20.0).collect();
    g.weight("w", &[c, c, 3, 3], &w);
    g.weight("b", &[c], &[0.1, -0.2, 0.0, 0.05]);
    g.weight("a_in", &[c, 1, 1], &[0.25, -0.5, 1.0, 0.0]);
    g.weight("a_wide", &[c, 1, 1], &[0.25, 2.0, 0.5, 0.1]);
    g.weight("a_one", &[1], &[0.3]);
    let p0 = g.op("PRelu", &[&x, "a_in"], &[]); // on the graph input: Max
    let y = g.conv(&p0, "w", "b", 3, 1, 1);
    let p1 = g.op("PRelu", &[&y, "a_in"], &[]); // after a convolution: ReluSum
    let y = g.conv(&p1, "w", "b", 3, 1, 1);
    let p2 = g.op("PRelu", &[&y, "a_wide"], &[]); // slopes on both sides of 1: kept
    let y = g.conv(&p2, "w", "b", 3, 1, 1);
    let p3 = g.op("PRelu", &[&y, "a_one"], &[]); // one slope: LeakyRelu
    g.output("sr", &p3, &shape);
    let mut model = ModelProto::decode(&to_bytes(&g.finish("test", &[]))[..]).unwrap();
    for n in &mut model.graph.as_mut().unwrap().node {
        n.name = Some(String::new());
    }
    let bytes = model.encode_to_vec();
    let sum = prelu(&bytes, PreluForm::ReluSum).expect("PRelu to rewrite");
    let graph = ModelProto::decode(&sum[..]).unwrap().graph.unwrap();
    let count = |op: &str| graph.node.iter().filter(|n| n.op_type.as_deref() == Some(op)).count();
    assert_eq!(
        [
            count("PRelu"),
            count("Max"),
            count("Relu"),
            count("BatchNormalization"),
            count("LeakyRelu")
        ],
        [1, 1, 1, 2, 1]
    );
    let mut rng = Rng(5);
    let input: Vec<f32> = (0..2 * c * 64).map(|_| 2.0 * uniform(&mut rng)).collect();
    let run = |bytes: &[u8]| -> Vec<f32> {
        let mut s = runtime::cpu_session_as_is(bytes, "prelu forms", 1).unwrap();
        let x = TensorRef::from_array_view(([2usize, c, 8, 8], &input[..])).unwrap();
        let out = s.run(ort::inputs![x]).unwrap();
        out["sr"].try_extract_tensor::<f32>().unwrap().1.to_vec()
    };
    let (want, got) = (run(&bytes), run(&sum));
    assert!(want.iter().any(|v| *v < 0.0) && want.iter().any(|v| *v > 0.0));
    let diff = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= 1e-5, "{diff}");
    // A name the rewrite would make that the graph already holds (here as unused
    // initializers): that PRelu is left as it is, and the graph still loads and computes.
    let mut clash = model.clone();
    let g = clash.graph.as_mut().unwrap();
    let extra = g.initializer[0].clone();
    for name in [format!("{p0}.prelu_scaled"), format!("{p1}.relu")] {
        g.initializer.push(gstclasssr::onnx::proto::TensorProto {
            name: Some(name),
            ..extra.clone()
        });
    }
    let clash = clash.encode_to_vec();
    let sum = prelu(&clash, PreluForm::ReluSum).expect("the one-slope PRelu to rewrite");
    let graph = ModelProto::decode(&sum[..]).unwrap().graph.unwrap();
    let count = |op: &str| graph.node.iter().filter(|n| n.op_type.as_deref() == Some(op)).count();
    assert_eq!(
        [count("PRelu"), count("Max"), count("Relu"), count("LeakyRelu")],
        [3, 0, 0, 1]
    );
    let got = run(&sum);
    let diff = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= 1e-5, "{diff}");
}

#[test]
fn full_cache_takes_qos_bicubic_tiles_back_out_exactly() {
    // QoS degradation upscales fresh class-1 tiles bicubically; with cache=full those outputs
    // are kept only to be taken out again: once QoS recovers they are recomputed by branch1
    // (the other tiles are reused) and the frame equals cache=off's byte for byte. (Tiles still
    // in the cache keep their branch output while degraded: it costs nothing. Here every tile
    // changes when degradation starts, so cache=full and cache=off agree throughout.)
    let a = picture(160, 96, 3);
    let mut b = a.clone();
    for p in &mut b.px {
        p[0] = p[0].saturating_add(3);
    }
    let degraded = FrameConfig {
        class1_bicubic: true,
        ..Default::default()
    };
    let normal = FrameConfig::default();
    let frames = [(&a, normal), (&b, degraded), (&b, normal), (&b, normal)];
    for (frame, st) in full_cache_against_off(&frames).iter().enumerate() {
        let n = st.tiles.iter().sum::<usize>();
        assert!(st.tiles[0] > 0, "the picture has class-1 tiles");
        let expect_hits = match frame {
            0 | 1 => 0,                     // a new picture: everything computed
            2 => st.tiles[1] + st.tiles[2], // the bicubic class-1 tiles are redone
            _ => n,                         // nothing left to redo
        };
        assert_eq!(st.full_cache_hits, expect_hits, "frame {frame}: {st:?}");
    }
}

/// A pseudo-random value in [-0.5, 0.5) (test weights and tiles).
fn uniform(rng: &mut Rng) -> f32 {
    (rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
}

/// The graph's output `sr` for `tiles` ([n, 3, t, t]) as written and after the phase-output
/// rewrite, the former regrouped into phase planes.
fn as_written_and_phased(bytes: &[u8], scale: usize, tiles: &[f32], n: usize, t: usize) -> (Vec<f32>, Vec<f32>) {
    use gstclasssr::engine::accumulate::to_phases;
    let phased = gstclasssr::onnx::phase_output::phase_output(bytes, "sr", scale).expect("the tail is recognised");
    let graph = <gstclasssr::onnx::proto::ModelProto as prost::Message>::decode(&phased[..])
        .unwrap()
        .graph
        .unwrap();
    let ops: Vec<String> = graph.node.iter().filter_map(|n| n.op_type.clone()).collect();
    assert!(
        !ops.iter().any(|o| o == "ConvTranspose" || o == "DepthToSpace"),
        "{ops:?}"
    );
    // every tensor is made once: one producer per node output, one initializer per name
    let mut names: Vec<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(|o| o.as_str()))
        .collect();
    names.extend(graph.initializer.iter().filter_map(|i| i.name.as_deref()));
    let total = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), total, "a tensor is defined twice");
    let run = |mut s: ort::session::Session| -> (Vec<i64>, Vec<f32>) {
        let x = TensorRef::from_array_view(([n, 3, t, t], tiles)).unwrap();
        let out = s.run(ort::inputs![x]).unwrap();
        let (shape, data) = out["sr"].try_extract_tensor::<f32>().unwrap();
        (shape.to_vec(), data.to_vec())
    };
    let (hr_shape, hr) = run(runtime::cpu_session_as_is(bytes, "as written", 1).unwrap());
    let (ph_shape, ph) = run(runtime::cpu_session_as_is(&phased, "phased", 1).unwrap());
    let (s, th) = (scale as i64, (t * scale) as i64);
    assert_eq!(hr_shape, [n as i64, 3, th, th]);
    assert_eq!(ph_shape, [n as i64, 3 * s * s, t as i64, t as i64]);
    let item = 3 * t * t * scale * scale;
    let mut want = vec![0f32; hr.len()];
    for k in 0..n {
        to_phases(
            &hr[k * item..(k + 1) * item],
            (t, scale),
            &mut want[k * item..(k + 1) * item],
        );
    }
    (want, ph)
}

#[test]
fn phase_output_rewrite_matches_the_graphs_as_written() {
    // The load-time rewrite that makes a branch output phase planes (its ConvTranspose as an
    // ordinary convolution, the DepthToSpace left to the merge) against the graph as written:
    // the trained default's branches and random FSRCNNs (equal to float rounding), a
    // ConvTranspose of another geometry, and the known-answer resamplers (bit for bit: only the
    // DepthToSpace goes). A graph whose output is not made of phases is left alone.
    use gstclasssr::onnx::{build_bytes, Arch, Tensor, Weights};
    let mut rng = Rng(11);
    let t = 12;
    let mut tiles = |n: usize| -> Vec<f32> { (0..n * 3 * t * t).map(|_| uniform(&mut rng) + 0.5).collect() };
    let close = |want: &[f32], got: &[f32], what: &str| {
        let diff = want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("{what}: max difference {diff:.2e}");
        assert!(diff <= 2e-5, "{what}: {diff:.2e}");
    };
    let default = ModelSet::embedded();
    for (j, bytes) in default.branches.iter().enumerate() {
        let x = tiles(3);
        let (want, got) = as_written_and_phased(bytes, 4, &x, 3, t);
        close(&want, &got, &format!("default branch{}", j + 1));
    }
    let mut wrng = Rng(5);
    for (d, skip) in [(16, true), (56, false)] {
        let arch = Arch::Fsrcnn {
            d,
            s: 12,
            m: 4,
            scale: 4,
            skip,
        };
        let w: Weights = arch
            .params()
            .into_iter()
            .map(|(name, shape)| {
                let data = (0..shape.iter().product()).map(|_| uniform(&mut wrng) * 0.4).collect();
                (name, Tensor { shape, data })
            })
            .collect();
        let x = tiles(2);
        let (want, got) = as_written_and_phased(&build_bytes(&arch, &w).unwrap(), 4, &x, 2, t);
        close(&want, &got, &arch.describe());
    }
    // other geometries: x3 k7 p2 without bias (phases of different tap counts), x2 k5 p2 with
    // output padding; a tensor reached twice (Add of the ConvTranspose with itself)
    for (k, s, p, op, bias, tail) in [
        (7, 3, 2, 0, false, "none"),
        (5, 2, 2, 1, true, "none"),
        (9, 4, 3, 1, true, "self add"),
    ] {
        let g = convtranspose_graph((k, s, p, op, bias), t, tail, &mut wrng);
        let x = tiles(2);
        let (want, got) = as_written_and_phased(&g, s, &x, 2, t);
        close(&want, &got, &format!("ConvTranspose k{k} s{s} p{p} op{op}, {tail}"));
    }
    // not rewritten: a Relu after the ConvTranspose (not recognised), and an output that the
    // graph also uses inside
    for tail in ["relu", "used inside"] {
        let g = convtranspose_graph((9, 4, 3, 1, true), t, tail, &mut wrng);
        assert!(
            gstclasssr::onnx::phase_output::phase_output(&g, "sr", 4).is_none(),
            "{tail}: left as written"
        );
    }
    let ka = ModelSet::load(KA).unwrap();
    for (j, bytes) in ka.branches.iter().enumerate() {
        let x = tiles(2);
        let (want, got) = as_written_and_phased(bytes, ka.manifest.scale as usize, &x, 2, t);
        assert!(
            want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()),
            "known-answer branch{}",
            j + 1
        );
    }
}

/// A graph of one ×s ConvTranspose (kernel k, pads p, output padding op, random weights) from
/// "lr" [2, 3, t, t] to "sr", followed by `tail`: "none", "relu", "self add" (Add(y, y)) or
/// "used inside" (a second output Relu(sr)).
fn convtranspose_graph(
    (k, s, p, op, bias): (usize, usize, i64, i64, bool),
    t: usize,
    tail: &str,
    rng: &mut Rng,
) -> Vec<u8> {
    use gstclasssr::onnx::{Dim, GraphBuilder};
    let mut g = GraphBuilder::new("convtranspose");
    let weight: Vec<f32> = (0..3 * 3 * k * k).map(|_| uniform(rng)).collect();
    g.weight("w", &[3, 3, k, k], &weight);
    if bias {
        let b: Vec<f32> = (0..3).map(|_| uniform(rng)).collect();
        g.weight("b", &[3], &b);
    }
    let n = Dim::Fixed(2);
    let (lt, ht) = (Dim::Fixed(t as i64), Dim::Fixed((t * s) as i64));
    g.input("lr", &[n, Dim::Fixed(3), lt, lt]);
    let b = bias.then_some("b");
    let mut y = g.conv_transpose("lr", "w", b, k as i64, s as i64, p, op, 1);
    match tail {
        "relu" => y = g.op("Relu", &[&y], &[]),
        "self add" => y = g.op("Add", &[&y, &y], &[]),
        _ => {}
    }
    g.output("sr", &y, &[n, Dim::Fixed(3), ht, ht]);
    if tail == "used inside" {
        let r = g.op("Relu", &["sr"], &[]);
        g.output("extra", &r, &[n, Dim::Fixed(3), ht, ht]);
    }
    gstclasssr::onnx::to_bytes(&g.finish("test graph", &[]))
}

#[test]
fn engine_frames_are_the_same_with_hr_or_phase_outputs() {
    // The known-answer branches once as shipped (rewritten to give phase planes) and once with
    // a Mul by 1 before their output, which keeps the rewrite off (HR tiles, interleaved by
    // ONNX Runtime): every mode's frames must be the same bytes, including QoS bicubic tiles
    // and the full cache's take-out of earlier outputs.
    use gstclasssr::onnx::proto::{ModelProto, NodeProto, TensorProto};
    use prost::Message;
    let set = ModelSet::load(KA).unwrap();
    let mut hr_set = set.clone();
    for bytes in hr_set.branches.iter_mut() {
        let mut model = ModelProto::decode(&bytes[..]).unwrap();
        let graph = model.graph.as_mut().unwrap();
        let last = graph.node.iter_mut().find(|n| n.output == ["sr"]).unwrap();
        let feeds = std::mem::replace(&mut last.input[0], "times_one".into());
        graph.node.insert(
            graph.node.len() - 1,
            NodeProto {
                op_type: Some("Mul".into()),
                input: vec![feeds, "one".into()],
                output: vec!["times_one".into()],
                ..Default::default()
            },
        );
        graph.initializer.push(TensorProto {
            name: Some("one".into()),
            data_type: Some(1),
            float_data: vec![1.0],
            ..Default::default()
        });
        *bytes = model.encode_to_vec();
    }
    let phased = Model::load(&set, &CPU).unwrap();
    let plain = Model::load(&hr_set, &CPU).unwrap();
    assert!(phased.phases && !plain.phases);
    let (mut a, mut b) = (Engine::new(phased), Engine::new(plain));
    let img = picture(150, 90, 4);
    // a smooth band: class-1 tiles for the known-answer classifier (QoS makes them bicubic)
    let mut moved = img.clone();
    for (k, p) in moved.px[..150 * 40].iter_mut().enumerate() {
        let (x, y) = ((k % 150) as u8, (k / 150) as u8);
        *p = [90 + x / 16, 120 + y / 8, 200 - x / 24, 255];
    }
    for (frame, (pic, cfg)) in [
        (&img, FrameConfig::default()),
        (
            &img,
            FrameConfig {
                mode: Mode::Original,
                ..Default::default()
            },
        ),
        (
            &img,
            FrameConfig {
                cache: CacheMode::Full,
                ..Default::default()
            },
        ),
        (
            &moved,
            FrameConfig {
                cache: CacheMode::Full,
                class1_bicubic: true,
                ..Default::default()
            },
        ),
        (
            &img,
            FrameConfig {
                cache: CacheMode::Full,
                ..Default::default()
            },
        ),
    ]
    .iter()
    .enumerate()
    {
        let (want, _) = run_engine(&mut b, pic, cfg);
        let (got, st) = run_engine(&mut a, pic, cfg);
        assert!(got == want, "frame {frame}: phase outputs give another frame ({st:?})");
        if cfg.class1_bicubic {
            assert!(st.tiles[0] > 0, "QoS bicubic tiles: {st:?}");
        }
    }
}

#[test]
fn a_frame_that_fails_half_way_leaves_no_stale_tiles() {
    // the known-answer set with branch2 (the mild tiles') failing on a call of three or more
    // (its 6 tiles in one frame, shared out between 2 workers)
    let mut set = gstclasssr::known_answer::model_set();
    set.branches[1] = fails_above_two_tiles(&set.branches[1]);
    let cfg = FrameConfig {
        cache: CacheMode::Full,
        cache_threshold: 0.0,
        cache_refresh: 0,
        ..Default::default()
    };
    // Few tiles change from frame to frame, so only they are repacked over the kept output.
    let frame = |mild: bool, seed: u64| three_classes(320, 64, mild, seed);
    let mut engine = Engine::new(Model::load(&set, &CPU).unwrap());
    try_engine(&mut engine, &frame(false, 1), &cfg).expect("no branch2 tiles: the frame is made");
    // new noise on the right (merged by the branch3 worker) and branch2 failing
    let err = try_engine(&mut engine, &frame(true, 2), &cfg).unwrap_err();
    assert!(err.to_string().contains("branch2"), "{err}");
    // the same right half, no mild tiles: as a fresh engine makes it
    let (got, _) = run_engine(&mut engine, &frame(false, 2), &cfg);
    let mut fresh = Engine::new(Model::load(&set, &CPU).unwrap());
    let (want, _) = run_engine(&mut fresh, &frame(false, 2), &cfg);
    assert_eq!(max_diff(&got, &want, false), 0);
}

#[test]
fn route_takes_the_argmax_ties_to_the_cheaper_branch_and_nan_to_the_largest() {
    use gstclasssr::engine::route;
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    // the argmax
    assert_eq!(route(&[3.0, 2.0, 1.0], 0.0), 0);
    assert_eq!(route(&[1.0, 3.0, 2.0], 0.0), 1);
    assert_eq!(route(&[1.0, 2.0, 3.0], 0.0), 2);
    assert_eq!(route(&[-inf, -inf, -5.0], 0.0), 2);
    // ties go to the cheaper branch
    assert_eq!(route(&[1.0, 1.0, 1.0], 0.0), 0);
    assert_eq!(route(&[1.0, 1.0, 0.0], 0.0), 0);
    assert_eq!(route(&[1.0, 0.0, 1.0], 0.0), 0);
    assert_eq!(route(&[0.0, 1.0, 1.0], 0.0), 1);
    assert_eq!(route(&[inf, inf, inf], 0.0), 0);
    assert_eq!(route(&[-inf, -inf, -inf], 0.0), 0);
    // the bias is added to branch3's logit and subtracted from branch1's (values exact in
    // binary): a tie it makes still goes to the cheaper branch
    assert_eq!(route(&[0.5, 0.0, 0.25], 0.0), 0);
    assert_eq!(route(&[0.5, 0.0, 0.25], 0.125), 0, "0.375 against 0.375: a tie");
    assert_eq!(route(&[0.5, 0.0, 0.25], 0.25), 2);
    assert_eq!(route(&[0.5, 0.5, 0.25], 0.0), 0);
    assert_eq!(route(&[0.5, 0.5, 0.25], 0.125), 1, "branch2's logit is not biased");
    assert_eq!(route(&[0.0, 0.0, 0.5], -0.25), 0, "0.25 against 0.25: a tie");
    assert_eq!(route(&[0.0, 0.0, 0.5], -0.375), 0);
    assert_eq!(route(&[0.0, 0.0, 0.5], -0.125), 2);
    // a NaN anywhere (or a NaN bias) goes to the largest branch, whatever the other logits
    for logits in [
        [nan, 0.0, 0.0],
        [0.0, nan, 0.0],
        [0.0, 0.0, nan],
        [9.0, nan, -9.0],
        [nan; 3],
    ] {
        assert_eq!(route(&logits, 0.0), 2, "{logits:?}");
        assert_eq!(route(&logits, -1.0), 2, "{logits:?} with bias -1");
    }
    assert_eq!(route(&[9.0, 0.0, -9.0], nan), 2, "NaN bias");
    // inf - inf is NaN too
    assert_eq!(route(&[inf, 0.0, -inf], inf), 2);
}

#[test]
fn bad_frames_are_errors_and_the_next_good_frame_is_normal() {
    // An output that is not scale times the input, and empty frames, are rejected with
    // Error::Input before anything is written; the engine (with a full cache from a good
    // frame before them) then makes the next good frame as a fresh engine does.
    let set = ModelSet::load(KA).unwrap();
    let mut engine = Engine::new(Model::load(&set, &CPU).unwrap());
    let cfg = FrameConfig {
        cache: CacheMode::Full,
        ..Default::default()
    };
    // the left tiles have no noise (common::picture): the same in every picture of this size
    let (w, h) = (96, 40);
    let s = engine.scale();
    assert_eq!(s, 4);
    run_engine(&mut engine, &picture(w, h, 1), &cfg);
    let data = rgb_bytes(&picture(w, h, 2));
    let input = Image {
        data: &data,
        width: w,
        height: h,
        stride: w * 3,
        layout: PixelLayout::Rgb,
    };
    let expect_input_error =
        |r: Result<gstclasssr::engine::FrameStats, gstclasssr::Error>, what: &str, says: &str| match r {
            Err(gstclasssr::Error::Input(m)) => assert!(m.contains(says), "{what}: {m}"),
            other => panic!("{what}: {other:?}"),
        };
    // big enough buffers of the wrong size
    for (ow, oh) in [
        (w * s + 1, h * s),
        (w * s, h * s - 1),
        (w * 2, h * 2),
        (w * s * 2, h * s * 2),
    ] {
        let mut out = vec![0x77u8; (w * s * 2) * (h * s * 2) * 3];
        let mut output = ImageMut {
            data: &mut out,
            width: ow,
            height: oh,
            stride: ow * 3,
            layout: PixelLayout::Rgb,
        };
        let what = format!("output {ow}x{oh} for {w}x{h}");
        expect_input_error(engine.process(&cfg, &input, &mut output), &what, "times the input");
        assert!(out.iter().all(|&b| b == 0x77), "{what}: the output was written");
    }
    // empty frames (their outputs scale times as large)
    for (iw, ih) in [(0, 0), (0, h), (w, 0)] {
        let empty = Image {
            data: &data,
            width: iw,
            height: ih,
            stride: w * 3,
            layout: PixelLayout::Rgb,
        };
        let mut out = vec![0u8; w * s * h * s * 3];
        let mut output = ImageMut {
            data: &mut out,
            width: iw * s,
            height: ih * s,
            stride: w * s * 3,
            layout: PixelLayout::Rgb,
        };
        let what = format!("input {iw}x{ih}");
        expect_input_error(engine.process(&cfg, &empty, &mut output), &what, "empty");
    }
    // the next good frame
    let next = picture(w, h, 3);
    let (got, stats) = run_engine(&mut engine, &next, &cfg);
    let mut fresh = Engine::new(Model::load(&set, &CPU).unwrap());
    let (want, want_stats) = run_engine(&mut fresh, &next, &cfg);
    assert_eq!(max_diff(&got, &want, false), 0);
    assert_eq!(stats.tiles, want_stats.tiles);
    assert_eq!(stats.full_cache_hits, 0, "nothing is reused across the errors");
    // and the cache works again from there
    let (again, st) = run_engine(&mut engine, &next, &cfg);
    assert_eq!(max_diff(&again, &want, false), 0);
    assert_eq!(st.full_cache_hits, st.tiles.iter().sum::<usize>());
}

#[test]
fn the_output_limit_follows_the_models_scale() {
    // 4K UHD x4 is the most output; a x8 model takes frames of a quarter of that area.
    assert!(Engine::check_output(3840, 2160, 4).is_ok());
    assert!(Engine::check_output(1920, 1080, 8).is_ok());
    let err = Engine::check_output(3840, 2160, 8).unwrap_err().to_string();
    assert!(err.contains("3840x2160 is too large for a x8 model"), "{err}");
    assert!(Engine::check_output(usize::MAX, 2, 8).is_err(), "no overflow");
}

#[test]
fn settings_the_element_checks_are_checked_by_the_engine_too() {
    // A caller of the engine alone gets errors, not a huge allocation (a tile side of 100000
    // pads the frame to it) or a frozen picture (a NaN threshold never sees a change).
    let set = ModelSet::load(KA).unwrap();
    let mut engine = Engine::new(Model::load(&set, &CPU).unwrap());
    let img = picture(40, 30, 2);
    let refused = |engine: &mut Engine, cfg: FrameConfig, says: &str| {
        let err = try_engine(engine, &img, &cfg).unwrap_err().to_string();
        assert!(err.contains(says), "{err}");
    };
    for tile in [4, 100_000] {
        let cfg = FrameConfig {
            tile,
            overlap: 0,
            ..FrameConfig::default()
        };
        refused(&mut engine, cfg, &format!("tile size {tile} is out of range 8..256"));
    }
    for threshold in [f32::NAN, f32::INFINITY, -1.0] {
        let cfg = FrameConfig {
            cache: CacheMode::Full,
            cache_threshold: threshold,
            ..FrameConfig::default()
        };
        refused(&mut engine, cfg, "must be a finite number of 8-bit levels, at least 0");
    }
    // and the engine goes on with settings that fit
    run_engine(&mut engine, &img, &FrameConfig::default());
}

#[test]
fn half_precision_keeps_the_interface_and_computes_in_float16() {
    // precision=fp16's rewrite (onnx/half.rs) of the trained default's branch3: float16
    // weights, a cast at each end, the same f32 interface, and values within float16's
    // precision of the float graph's (ONNX Runtime's CPU runs it through casts).
    use gstclasssr::onnx::half::half_precision;
    use gstclasssr::onnx::proto::ModelProto;
    use prost::Message;
    let set = ModelSet::embedded();
    let half = half_precision(&set.branches[2]).unwrap();
    let g = ModelProto::decode(&half[..]).unwrap().graph.unwrap();
    assert!(
        g.initializer.iter().all(|t| t.data_type != Some(1)),
        "no float weight left"
    );
    assert!(g.initializer.iter().filter(|t| t.data_type == Some(10)).count() >= 10);
    let ops: Vec<&str> = g.node.iter().filter_map(|n| n.op_type.as_deref()).collect();
    assert_eq!((ops[0], ops[ops.len() - 1]), ("Cast", "Cast"), "{ops:?}");

    let tiles: Vec<f32> = (0..2 * 3 * 32 * 32)
        .map(|i| ((i * 7919) % 256) as f32 / 255.0)
        .collect();
    let run = |bytes: &[u8]| -> Vec<f32> {
        let mut s = runtime::cpu_session_as_is(bytes, "branch3", 1).unwrap();
        let t = TensorRef::from_array_view(([2usize, 3, 32, 32], &tiles[..])).unwrap();
        let out = s.run(ort::inputs![t]).unwrap();
        let (shape, data) = out["sr"].try_extract_tensor::<f32>().unwrap();
        assert_eq!(&**shape, &[2, 3, 128, 128]);
        data.to_vec()
    };
    let (full, halved) = (run(&set.branches[2]), run(&half));
    let worst = full
        .iter()
        .zip(&halved)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("float16 against float: largest difference {worst} (of a 0..1 range)");
    assert!(worst > 0.0, "the graph did not change");
    assert!(worst < 4e-3, "float16 is off by {worst}");

    // what is not a model, or feeds an input straight out, is not rewritten
    assert!(half_precision(b"not a model").is_err());
    let mut m = ModelProto::decode(&set.branches[2][..]).unwrap();
    let g = m.graph.as_mut().unwrap();
    g.output[0].name = g.input[0].name.clone();
    assert!(half_precision(&m.encode_to_vec())
        .unwrap_err()
        .contains("both an input and an output"));
}

#[test]
fn half_precision_keeps_float_where_onnx_needs_it_and_refuses_what_it_cannot_write() {
    // A graph with the float sources the rewrite must handle: a Constant given as value_float,
    // a Cast to float inside the graph and a ConstantOfShape without a value (all become
    // float16, else they would meet float16 operands) and Resize's scales (which must stay
    // float). Values exact in float16, so the
    // rewritten graph gives the same numbers.
    use gstclasssr::onnx::half::half_precision;
    use gstclasssr::onnx::proto::{attribute_proto::AttributeType, AttributeProto, GraphProto, ModelProto};
    use gstclasssr::onnx::{to_bytes, Attr, Dim, GraphBuilder};
    use prost::Message;
    let build = |weight: f32| {
        let mut g = GraphBuilder::new("half test");
        let x = g.input("x", &[Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(2), Dim::Fixed(2)]);
        let half = g.op("Constant", &[], &[("value_float", Attr::Float(0.5))]);
        let y = g.op("Mul", &[&x, &half], &[]);
        let scales = g.weight("scales", &[4], &[1.0, 1.0, 2.0, 2.0]);
        let y = g.op("Resize", &[&y, "", &scales], &[("mode", Attr::Str("nearest"))]);
        let y = g.op("Cast", &[&y], &[("to", Attr::Int(1))]);
        let w = g.weight("w", &[1], &[weight]);
        let y = g.op("Add", &[&y, &w], &[]);
        // float zeros from a ConstantOfShape without a value
        let one = g.int64s("one", &[1]);
        let zeros = g.op("ConstantOfShape", &[&one], &[]);
        let y = g.op("Add", &[&y, &zeros], &[]);
        g.output("y", &y, &[Dim::Fixed(1), Dim::Fixed(1), Dim::Fixed(4), Dim::Fixed(4)]);
        g.finish("half test", &[])
    };
    let model = build(0.25);
    let half = half_precision(&to_bytes(&model)).unwrap();
    let g = ModelProto::decode(&half[..]).unwrap().graph.unwrap();
    let kind = |name: &str| {
        g.initializer
            .iter()
            .find(|t| t.name.as_deref() == Some(name))
            .unwrap()
            .data_type
    };
    assert_eq!(
        (kind("scales"), kind("w")),
        (Some(1), Some(10)),
        "scales stay float, weights do not"
    );
    let x = [1.0f32, 2.0, 3.0, 4.0];
    let run = |bytes: &[u8]| -> Vec<f32> {
        let mut s = runtime::cpu_session_as_is(bytes, "half test", 1).unwrap();
        let t = TensorRef::from_array_view(([1usize, 1, 2, 2], &x[..])).unwrap();
        let out = s.run(ort::inputs![t]).unwrap();
        out["y"].try_extract_tensor::<f32>().unwrap().1.to_vec()
    };
    let (full, halved) = (run(&to_bytes(&model)), run(&half));
    assert_eq!(full, halved);
    assert_eq!(full[..4], [0.75, 0.75, 1.25, 1.25]);

    // a weight beyond float16's range, a subgraph and a name the rewrite would add are refused
    let err = half_precision(&to_bytes(&build(1e6))).unwrap_err();
    assert!(err.contains("'w' holds 1000000") && err.contains("65504"), "{err}");
    let mut m = build(0.25);
    let graph = m.graph.as_mut().unwrap();
    graph.node[0].attribute.push(AttributeProto {
        name: Some("then_branch".into()),
        r#type: Some(AttributeType::Graph as i32),
        g: Some(GraphProto::default()),
        ..Default::default()
    });
    assert!(half_precision(&to_bytes(&m)).unwrap_err().contains("subgraphs"));
    let mut m = build(0.25);
    m.graph.as_mut().unwrap().node[1].output[0] = "x.fp16".into();
    let n = m.graph.as_mut().unwrap();
    let renamed = n.node[2].input[0].clone();
    assert_ne!(renamed, "x.fp16");
    n.node[2].input[0] = "x.fp16".into();
    assert!(half_precision(&to_bytes(&m))
        .unwrap_err()
        .contains("already has a value named 'x.fp16'"));
}

#[test]
fn bicubic_frames_are_the_same_on_one_core_and_shared_out() {
    // The bicubic upscale (modes bicubic and classmap, and alpha) and the packing of its frame
    // are shared out between the cores by bands of rows: the same bytes as on one thread, in
    // RGB and RGBA (alpha upscaled too), at a size where the bands start (800x600 out).
    let set = ModelSet::load(KA).unwrap();
    let mut one = Engine::new(Model::load(&set, &SessionConfig { threads: 1, ..CPU }).unwrap());
    let mut three = Engine::new(Model::load(&set, &SessionConfig { threads: 3, ..CPU }).unwrap());
    let img = picture(200, 150, 9);
    for layout in [PixelLayout::Rgb, PixelLayout::Rgba] {
        let (mut data, stride) = pack(&img, layout, 0);
        // an alpha that changes along both axes, so a band reading another band's rows shows
        if let Some(a) = layout.alpha_offset() {
            for (i, px) in data.chunks_exact_mut(4).enumerate() {
                let (x, y) = (i % 200, i / 200);
                px[a] = ((x * 7 + y * 13) % 256) as u8;
            }
        }
        let input = Image {
            data: &data,
            width: 200,
            height: 150,
            stride,
            layout,
        };
        for mode in [Mode::Bicubic, Mode::ClassMap] {
            let cfg = FrameConfig {
                mode,
                ..Default::default()
            };
            let ostride = 800 * layout.bytes_per_pixel();
            let (mut a, mut b) = (vec![0u8; ostride * 600], vec![1u8; ostride * 600]);
            for (engine, out) in [(&mut one, &mut a), (&mut three, &mut b)] {
                let mut output = ImageMut {
                    data: out,
                    width: 800,
                    height: 600,
                    stride: ostride,
                    layout,
                };
                engine.process(&cfg, &input, &mut output).unwrap();
            }
            assert!(a == b, "{} {}", layout.name(), mode.name());
        }
    }
}

#[test]
fn transparent_surroundings_leave_no_fringe() {
    // A white shape on fully transparent black, as logos and sprites come: the upscale mixes
    // the colours of neighbouring pixels, and the black of the transparent ones gave the
    // visible edge a dark (with the trained branches, blue-tinted) fringe. Every pixel of the
    // output that shows (alpha above 0) keeps the shape's white; a frame without transparent
    // pixels is unchanged by this (the other tests).
    let (w, h) = (40, 30);
    let img = Rgba::new(w, h, |x, y| {
        if x < 20 && (8..22).contains(&y) {
            [255, 255, 255, 255]
        } else {
            [0, 0, 0, 0]
        }
    });
    let mut engine = Engine::new(Model::load(&ModelSet::embedded(), &CPU).unwrap());
    let layout = PixelLayout::Rgba;
    let (mut data, stride) = pack(&img, layout, 0);
    for (i, px) in data.chunks_exact_mut(4).enumerate() {
        px[3] = img.px[i][3];
    }
    let input = Image {
        data: &data,
        width: w,
        height: h,
        stride,
        layout,
    };
    for mode in [Mode::Bicubic, Mode::ClassSR, Mode::Original] {
        let cfg = FrameConfig {
            mode,
            ..Default::default()
        };
        let mut out = vec![0u8; w * 4 * h * 4 * 4];
        let mut output = ImageMut {
            data: &mut out,
            width: w * 4,
            height: h * 4,
            stride: w * 4 * 4,
            layout,
        };
        engine.process(&cfg, &input, &mut output).unwrap();
        let shown: Vec<&[u8]> = out.chunks_exact(4).filter(|p| p[3] > 0).collect();
        assert!(shown.len() > 80 * 56, "{}: the shape and its soft edge", mode.name());
        let darkest = shown.iter().map(|p| p[0].min(p[1]).min(p[2])).min().unwrap();
        assert!(darkest >= 245, "{}: a visible pixel as dark as {darkest}", mode.name());
    }
}
