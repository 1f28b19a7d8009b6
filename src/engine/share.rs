// How a frame's branch runs are shared out between the CPU tile workers: the tiles of all
// classes in one list, cut by cost, so the workers finish together whatever the class mix;
// the cost of a tile of each branch is learnt from the runs themselves. And how the workers'
// jobs (their branch runs, their shares of the classifier's batch) are run.

use crate::Error;

/// Runs `jobs`, one per worker, on the process's pool of threads, kept between frames
/// (spawning threads for every frame costs more than a small frame's runs take); a single job
/// runs on this thread. A job that panics gives an error (`what` panicked), not a panic in the
/// streaming thread. The results come in the jobs' order.
pub fn run_jobs<T: Send, J: FnOnce() -> Result<T, Error> + Send>(jobs: Vec<J>, what: &str) -> Vec<Result<T, Error>> {
    let guarded = |job: J| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
            .unwrap_or_else(|_| Err(Error::Runtime(format!("{what} panicked"))))
    };
    if jobs.len() == 1 {
        return jobs.into_iter().map(guarded).collect();
    }
    let mut results: Vec<Option<Result<T, Error>>> = jobs.iter().map(|_| None).collect();
    rayon::scope(|scope| {
        for (job, slot) in jobs.into_iter().zip(results.iter_mut()) {
            let guarded = &guarded;
            scope.spawn(move |_| *slot = Some(guarded(job)));
        }
    });
    results.into_iter().map(|r| r.expect("every job ran")).collect()
}

/// Time per tile of each branch on this machine, followed from run to run (a moving average),
/// before any run estimated from the branches' MACs. Only the proportions matter: a branch's
/// time is not proportional to its MACs (the small branches spend relatively more on the
/// layers every branch has).
#[derive(Debug, Clone)]
pub struct TileCosts {
    macs: [u64; 3],
    secs: [f64; 3],
}

impl TileCosts {
    pub fn new(macs: [u64; 3]) -> TileCosts {
        TileCosts { macs, secs: [0.0; 3] }
    }

    /// Records that `tiles` tiles of branch `class` took `secs` (runs and merging).
    pub fn record(&mut self, class: usize, secs: f64, tiles: usize) {
        if tiles == 0 || !secs.is_finite() || secs <= 0.0 {
            return;
        }
        let per = secs / tiles as f64;
        let old = self.secs[class];
        self.secs[class] = if old > 0.0 { 0.7 * old + 0.3 * per } else { per };
    }

    /// Cost per tile of each branch for [`share_out`] (nanoseconds; a branch not measured
    /// yet is scaled from a measured one by MACs, or all are MACs before any run).
    pub fn weights(&self) -> [u64; 3] {
        let known = (0..3).rfind(|&c| self.secs[c] > 0.0 && self.macs[c] > 0);
        [0, 1, 2].map(|c| match (self.secs[c] > 0.0, known) {
            (true, _) => (self.secs[c] * 1e9).round() as u64,
            (false, Some(k)) => (self.macs[c] as f64 * self.secs[k] / self.macs[k] as f64 * 1e9).round() as u64,
            (false, None) => self.macs[c],
        })
    }
}

/// The calls a run of `len` tiles is split into: as many as `max_batch` needs (at least one),
/// of near-equal sizes, as ranges of the run.
pub fn batch_calls(len: usize, max_batch: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let calls = len.div_ceil(max_batch.max(1)).max(1);
    (0..calls).map(move |k| k * len / calls..(k + 1) * len / calls)
}

/// One worker's part of a frame's branch runs: per class, a run of that class's tiles.
pub type Share<'g> = Vec<(usize, &'g [u32])>;

/// Cuts the tiles of `groups` (ids per class), taken in class order, into at most `parts`
/// contiguous shares of about equal cost (`costs`: per tile of each class), so that workers
/// finish together even when a class has only a tile or two. Empty shares are left out.
pub fn share_out(groups: [&[u32]; 3], costs: [u64; 3], parts: usize) -> Vec<Share<'_>> {
    let costs = costs.map(|c| c.max(1));
    let total: u64 = (0..3).map(|c| groups[c].len() as u64 * costs[c]).sum();
    let parts = parts.max(1) as u64;
    let mut shares: Vec<Vec<(usize, usize, usize)>> = vec![Vec::new(); parts as usize];
    let mut done = 0u64;
    for (class, group) in groups.iter().enumerate() {
        for j in 0..group.len() {
            // the share whose stretch of the total holds this tile's midpoint
            let mid = 2 * done + costs[class];
            let p = ((mid * parts) / (2 * total.max(1))).min(parts - 1) as usize;
            match shares[p].last_mut() {
                Some((c, _, end)) if *c == class && *end == j => *end += 1,
                _ => shares[p].push((class, j, j + 1)),
            }
            done += costs[class];
        }
    }
    shares
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.into_iter().map(|(c, a, b)| (c, &groups[c][a..b])).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_give_their_results_in_order_and_a_panic_as_an_error() {
        let job = |k: usize| move || if k == 1 { panic!("job {k}") } else { Ok(10 * k) };
        let results = run_jobs((0..3).map(job).collect(), "a test worker");
        assert_eq!(results[0].as_ref().ok(), Some(&0));
        assert_eq!(results[2].as_ref().ok(), Some(&20));
        let err = results[1].as_ref().unwrap_err().to_string();
        assert!(err.contains("a test worker panicked"), "{err}");
        // one job: on this thread, guarded the same way
        let one = run_jobs(vec![job(1)], "a lone worker");
        assert!(one[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("a lone worker panicked"));
    }

    #[test]
    fn batch_calls_are_near_equal_and_cover_the_run() {
        let sizes = |len, max| batch_calls(len, max).map(|r| r.len()).collect::<Vec<_>>();
        assert_eq!(sizes(17, 16), [8, 9]);
        assert_eq!(sizes(32, 16), [16, 16]);
        assert_eq!(sizes(5, 16), [5]);
        assert_eq!(sizes(0, 16), [0]);
        assert_eq!(batch_calls(40, 16).map(|r| r.start).collect::<Vec<_>>(), [0, 13, 26]);
    }

    #[test]
    fn tile_costs_start_from_macs_and_follow_the_runs() {
        let mut c = TileCosts::new([10, 20, 30]);
        assert_eq!(c.weights(), [10, 20, 30]);
        c.record(2, 0.006, 10); // 0.6 ms per tile of branch3
        assert_eq!(c.weights(), [200_000, 400_000, 600_000]);
        c.record(0, 0.004, 10); // branch1 dearer than its MACs say
        let w = c.weights();
        assert_eq!((w[0], w[2]), (400_000, 600_000));
        c.record(0, 0.002, 10);
        assert_eq!(c.weights()[0], 340_000, "moves 30 % of the way to the new time");
        c.record(1, f64::NAN, 3);
        c.record(1, 0.001, 0);
        assert_eq!(c.weights()[1], 400_000, "nonsense measurements are ignored");
    }

    #[test]
    fn shares_cover_every_tile_once_in_order_and_balance_the_cost() {
        let ids: Vec<u32> = (0..40).collect();
        let costs = [12, 19, 26];
        for (a, b, c) in [(28, 3, 4), (0, 1, 0), (5, 0, 30), (1, 1, 1), (0, 0, 0), (40, 0, 0)] {
            let groups = [&ids[..a], &ids[..b], &ids[..c]];
            let n = a + b + c;
            let total: u64 = (0..3).map(|k| costs[k] * groups[k].len() as u64).sum();
            // the dearest tile present
            let dearest = (0..3).filter(|&k| !groups[k].is_empty()).map(|k| costs[k]).max();
            for parts in [1, 2, 3, 8] {
                let shares = share_out(groups, costs, parts);
                // Each tile goes to the share whose stretch of the total cost holds its
                // midpoint, so a share is empty only where a tile costs more than a stretch
                // (total / parts). Not here: every worker gets work, or every tile its own.
                assert_eq!(shares.len(), parts.min(n), "{a}/{b}/{c} in {parts}");
                assert!(shares.iter().all(|s| s.iter().all(|(_, t)| !t.is_empty())));
                // concatenated, the shares give back every class's tiles in order
                for (class, group) in groups.iter().enumerate() {
                    let got: Vec<u32> = shares
                        .iter()
                        .flatten()
                        .filter(|(c, _)| *c == class)
                        .flat_map(|(_, t)| t.iter().copied())
                        .collect();
                    assert_eq!(&got[..], *group, "{a}/{b}/{c} in {parts}");
                }
                let cost = |s: &Share| s.iter().map(|(c, t)| costs[*c] * t.len() as u64).sum::<u64>();
                let got: Vec<u64> = shares.iter().map(cost).collect();
                if let Some(dearest) = dearest {
                    // a share holds whole tiles: it is off its stretch by less than one tile at
                    // each end (half a tile either side), and here the shares differ by at most
                    // the dearest tile (measured: at most 20 of 26)
                    for &g in &got {
                        let off = (g * parts as u64).abs_diff(total);
                        assert!(off < dearest * parts as u64, "{a}/{b}/{c} in {parts}: {got:?}");
                    }
                    let (lo, hi) = (got.iter().min().unwrap(), got.iter().max().unwrap());
                    assert!(hi - lo <= dearest, "{a}/{b}/{c} in {parts}: {got:?}");
                }
            }
        }
        // A tile dearer than a stretch leaves shares empty, and they are left out: three cheap
        // tiles and one 1000 times dearer in four parts make two shares, not four.
        let shares = share_out([&ids[..3], &[], &ids[..1]], [1, 1, 1000], 4);
        assert_eq!(shares, vec![vec![(0, &ids[..3])], vec![(2, &ids[..1])]]);
    }
}
