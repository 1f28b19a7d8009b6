// Packed 8-bit RGB pixel layouts the engine reads and writes, and conversion between them and
// the engine's planar f32 buffers.

/// A packed 8-bit RGB(A) layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelLayout {
    Rgb,
    Bgr,
    Rgbx,
    Bgrx,
    Xrgb,
    Xbgr,
    Rgba,
    Bgra,
}

impl PixelLayout {
    pub const ALL: [PixelLayout; 8] = [
        PixelLayout::Rgb,
        PixelLayout::Bgr,
        PixelLayout::Rgbx,
        PixelLayout::Bgrx,
        PixelLayout::Xrgb,
        PixelLayout::Xbgr,
        PixelLayout::Rgba,
        PixelLayout::Bgra,
    ];

    pub fn bytes_per_pixel(self) -> usize {
        match self {
            PixelLayout::Rgb | PixelLayout::Bgr => 3,
            _ => 4,
        }
    }

    /// Byte offsets of R, G and B within a pixel.
    pub fn rgb_offsets(self) -> [usize; 3] {
        match self {
            PixelLayout::Rgb | PixelLayout::Rgbx | PixelLayout::Rgba => [0, 1, 2],
            PixelLayout::Bgr | PixelLayout::Bgrx | PixelLayout::Bgra => [2, 1, 0],
            PixelLayout::Xrgb => [1, 2, 3],
            PixelLayout::Xbgr => [3, 2, 1],
        }
    }

    /// Byte offset of the alpha channel, for layouts that carry one.
    pub fn alpha_offset(self) -> Option<usize> {
        match self {
            PixelLayout::Rgba | PixelLayout::Bgra => Some(3),
            _ => None,
        }
    }

    /// Byte offset of the unused padding byte, for x layouts.
    pub fn pad_offset(self) -> Option<usize> {
        match self {
            PixelLayout::Rgbx | PixelLayout::Bgrx => Some(3),
            PixelLayout::Xrgb | PixelLayout::Xbgr => Some(0),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PixelLayout::Rgb => "RGB",
            PixelLayout::Bgr => "BGR",
            PixelLayout::Rgbx => "RGBx",
            PixelLayout::Bgrx => "BGRx",
            PixelLayout::Xrgb => "xRGB",
            PixelLayout::Xbgr => "xBGR",
            PixelLayout::Rgba => "RGBA",
            PixelLayout::Bgra => "BGRA",
        }
    }
}

/// A borrowed packed image.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    pub data: &'a [u8],
    pub width: usize,
    pub height: usize,
    /// Bytes from one row to the next.
    pub stride: usize,
    pub layout: PixelLayout,
}

/// A mutably borrowed packed image.
#[derive(Debug)]
pub struct ImageMut<'a> {
    pub data: &'a mut [u8],
    pub width: usize,
    pub height: usize,
    pub stride: usize,
    pub layout: PixelLayout,
}

/// Fills `img` with opaque black: colour bytes 0, alpha and padding bytes 255 (as the
/// engine writes them).
pub fn fill_black(img: &mut ImageMut) {
    let bpp = img.layout.bytes_per_pixel();
    img.data.fill(0);
    if let Some(o) = img.layout.alpha_offset().or(img.layout.pad_offset()) {
        for row in img.data.chunks_mut(img.stride).take(img.height) {
            let len = (img.width * bpp).min(row.len());
            row[..len].chunks_exact_mut(bpp).for_each(|px| px[o] = 255);
        }
    }
}

impl Image<'_> {
    /// Checks that `data` holds `height` rows of `stride` bytes with `width` pixels each.
    pub fn check(&self) -> Result<(), String> {
        check_dims(self.data.len(), self.width, self.height, self.stride, self.layout)
    }
}

impl ImageMut<'_> {
    pub fn check(&self) -> Result<(), String> {
        check_dims(self.data.len(), self.width, self.height, self.stride, self.layout)
    }
}

fn check_dims(len: usize, width: usize, height: usize, stride: usize, layout: PixelLayout) -> Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("frame size {width}x{height} is empty"));
    }
    // (in checked arithmetic: a nonsense stride must not wrap around into a size that passes)
    let row = width.saturating_mul(layout.bytes_per_pixel());
    if stride < row {
        return Err(format!(
            "stride {stride} is shorter than a row of {width} {} pixels ({row} bytes)",
            layout.name()
        ));
    }
    match stride.checked_mul(height - 1).and_then(|b| b.checked_add(row)) {
        Some(need) if len >= need => Ok(()),
        need => Err(format!(
            "{width}x{height} {} frame with a stride of {stride} needs {} bytes, buffer has {len}",
            layout.name(),
            need.map_or("more than can be addressed".to_string(), |n| n.to_string())
        )),
    }
}

/// Unpacks `img` into planar f32 planes of `pw`×`ph` (≥ the image), replicating the last row
/// and column into the padding. Colour values map 0..255 → lo..hi. The alpha plane, when
/// given and the layout has alpha, is filled the same way (0..1), and the colour of fully
/// transparent pixels within `reach` of visible ones is replaced by theirs
/// ([`bleed_into_transparent`]; the engine gives the tile side and 2).
#[allow(clippy::too_many_arguments)]
pub fn unpack_planar(
    img: &Image,
    pw: usize,
    ph: usize,
    lo: f32,
    hi: f32,
    rgb: &mut [f32],
    alpha: Option<&mut [f32]>,
    reach: usize,
) {
    let plane = pw * ph;
    debug_assert!(rgb.len() >= 3 * plane);
    let (w, h) = (img.width, img.height);
    let bpp = img.layout.bytes_per_pixel();
    let offs = img.layout.rgb_offsets();
    let k = (hi - lo) / 255.0;
    {
        let (r_plane, rest) = rgb.split_at_mut(plane);
        let (g_plane, b_plane) = rest.split_at_mut(plane);
        for y in 0..h {
            let row = &img.data[y * img.stride..];
            let o = y * pw;
            for x in 0..w {
                let p = &row[x * bpp..x * bpp + bpp];
                r_plane[o + x] = lo + p[offs[0]] as f32 * k;
                g_plane[o + x] = lo + p[offs[1]] as f32 * k;
                b_plane[o + x] = lo + p[offs[2]] as f32 * k;
            }
        }
    }
    if let (Some(alpha), Some(ao)) = (alpha, img.layout.alpha_offset()) {
        for y in 0..h {
            let row = &img.data[y * img.stride..];
            let o = y * pw;
            for x in 0..w {
                alpha[o + x] = row[x * bpp + ao] as f32 / 255.0;
            }
        }
        // (on the frame itself, before its edges are replicated into the padding)
        bleed_into_transparent(rgb, plane, alpha, pw, w, h, reach);
        replicate_edges(&mut alpha[..plane], pw, w, h);
    }
    for c in rgb[..3 * plane].chunks_exact_mut(plane) {
        replicate_edges(c, pw, w, h);
    }
}

/// Fills the padding of a plane (rows `pw` values apart) around its `w`×`h` frame: each row's
/// last value to its end, then the last row into the rows below.
fn replicate_edges(c: &mut [f32], pw: usize, w: usize, h: usize) {
    for y in 0..h {
        let o = y * pw;
        let last = c[o + w - 1];
        c[o + w..o + pw].fill(last);
    }
    for y in h..c.len() / pw {
        c.copy_within((h - 1) * pw..h * pw, y * pw);
    }
}

/// Gives the fully transparent pixels within `reach` pixels (in rows, columns or diagonals) of
/// a visible one (alpha above 0) the mean colour of their nearest visible (or already given)
/// neighbours of the 8 around them, ring after ring. Their colour is not seen, but upscaling
/// mixes it into the visible pixels near them: the black of a logo's transparent
/// surroundings would give it a dark fringe (straight, not premultiplied, alpha is what the
/// formats carry). The engine's reach is the tile side plus the bicubic alpha's 2 pixels: a
/// tile's network sees nothing outside the tile, so no visible output pixel is made from the
/// colour of a transparent pixel, with any model. A frame without transparent pixels, or without visible ones, is left as it is.
/// The frame is `w`×`h`, its rows `stride` values apart in `alpha` and in each of the three
/// colour planes of `rgb` (`plane` values each).
pub fn bleed_into_transparent(
    rgb: &mut [f32],
    plane: usize,
    alpha: &[f32],
    stride: usize,
    w: usize,
    h: usize,
    reach: usize,
) {
    let at = |x: usize, y: usize| y * stride + x;
    let rows = || (0..h).map(|y| &alpha[y * stride..y * stride + w]);
    if !rows().any(|r| r.contains(&0.0)) || rows().all(|r| r.iter().all(|&a| a == 0.0)) {
        return;
    }
    // per pixel of the frame (row by row, w wide): 1 visible or given a colour, 2 in the ring
    // being given one, 0 neither yet
    let mut known: Vec<u8> = rows().flatten().map(|&a| u8::from(a > 0.0)).collect();
    // the 8 around pixel i, in a fixed order (the sums' order)
    let neighbours = |i: usize| {
        let (x, y) = (i % w, i / w);
        let (l, r, u, d) = (x > 0, x + 1 < w, y > 0, y + 1 < h);
        [
            (u && l).then(|| i - w - 1),
            u.then(|| i - w),
            (u && r).then(|| i - w + 1),
            l.then(|| i - 1),
            r.then(|| i + 1),
            (d && l).then(|| i + w - 1),
            d.then(|| i + w),
            (d && r).then(|| i + w + 1),
        ]
        .into_iter()
        .flatten()
    };
    // (row by row over the row above, this one and the one below: the first ring is looked
    // for over the whole frame, every frame, so rows with no visible pixel near them, most of
    // a frame with a logo, are passed over whole)
    let visible_rows: Vec<bool> = (0..h).map(|y| known[y * w..(y + 1) * w].contains(&1)).collect();
    let mut ring = Vec::new();
    for y in 0..h {
        let band = y.saturating_sub(1)..(y + 2).min(h);
        if !visible_rows[band.clone()].contains(&true) {
            continue;
        }
        for x in 0..w {
            let i = y * w + x;
            if known[i] == 0 {
                let cols = x.saturating_sub(1)..(x + 2).min(w);
                if band
                    .clone()
                    .any(|yy| known[yy * w + cols.start..yy * w + cols.end].contains(&1))
                {
                    ring.push(i);
                }
            }
        }
    }
    for &i in &ring {
        known[i] = 2;
    }
    let mut colours = Vec::new();
    for _ in 0..reach {
        if ring.is_empty() {
            break;
        }
        colours.clear();
        for &i in &ring {
            let mut sum = [0f32; 3];
            let mut n = 0f32;
            for j in neighbours(i).filter(|&j| known[j] == 1) {
                for (c, s) in sum.iter_mut().enumerate() {
                    *s += rgb[c * plane + at(j % w, j / w)];
                }
                n += 1.0;
            }
            colours.push(sum.map(|s| s / n));
        }
        for (&i, colour) in ring.iter().zip(&colours) {
            for (c, v) in colour.iter().enumerate() {
                rgb[c * plane + at(i % w, i / w)] = *v;
            }
            known[i] = 1;
        }
        let mut next = Vec::new();
        for &i in &ring {
            for j in neighbours(i) {
                if known[j] == 0 {
                    known[j] = 2;
                    next.push(j);
                }
            }
        }
        ring = next;
    }
}

/// Rounds a 0..255 value to a byte (clamped; NaN maps to 0).
#[inline]
pub fn to_u8(v: f32) -> u8 {
    // max/min return the other operand for a NaN, so x is finite and within 0..=255.
    #[allow(clippy::manual_clamp)] // clamp would keep a NaN
    let x = (v + 0.5).max(0.0).min(255.0);
    // SAFETY: x is finite and its truncation fits a u8. Unlike `as`, whose saturation checks
    // keep the loops scalar, this conversion vectorises.
    unsafe { x.to_int_unchecked::<u8>() }
}

/// A rectangle of output pixels: columns x0..x1, rows y0..y1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl Region {
    pub fn all(width: usize, height: usize) -> Region {
        Region {
            x0: 0,
            y0: 0,
            x1: width,
            y1: height,
        }
    }
}

/// Packs the top-left `out.width`×`out.height` of planar planes of width `pw` into `out`,
/// mapping lo..hi → 0..255 with rounding. Alpha (0..1) is written when the layout has it,
/// the padding byte of x layouts is set to 255.
pub fn pack_planar(rgb: &[f32], pw: usize, ph: usize, lo: f32, hi: f32, alpha: Option<&[f32]>, out: &mut ImageMut) {
    let k = 255.0 / (hi - lo);
    let all = Region::all(out.width, out.height);
    pack_region(rgb, pw, ph, all, alpha, out, |v| to_u8((v - lo) * k));
}

/// [`pack_planar`] in `bands` bands of rows in parallel ([`in_bands`]).
#[allow(clippy::too_many_arguments)]
pub fn pack_planar_bands(
    rgb: &[f32],
    pw: usize,
    ph: usize,
    lo: f32,
    hi: f32,
    alpha: Option<&[f32]>,
    out: &mut ImageMut,
    bands: usize,
) {
    in_bands(out, bands, |y0, img| {
        // the planes and alpha seen from row y0 (plane offsets stay those of the frame)
        pack_planar(&rgb[y0 * pw..], pw, ph, lo, hi, alpha.map(|a| &a[y0 * pw..]), img);
    });
}

/// Writes three rows of bytes (`bytes`: r, then g, then b) into the pixels of `row`, `B` bytes
/// per pixel, at the colour offsets `offs`.
fn interleave<const B: usize>(row: &mut [u8], bytes: &[u8], offs: [usize; 3]) {
    let n = bytes.len() / 3;
    let (r, rest) = bytes.split_at(n);
    let (g, b) = rest.split_at(n);
    let [o0, o1, o2] = offs;
    assert!(o0 < B && o1 < B && o2 < B);
    for (px, ((&r, &g), &b)) in row.chunks_exact_mut(B).zip(r.iter().zip(g).zip(b)) {
        let px: &mut [u8; B] = px.try_into().expect("B bytes");
        px[o0] = r;
        px[o1] = g;
        px[o2] = b;
    }
}

/// Runs `pack(y0, band)` on `bands` bands of `out`'s rows in parallel, `band` being the rows
/// from `y0` on (one band, on this thread, for frames under ~0.1 megapixel, where a thread
/// costs more than it saves).
pub fn in_bands(out: &mut ImageMut, bands: usize, pack: impl Fn(usize, &mut ImageMut) + Sync) {
    let (w, h, stride, layout) = (out.width, out.height, out.stride, out.layout);
    let bands = if w * h < 100_000 { 1 } else { bands.clamp(1, h) };
    if bands == 1 {
        return pack(0, out);
    }
    let pack = &pack;
    // on the process's pool of threads (kept between frames)
    rayon::scope(|s| {
        let mut rest: &mut [u8] = out.data;
        let mut y0 = 0;
        for k in 0..bands {
            let y1 = (k + 1) * h / bands;
            let take = if k + 1 == bands { rest.len() } else { (y1 - y0) * stride };
            let (band, tail) = std::mem::take(&mut rest).split_at_mut(take);
            rest = tail;
            let mut job = move || {
                let mut img = ImageMut {
                    data: band,
                    width: w,
                    height: y1 - y0,
                    stride,
                    layout,
                };
                pack(y0, &mut img);
            };
            if k + 1 == bands {
                job();
            } else {
                s.spawn(move |_| job());
            }
            y0 = y1;
        }
    });
}

/// Packs `region` (clipped to the output) of planar planes of width `pw` into `out`, each
/// sample through `conv`; alpha and padding bytes as [`pack_planar`].
pub fn pack_region<T: Copy>(
    planes: &[T],
    pw: usize,
    ph: usize,
    region: Region,
    alpha: Option<&[f32]>,
    out: &mut ImageMut,
    conv: impl Fn(T) -> u8,
) {
    let plane = pw * ph;
    let bpp = out.layout.bytes_per_pixel();
    let offs = out.layout.rgb_offsets();
    let (x0, x1) = (region.x0.min(out.width), region.x1.min(out.width));
    let (y0, y1) = (region.y0.min(out.height), region.y1.min(out.height));
    if x0 >= x1 {
        return;
    }
    // Each colour of a row is converted into a scratch row (a loop that vectorises), then
    // the three are interleaved into the pixels.
    let n = x1 - x0;
    let mut bytes = vec![0u8; 3 * n];
    for y in y0..y1 {
        let row = &mut out.data[y * out.stride + x0 * bpp..y * out.stride + x1 * bpp];
        let o = y * pw + x0;
        for (c, dst) in bytes.chunks_exact_mut(n).enumerate() {
            let src = &planes[c * plane + o..c * plane + o + n];
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = conv(v);
            }
        }
        match bpp {
            3 => interleave::<3>(row, &bytes, offs),
            _ => interleave::<4>(row, &bytes, offs),
        }
        if let Some(ao) = out.layout.alpha_offset() {
            if let Some(alpha) = alpha {
                for (x, &v) in alpha[o..o + n].iter().enumerate() {
                    row[x * bpp + ao] = to_u8(v * 255.0);
                }
            } else {
                for x in 0..n {
                    row[x * bpp + ao] = 255;
                }
            }
        }
        if let Some(po) = out.layout.pad_offset() {
            for x in 0..n {
                row[x * bpp + po] = 255;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stride_too_large_to_address_is_refused_not_wrapped() {
        let data = [0u8; 64];
        let img = |stride: usize| Image {
            data: &data,
            width: 2,
            height: 3,
            stride,
            layout: PixelLayout::Rgb,
        };
        assert!(img(6).check().is_ok());
        // 2^63 x 2 rows wraps to 0 in plain arithmetic, which would pass
        let err = img(1 << 63).check().unwrap_err();
        assert!(err.contains("more than can be addressed"), "{err}");
        assert!(img(40).check().unwrap_err().contains("needs 86 bytes"));
    }

    /// [`bleed_into_transparent`] written the plain way: `reach` whole passes over the frame,
    /// each giving every transparent pixel next to (of the 8 around it) a visible or already
    /// given one the mean of those neighbours as they were before the pass.
    fn bleed_by_passes(rgb: &mut [f32], alpha: &[f32], w: usize, h: usize, reach: usize) {
        let plane = w * h;
        let mut known: Vec<bool> = alpha.iter().map(|&a| a > 0.0).collect();
        if known.iter().all(|&k| k) || !known.iter().any(|&k| k) {
            return;
        }
        for _ in 0..reach {
            let (was, colours) = (known.clone(), rgb.to_vec());
            for y in 0..h as i64 {
                for x in 0..w as i64 {
                    let i = (y * w as i64 + x) as usize;
                    if was[i] {
                        continue;
                    }
                    let mut from = Vec::new();
                    for (dx, dy) in [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)] {
                        let (nx, ny) = (x + dx, y + dy);
                        if (0..w as i64).contains(&nx) && (0..h as i64).contains(&ny) {
                            let j = (ny * w as i64 + nx) as usize;
                            if was[j] {
                                from.push(j);
                            }
                        }
                    }
                    if from.is_empty() {
                        continue;
                    }
                    for c in 0..3 {
                        let sum: f32 = from.iter().map(|&j| colours[c * plane + j]).sum();
                        rgb[c * plane + i] = sum / from.len() as f32;
                    }
                    known[i] = true;
                }
            }
        }
    }

    #[test]
    fn transparent_pixels_take_the_mean_of_their_nearest_visible_neighbours() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for round in 0..300 {
            let (w, h) = (1 + next() as usize % 40, 1 + next() as usize % 40);
            // from a few transparent pixels to a few visible ones (and none of either)
            let holes = next() % 101;
            let alpha: Vec<f32> = (0..w * h)
                .map(|_| {
                    if next() % 100 < holes {
                        0.0
                    } else {
                        (1 + next() % 255) as f32 / 255.0
                    }
                })
                .collect();
            let rgb: Vec<f32> = (0..3 * w * h).map(|_| (next() % 256) as f32 / 255.0).collect();
            let mut want = rgb.clone();
            let reach = 1 + next() as usize % 12;
            bleed_by_passes(&mut want, &alpha, w, h, reach);
            // the same frame in padded planes (rows 5 longer, 3 rows more): the padding is not
            // read nor written
            let (pw, ph) = (w + 5, h + 3);
            let mut got = vec![-1.0; 3 * pw * ph];
            let mut padded_alpha = vec![0.5; pw * ph];
            for y in 0..h {
                padded_alpha[y * pw..y * pw + w].copy_from_slice(&alpha[y * w..(y + 1) * w]);
                for c in 0..3 {
                    got[c * pw * ph + y * pw..c * pw * ph + y * pw + w]
                        .copy_from_slice(&rgb[c * w * h + y * w..c * w * h + (y + 1) * w]);
                }
            }
            bleed_into_transparent(&mut got, pw * ph, &padded_alpha, pw, w, h, reach);
            for c in 0..3 {
                for y in 0..ph {
                    for x in 0..pw {
                        let v = got[c * pw * ph + y * pw + x];
                        if x < w && y < h {
                            assert_eq!(v, want[c * w * h + y * w + x], "round {round}: {w}x{h} at {x},{y}");
                        } else {
                            assert_eq!(v, -1.0, "round {round}: padding written");
                        }
                    }
                }
            }
        }
    }
}
