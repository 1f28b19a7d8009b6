// Training data: HR photographs → scale augmentation (×1.0 … ×0.6, antialiased bicubic),
// mod-4 crop, LR by antialiased bicubic ×1/4, and the index of LR 32 / HR 128 sub-images at HR
// stride 64; batches are sampled with random flips and 90° rotations.

use std::path::{Path, PathBuf};

use crate::engine::resample::imresize_rgb8;
use crate::eval::list_images;

use super::rng::Rng;

/// Sizes of the ClassSR sub-images.
pub const LR_SIZE: usize = 32;
pub const HR_STRIDE: usize = 64;
/// Scale augmentation factors of the official code.
pub const AUG_SCALES: [f64; 5] = [1.0, 0.9, 0.8, 0.7, 0.6];
/// Longer sides are shrunk to this first (keeps memory bounded for very large photographs).
pub const MAX_SIDE: usize = 2560;

/// An 8-bit RGB image (interleaved).
#[derive(Debug, Clone)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Rgb8 {
    /// Antialiased bicubic resize (MATLAB imresize), rounded to 8 bits.
    pub fn resize(&self, width: usize, height: usize) -> Rgb8 {
        Rgb8 {
            width,
            height,
            data: imresize_rgb8(&self.data, self.width, self.height, width, height),
        }
    }

    /// The top-left crop whose sides are multiples of `m`.
    pub fn mod_crop(&self, m: usize) -> Rgb8 {
        let (w, h) = (self.width / m * m, self.height / m * m);
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            data.extend_from_slice(&self.data[y * self.width * 3..(y * self.width + w) * 3]);
        }
        Rgb8 {
            width: w,
            height: h,
            data,
        }
    }
}

/// Reads an image as 8-bit RGB (upright, as `classsr eval` reads it; refused with
/// transparent pixels), and whether its EXIF orientation turned it.
pub fn read_rgb(path: &Path) -> Result<(Rgb8, bool), String> {
    let (img, turned) = crate::eval::read_image_upright(path)?;
    let img = crate::eval::opaque_rgb8(img, path, "learnt")?;
    let rgb = Rgb8 {
        width: img.width() as usize,
        height: img.height() as usize,
        data: img.into_raw(),
    };
    Ok((rgb, turned))
}

/// The LR image made from an HR one: mod-`scale` crop, then antialiased bicubic ×1/scale.
pub fn make_lr(hr: &Rgb8, scale: usize) -> (Rgb8, Rgb8) {
    let hr = hr.mod_crop(scale);
    let lr = hr.resize(hr.width / scale, hr.height / scale);
    (hr, lr)
}

/// HR/LR pair at one augmentation scale.
pub struct Pair {
    pub hr: Rgb8,
    pub lr: Rgb8,
}

/// One sub-image: pair index and LR origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sub {
    pub pair: u32,
    pub x: u16,
    pub y: u16,
}

/// A folder of photographs cut into sub-images.
pub struct Dataset {
    pub pairs: Vec<Pair>,
    pub subs: Vec<Sub>,
    pub scale: usize,
    /// Images used.
    pub images: Vec<PathBuf>,
    /// Those of them turned upright by their EXIF orientation.
    pub turned: Vec<PathBuf>,
    /// Files skipped, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

fn positions(len: usize, size: usize, stride: usize) -> Vec<usize> {
    if len < size {
        return Vec::new();
    }
    let mut p: Vec<usize> = (0..=len - size).step_by(stride).collect();
    if *p.last().unwrap() != len - size {
        p.push(len - size);
    }
    p
}

/// Bytes the HR/LR pairs of images of `sizes` take at the scale factors `aug` (×`scale` LR),
/// after the shrink to [`MAX_SIDE`].
pub fn memory_needed(sizes: &[(usize, usize)], scale: usize, aug: &[f64]) -> u64 {
    let lr = 1.0 + 1.0 / (scale * scale) as f64;
    let bytes: f64 = sizes
        .iter()
        .map(|&(w, h)| {
            let k = (MAX_SIDE as f64 / w.max(h) as f64).min(1.0);
            let area = w as f64 * k * h as f64 * k;
            aug.iter().map(|s| area * s * s * 3.0 * lr).sum::<f64>()
        })
        .sum();
    bytes as u64
}

/// Refuses data whose pairs (see [`memory_needed`]) would not fit in `available` bytes,
/// naming what would.
pub fn check_memory(
    sizes: &[(usize, usize)],
    scale: usize,
    aug: &[f64],
    available: Option<u64>,
    dir: &Path,
) -> Result<(), String> {
    let need = memory_needed(sizes, scale, aug);
    match available {
        Some(have) if need > have => {
            let gb = |b: u64| b as f64 / (1u64 << 30) as f64;
            let one = memory_needed(sizes, scale, &[1.0]);
            Err(format!(
                "the training data in '{}' would take about {:.1} GB in memory ({} images at the {} scales of --aug \
                 {aug:?}, each kept with its LR), more than the {:.1} GB available: use fewer scales (--aug 1.0 \
                 takes {:.1} GB) or fewer or smaller images",
                dir.display(),
                gb(need),
                sizes.len(),
                aug.len(),
                gb(have),
                gb(one)
            ))
        }
        _ => Ok(()),
    }
}

impl Dataset {
    /// Loads `dir` with the given augmentation scales. Unreadable, corrupt or too-small images
    /// are skipped and reported through `warn`; no usable image at all is an error.
    pub fn load(dir: &Path, scale: usize, aug: &[f64], warn: &mut dyn FnMut(String)) -> Result<Dataset, String> {
        let files = list_images(dir)?;
        if files.is_empty() {
            return Err(format!("data folder '{}' has no PNG or JPEG images", dir.display()));
        }
        // Every scale of every image is kept in memory: a folder too big for it is refused now,
        // not killed for want of memory after minutes of loading (sizes from the files' headers;
        // one that cannot be read is skipped below with its reason).
        let sizes: Vec<(usize, usize)> = files
            .iter()
            .filter_map(|f| image::image_dimensions(f).ok())
            .map(|(w, h)| (w as usize, h as usize))
            .collect();
        check_memory(&sizes, scale, aug, crate::available_memory(), dir)?;
        let hr_size = LR_SIZE * scale;
        let lr_stride = (HR_STRIDE / scale).max(1);
        let mut ds = Dataset {
            pairs: Vec::new(),
            subs: Vec::new(),
            scale,
            images: Vec::new(),
            turned: Vec::new(),
            skipped: Vec::new(),
        };
        // images that gave no sub-image at any scale (for the error when none gave any)
        let mut without_subs = 0;
        for f in files {
            let img = match read_rgb(&f) {
                Ok((i, turned)) => {
                    if turned {
                        ds.turned.push(f.clone());
                    }
                    i
                }
                Err(e) => {
                    // (the message names the file)
                    warn(format!("skipping: {e}"));
                    ds.skipped.push((f, e));
                    continue;
                }
            };
            if img.width < hr_size || img.height < hr_size {
                let why = format!(
                    "too small ({}x{}, need at least {hr_size}x{hr_size})",
                    img.width, img.height
                );
                warn(format!("skipping '{}': {why}", f.display()));
                ds.skipped.push((f, why));
                continue;
            }
            let big = img.width.max(img.height);
            let img = if big > MAX_SIDE {
                let k = MAX_SIDE as f64 / big as f64;
                img.resize(
                    ((img.width as f64 * k).round() as usize).max(1),
                    ((img.height as f64 * k).round() as usize).max(1),
                )
            } else {
                img
            };
            let pairs_before = ds.pairs.len();
            for &s in aug {
                let size = |side: usize| (side as f64 * s).round() as usize;
                // (checked before resizing: a tiny factor would make an empty image)
                if size(img.width) < hr_size || size(img.height) < hr_size {
                    continue;
                }
                let scaled = if (s - 1.0).abs() < 1e-9 {
                    img.clone()
                } else {
                    img.resize(size(img.width), size(img.height))
                };
                let (hr, lr) = make_lr(&scaled, scale);
                let pair = ds.pairs.len() as u32;
                for y in positions(lr.height, LR_SIZE, lr_stride) {
                    for x in positions(lr.width, LR_SIZE, lr_stride) {
                        ds.subs.push(Sub {
                            pair,
                            x: x as u16,
                            y: y as u16,
                        });
                    }
                }
                ds.pairs.push(Pair { hr, lr });
            }
            // (a panorama shrunk to MAX_SIDE may come out under a sub-image at every scale)
            if ds.pairs.len() == pairs_before {
                let shrunk = if big > MAX_SIDE {
                    format!(" (its longer side brought to {MAX_SIDE}: {}x{})", img.width, img.height)
                } else {
                    String::new()
                };
                let why = format!("gives no {hr_size}x{hr_size} sub-image at any scale of --aug {aug:?}{shrunk}");
                warn(format!("skipping '{}': {why}", f.display()));
                ds.skipped.push((f, why));
                without_subs += 1;
                continue;
            }
            ds.images.push(f);
        }
        if ds.subs.is_empty() {
            // (images may have been read, but every scale of them came out under one sub-image)
            let hint = if without_subs > 0 {
                format!(
                    ": {without_subs} of them are smaller than {hr_size}x{hr_size} at every scale of --aug {aug:?} (use larger factors)"
                )
            } else {
                String::new()
            };
            return Err(format!(
                "data folder '{}' has no usable images ({} skipped){hint}",
                dir.display(),
                ds.skipped.len()
            ));
        }
        Ok(ds)
    }

    /// Copies sub-image `sub` into NCHW item buffers (values 0..1), transformed by one of the
    /// 8 flips/rotations (`t` = 0 is the identity). The HR item is written in space-to-depth
    /// layout [3·s², n, n] (see `Net::forward_packed`).
    fn write_item(&self, sub: Sub, t: usize, lr_out: &mut [f32], hr_out: &mut [f32]) {
        let pair = &self.pairs[sub.pair as usize];
        let s = self.scale;
        // `p` = packing factor: HR pixel (y·p + ry, x·p + rx) goes to channel c·p² + ry·p + rx
        let copy = |img: &Rgb8, x0: usize, y0: usize, n: usize, p: usize, out: &mut [f32]| {
            let m = n / p;
            for y in 0..n {
                for x in 0..n {
                    // (x, y) in the output ← (sx, sy) in the source, per dihedral transform
                    let (mut sx, mut sy) = if t & 4 != 0 { (y, x) } else { (x, y) };
                    if t & 1 != 0 {
                        sx = n - 1 - sx;
                    }
                    if t & 2 != 0 {
                        sy = n - 1 - sy;
                    }
                    let o = ((y0 + sy) * img.width + x0 + sx) * 3;
                    let (ry, rx) = (y % p, x % p);
                    for c in 0..3 {
                        let ch = (c * p + ry) * p + rx;
                        out[(ch * m + y / p) * m + x / p] = img.data[o + c] as f32 / 255.0;
                    }
                }
            }
        };
        copy(&pair.lr, sub.x as usize, sub.y as usize, LR_SIZE, 1, lr_out);
        copy(&pair.hr, sub.x as usize * s, sub.y as usize * s, LR_SIZE * s, s, hr_out);
    }

    /// A batch of the given sub-images: (LR NCHW, HR packed [N, 3·s², 32, 32]), augmented when
    /// `rng` is given.
    pub fn batch(&self, ids: &[usize], mut rng: Option<&mut Rng>) -> (Vec<f32>, Vec<f32>) {
        let li = 3 * LR_SIZE * LR_SIZE;
        let hi = li * self.scale * self.scale;
        let mut lr = vec![0f32; ids.len() * li];
        let mut hr = vec![0f32; ids.len() * hi];
        for (k, &id) in ids.iter().enumerate() {
            let t = rng.as_deref_mut().map_or(0, |r| r.below(8));
            self.write_item(
                self.subs[id],
                t,
                &mut lr[k * li..(k + 1) * li],
                &mut hr[k * hi..(k + 1) * hi],
            );
        }
        (lr, hr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_too_big_for_memory_is_refused_with_what_would_fit() {
        // a 2040x1356 photograph (DIV2K's size) at the five official scales, x4: HR + LR
        let div2k = [(2040, 1356)];
        let need = memory_needed(&div2k, 4, &AUG_SCALES);
        let area = 2040.0 * 1356.0 * 3.0 * (1.0 + 1.0 / 16.0);
        let sum_sq: f64 = AUG_SCALES.iter().map(|s| s * s).sum();
        assert!((need as f64 - area * sum_sq).abs() < 10.0, "{need}");
        // larger photographs are counted after the shrink to MAX_SIDE
        assert_eq!(
            memory_needed(&[(2 * MAX_SIDE, MAX_SIDE)], 4, &[1.0]),
            memory_needed(&[(MAX_SIDE, MAX_SIDE / 2)], 4, &[1.0])
        );
        // 800 of them do not fit in 16 GB; with --aug 1.0 they would
        let set = vec![div2k[0]; 800];
        let dir = Path::new("DIV2K_train_HR");
        let e = check_memory(&set, 4, &AUG_SCALES, Some(16 << 30), dir).unwrap_err();
        assert!(
            e.contains("DIV2K_train_HR") && e.contains("--aug 1.0 takes 6.6 GB"),
            "{e}"
        );
        assert!(check_memory(&set, 4, &[1.0], Some(16 << 30), dir).is_ok());
        // unknown memory: no check
        assert!(check_memory(&set, 4, &AUG_SCALES, None, dir).is_ok());
    }
}
