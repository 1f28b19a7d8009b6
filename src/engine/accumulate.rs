// The HR accumulator of the network modes: each tile's output, feather-weighted, is added in
// fixed point (i32, 2^20 per unit of the model's value range). Integer sums are exact and do
// not depend on order, so tiles may be merged by any worker in any order with the same frame
// as a result, and a cached tile's contribution can be taken out again exactly (the per-tile
// cache updates only the tiles that changed). The frame graphs (src/onnx/frame_graphs.rs) do
// the same operations.

use super::pixels::{self, ImageMut, Region};
use super::tiling::TileGrid;

/// Fixed-point units per unit of the model's value range (hi − lo).
pub const FX_ONE: f32 = 1_048_576.0;
/// Bound on one weighted contribution (64 value ranges): sums of the few tiles covering a
/// sample stay far from i32 overflow whatever a model outputs.
pub const FX_LIMIT: f32 = 64.0 * FX_ONE;

/// One weighted contribution: ((wy·wx)·(v − lo))·k, clamped to ±FX_LIMIT and truncated
/// (NaN counts as 0). `k` is FX_ONE / (hi − lo).
#[inline]
pub fn contribution(w: f32, v: f32, lo: f32, k: f32) -> i32 {
    ((w * (v - lo)) * k).clamp(-FX_LIMIT, FX_LIMIT) as i32
}

/// Adds (`sign` 1) or takes out (`sign` -1) HR tile `i` (one NCHW item, model units) in the
/// planar fixed-point accumulator `fx` with its blending weights.
pub fn merge_tile(grid: &TileGrid, fx: &mut [i32], i: usize, src: &[f32], lo: f32, k: f32, sign: i32) {
    let (c0, r0) = grid.cell(i);
    let (x0, y0) = (grid.xs[c0] * grid.scale, grid.ys[r0] * grid.scale);
    let th = grid.tile * grid.scale;
    let ow = grid.padded_width * grid.scale;
    let plane = ow * grid.padded_height * grid.scale;
    let (wx, wy) = (&grid.wx[c0], &grid.wy[r0]);
    for c in 0..3 {
        for y in 0..th {
            let d = c * plane + (y0 + y) * ow + x0;
            let row = &mut fx[d..d + th];
            let s = &src[(c * th + y) * th..(c * th + y + 1) * th];
            let wyy = wy[y];
            for ((a, &v), &w) in row.iter_mut().zip(s).zip(wx) {
                *a = a.wrapping_add(sign.wrapping_mul(contribution(wyy * w, v, lo, k)));
            }
        }
    }
}

/// The HR region (padded-frame coordinates) tile `i` writes.
pub fn tile_region(grid: &TileGrid, i: usize) -> Region {
    let (x, y) = grid.origin(i);
    let (s, th) = (grid.scale, grid.tile * grid.scale);
    Region {
        x0: x * s,
        y0: y * s,
        x1: x * s + th,
        y1: y * s + th,
    }
}

/// Packs `region` of the fixed-point planes (padded width `pw`, height `ph`) into `out`,
/// rounding as the f32 path does.
pub fn pack(fx: &[i32], pw: usize, ph: usize, region: Region, alpha: Option<&[f32]>, out: &mut ImageMut) {
    let k = 255.0 / FX_ONE;
    pixels::pack_region(fx, pw, ph, region, alpha, out, |v| pixels::to_u8(v as f32 * k));
}
