// Evaluation on the paper's protocol: HR image → mod-4 crop → antialiased bicubic ×1/4 LR →
// upscale with the engine → PSNR on RGB with a 4-pixel border shaved, per mode, with MACs and
// class shares. Used by `classsr eval` and by `classsr-train export`.

use std::path::Path;

use crate::engine::pixels::{Image, ImageMut, PixelLayout};
use crate::engine::resample::imresize;
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
        let img = image::open(path)
            .map_err(|e| Error::Input(format!("cannot read '{}': {e}", path.display())))?
            .to_rgb8();
        let stride = img.width() as usize;
        let (w, h) = (stride / scale * scale, img.height() as usize / scale * scale);
        if w < scale || h < scale {
            return Err(Error::Input(format!(
                "'{}' is smaller than {scale}x{scale}",
                path.display()
            )));
        }
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

/// Antialiased bicubic (MATLAB imresize) ×1/scale of interleaved RGB8, rounded to 8 bits.
pub fn downscale(rgb: &[u8], w: usize, h: usize, scale: usize) -> Vec<u8> {
    let (lw, lh) = (w / scale, h / scale);
    let mut out = vec![0u8; lw * lh * 3];
    for c in 0..3 {
        let plane: Vec<f32> = rgb.iter().skip(c).step_by(3).map(|&v| v as f32 / 255.0).collect();
        let small = imresize(&plane, w, h, lw, lh);
        for (i, v) in small.iter().enumerate() {
            out[i * 3 + c] = (v * 255.0 + 0.5).clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// PSNR (dB) over RGB of two interleaved images, `shave` pixels left out at each border.
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
        return f64::INFINITY;
    }
    10.0 * (255.0 * 255.0 / (se / n as f64)).log10()
}

/// Results of one mode over a set of images.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModeResult {
    pub mode: String,
    pub psnr: f64,
    pub per_image: Vec<f64>,
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
