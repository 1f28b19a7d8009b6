// Tile geometry: where the LR tiles sit so that every pixel is covered (the last row and
// column aligned to the frame edge), and the feathered blending weights of their HR outputs.

/// Tile origins along one axis of length `len` (≥ `tile`), at most `stride` apart, the first
/// at 0 and the last at `len - tile`, spread evenly so every overlap is ≥ `tile - stride`.
pub fn positions(len: usize, tile: usize, stride: usize) -> Vec<usize> {
    assert!(len >= tile && stride >= 1 && stride <= tile);
    let span = len - tile;
    if span == 0 {
        return vec![0];
    }
    let steps = span.div_ceil(stride);
    (0..=steps).map(|k| (k * span + steps / 2) / steps).collect()
}

/// Blending weights along one axis: for each tile, one weight per HR sample of the tile,
/// normalised so that the weights of all tiles covering a sample add up to 1.
///
/// Where two tiles overlap by R HR samples, the later tile's weight ramps linearly from 0 to 1
/// over the middle half of the overlap (0 on its first R/4 samples, 1 after 3R/4) and the
/// earlier tile's falls the other way. The outer quarter of each tile's overlap, where its
/// network saw the least context, so never contributes. Frame edges get no ramp.
pub fn axis_weights(pos: &[usize], tile: usize, scale: usize) -> Vec<Vec<f32>> {
    let th = tile * scale;
    let ramp = |x: f32, overlap_hr: f32| -> f32 {
        // rising ramp for a sample `x` samples into an overlap of `overlap_hr`
        let start = overlap_hr / 4.0;
        let len = (overlap_hr / 2.0).max(1.0);
        ((x + 0.5 - start) / len).clamp(0.0, 1.0)
    };
    let raw: Vec<Vec<f32>> = pos
        .iter()
        .enumerate()
        .map(|(k, &p)| {
            let left = (k > 0).then(|| ((pos[k - 1] + tile - p) * scale) as f32);
            let right = (k + 1 < pos.len()).then(|| ((p + tile - pos[k + 1]) * scale) as f32);
            (0..th)
                .map(|x| {
                    let mut w = 1.0f32;
                    if let Some(r) = left {
                        w = w.min(ramp(x as f32, r));
                    }
                    if let Some(r) = right {
                        w = w.min(ramp((th - 1 - x) as f32, r));
                    }
                    // A floor keeps every covered sample's total positive.
                    w.max(1e-6)
                })
                .collect()
        })
        .collect();
    let len = pos.last().map_or(0, |&p| (p + tile) * scale);
    let mut total = vec![0f32; len];
    for (k, w) in raw.iter().enumerate() {
        for (x, v) in w.iter().enumerate() {
            total[pos[k] * scale + x] += v;
        }
    }
    raw.into_iter()
        .enumerate()
        .map(|(k, w)| {
            w.iter()
                .enumerate()
                .map(|(x, v)| v / total[pos[k] * scale + x])
                .collect()
        })
        .collect()
}

/// The tile sides the element and the CLI take (a tile much smaller than the networks' reach
/// is mostly border; a larger one only costs memory).
pub const TILE_SIDES: std::ops::RangeInclusive<usize> = 8..=256;

/// Whether tiles of side `tile` overlapping by `overlap` can tile frames: the overlap at most
/// half a tile. More would cover each pixel by up to (tile / (tile − overlap))² tiles (a
/// thousand at 32 and 31: gigabytes of tile buffers for one HD frame) for no better blend.
pub fn check_tiling(tile: usize, overlap: usize) -> Result<(), String> {
    if tile == 0 {
        return Err("the tile size must be at least 1".into());
    }
    if 2 * overlap > tile {
        return Err(format!(
            "overlap {overlap} is more than half of tile-size {tile}; use at most {}",
            tile / 2
        ));
    }
    Ok(())
}

/// The tiles of one frame size.
#[derive(Debug, Clone)]
pub struct TileGrid {
    /// Frame size.
    pub width: usize,
    pub height: usize,
    /// Frame size after edge padding up to at least one tile.
    pub padded_width: usize,
    pub padded_height: usize,
    pub tile: usize,
    pub scale: usize,
    pub xs: Vec<usize>,
    pub ys: Vec<usize>,
    /// Normalised HR weights per tile column / row.
    pub wx: Vec<Vec<f32>>,
    pub wy: Vec<Vec<f32>>,
}

impl TileGrid {
    pub fn new(width: usize, height: usize, tile: usize, overlap: usize, scale: usize) -> Result<TileGrid, String> {
        if width == 0 || height == 0 {
            return Err(format!("frame size {width}x{height} is empty"));
        }
        check_tiling(tile, overlap)?;
        let (pw, ph) = (width.max(tile), height.max(tile));
        let xs = positions(pw, tile, tile - overlap);
        let ys = positions(ph, tile, tile - overlap);
        Ok(TileGrid {
            wx: axis_weights(&xs, tile, scale),
            wy: axis_weights(&ys, tile, scale),
            width,
            height,
            padded_width: pw,
            padded_height: ph,
            tile,
            scale,
            xs,
            ys,
        })
    }

    pub fn len(&self) -> usize {
        self.xs.len() * self.ys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (column, row) of tile `i` (row-major).
    pub fn cell(&self, i: usize) -> (usize, usize) {
        (i % self.xs.len(), i / self.xs.len())
    }

    /// LR origin of tile `i`.
    pub fn origin(&self, i: usize) -> (usize, usize) {
        let (c, r) = self.cell(i);
        (self.xs[c], self.ys[r])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_cover_every_pixel_with_at_least_the_overlap() {
        for len in 32..400 {
            for (tile, stride) in [(32, 28), (32, 24), (32, 32), (16, 9), (32, 1)] {
                if len < tile {
                    continue;
                }
                let p = positions(len, tile, stride);
                assert_eq!(p[0], 0);
                assert_eq!(*p.last().unwrap(), len - tile, "len {len}");
                for w in p.windows(2) {
                    assert!(w[1] > w[0] || p.len() == 1, "increasing");
                    assert!(w[1] - w[0] <= stride, "len {len} tile {tile} stride {stride}: {p:?}");
                }
            }
        }
    }

    #[test]
    fn weights_sum_to_one_and_feather() {
        for len in [32usize, 33, 61, 97, 200, 1080] {
            let pos = positions(len, 32, 28);
            let w = axis_weights(&pos, 32, 4);
            let mut total = vec![0f32; len * 4];
            for (k, wk) in w.iter().enumerate() {
                for (x, v) in wk.iter().enumerate() {
                    assert!(*v >= 0.0 && *v <= 1.0 + 1e-6);
                    total[pos[k] * 4 + x] += v;
                }
            }
            for (x, t) in total.iter().enumerate() {
                assert!((t - 1.0).abs() < 1e-5, "len {len} sample {x}: {t}");
            }
            if pos.len() > 1 {
                // The first tile owns the frame edge fully and fades out inside its right overlap.
                assert_eq!(w[0][0], 1.0);
                let ov = (pos[0] + 32 - pos[1]) * 4;
                let tail = &w[0][128 - ov..];
                assert!(tail.windows(2).all(|p| p[1] <= p[0] + 1e-6), "monotone fade");
                assert!(tail[tail.len() - 1] < 1e-3, "outer quarter unused");
                assert!(tail.iter().any(|&v| v > 0.2 && v < 0.8), "a real ramp, not a hard cut");
            }
        }
    }

    #[test]
    fn grid_pads_small_frames() {
        let g = TileGrid::new(1, 1, 32, 4, 4).unwrap();
        assert_eq!((g.padded_width, g.padded_height, g.len()), (32, 32, 1));
        let g = TileGrid::new(97, 61, 32, 4, 4).unwrap();
        assert_eq!(g.xs, vec![0, 22, 43, 65]);
        assert_eq!(*g.ys.last().unwrap(), 29);
        assert!(TileGrid::new(10, 10, 32, 32, 4).is_err());
    }
}
