// ONNX graphs that move a frame's pixels to and from tiles, so that a whole frame can stay on
// the execution provider's device: `unpack` (packed u8 frame → normalised, edge-padded NCHW
// tiles) and `merge` (branch outputs → feathered merge → packed u8 frame). Both do exactly
// the f32 operations of the CPU engine (src/engine/pixels.rs, merge_tile) in the same order,
// so on the CPU they give bit-identical frames. Built per frame geometry and pixel layout.

use super::builder::{Attr, Dim, GraphBuilder};
use super::proto::tensor_proto::DataType;
use super::proto::ModelProto;
use crate::engine::{PixelLayout, TileGrid};

/// Input of the unpack graph: the packed frame, u8 [height, stride].
pub const FRAME_INPUT: &str = "frame";
/// Output of the unpack graph: every tile of the grid, row-major, f32 [n, 3, t, t].
pub const TILES_OUTPUT: &str = "tiles";
/// Inputs of the merge graph: branch outputs f32 [N, 3, t·s, t·s] and the tile each came from,
/// i64 [N], in the order their contributions are to be added.
pub const SR_INPUT: &str = "sr";
pub const IDS_INPUT: &str = "tile_ids";
/// Output of the merge graph: the packed frame, u8 [height·s, width·s·bpp] (no row padding).
pub const FRAME_OUTPUT: &str = "frame_out";

fn dims(d: &[usize]) -> Vec<Dim<'static>> {
    d.iter().map(|&v| Dim::Fixed(v as i64)).collect()
}

fn i64s(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// Packed u8 frame [h, stride] of `layout` → tiles [n, 3, t, t] in the model's value range
/// (lo + v·(hi − lo)/255), the frame edge-padded to the grid's padded size as the engine does.
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
    let mut x = frame;
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
    g.output(TILES_OUTPUT, &x, &dims(&[n, 3, t, t]));
    g.finish("classsr: packed u8 frame to normalised tiles", &[("role", "unpack")])
}

/// Branch outputs [N, 3, t·s, t·s] of the tiles `tile_ids` [N] → the feathered merge
/// (weights wy·wx of the grid, contributions added in input order) → u8 frame of `layout`
/// [h·s, w·s·bpp], rounding as the engine does ((v − lo)·255/(hi − lo) + 0.5, clamped,
/// truncated). The padding byte of x layouts is 255; alpha layouts are not supported.
pub fn merge_graph(grid: &TileGrid, layout: PixelLayout, lo: f32, hi: f32) -> Result<ModelProto, String> {
    if layout.alpha_offset().is_some() {
        return Err(format!(
            "{} has alpha, which the merge graph does not carry",
            layout.name()
        ));
    }
    let s = grid.scale;
    let (th, ow, oh) = (grid.tile * s, grid.padded_width * s, grid.padded_height * s);
    let (w, h) = (grid.width * s, grid.height * s);
    let bpp = layout.bytes_per_pixel();
    let mut g = GraphBuilder::new("classsr merge");
    let sr = g.input(
        SR_INPUT,
        &[
            Dim::Symbolic("n"),
            Dim::Fixed(3),
            Dim::Fixed(th as i64),
            Dim::Fixed(th as i64),
        ],
    );
    let ids = g.typed_input(IDS_INPUT, DataType::Int64, &[Dim::Symbolic("n")]);
    let n = grid.len();
    let cols = grid.xs.len();
    // where each HR sample of each tile goes: base[k] + c·plane + y·ow + x
    let base: Vec<i64> = (0..n)
        .map(|i| {
            let (x0, y0) = grid.origin(i);
            (y0 * s * ow + x0 * s) as i64
        })
        .collect();
    let base = g.int64s("hr.base", &base);
    let base = g.op("Gather", &[&base, &ids], &[("axis", Attr::Int(0))]);
    let col_shape = g.int64s("n111", &[-1, 1, 1, 1]);
    let base = g.op("Reshape", &[&base, &col_shape], &[]);
    let plane = ow * oh;
    let pattern: Vec<i64> = (0..3 * th * th)
        .map(|p| {
            let (c, y, x) = (p / (th * th), (p / th) % th, p % th);
            (c * plane + y * ow + x) as i64
        })
        .collect();
    let pattern = g.int64_tensor("hr.pattern", &[1, 3, th, th], &pattern);
    let idx = g.op("Add", &[&base, &pattern], &[]);
    let flat = g.int64s("flat", &[-1]);
    let idx = g.op("Reshape", &[&idx, &flat], &[]);
    // feather weights wy[row]·wx[col], as merge_tile computes them
    let rows = g.int64s("tile.row", &(0..n).map(|i| (i / cols) as i64).collect::<Vec<_>>());
    let cols_of = g.int64s("tile.col", &(0..n).map(|i| (i % cols) as i64).collect::<Vec<_>>());
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
    let upd = g.op("Mul", &[&wgt, &sr], &[]);
    let upd = g.op("Reshape", &[&upd, &flat], &[]);
    let len = g.int64s("acc.len", &[(3 * plane) as i64]);
    let zeros = g.op("ConstantOfShape", &[&len], &[]);
    let mut x = g.op(
        "ScatterElements",
        &[&zeros, &idx, &upd],
        &[("axis", Attr::Int(0)), ("reduction", Attr::Str("add"))],
    );
    let planes = g.int64s("acc.shape", &i64s(&[3, oh, ow]));
    x = g.op("Reshape", &[&x, &planes], &[]);
    if (ow, oh) != (w, h) {
        let starts = g.int64s("crop.starts", &[0, 0]);
        let ends = g.int64s("crop.ends", &i64s(&[h, w]));
        let axes = g.int64s("crop.axes", &[1, 2]);
        x = g.op("Slice", &[&x, &starts, &ends, &axes], &[]);
    }
    let lo_w = g.weight("lo", &[], &[lo]);
    x = g.op("Sub", &[&x, &lo_w], &[]);
    let k = g.weight("scale", &[], &[255.0 / (hi - lo)]);
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
    Ok(g.finish("classsr: branch outputs to the merged u8 frame", &[("role", "merge")]))
}
