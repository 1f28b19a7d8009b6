// The HR accumulator of the network modes: each tile's output, feather-weighted, is added in
// fixed point (i32, 2^20 per unit of the model's value range). Integer sums are exact and do
// not depend on order, so tiles may be merged by any worker in any order with the same frame
// as a result, and a cached tile's contribution can be taken out again exactly (the per-tile
// cache updates only the tiles that changed). The frame graphs (src/onnx/frame_graphs.rs) do
// the same operations.

use super::crop::Rect;
use super::pixels::{self, ImageMut, Region};
use super::tiling::TileGrid;

/// Fixed-point units per unit of the model's value range (hi − lo).
pub const FX_ONE: f32 = 1_048_576.0;
/// Bound on a sample's distance from `lo`, in value ranges, before it is weighted: as the
/// weights of the tiles covering a sample add up to 1, their sum stays within ±64·FX_ONE
/// (far from i32 overflow) whatever a model outputs and however many tiles overlap.
pub const FX_RANGES: f32 = 64.0;

/// The bound on v − lo in [`contribution`]: FX_RANGES value ranges, for `k` = FX_ONE / (hi − lo).
#[inline]
pub fn fx_bound(k: f32) -> f32 {
    FX_RANGES * FX_ONE / k
}

/// One weighted contribution: (w·d)·k with d = v − lo clamped to ±`bound` ([`fx_bound`]),
/// then truncated (NaN counts as the lower bound). `k` is FX_ONE / (hi − lo).
#[inline]
pub fn contribution(w: f32, v: f32, lo: f32, k: f32, bound: f32) -> i32 {
    // Comparisons with a NaN are false, so a NaN becomes -bound and d is finite and within
    // ±bound (written as selects, which map onto single max/min instructions).
    let d = v - lo;
    let d = if d > -bound { d } else { -bound };
    let d = if d < bound { d } else { bound };
    // SAFETY: |w| ≤ 1 and |d·k| ≤ FX_RANGES·FX_ONE = 2^26 (bound from fx_bound), so the value
    // is finite and its truncation fits an i32. Unlike `as`, whose saturation checks keep the
    // loop scalar, this conversion vectorises.
    unsafe { ((w * d) * k).to_int_unchecked::<i32>() }
}

/// How a tile's output goes into the accumulator: its contributions are (w·(v − lo))·k, and
/// it comes as an HR tile or, with `phases`, as s² phase planes per colour
/// (onnx/phase_output.rs).
#[derive(Clone, Copy, Debug)]
pub struct TileFx {
    pub lo: f32,
    /// FX_ONE / (hi − lo).
    pub k: f32,
    pub phases: bool,
}

/// Row `y` of colour `c` of an HR tile (side t·s) given as phase planes ([3·s², t, t]), into
/// `out` (t·s samples).
#[inline(always)]
fn interleave_row(src: &[f32], c: usize, y: usize, (t, s): (usize, usize), out: &mut [f32]) {
    let (ry, j) = (y % s, y / s);
    let row = |rx: usize| &src[((c * s * s + ry * s + rx) * t + j) * t..][..t];
    if s == 4 {
        // the usual ×4: four rows into groups of four (a loop that vectorises)
        let (p0, p1, p2, p3) = (row(0), row(1), row(2), row(3));
        for (q, px) in out.chunks_exact_mut(4).enumerate().take(t) {
            let px: &mut [f32; 4] = px.try_into().expect("4 samples");
            *px = [p0[q], p1[q], p2[q], p3[q]];
        }
        return;
    }
    for rx in 0..s {
        for (q, &v) in row(rx).iter().enumerate() {
            out[q * s + rx] = v;
        }
    }
}

/// An HR tile ([3, t·s, t·s]) as phase planes ([3·s², t, t]) into `out`.
pub fn to_phases(hr: &[f32], (t, s): (usize, usize), out: &mut [f32]) {
    let th = t * s;
    for c in 0..3 {
        for y in 0..th {
            let (ry, j) = (y % s, y / s);
            for (x, &v) in hr[(c * th + y) * th..][..th].iter().enumerate() {
                out[((c * s * s + ry * s + x % s) * t + j) * t + x / s] = v;
            }
        }
    }
}

/// Walks the rows of `part` (HR pixels of the tile) of tile `i` in the planar accumulator
/// `fx`: for each colour and row, calls `f` with the accumulator's row, the same row of each
/// of `srcs` (tile outputs laid out as `m` says, interleaved first when they are phase planes)
/// and the row's blending weights. Only the part's rows of `srcs` are read (with phase planes,
/// whole rows; else only the part's columns).
#[inline(always)]
fn tile_rows<const N: usize>(
    grid: &TileGrid,
    fx: &mut [i32],
    i: usize,
    srcs: [&[f32]; N],
    (m, part): (TileFx, &Rect),
    mut f: impl FnMut(&mut [i32], [&[f32]; N], &[f32], f32),
) {
    let (c0, r0) = grid.cell(i);
    let (x0, y0) = (grid.xs[c0] * grid.scale, grid.ys[r0] * grid.scale);
    let th = grid.tile * grid.scale;
    let ow = grid.padded_width * grid.scale;
    let plane = ow * grid.padded_height * grid.scale;
    let (wx, wy) = (&grid.wx[c0], &grid.wy[r0]);
    let mut interleaved = [(); N].map(|_| vec![0f32; if m.phases { th } else { 0 }]);
    let cols = part.x0..part.x1;
    for c in 0..3 {
        for y in part.y0..part.y1 {
            let d = c * plane + (y0 + y) * ow + x0;
            if m.phases {
                for (src, buf) in srcs.iter().zip(interleaved.iter_mut()) {
                    interleave_row(src, c, y, (grid.tile, grid.scale), buf);
                }
            }
            let bufs = &interleaved;
            let cols = cols.clone();
            let rows: [&[f32]; N] = std::array::from_fn(move |k| {
                if m.phases {
                    &bufs[k][cols.clone()]
                } else {
                    &srcs[k][(c * th + y) * th..][cols.clone()]
                }
            });
            f(&mut fx[d + part.x0..d + part.x1], rows, &wx[part.x0..part.x1], wy[y]);
        }
    }
}

/// Adds tile `i`'s output `src` (one NCHW item, model units, laid out as `m` says) to the
/// planar fixed-point accumulator `fx` with its blending weights.
pub fn merge_tile(grid: &TileGrid, fx: &mut [i32], i: usize, src: &[f32], m: TileFx) {
    let (lo, k) = (m.lo, m.k);
    let bound = fx_bound(k);
    let whole = Rect::whole(grid.tile * grid.scale);
    tile_rows(grid, fx, i, [src], (m, &whole), |row, [s], wx, wy| {
        row.iter_mut()
            .zip(s)
            .zip(wx)
            .for_each(|((a, &v), &w)| *a = a.wrapping_add(contribution(wy * w, v, lo, k, bound)));
    });
}

/// Replaces tile `i`'s output `old` by `new` in `fx` in one pass, over `part` of the tile (HR
/// pixels; where they differ): the same sums as taking `old` out and putting `new` in with
/// [`merge_tile`] (integer contributions, exact), with half the accumulator traffic (a
/// full-cache frame replaces every tile it recomputes).
pub fn replace_tile(grid: &TileGrid, fx: &mut [i32], i: usize, [old, new]: [&[f32]; 2], m: TileFx, part: &Rect) {
    let (lo, k) = (m.lo, m.k);
    let bound = fx_bound(k);
    tile_rows(grid, fx, i, [old, new], (m, part), |row, [o, n], wx, wy| {
        // indexed over slices of one length: the zip of four iterators stayed scalar
        let len = row.len();
        let (o, n, wx) = (&o[..len], &n[..len], &wx[..len]);
        for j in 0..len {
            let w = wy * wx[j];
            row[j] = row[j]
                .wrapping_sub(contribution(w, o[j], lo, k, bound))
                .wrapping_add(contribution(w, n[j], lo, k, bound));
        }
    });
}

/// The HR region (padded-frame coordinates) of `part` (HR pixels of the tile) of tile `i`.
pub fn tile_region(grid: &TileGrid, i: usize, part: &Rect) -> Region {
    let (x, y) = grid.origin(i);
    let s = grid.scale;
    Region {
        x0: x * s + part.x0,
        y0: y * s + part.y0,
        x1: x * s + part.x1,
        y1: y * s + part.y1,
    }
}

/// Packs the whole frame as [`pack`] does, its rows cut into `bands` bands packed in parallel
/// (see [`pixels::in_bands`]).
pub fn pack_all(fx: &[i32], pw: usize, ph: usize, alpha: Option<&[f32]>, out: &mut ImageMut, bands: usize) {
    pixels::in_bands(out, bands, |y0, img| {
        // the planes and alpha seen from row y0 (plane offsets stay those of the frame)
        let region = Region::all(img.width, img.height);
        pack(&fx[y0 * pw..], pw, ph, region, alpha.map(|a| &a[y0 * pw..]), img);
    });
}

/// Packs `region` of the fixed-point planes (padded width `pw`, height `ph`) into `out`,
/// rounding as the f32 path does.
pub fn pack(fx: &[i32], pw: usize, ph: usize, region: Region, alpha: Option<&[f32]>, out: &mut ImageMut) {
    let k = 255.0 / FX_ONE;
    pixels::pack_region(fx, pw, ph, region, alpha, out, |v| pixels::to_u8(v as f32 * k));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contributions_are_bounded_by_their_weight() {
        let (lo, k) = (0.0, FX_ONE);
        // In range: the weighted value.
        assert_eq!(contribution(0.5, 0.25, lo, k, fx_bound(k)), (0.125 * FX_ONE) as i32);
        // A range that does not start at 0 ([-0.5, 1.5]: k = 2^19) and a weight other than the
        // value (all exact in binary): (w·(v − lo))·k, not (v·(w − lo))·k nor (w·v)·k.
        let (lo2, k2) = (-0.5f32, FX_ONE / 2.0);
        let b2 = fx_bound(k2);
        assert_eq!(b2, 128.0, "64 value ranges of 2");
        // 0.25 · 1.25 · 2^19, 0.75 · 0.75 · 2^19, and below lo negative: 0.25 · −0.25 · 2^19
        assert_eq!(contribution(0.25, 0.75, lo2, k2, b2), 163_840);
        assert_eq!(contribution(0.75, 0.25, lo2, k2, b2), 294_912);
        assert_eq!(contribution(0.25, -0.75, lo2, k2, b2), -32_768);
        // truncated towards zero: ±1.375 units give ±1
        let d = 11.0 / (1u32 << 21) as f32;
        assert_eq!(contribution(0.5, lo2 + d, lo2, k2, b2), 1);
        assert_eq!(contribution(0.5, lo2 - d, lo2, k2, b2), -1);
        // clamped to ±bound from lo (NaN to −bound): 0.25 · 128 · 2^19 = 2^24
        assert_eq!(contribution(0.25, 1e30, lo2, k2, b2), 1 << 24);
        assert_eq!(contribution(0.25, -1e30, lo2, k2, b2), -(1 << 24));
        assert_eq!(contribution(0.25, f32::NAN, lo2, k2, b2), -(1 << 24));
        // A wild or broken output counts at most FX_RANGES value ranges, times its weight:
        // in the outer quarter of an overlap (weight ~1e-6) it changes nothing visible.
        for v in [f32::INFINITY, 1e30, f32::NEG_INFINITY, -1e30, f32::NAN] {
            let c = contribution(1e-6, v, lo, k, fx_bound(k));
            assert!(c.abs() <= (1e-6 * FX_RANGES * FX_ONE) as i32 + 1, "{v}: {c}");
        }
        // So any number of tiles covering a sample (weights adding up to 1) cannot overflow.
        let n = 1000;
        let sum = (0..n).fold(0i32, |a, _| {
            a.checked_add(contribution(1.0 / n as f32, 1e30, lo, k, fx_bound(k)))
                .unwrap()
        });
        assert!(sum <= (FX_RANGES * FX_ONE) as i32, "{sum}");
    }
}
