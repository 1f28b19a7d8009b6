// The per-tile cache across video frames: for each tile position, the LR tile its cached
// results came from, its class, and (in `full` mode) its HR output, so unchanged tiles skip
// the classifier and, in full mode, their branch.

/// What the cache may reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Everything is recomputed every frame.
    Off,
    /// Unchanged tiles keep their class (they leave the classifier batch).
    #[default]
    Class,
    /// Unchanged tiles also keep their HR output (their branch does not run).
    Full,
}

impl CacheMode {
    pub fn parse(s: &str) -> Option<CacheMode> {
        match s {
            "off" => Some(CacheMode::Off),
            "class" => Some(CacheMode::Class),
            "full" => Some(CacheMode::Full),
            _ => None,
        }
    }
}

use super::crop::Rect;

/// Side of the blocks compared by [`TileCache::changed_blocks`]: small enough that a person
/// entering a corner of a tile changes at least one block by much more than noise does.
pub const BLOCK: usize = 8;

/// The settings a cache's results depend on: the mode, the bias (the user's, QoS steps
/// aside), the correction setting (it changes which pixels a partial recompute records as its
/// reference) and whether the threshold is 0 (then every reused output must be what a whole
/// run makes, which a partial recompute's output is not).
pub type CacheKey = (u8, u32, bool, bool);

/// Cached state of one tile grid.
pub struct TileCache {
    /// Side of a tile (LR pixels).
    tile: usize,
    item: usize,
    out_item: usize,
    /// Per tile: the LR tile (NCHW item) the cached class/output were computed from (made at
    /// the first store: nothing is kept with the cache off).
    reference: Vec<f32>,
    /// Per tile: the class its cached output was made by (or its routing was decided as).
    pub classes: Vec<u8>,
    /// Per tile: the classifier's logits (modes that route), so that a QoS bias step re-routes
    /// unchanged tiles without running the classifier or dropping the cache.
    logits: Vec<[f32; 3]>,
    valid: Vec<bool>,
    /// Per tile: the HR output last merged into the frame (full mode).
    pub hr: Vec<f32>,
    /// Per tile: whether that output may be reused (it came from the tile's branch).
    hr_valid: Vec<bool>,
    /// Frames since the cache was last reset (this frame's index after `begin_frame`).
    age: u64,
    /// What the cached results were made with (a [`CacheKey`]).
    key: Option<CacheKey>,
}

impl TileCache {
    /// A cache for `tiles` tiles of `tile`×`tile` RGB (NCHW) with `out_item` HR values each.
    pub fn new(tiles: usize, tile: usize, out_item: usize) -> TileCache {
        let item = 3 * tile * tile;
        TileCache {
            tile,
            item,
            out_item,
            reference: Vec::new(),
            classes: vec![0; tiles],
            logits: vec![[0.0; 3]; tiles],
            valid: vec![false; tiles],
            hr: Vec::new(),
            hr_valid: vec![false; tiles],
            age: 0,
            key: None,
        }
    }

    /// Forgets everything (scene cut, seek, caps change).
    pub fn reset(&mut self) {
        self.valid.fill(false);
        self.hr_valid.fill(false);
        self.age = 0;
        self.key = None;
    }

    /// Starts a frame: drops everything when the routing settings changed (and then returns
    /// true).
    pub fn begin_frame(&mut self, key: CacheKey) -> bool {
        let reset = self.key != Some(key);
        if reset {
            self.reset();
            self.key = Some(key);
        } else {
            self.age += 1;
        }
        reset
    }

    /// Whether tile `i` is due to be recomputed this frame whatever it looks like: with
    /// `refresh` = R > 0, every tile is recomputed once every R frames, staggered so that each
    /// frame recomputes about 1/R of the tiles (a full refresh every R frames would make every
    /// R-th frame cost as much as one without the cache: a live pipeline would see it late).
    pub fn refresh_due(&self, i: usize, refresh: u32) -> bool {
        let r = refresh as u64;
        let n = self.valid.len() as u64;
        r > 0 && self.age > 0 && self.age % r == (i as u64 * r) / n
    }

    /// The blocks of tile `i` (the NCHW item `tile`) that changed: `None` when in every 8×8
    /// block (all three channels) the mean absolute difference to the tile its cached results
    /// came from is below `threshold` (in the model's value units) or the block is
    /// bit-identical; else with `all` the rectangle (in tile pixels, block-aligned) that holds
    /// every changed block, without it the first changed block found; the whole tile when
    /// nothing is cached for it. Comparing blocks rather than the whole tile keeps a small
    /// change (a hand, a face entering a corner) from being averaged away by an otherwise
    /// static tile.
    pub fn changed_blocks(&self, i: usize, tile: &[f32], threshold: f32, all: bool) -> Option<Rect> {
        let t = self.tile;
        if !self.valid[i] {
            return Some(Rect::whole(t));
        }
        let plane = t * t;
        let r = &self.reference[i * self.item..(i + 1) * self.item];
        let mut changed: Option<Rect> = None;
        // per column, the absolute differences of a band of block rows (all three colours)
        // summed down the column: a loop over independent lanes, which vectorises
        let mut columns = vec![0f32; t];
        for by in (0..t).step_by(BLOCK) {
            let rows = by..(by + BLOCK).min(t);
            columns.fill(0.0);
            for c in 0..3 {
                for y in rows.clone() {
                    let at = c * plane + y * t;
                    for ((s, &a), &b) in columns.iter_mut().zip(&r[at..at + t]).zip(&tile[at..at + t]) {
                        *s += (a - b).abs();
                    }
                }
            }
            for bx in (0..t).step_by(BLOCK) {
                let cols = bx..(bx + BLOCK).min(t);
                let sad: f32 = columns[cols.clone()].iter().sum();
                let n = (3 * rows.len() * cols.len()) as f32;
                if sad != 0.0 && sad >= threshold * n {
                    let block = Rect {
                        y0: rows.start,
                        y1: rows.end,
                        x0: cols.start,
                        x1: cols.end,
                    };
                    changed = Some(changed.map_or(block, |c| c.union(&block)));
                    if !all {
                        return changed;
                    }
                }
            }
        }
        changed
    }

    /// Records a freshly computed tile, its class and (modes that route) its logits.
    pub fn store(&mut self, i: usize, tile: &[f32], class: u8, logits: Option<[f32; 3]>) {
        self.reference_mut(i).copy_from_slice(tile);
        self.classes[i] = class;
        self.logits[i] = logits.unwrap_or_default();
        self.valid[i] = true;
        self.hr_valid[i] = false;
    }

    /// Records that only `region` of tile `i` was recomputed (its cached output patched there,
    /// its class unchanged): the reference takes the new pixels of that region only, so a slow
    /// change elsewhere in the tile still adds up against the pixels its output came from.
    pub fn store_region(&mut self, i: usize, tile: &[f32], region: &Rect, logits: Option<[f32; 3]>) {
        let t = self.tile;
        let r = self.reference_mut(i);
        for c in 0..3 {
            for y in region.y0..region.y1 {
                let at = (c * t + y) * t;
                r[at + region.x0..at + region.x1].copy_from_slice(&tile[at + region.x0..at + region.x1]);
            }
        }
        if let Some(l) = logits {
            self.logits[i] = l;
        }
    }

    fn reference_mut(&mut self, i: usize) -> &mut [f32] {
        if self.reference.is_empty() {
            self.reference = vec![0.0; self.valid.len() * self.item];
        }
        &mut self.reference[i * self.item..(i + 1) * self.item]
    }

    /// Refuses to make the store of kept outputs (cache=full) when it would not fit in the
    /// `available` memory (a failed allocation aborts the process; a large one that does not
    /// fit gets it killed): at 3840x2160 with the default tiling it takes 2 GB, with 8-pixel
    /// tiles 6 GB.
    pub fn check_hr_memory(&self, available: Option<u64>) -> Result<(), crate::Error> {
        let need = (self.valid.len() * self.out_item * std::mem::size_of::<f32>()) as u64;
        match available {
            Some(a) if self.hr.is_empty() && need > a => Err(crate::Error::Settings(format!(
                "cache=full keeps every tile's output: {:.1} GB at this frame size and tiling, more than the {:.1} GB \
                 of memory available; use cache=class (the default), a larger tile-size or a smaller input",
                need as f64 / 1e9,
                a as f64 / 1e9
            ))),
            _ => Ok(()),
        }
    }

    /// The LR tile (NCHW item) tile `i`'s cached results came from.
    pub fn reference_of(&self, i: usize) -> &[f32] {
        &self.reference[i * self.item..(i + 1) * self.item]
    }

    /// The logits stored with tile `i`.
    pub fn logits(&self, i: usize) -> &[f32; 3] {
        &self.logits[i]
    }

    pub fn has_hr(&self, i: usize) -> bool {
        self.hr_valid[i]
    }

    /// Records the HR output merged for tile `i` (full mode); `reusable` when it came from the
    /// tile's branch (a QoS bicubic stand-in is kept only so it can be taken out again).
    pub fn store_hr(&mut self, i: usize, hr: &[f32], reusable: bool) {
        if self.hr.is_empty() {
            self.hr = vec![0.0; self.valid.len() * self.out_item];
        }
        self.hr[i * self.out_item..(i + 1) * self.out_item].copy_from_slice(hr);
        self.hr_valid[i] = reusable;
    }

    /// Marks tile `i`'s kept output as not to be reused (it stays, to be taken out of the
    /// accumulator when the tile is made again).
    pub fn drop_hr(&mut self, i: usize) {
        self.hr_valid[i] = false;
    }

    pub fn hr_of(&self, i: usize) -> &[f32] {
        &self.hr[i * self.out_item..(i + 1) * self.out_item]
    }

    /// The HR output kept for tile `i`, to patch in place (full mode).
    pub fn hr_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.hr[i * self.out_item..(i + 1) * self.out_item]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_outputs_that_would_not_fit_are_refused_before_they_are_made() {
        // 10 tiles of 32x32, x4: 10 x 3 x 128 x 128 floats = 1966080 bytes
        let mut cache = TileCache::new(10, 32, 3 * 128 * 128);
        assert!(cache.check_hr_memory(None).is_ok(), "unknown: not refused");
        assert!(cache.check_hr_memory(Some(1_966_080)).is_ok());
        let err = cache.check_hr_memory(Some(1_000_000)).unwrap_err().to_string();
        assert!(
            err.contains("cache=full keeps") && err.contains("use cache=class"),
            "{err}"
        );
        // once made, it is not checked again
        cache.store_hr(0, &vec![0.0; 3 * 128 * 128], true);
        assert!(cache.check_hr_memory(Some(0)).is_ok());
    }
}
