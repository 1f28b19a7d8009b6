// The 16-bit fixed-point passes of the correction's upscale (correction.rs): values in 1/64
// of an 8-bit level, weights in Q15, each product rounded as x86's `pmulhrsw` rounds it and
// sums saturating as `paddsw` does (in the same order), so that the plain loops and the AVX2
// paths compute the same integers (the AVX2 paths do 16 samples per instruction where f32
// does 8).

/// Value units per 8-bit level.
pub const UNITS: f32 = 64.0;

/// `v` 8-bit levels in value units (rounded to nearest, ties up; saturated; NaN gives the
/// lowest value).
#[inline]
pub fn units(v: f32) -> i16 {
    // max/min return the other operand for a NaN, so y is finite and within 0.5..=65535.5
    #[allow(clippy::manual_clamp)] // clamp would keep a NaN
    let y = (v * UNITS + 32768.5).max(0.5).min(65535.5);
    // SAFETY: y is finite and its truncation (its floor: y > 0) fits an i32. Unlike `as` or
    // `round`, this conversion vectorises.
    (unsafe { y.to_int_unchecked::<i32>() } - 32768) as i16
}

/// A weight in Q15 (|w| < 1).
pub fn q15(w: f32) -> i16 {
    (w * 32768.0).round().clamp(-32767.0, 32767.0) as i16
}

/// `a·b` for a Q15 `b`, rounded to nearest (ties up), as `pmulhrsw` computes it.
#[inline(always)]
fn mulhrs(a: i16, b: i16) -> i16 {
    ((a as i32 * b as i32 + 0x4000) >> 15) as i16
}

/// The horizontal pass of one row of pixels (4 values each, in the lanes of the output's
/// pixel layout, 0 for alpha and padding): output pixel `i·s + r` is phase `r` (of
/// `taps.len()` = s, each with the same odd number k of Q15 taps) of input pixel `i` of `src`,
/// whose edge pixels are repeated (k − 1)/2 times on both sides. Its first `step` lanes go to
/// `dst[(i·s + r)·step..]`, so that `dst` holds the row laid out as the output's samples
/// (`step` 3 or 4). With `step` 3, `dst` needs 4 samples of slack after the row.
pub fn row(taps: &[Vec<i16>], src: &[[i16; 4]], step: usize, dst: &mut [i16]) {
    let k = taps.first().map_or(0, |t| t.len());
    assert!(
        k > 0 && taps.iter().all(|t| t.len() == k) && src.len() >= k && (3..=4).contains(&step),
        "the horizontal pass takes taps of one length, at least as many pixels and 3 or 4 lanes"
    );
    #[cfg(target_arch = "x86_64")]
    if taps.len() == 4 && taps.iter().all(|t| t.len() == 5) && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { row_x4_avx2(taps, src, step, dst) };
    }
    row_any(taps, src, step, dst)
}

fn row_any(taps: &[Vec<i16>], src: &[[i16; 4]], step: usize, dst: &mut [i16]) {
    let (s, k) = (taps.len(), taps[0].len());
    for i in 0..src.len() + 1 - k {
        for (r, t) in taps.iter().enumerate() {
            let mut acc = [0i16; 4];
            for (&t, p) in t.iter().zip(&src[i..i + k]) {
                for (a, &v) in acc.iter_mut().zip(p) {
                    *a = a.saturating_add(mulhrs(v, t));
                }
            }
            dst[(i * s + r) * step..][..step].copy_from_slice(&acc[..step]);
        }
    }
}

/// [`row_any`] for ×4 with 5 taps: the 4 output pixels of an input pixel in one register.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_x4_avx2(taps: &[Vec<i16>], src: &[[i16; 4]], step: usize, dst: &mut [i16]) {
    use std::arch::x86_64::*;
    let w = src.len() - 4;
    // tap j of the 4 phases, each in the 4 lanes of its output pixel
    let t: [__m256i; 5] = std::array::from_fn(|j| {
        let lanes: [i16; 16] = std::array::from_fn(|l| taps[l / 4][j]);
        // SAFETY: 16 i16 are 32 bytes (an unaligned load).
        unsafe { _mm256_loadu_si256(lanes.as_ptr().cast()) }
    });
    // with 3 lanes a pixel: the first 3 of each pixel, 4 pixels into the first 24 bytes
    let drop_4th = _mm256_setr_epi8(
        0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, -1, -1, -1, -1, 0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, -1, -1, -1, -1,
    );
    let join = _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 3, 7);
    let per_pixel = 4 * step;
    let mut i = 0;
    // each store writes 16 samples (with 3 lanes, 4 past the pixel's own)
    while i < w && i * per_pixel + 16 <= dst.len() {
        let mut acc = _mm256_setzero_si256();
        for (j, &t) in t.iter().enumerate() {
            // SAFETY: i + j < w + 4 = src.len(); a pixel is 8 bytes (an unaligned read).
            let p = unsafe { std::ptr::read_unaligned(src.as_ptr().add(i + j).cast::<i64>()) };
            acc = _mm256_adds_epi16(acc, _mm256_mulhrs_epi16(_mm256_set1_epi64x(p), t));
        }
        if step == 3 {
            acc = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(acc, drop_4th), join);
        }
        // SAFETY: i·per_pixel + 16 ≤ dst.len() (the loop's condition).
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().add(i * per_pixel).cast(), acc) };
        i += 1;
    }
    if i < w {
        row_any(taps, &src[i..], step, &mut dst[i * per_pixel..]);
    }
}

/// The vertical pass of four rows added to bytes: `dst[x]` = `base[x]` (`None`: `dst[x]`)
/// plus the sum of `rows[j][x]` weighted by the Q15 `w[j]`, in 8-bit levels, rounded and
/// clamped to 0..=255.
pub fn add_rows(rows: [&[i16]; 4], w: [i16; 4], base: Option<&[u8]>, dst: &mut [u8]) {
    let n = dst.len();
    assert!(rows.iter().all(|r| r.len() >= n) && base.is_none_or(|b| b.len() >= n));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above); the lengths are checked above.
        return unsafe { add_rows_avx2(rows, w, base, dst) };
    }
    add_rows_any(rows, w, base, dst, 0)
}

/// One output sample of [`add_rows`].
#[inline(always)]
fn added(rows: &[&[i16]; 4], w: &[i16; 4], x: usize, b: u8) -> u8 {
    let mut sum = 0i16;
    for (r, &w) in rows.iter().zip(w) {
        sum = sum.saturating_add(mulhrs(r[x], w));
    }
    // 512 in Q15 is 1/64: value units to levels, rounded
    (b as i16).saturating_add(mulhrs(sum, 512)).clamp(0, 255) as u8
}

/// [`add_rows`] from sample `from` on.
fn add_rows_any(rows: [&[i16]; 4], w: [i16; 4], base: Option<&[u8]>, dst: &mut [u8], from: usize) {
    for x in from..dst.len() {
        let b = base.map_or(dst[x], |b| b[x]);
        dst[x] = added(&rows, &w, x, b);
    }
}

/// [`add_rows`], 32 samples at a time. The caller checked the lengths.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_rows_avx2(rows: [&[i16]; 4], w: [i16; 4], base: Option<&[u8]>, dst: &mut [u8]) {
    use std::arch::x86_64::*;
    let n = dst.len();
    let wv = w.map(|w| _mm256_set1_epi16(w));
    let to_levels = _mm256_set1_epi16(512);
    // one pointer for every read and write of `dst` (reads of it as the base included)
    let out = dst.as_mut_ptr();
    let from = base.map_or(out.cast_const(), |b| b.as_ptr());
    let sum = |x: usize| {
        let mut acc = _mm256_setzero_si256();
        for (r, &w) in rows.iter().zip(&wv) {
            // SAFETY: x + 16 ≤ n ≤ r.len() (the loop's condition, the caller's check).
            let v = unsafe { _mm256_loadu_si256(r.as_ptr().add(x).cast()) };
            acc = _mm256_adds_epi16(acc, _mm256_mulhrs_epi16(v, w));
        }
        // SAFETY: x + 16 ≤ n, and `from` has n bytes; read before `dst` is written there.
        let b = _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(from.add(x).cast()) });
        _mm256_adds_epi16(b, _mm256_mulhrs_epi16(acc, to_levels))
    };
    let mut x = 0;
    while x + 32 <= n {
        let (lo, hi) = (sum(x), sum(x + 16));
        // packus interleaves the halves by 128-bit lane: put them back in order
        let bytes = _mm256_permute4x64_epi64(_mm256_packus_epi16(lo, hi), 0b11_01_10_00);
        // SAFETY: x + 32 ≤ n = dst.len().
        unsafe { _mm256_storeu_si256(out.add(x).cast(), bytes) };
        x += 32;
    }
    add_rows_any(rows, w, base, dst, x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u32, span: i32) -> Vec<i16> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((s >> 8) as i32 % (2 * span + 1) - span) as i16
            })
            .collect()
    }

    #[test]
    fn levels_round_to_the_nearest_unit_and_saturate() {
        assert_eq!(units(1.0), 64);
        assert_eq!(units(-1.0), -64);
        assert_eq!(units(0.5 / 64.0), 1, "ties up");
        assert_eq!(units(-0.5 / 64.0), 0, "ties up");
        assert_eq!(units(-0.6 / 64.0), -1);
        assert_eq!(units(1e9), i16::MAX);
        assert_eq!(units(-1e9), i16::MIN);
        assert_eq!(units(f32::NAN), i16::MIN);
    }

    #[test]
    fn the_avx2_paths_compute_what_the_plain_ones_do() {
        let taps: Vec<Vec<i16>> = (0..4)
            .map(|r| {
                crate::onnx::Kernel::Bicubic
                    .phase_taps(4, r)
                    .iter()
                    .map(|&t| q15(t as f32))
                    .collect()
            })
            .collect();
        // 37 pixels with 2 of edge on both sides, values of ±250 levels
        let px: Vec<[i16; 4]> = noise(4 * 41, 3, 16_000)
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], 0])
            .collect();
        for step in [3, 4] {
            let len = 37 * 4 * step + 4;
            let (mut a, mut b) = (vec![0i16; len], vec![0i16; len]);
            row(&taps, &px, step, &mut a);
            row_any(&taps, &px, step, &mut b);
            assert_eq!(a[..len - 4], b[..len - 4], "step {step}");
            // a flat row stays flat (the taps of each phase add up to one)
            let flat = vec![[6400i16, -3200, 640, 0]; 41];
            row(&taps, &flat, step, &mut a);
            for px in a[..len - 4].chunks_exact(step) {
                for (v, want) in px.iter().zip([6400, -3200, 640, 0]) {
                    assert!((v - want).abs() <= 2, "{v} for {want}");
                }
            }
        }
        let rows: Vec<Vec<i16>> = (0..4).map(|k| noise(1001, 7 + k, 20_000)).collect();
        let r = [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]];
        let w = [-1200, 7400, 28_400, -2300].map(|v: i32| v as i16);
        let base: Vec<u8> = (0..1001).map(|i| (i * 37 % 256) as u8).collect();
        let (mut a, mut b) = (base.clone(), base.clone());
        add_rows(r, w, None, &mut a);
        add_rows_any(r, w, None, &mut b, 0);
        assert_eq!(a, b);
        let mut c = vec![0u8; 1001];
        add_rows(r, w, Some(&base), &mut c);
        assert_eq!(a, c, "from a separate base: the same bytes");
        assert!(a.contains(&0) && a.contains(&255), "clamped at both ends");
        // the sums saturate instead of wrapping: the most a row can hold, at full weight
        // from every row, still adds (and clamps to 255)
        let most = vec![i16::MAX; 40];
        let mut e = vec![10u8; 40];
        add_rows([&most, &most, &most, &most], [32767; 4], None, &mut e);
        assert!(e.iter().all(|&v| v == 255), "{e:?}");
        let big = vec![[i16::MAX, i16::MIN, 0, 0]; 40];
        let mut f = vec![0i16; 36 * 16];
        row(&taps, &big, 4, &mut f);
        assert!(
            f.chunks_exact(4).all(|p| p[0] > 30_000 && p[1] < -30_000),
            "{:?}",
            &f[..8]
        );
        // exact sums: 64 units (one level) at full weight is one level
        let one = vec![64i16; 40];
        let mut d = vec![10u8; 40];
        add_rows([&one, &one, &one, &one], [32767, 0, 0, 0], None, &mut d);
        assert!(d.iter().all(|&v| v == 11), "{d:?}");
    }
}
