// ONNX graphs that move a frame's pixels to and from tiles, so that a whole frame can stay on
// the execution provider's device: `unpack` (packed u8 frame → normalised, edge-padded NCHW
// tiles, and a zeroed accumulator), `select` (the tiles of one branch run), `accumulate`
// (one run's outputs, feather-weighted, added into the accumulator) and `pack` (accumulator
// → packed u8 frame). They do exactly the operations of the CPU engine (src/engine/pixels.rs,
// src/engine/accumulate.rs: the same f32 steps, and the same i32 fixed-point accumulator), so
// on the CPU they give bit-identical frames. All but `select` are built per frame geometry and
// pixel layout.

use super::builder::{Attr, Dim, GraphBuilder};
use super::proto::tensor_proto::DataType;
use super::proto::ModelProto;
use crate::engine::accumulate::{fx_bound, FX_ONE};
use crate::engine::{PixelLayout, TileGrid};

/// Input of the unpack graph: the packed frame, u8 [height, stride].
pub const FRAME_INPUT: &str = "frame";
/// Output of the unpack graph and input of the select graph: every tile of the grid,
/// row-major, f32 [n, 3, t, t].
pub const TILES: &str = "tiles";
/// The HR accumulator, i32 fixed point (as the engine's) [3·(h·s)·(w·s) of the padded frame +
/// 3·(t·s)²]: the three planes, then a spill area where padding entries of a batch (tile id
/// n) are added and ignored.
pub const ACC: &str = "acc";
/// Tile ids (i64 [N]): which tiles the select graph picks, which tile each output of a branch
/// run belongs to in the accumulate graph (n = padding, spilled).
pub const IDS: &str = "tile_ids";
/// Output of the select graph: the picked tiles [N, 3, t, t].
pub const PICKED: &str = "picked";
/// Input of the accumulate graph: one branch run's outputs f32 [N, 3, t·s, t·s], or as phase
/// planes [N, 3·s², t, t] (onnx/phase_output.rs).
pub const SR: &str = "sr";
/// Output of the accumulate graph.
pub const ACC_OUT: &str = "acc_out";
/// Output of the pack graph: the packed frame, u8 [height·s, width·s·bpp] (no row padding).
pub const FRAME_OUTPUT: &str = "frame_out";

fn dims(d: &[usize]) -> Vec<Dim<'static>> {
    d.iter().map(|&v| Dim::Fixed(v as i64)).collect()
}

/// [n (symbolic), 3, t, t]
fn nchw(n: &'static str, t: usize) -> [Dim<'static>; 4] {
    [
        Dim::Symbolic(n),
        Dim::Fixed(3),
        Dim::Fixed(t as i64),
        Dim::Fixed(t as i64),
    ]
}

fn i64s(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// Length of the accumulator of `grid` (see [`ACC`]).
pub fn acc_len(grid: &TileGrid) -> usize {
    let s2 = grid.scale * grid.scale;
    3 * grid.padded_width * grid.padded_height * s2 + 3 * grid.tile * grid.tile * s2
}

/// Packed u8 frame [h, stride] of `layout` → tiles [n, 3, t, t] in the model's value range
/// (lo + v·(hi − lo)/255), the frame edge-padded to the grid's padded size as the engine does;
/// and a zeroed accumulator.
pub fn unpack_graph(grid: &TileGrid, stride: usize, layout: PixelLayout, lo: f32, hi: f32) -> ModelProto {
    let (w, h, pw, ph, t) = (
        grid.width,
        grid.height,
        grid.padded_width,
        grid.padded_height,
        grid.tile,
    );
    let bpp = layout.bytes_per_pixel();
    let mut g = GraphBuilder::new("classsr unpack");
    let frame = g.typed_input(FRAME_INPUT, DataType::Uint8, &dims(&[h, stride]));
    let mut x = frame.clone();
    if stride != w * bpp {
        let starts = g.int64s("row.starts", &[0]);
        let ends = g.int64s("row.ends", &[(w * bpp) as i64]);
        let axes = g.int64s("row.axes", &[1]);
        x = g.op("Slice", &[&x, &starts, &ends, &axes], &[]);
    }
    let shape = g.int64s("pixels.shape", &i64s(&[h, w, bpp]));
    x = g.op("Reshape", &[&x, &shape], &[]);
    let offs = g.int64s("rgb.offsets", &i64s(&layout.rgb_offsets()));
    x = g.op("Gather", &[&x, &offs], &[("axis", Attr::Int(2))]);
    x = g.op("Cast", &[&x], &[("to", Attr::Int(DataType::Float as i64))]);
    let k = g.weight("scale", &[], &[(hi - lo) / 255.0]);
    x = g.op("Mul", &[&x, &k], &[]);
    let lo_w = g.weight("lo", &[], &[lo]);
    x = g.op("Add", &[&lo_w, &x], &[]);
    x = g.op("Transpose", &[&x], &[("perm", Attr::Ints(&[2, 0, 1]))]);
    if (pw, ph) != (w, h) {
        let pads = g.int64s("edge.pads", &i64s(&[0, 0, 0, 0, ph - h, pw - w]));
        x = g.op("Pad", &[&x, &pads], &[("mode", Attr::Str("edge"))]);
    }
    let flat = g.int64s("planes.shape", &i64s(&[3, ph * pw]));
    x = g.op("Reshape", &[&x, &flat], &[]);
    // index of tile k's pixel (y, x) in a plane: base[k] + y·pw + x
    let n = grid.len();
    let base: Vec<i64> = (0..n)
        .map(|i| {
            let (x0, y0) = grid.origin(i);
            (y0 * pw + x0) as i64
        })
        .collect();
    let base = g.int64_tensor("tile.base", &[n, 1, 1], &base);
    let pattern: Vec<i64> = (0..t * t).map(|p| ((p / t) * pw + p % t) as i64).collect();
    let pattern = g.int64_tensor("tile.pattern", &[1, t, t], &pattern);
    let idx = g.op("Add", &[&base, &pattern], &[]);
    x = g.op("Gather", &[&x, &idx], &[("axis", Attr::Int(1))]);
    x = g.op("Transpose", &[&x], &[("perm", Attr::Ints(&[1, 0, 2, 3]))]);
    g.output(TILES, &x, &dims(&[n, 3, t, t]));
    // The zeroed accumulator, computed from the frame (its first byte minus itself, broadcast)
    // so that it is made on the device at every run. A constant (ConstantOfShape) is folded by
    // ONNX Runtime into an initializer kept in host memory and copied to the device at every
    // run: 29 ms of a 43 ms frame for a 3840x2160 output on an H200 (scripts/gpu-bench.sh).
    let one = g.int64s("first.one", &[1, 1]);
    let origin = g.int64s("first.origin", &[0, 0]);
    let first = g.op("Slice", &[&frame, &origin, &one], &[]);
    let scalar = g.int64s("first.shape", &[1]);
    let first = g.op("Reshape", &[&first, &scalar], &[]);
    let first = g.op("Cast", &[&first], &[("to", Attr::Int(DataType::Int32 as i64))]);
    let zero = g.op("Sub", &[&first, &first], &[]);
    let len = g.int64s("acc.len", &[acc_len(grid) as i64]);
    let zeros = g.op("Expand", &[&zero, &len], &[]);
    g.typed_output(ACC, DataType::Int32, &zeros, &dims(&[acc_len(grid)]));
    g.finish("classsr: packed u8 frame to normalised tiles", &[("role", "unpack")])
}

/// tiles [n, 3, t, t], ids [N] → picked [N, 3, t, t] (a Gather along the batch).
pub fn select_graph(t: usize) -> ModelProto {
    let mut g = GraphBuilder::new("classsr select");
    let tiles = g.input(TILES, &nchw("n", t));
    let ids = g.typed_input(IDS, DataType::Int64, &[Dim::Symbolic("m")]);
    let x = g.op("Gather", &[&tiles, &ids], &[("axis", Attr::Int(0))]);
    g.output(PICKED, &x, &nchw("m", t));
    g.finish("classsr: the tiles of one branch run", &[("role", "select")])
}

/// acc, branch outputs sr [N, 3, t·s, t·s] of the tiles `tile_ids` [N] → acc + the outputs'
/// fixed-point contributions ((wy·wx)·d)·FX_ONE/(hi − lo), d = sr − lo clamped to
/// ±FX_RANGES·(hi − lo), truncated, as the engine's merge_tile adds them. Id n (one past the
/// last tile) is padding: its outputs go to the accumulator's spill area. With `phases` the outputs come as phase planes
/// [N, 3·s², t, t] and are interleaved first.
pub fn accumulate_graph(grid: &TileGrid, lo: f32, hi: f32, phases: bool) -> ModelProto {
    let s = grid.scale;
    let (th, ow, oh) = (grid.tile * s, grid.padded_width * s, grid.padded_height * s);
    let mut g = GraphBuilder::new("classsr accumulate");
    let len = acc_len(grid);
    let acc = g.typed_input(ACC, DataType::Int32, &dims(&[len]));
    let sr = if phases {
        // the branches give phase planes (onnx/phase_output.rs): interleave them first
        let t = grid.tile as i64;
        let p = g.input(
            SR,
            &[
                Dim::Symbolic("n"),
                Dim::Fixed(3 * (s * s) as i64),
                Dim::Fixed(t),
                Dim::Fixed(t),
            ],
        );
        g.op(
            "DepthToSpace",
            &[&p],
            &[("blocksize", Attr::Int(s as i64)), ("mode", Attr::Str("CRD"))],
        )
    } else {
        g.input(SR, &nchw("n", th))
    };
    let ids = g.typed_input(IDS, DataType::Int64, &[Dim::Symbolic("n")]);
    let n = grid.len();
    let cols = grid.xs.len();
    let plane = ow * oh;
    // where each HR sample of each tile goes: base[k] + c·plane + y·ow + x; padding entries
    // go to the spill area (base 3·plane, laid out as a tile with row length th)
    let mut base: Vec<i64> = (0..n)
        .map(|i| {
            let (x0, y0) = grid.origin(i);
            (y0 * s * ow + x0 * s) as i64
        })
        .collect();
    base.push((3 * plane) as i64);
    let base = g.int64s("hr.base", &base);
    let base = g.op("Gather", &[&base, &ids], &[("axis", Attr::Int(0))]);
    let col_shape = g.int64s("n111", &[-1, 1, 1, 1]);
    let base = g.op("Reshape", &[&base, &col_shape], &[]);
    let pattern = |row: usize, plane: usize| -> Vec<i64> {
        (0..3 * th * th)
            .map(|p| {
                let (c, y, x) = (p / (th * th), (p / th) % th, p % th);
                (c * plane + y * row + x) as i64
            })
            .collect()
    };
    let frame_pattern = g.int64_tensor("hr.pattern", &[1, 3, th, th], &pattern(ow, plane));
    let spill_pattern = g.int64_tensor("spill.pattern", &[1, 3, th, th], &pattern(th, th * th));
    let n_w = g.int64s("n", &[n as i64]);
    let is_pad = g.op("Equal", &[&ids, &n_w], &[]);
    let is_pad = g.op("Reshape", &[&is_pad, &col_shape], &[]);
    let pattern = g.op("Where", &[&is_pad, &spill_pattern, &frame_pattern], &[]);
    let idx = g.op("Add", &[&base, &pattern], &[]);
    let flat = g.int64s("flat", &[-1]);
    let idx = g.op("Reshape", &[&idx, &flat], &[]);
    // feather weights wy[row]·wx[col], as merge_tile computes them (padding: row and column
    // of tile 0, whatever lands in the spill area is ignored)
    let mut rows: Vec<i64> = (0..n).map(|i| (i / cols) as i64).collect();
    let mut cols_of: Vec<i64> = (0..n).map(|i| (i % cols) as i64).collect();
    rows.push(0);
    cols_of.push(0);
    let rows = g.int64s("tile.row", &rows);
    let cols_of = g.int64s("tile.col", &cols_of);
    let table = |v: &[Vec<f32>]| v.iter().flatten().copied().collect::<Vec<f32>>();
    let wy = g.weight("weights.y", &[grid.wy.len(), th], &table(&grid.wy));
    let wx = g.weight("weights.x", &[grid.wx.len(), th], &table(&grid.wx));
    let r = g.op("Gather", &[&rows, &ids], &[("axis", Attr::Int(0))]);
    let c = g.op("Gather", &[&cols_of, &ids], &[("axis", Attr::Int(0))]);
    let wy = g.op("Gather", &[&wy, &r], &[("axis", Attr::Int(0))]);
    let wx = g.op("Gather", &[&wx, &c], &[("axis", Attr::Int(0))]);
    let ys = g.int64s("wy.shape", &[-1, 1, th as i64, 1]);
    let xs = g.int64s("wx.shape", &[-1, 1, 1, th as i64]);
    let wy = g.op("Reshape", &[&wy, &ys], &[]);
    let wx = g.op("Reshape", &[&wx, &xs], &[]);
    let wgt = g.op("Mul", &[&wy, &wx], &[]);
    let lo_w = g.weight("lo", &[], &[lo]);
    let d = g.op("Sub", &[&sr, &lo_w], &[]);
    let fx_k = FX_ONE / (hi - lo);
    let bound = fx_bound(fx_k);
    let (min, max) = (g.weight("d.min", &[], &[-bound]), g.weight("d.max", &[], &[bound]));
    // a NaN (a broken model's output) counts as −bound, as in the engine's merge: Clip passes
    // NaN through, and its cast to i32 is undefined
    let nan = g.op("IsNaN", &[&d], &[]);
    let d = g.op("Where", &[&nan, &min, &d], &[]);
    let d = g.op("Clip", &[&d, &min, &max], &[]);
    let upd = g.op("Mul", &[&wgt, &d], &[]);
    let k = g.weight("fx.scale", &[], &[fx_k]);
    let upd = g.op("Mul", &[&upd, &k], &[]);
    let upd = g.op("Cast", &[&upd], &[("to", Attr::Int(DataType::Int32 as i64))]);
    let upd = g.op("Reshape", &[&upd, &flat], &[]);
    let x = g.op(
        "ScatterElements",
        &[&acc, &idx, &upd],
        &[("axis", Attr::Int(0)), ("reduction", Attr::Str("add"))],
    );
    g.typed_output(ACC_OUT, DataType::Int32, &x, &dims(&[len]));
    g.finish(
        "classsr: one branch run merged into the accumulator",
        &[("role", "accumulate")],
    )
}

/// The accumulator → u8 frame of `layout` [h·s, w·s·bpp], rounding as the engine does
/// (v·255/FX_ONE + 0.5, clamped, truncated). The padding byte of x layouts is 255; alpha
/// layouts are not supported.
pub fn pack_graph(grid: &TileGrid, layout: PixelLayout) -> Result<ModelProto, String> {
    if layout.alpha_offset().is_some() {
        return Err(format!(
            "{} has alpha, which the frame graphs do not carry",
            layout.name()
        ));
    }
    let s = grid.scale;
    let (ow, oh) = (grid.padded_width * s, grid.padded_height * s);
    let (w, h) = (grid.width * s, grid.height * s);
    let bpp = layout.bytes_per_pixel();
    let mut g = GraphBuilder::new("classsr pack");
    let acc = g.typed_input(ACC, DataType::Int32, &dims(&[acc_len(grid)]));
    let starts = g.int64s("planes.starts", &[0]);
    let ends = g.int64s("planes.ends", &[(3 * ow * oh) as i64]);
    let mut x = g.op("Slice", &[&acc, &starts, &ends], &[]);
    let planes = g.int64s("acc.shape", &i64s(&[3, oh, ow]));
    x = g.op("Reshape", &[&x, &planes], &[]);
    if (ow, oh) != (w, h) {
        let starts = g.int64s("crop.starts", &[0, 0]);
        let ends = g.int64s("crop.ends", &i64s(&[h, w]));
        let axes = g.int64s("crop.axes", &[1, 2]);
        x = g.op("Slice", &[&x, &starts, &ends, &axes], &[]);
    }
    x = g.op("Cast", &[&x], &[("to", Attr::Int(DataType::Float as i64))]);
    let k = g.weight("scale", &[], &[255.0 / FX_ONE]);
    x = g.op("Mul", &[&x, &k], &[]);
    let half = g.weight("half", &[], &[0.5]);
    x = g.op("Add", &[&x, &half], &[]);
    let (min, max) = (g.weight("min", &[], &[0.0]), g.weight("max", &[], &[255.0]));
    x = g.op("Clip", &[&x, &min, &max], &[]);
    x = g.op("Floor", &[&x], &[]);
    x = g.op("Cast", &[&x], &[("to", Attr::Int(DataType::Uint8 as i64))]);
    // byte slot → source plane: R, G, B, or a plane of 255 for the padding byte
    let mut source = vec![3i64; bpp];
    for (plane, &off) in layout.rgb_offsets().iter().enumerate() {
        source[off] = plane as i64;
    }
    if bpp == 4 {
        let ff = g.bytes("ff", &[1, 1, 1], &[255]);
        let shape = g.int64s("ff.shape", &i64s(&[1, h, w]));
        let ff = g.op("Expand", &[&ff, &shape], &[]);
        x = g.op("Concat", &[&x, &ff], &[("axis", Attr::Int(0))]);
    }
    let source = g.int64s("byte.source", &source);
    x = g.op("Gather", &[&x, &source], &[("axis", Attr::Int(0))]);
    x = g.op("Transpose", &[&x], &[("perm", Attr::Ints(&[1, 2, 0]))]);
    let out_shape = g.int64s("out.shape", &i64s(&[h, w * bpp]));
    x = g.op("Reshape", &[&x, &out_shape], &[]);
    g.typed_output(FRAME_OUTPUT, DataType::Uint8, &x, &dims(&[h, w * bpp]));
    Ok(g.finish("classsr: accumulator to the packed u8 frame", &[("role", "pack")]))
}
