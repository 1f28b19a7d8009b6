// Tile workers: a frame's branch runs shared out between one-thread sessions by cost, each
// worker running its share in batches and merging the outputs into the fixed-point
// accumulator (under a lock: integer sums do not depend on the order).

use std::sync::Mutex;
use std::time::Instant;

use ort::session::Session;

use super::accumulate::{merge_tile, replace_tile, TileFx};
use super::cache::TileCache;
use super::crop::{Crop, Rect};
use super::share::{run_jobs, share_out, Share, TileCosts};
use super::{batch_calls, batch_limit, model, CacheMode, FrameConfig, Model, TileGrid, Work};
use crate::Error;

/// Puts tile `i`'s new HR output `out` into the accumulator, taking its previous one (kept in
/// the cache) out first when `incremental`; with `keep: Some(reusable)` (cache=full) the new
/// output is kept in the cache.
#[allow(clippy::too_many_arguments)]
pub(super) fn merge_new(
    grid: &TileGrid,
    fx: &mut [i32],
    cache: &mut TileCache,
    i: usize,
    out: &[f32],
    m: TileFx,
    incremental: bool,
    keep: Option<bool>,
) {
    if incremental {
        let whole = Rect::whole(grid.tile * grid.scale);
        replace_tile(grid, fx, i, [cache.hr_of(i), out], m, &whole);
    } else {
        merge_tile(grid, fx, i, out, m);
    }
    if let Some(reusable) = keep {
        cache.store_hr(i, out, reusable);
    }
}

/// One worker's part of a frame: whole tiles by class, and tiles recomputed in part (tile id,
/// class).
type Plan<'g> = (Share<'g>, Vec<(u32, usize)>);

/// A frame's branch runs shared out between tile workers: what each worker needs to run its
/// share and merge the outputs (under a lock; fixed-point merging makes the order irrelevant).
struct Job<'a> {
    grid: &'a TileGrid,
    tiles: &'a [f32],
    /// Output name of each branch.
    outputs: [&'a str; 3],
    max_batch: usize,
    merge: Mutex<(&'a mut Vec<i32>, &'a mut TileCache)>,
    fx: TileFx,
    /// Per class, seconds spent and tiles done (for [`TileCosts`]).
    timing: Mutex<[(f64, usize); 3]>,
    /// Keep the outputs in the cache (full mode).
    keep: bool,
    /// Take each tile's previous output out of the accumulator first.
    incremental: bool,
    /// Per tile, the part to recompute when not the whole tile.
    crops: &'a [Option<Crop>],
}

impl Job<'_> {
    /// Runs a worker's partial recomputes (`parts`: tile ids and classes), then its share of
    /// whole tiles, each class's tiles on its session of that class (`sessions`; only these are
    /// timed for [`TileCosts`]).
    fn run_share(
        &self,
        sessions: [&mut Session; 3],
        buf: &mut Vec<f32>,
        (share, parts): &Plan,
    ) -> Result<usize, Error> {
        let mut runs = 0;
        let mut patched = Vec::new();
        for &(i, class) in parts {
            self.run_crop(&mut *sessions[class], class, buf, &mut patched, i as usize)?;
            runs += 1;
        }
        let mut sessions = sessions.map(Some);
        for &(class, part) in share {
            let session = sessions[class].as_deref_mut().expect("one session per class");
            let started = Instant::now();
            let (r, waited) = self.run(session, class, buf, part)?;
            runs += r;
            // the tiles' own time: waiting for another worker's merge is not their cost
            let secs = (started.elapsed().as_secs_f64() - waited).max(0.0);
            let mut timing = self.timing.lock().unwrap_or_else(|e| e.into_inner());
            timing[class].0 += secs;
            timing[class].1 += part.len();
        }
        Ok(runs)
    }

    /// Runs tile `i`'s branch (`class`) on its crop and merges the tile's cached output with
    /// the crop's part pasted in (it replaces the previous one, and is kept).
    fn run_crop(
        &self,
        session: &mut Session,
        class: usize,
        buf: &mut Vec<f32>,
        patched: &mut Vec<f32>,
        i: usize,
    ) -> Result<(), Error> {
        let crop = self.crops[i].expect("a tile with a crop");
        let t = self.grid.tile;
        let item = 3 * t * t;
        let (h, w) = (crop.input.height(), crop.input.width());
        buf.resize(buf.len().max(3 * h * w), 0.0);
        crop.input
            .stage(&self.tiles[i * item..(i + 1) * item], t, &mut buf[..3 * h * w]);
        let scale = self.grid.scale;
        let what = &format!("branch{}", class + 1);
        model::run_with(
            session,
            self.outputs[class],
            &buf[..3 * h * w],
            (1, h, w),
            what,
            |shape, data| {
                let want = model::branch_output_shape(1, (h, w), scale, self.fx.phases);
                if shape != want {
                    return Err(Error::Model(format!(
                    "{what} returned shape {shape:?} for a {w}x{h} part of a tile; the manifest (scale {scale}) needs {want:?}"
                )));
                }
                let mut guard = self.merge.lock().unwrap_or_else(|e| e.into_inner());
                let (fx, cache) = &mut *guard;
                if self.incremental {
                    // Only the pasted part changed: it is replaced there (which reads `patched`
                    // only in the part's rows, so the rest of the buffer may hold anything),
                    // and the kept output is patched in place.
                    patched.resize(cache.hr_of(i).len(), 0.0);
                    crop.paste(data, t, scale, self.fx.phases, patched);
                    let part = crop.keep.scaled(scale);
                    replace_tile(self.grid, fx, i, [cache.hr_of(i), patched], self.fx, &part);
                    crop.paste(data, t, scale, self.fx.phases, cache.hr_mut(i));
                } else {
                    patched.clear();
                    patched.extend_from_slice(cache.hr_of(i));
                    crop.paste(data, t, scale, self.fx.phases, patched);
                    merge_new(self.grid, fx, cache, i, patched, self.fx, false, Some(true));
                }
                Ok(())
            },
        )
    }

    /// Runs `part` (tile ids of `class`) on `session` in batches, staging the tiles in `buf`.
    /// Returns the runs made and the seconds spent waiting for the merge lock.
    fn run(
        &self,
        session: &mut Session,
        class: usize,
        buf: &mut Vec<f32>,
        part: &[u32],
    ) -> Result<(usize, f64), Error> {
        let t = self.grid.tile;
        let item = 3 * t * t;
        let th = t * self.grid.scale;
        let out_item = 3 * th * th;
        let what = &format!("branch{}", class + 1);
        let (mut runs, mut waited) = (0, 0.0);
        for chunk in batch_calls(part.len(), self.max_batch).map(|r| &part[r]) {
            buf.resize(buf.len().max(chunk.len() * item), 0.0);
            for (k, &i) in chunk.iter().enumerate() {
                let i = i as usize;
                buf[k * item..(k + 1) * item].copy_from_slice(&self.tiles[i * item..(i + 1) * item]);
            }
            let scale = self.grid.scale;
            model::run_with(
                session,
                self.outputs[class],
                &buf[..chunk.len() * item],
                (chunk.len(), t, t),
                what,
                |shape, data| {
                    let want = model::branch_output_shape(chunk.len(), (t, t), scale, self.fx.phases);
                    if shape != want || data.len() != chunk.len() * out_item {
                        return Err(Error::Model(format!(
                            "{what} returned shape {shape:?} for {} tiles of {t}x{t}; the manifest (scale {scale}) needs {want:?}",
                            chunk.len()
                        )));
                    }
                    let asked = Instant::now();
                    let mut guard = self.merge.lock().unwrap_or_else(|e| e.into_inner());
                    waited += asked.elapsed().as_secs_f64();
                    let (fx, cache) = &mut *guard;
                    for (k, &i) in chunk.iter().enumerate() {
                        let out = &data[k * out_item..(k + 1) * out_item];
                        let keep = self.keep.then_some(true);
                        merge_new(self.grid, fx, cache, i as usize, out, self.fx, self.incremental, keep);
                    }
                    Ok(())
                },
            )?;
            runs += 1;
        }
        Ok((runs, waited))
    }
}

/// Runs the branches of `classes` over their groups and merges the results (in full cache
/// mode, keeping them; `incremental`: taking each tile's previous output out first). On the
/// CPU the frame's tiles are shared out between the model's tile workers by cost (see
/// [`share_out`]), each running its share in batches of at most `max_batch` on its own
/// one-thread sessions. Returns the runs made.
pub(super) fn run_branches(
    model: &mut Model,
    work: &mut Work,
    classes: [bool; 3],
    costs: &mut TileCosts,
    cfg: &FrameConfig,
    m: TileFx,
    incremental: bool,
) -> Result<usize, Error> {
    let Work {
        grid,
        all_tiles,
        staging,
        fx,
        cache,
        groups,
        crops,
        ..
    } = work;
    let picked: [&[u32]; 3] = [0, 1, 2].map(|c| if classes[c] { &groups[c][..] } else { &[][..] });
    // Whole tiles are batched and shared out by cost; the parts of tiles then go one by
    // one to the worker with the least work so far.
    let whole: [Vec<u32>; 3] = picked.map(|g| g.iter().copied().filter(|&i| crops[i as usize].is_none()).collect());
    let mut sessions: Vec<[&mut Session; 3]> = Vec::with_capacity(1 + model.workers.len());
    let [a, b, c] = &mut model.branches;
    sessions.push([a, b, c]);
    for [a, b, c] in model.workers.iter_mut() {
        sessions.push([a, b, c]);
    }
    let weights = costs.weights();
    let mut loads: Vec<(Plan, u64)> = share_out(whole.each_ref().map(|g| &g[..]), weights, sessions.len())
        .into_iter()
        .map(|share| {
            let cost = share.iter().map(|(c, t)| weights[*c] * t.len() as u64).sum();
            ((share, Vec::new()), cost)
        })
        .collect();
    loads.resize_with(sessions.len(), Default::default);
    for (class, group) in picked.iter().enumerate() {
        for &i in group.iter() {
            if let Some(c) = crops[i as usize] {
                let (plan, load) = loads.iter_mut().min_by_key(|(_, load)| *load).expect("a worker");
                plan.1.push((i, class));
                *load += c.cost(weights[class], grid.tile);
            }
        }
    }
    let plans: Vec<Plan> = loads
        .into_iter()
        .map(|(plan, _)| plan)
        .filter(|(share, parts)| !share.is_empty() || !parts.is_empty())
        .collect();
    if plans.is_empty() {
        return Ok(0);
    }
    if staging.len() < plans.len() {
        staging.resize_with(plans.len(), Vec::new);
    }
    let outputs = [0, 1, 2].map(|c| model.manifest.branches[c].output.as_str());
    let job = Job {
        grid,
        tiles: all_tiles,
        outputs,
        max_batch: batch_limit(cfg, model.device),
        merge: Mutex::new((fx, cache)),
        fx: m,
        timing: Mutex::new([(0.0, 0); 3]),
        keep: cfg.cache == CacheMode::Full,
        incremental,
        crops,
    };
    let job_ref = &job;
    let jobs: Vec<_> = sessions
        .into_iter()
        .zip(staging.iter_mut())
        .zip(&plans)
        .map(|((sessions, buf), share)| move || job_ref.run_share(sessions, buf, share))
        .collect();
    let mut runs = 0;
    for r in run_jobs(jobs, "a tile worker") {
        runs += r?;
    }
    let timing = job.timing.into_inner().unwrap_or_else(|e| e.into_inner());
    for (class, (secs, tiles)) in timing.into_iter().enumerate() {
        costs.record(class, secs, tiles);
    }
    Ok(runs)
}
