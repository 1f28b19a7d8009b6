// Evaluation on the paper's protocol: HR image → mod-4 crop → antialiased bicubic ×1/4 LR →
// upscale with the engine → PSNR on RGB with a 4-pixel border shaved, per mode, with MACs and
// class shares. Used by `classsr eval` and by `classsr-train export`.

use std::path::{Path, PathBuf};

use image::ImageDecoder;

use crate::engine::pixels::{Image, ImageMut, PixelLayout};
use crate::engine::resample::imresize_rgb8;
use crate::engine::{Engine, FrameConfig, Mode};
use crate::Error;

/// One evaluation image: its HR crop and LR version (8-bit RGB).
pub struct EvalImage {
    pub name: String,
    pub hr: Vec<u8>,
    pub lr: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

impl EvalImage {
    /// Reads an HR image and makes its LR version for `scale`.
    pub fn load(path: &Path, scale: usize) -> Result<EvalImage, Error> {
        let img = read_image(path).map_err(Error::Input)?;
        let img = opaque_rgb8(img, path, "scored").map_err(Error::Input)?;
        let stride = img.width() as usize;
        let (w, h) = (stride / scale * scale, img.height() as usize / scale * scale);
        // scored with a `scale`-pixel border shaved and an 11x11 SSIM window inside it, after
        // the crop to a multiple of `scale`
        let least = (2 * scale + 11).div_ceil(scale) * scale;
        if w < least || h < least {
            return Err(Error::Input(format!(
                "'{}' ({}x{}) is too small to score: at least {least}x{least} (cropped to a multiple of {scale}, a {scale}-pixel border shaved)",
                path.display(),
                img.width(),
                img.height()
            )));
        }
        Engine::check_frame_size(w / scale, h / scale, scale)
            .map_err(|e| Error::Input(format!("'{}': its x1/{scale} LR version: {e}", path.display())))?;
        let raw = img.into_raw();
        let mut hr = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            hr.extend_from_slice(&raw[y * stride * 3..(y * stride + w) * 3]);
        }
        let lr = downscale(&hr, w, h, scale);
        Ok(EvalImage {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            hr,
            lr,
            width: w,
            height: h,
        })
    }
}

/// Reads a PNG or JPEG file by its content (not its name), turned upright by its EXIF
/// orientation (as image viewers show it: phone photographs are often stored sideways).
pub fn read_image(path: &Path) -> Result<image::DynamicImage, String> {
    read_image_upright(path).map(|(img, _)| img)
}

/// The image as 8-bit RGB, refused when it has transparent pixels: the colour stored under
/// them is not part of the picture (often black or left over from editing), so it would be
/// `used` (scored, learnt) as if it were.
pub fn opaque_rgb8(img: image::DynamicImage, path: &Path, used: &str) -> Result<image::RgbImage, String> {
    use image::DynamicImage as D;
    // (counted in place: a converted copy would take 8 bytes a pixel of a large photograph)
    let clear = match &img {
        D::ImageLumaA8(i) => i.pixels().filter(|p| p.0[1] != u8::MAX).count(),
        D::ImageLumaA16(i) => i.pixels().filter(|p| p.0[1] != u16::MAX).count(),
        D::ImageRgba8(i) => i.pixels().filter(|p| p.0[3] != u8::MAX).count(),
        D::ImageRgba16(i) => i.pixels().filter(|p| p.0[3] != u16::MAX).count(),
        D::ImageRgba32F(i) => i.pixels().filter(|p| p.0[3] < 1.0 || p.0[3].is_nan()).count(),
        other if other.color().has_alpha() => other.to_rgba16().pixels().filter(|p| p.0[3] != u16::MAX).count(),
        _ => 0,
    };
    if clear > 0 {
        return Err(format!(
            "'{}' has {clear} transparent or translucent pixels of {}: the colour stored under them is not part of \
             the picture and would be {used}; flatten it onto a background first (e.g. ImageMagick's \
             `convert IN -background white -alpha remove OUT`, `magick` for `convert` in version 7) or leave it out",
            path.display(),
            img.width() as u64 * img.height() as u64
        ));
    }
    Ok(img.to_rgb8())
}

/// [`read_image`], and whether its EXIF orientation turned or flipped it.
pub fn read_image_upright(path: &Path) -> Result<(image::DynamicImage, bool), String> {
    read_image_with_profile(path).map(|(img, turned, _)| (img, turned))
}

/// [`read_image_upright`], with the image's colour profile (ICC), if it has one (a profile
/// that cannot be read counts as none). A JPEG without its end marker is refused: evaluation
/// and training would score or learn the grey its decoder fills a cut-short file with.
pub fn read_image_with_profile(path: &Path) -> Result<(image::DynamicImage, bool, Option<Vec<u8>>), String> {
    read_image_checked(path, true, |_, _| Ok(()))
}

/// [`read_image_with_profile`], with `check` called on the upright image's width and height
/// before its pixels are decoded (a size the caller refuses costs no decoding and no memory);
/// without `strict`, a JPEG without its end marker only gets a warning (some encoders leave
/// it out of whole files; a cut-short one comes out grey where it is missing).
pub fn read_image_checked(
    path: &Path,
    strict: bool,
    check: impl FnOnce(u32, u32) -> Result<(), String>,
) -> Result<(image::DynamicImage, bool, Option<Vec<u8>>), String> {
    use image::metadata::Orientation;
    let fail = |e: &dyn std::fmt::Display| format!("cannot read '{}': {e}", path.display());
    // The file is read once, for the JPEG check and the decoder. Its format is what its
    // content says, else what its name says (as ImageReader::open and with_guessed_format).
    let bytes = std::fs::read(path).map_err(|e| fail(&e))?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(&bytes[..]));
    if let Ok(format) = image::ImageFormat::from_path(path) {
        reader.set_format(format);
    }
    let reader = reader.with_guessed_format().map_err(|e| fail(&e))?;
    // (the JPEG decoder fills what a cut-short file lacks with grey, without a word)
    if reader.format() == Some(image::ImageFormat::Jpeg) && bytes.starts_with(&[0xff, 0xd8]) && !jpeg_complete(&bytes) {
        let what = "ends before its JPEG end marker: if it was cut short (an interrupted download or copy), its \
                    missing part comes out grey";
        if strict {
            return Err(fail(&format!("it {what}")));
        }
        eprintln!("warning: '{}' {what}", path.display());
    }
    let mut decoder = reader.into_decoder().map_err(|e| fail(&e))?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let (w, h) = decoder.dimensions();
    let turned = matches!(
        orientation,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    );
    if turned {
        check(h, w)?;
    } else {
        check(w, h)?;
    }
    let profile = decoder.icc_profile().ok().flatten();
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| fail(&e))?;
    img.apply_orientation(orientation);
    Ok((img, orientation != Orientation::NoTransforms, profile))
}

/// Whether a JPEG file's markers lead to its end-of-image marker (EOI) within `data`: false
/// for a file cut short. Segments are skipped by their lengths and entropy-coded data up to
/// its next marker, so an embedded thumbnail's EOI (inside a segment) does not count.
pub fn jpeg_complete(data: &[u8]) -> bool {
    let n = data.len();
    if !data.starts_with(&[0xff, 0xd8]) {
        return false;
    }
    let mut i = 2;
    let length = |i: usize| (i + 2 <= n).then(|| u16::from_be_bytes([data[i], data[i + 1]]) as usize);
    loop {
        // a marker: 0xff (and any fill bytes of 0xff), then its code
        if i >= n || data[i] != 0xff {
            return false;
        }
        while i < n && data[i] == 0xff {
            i += 1;
        }
        if i >= n {
            return false;
        }
        let code = data[i];
        i += 1;
        match code {
            0xd9 => return true,
            // markers without a segment
            0x01 | 0xd0..=0xd7 => {}
            _ => {
                let Some(len) = length(i).filter(|&l| l >= 2) else {
                    return false;
                };
                i += len;
                if code == 0xda {
                    // entropy-coded data: up to a marker (0xff, any fill bytes of 0xff, then a
                    // code) other than stuffing (0xff 0x00) and the restart markers
                    loop {
                        if i >= n {
                            return false;
                        }
                        if data[i] != 0xff {
                            i += 1;
                            continue;
                        }
                        let mut j = i + 1;
                        while j < n && data[j] == 0xff {
                            j += 1;
                        }
                        if j >= n {
                            return false;
                        }
                        if !matches!(data[j], 0x00 | 0xd0..=0xd7) {
                            break;
                        }
                        i = j + 1;
                    }
                }
            }
        }
    }
}

/// PSNR of identical images: a cap, so that one exactly reproduced image does not make a
/// mean over images infinite.
pub const PSNR_CAP: f64 = 100.0;

/// Antialiased bicubic (MATLAB imresize) ×1/scale of interleaved RGB8, rounded to 8 bits.
pub fn downscale(rgb: &[u8], w: usize, h: usize, scale: usize) -> Vec<u8> {
    imresize_rgb8(rgb, w, h, w / scale, h / scale)
}

/// PNG and JPEG files in `dir`, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot read folder '{}': {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// PSNR (dB) over RGB of two interleaved images, `shave` pixels left out at each border; at
/// most [`PSNR_CAP`] (identical images).
pub fn psnr(a: &[u8], b: &[u8], w: usize, h: usize, shave: usize) -> f64 {
    let mut se = 0f64;
    let mut n = 0usize;
    for y in shave..h.saturating_sub(shave) {
        for x in shave..w.saturating_sub(shave) {
            for c in 0..3 {
                let d = a[(y * w + x) * 3 + c] as f64 - b[(y * w + x) * 3 + c] as f64;
                se += d * d;
                n += 1;
            }
        }
    }
    if n == 0 || se == 0.0 {
        return PSNR_CAP;
    }
    (10.0 * (255.0 * 255.0 / (se / n as f64)).log10()).min(PSNR_CAP)
}

/// SSIM (Wang et al. 2004: 11×11 Gaussian window, σ = 1.5, K = 0.01/0.03) on the BT.601 luma
/// of two interleaved RGB images, `shave` pixels left out at each border.
pub fn ssim_y(a: &[u8], b: &[u8], w: usize, h: usize, shave: usize) -> f64 {
    let luma = |img: &[u8]| -> Vec<f64> {
        img.chunks_exact(3)
            .map(|p| 16.0 + (65.481 * p[0] as f64 + 128.553 * p[1] as f64 + 24.966 * p[2] as f64) / 255.0)
            .collect()
    };
    let (ya, yb) = (luma(a), luma(b));
    let (x0, y0) = (shave, shave);
    let (cw, ch) = (w.saturating_sub(2 * shave), h.saturating_sub(2 * shave));
    if cw < 11 || ch < 11 {
        return f64::NAN;
    }
    let g: Vec<f64> = (0..11)
        .map(|i| (-((i as f64 - 5.0).powi(2)) / (2.0 * 1.5 * 1.5)).exp())
        .collect();
    let gs: f64 = g.iter().sum();
    let g: Vec<f64> = g.iter().map(|v| v / gs).collect();
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let at = |img: &[f64], x: usize, y: usize| img[(y0 + y) * w + x0 + x];
    let mut total = 0.0;
    let mut n = 0usize;
    for y in 0..=ch - 11 {
        for x in 0..=cw - 11 {
            let (mut ma, mut mb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for j in 0..11 {
                for i in 0..11 {
                    let k = g[i] * g[j];
                    let (p, q) = (at(&ya, x + i, y + j), at(&yb, x + i, y + j));
                    ma += k * p;
                    mb += k * q;
                    saa += k * p * p;
                    sbb += k * q * q;
                    sab += k * p * q;
                }
            }
            let (va, vb, cov) = (saa - ma * ma, sbb - mb * mb, sab - ma * mb);
            total += ((2.0 * ma * mb + c1) * (2.0 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2));
            n += 1;
        }
    }
    total / n as f64
}

/// Results of one mode over a set of images.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModeResult {
    pub mode: String,
    pub psnr: f64,
    pub per_image: Vec<f64>,
    pub ssim: f64,
    pub tiles: [usize; 3],
    pub macs: u64,
    pub original_macs: u64,
    pub seconds: f64,
}

impl ModeResult {
    /// Share of tiles per class.
    pub fn shares(&self) -> [f64; 3] {
        let n = self.tiles.iter().sum::<usize>().max(1) as f64;
        self.tiles.map(|t| t as f64 / n)
    }

    pub fn macs_percent(&self) -> f64 {
        100.0 * self.macs as f64 / self.original_macs.max(1) as f64
    }
}

/// Upscales every image in `mode` and scores it against its HR.
pub fn evaluate(engine: &mut Engine, images: &[EvalImage], mode: Mode, cfg: &FrameConfig) -> Result<ModeResult, Error> {
    evaluate_with(engine, images, mode, cfg, false, &mut |_, _| {})
}

/// [`evaluate`], optionally with SSIM, handing each SR image to `sink` (name, RGB bytes).
pub fn evaluate_with(
    engine: &mut Engine,
    images: &[EvalImage],
    mode: Mode,
    cfg: &FrameConfig,
    with_ssim: bool,
    sink: &mut dyn FnMut(&EvalImage, &[u8]),
) -> Result<ModeResult, Error> {
    let s = engine.scale();
    let cfg = FrameConfig { mode, ..*cfg };
    let mut r = ModeResult {
        mode: mode.name().to_string(),
        ..Default::default()
    };
    let mut out = Vec::new();
    for img in images {
        let (lw, lh) = (img.width / s, img.height / s);
        out.resize(img.width * img.height * 3, 0);
        let input = Image {
            data: &img.lr,
            width: lw,
            height: lh,
            stride: lw * 3,
            layout: PixelLayout::Rgb,
        };
        let mut output = ImageMut {
            data: &mut out,
            width: img.width,
            height: img.height,
            stride: img.width * 3,
            layout: PixelLayout::Rgb,
        };
        let stats = engine.process(&cfg, &input, &mut output)?;
        let p = psnr(&out, &img.hr, img.width, img.height, s);
        r.per_image.push(p);
        if with_ssim {
            r.ssim += ssim_y(&out, &img.hr, img.width, img.height, s) / images.len() as f64;
        }
        sink(img, &out);
        for c in 0..3 {
            r.tiles[c] += stats.tiles[c];
        }
        r.macs += stats.macs;
        r.original_macs += stats.original_macs;
        r.seconds += stats.seconds;
    }
    r.psnr = r.per_image.iter().sum::<f64>() / r.per_image.len().max(1) as f64;
    Ok(r)
}
