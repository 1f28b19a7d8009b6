// Side-by-side crops of `classsr eval --save` outputs for the README picture:
//   cargo run --release --example compare -- OUT.png SIZE A.ppm B.ppm ...
// Every panel is the same SIZE×SIZE crop of each image, left to right, 8 px apart. The crop is
// where the first two images differ most (e.g. bicubic vs classsr: where super-resolution
// matters), searched on a grid of half-crop steps.

use std::path::Path;

/// An 8-bit RGB image.
struct Rgb {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

/// Reads a binary PPM (P6, maxval 255) as `classsr eval --save` writes it.
fn read_ppm(path: &Path) -> Result<Rgb, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while at < bytes.len() && !bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if start == at {
            return Err(format!("{}: truncated PPM header", path.display()));
        }
        fields.push(String::from_utf8_lossy(&bytes[start..at]).to_string());
    }
    let num = |s: &str| {
        s.parse::<usize>()
            .map_err(|_| format!("{}: bad PPM header", path.display()))
    };
    if fields[0] != "P6" || num(&fields[3])? != 255 {
        return Err(format!("{}: not an 8-bit binary PPM", path.display()));
    }
    let (width, height) = (num(&fields[1])?, num(&fields[2])?);
    let data = bytes
        .get(at + 1..at + 1 + width * height * 3)
        .ok_or(format!("{}: truncated", path.display()))?;
    Ok(Rgb {
        width,
        height,
        data: data.to_vec(),
    })
}

/// Top-left corner of the `size` window where `a` and `b` differ most (sum of absolute
/// differences), on a grid of `size / 2` steps.
fn most_different(a: &Rgb, b: &Rgb, size: usize) -> (usize, usize) {
    let step = (size / 2).max(1);
    let mut best = (0, 0, 0u64);
    for y in (0..=a.height - size).step_by(step) {
        for x in (0..=a.width - size).step_by(step) {
            let mut sad = 0u64;
            for row in y..y + size {
                let o = (row * a.width + x) * 3;
                sad += a.data[o..o + size * 3]
                    .iter()
                    .zip(&b.data[o..o + size * 3])
                    .map(|(p, q)| p.abs_diff(*q) as u64)
                    .sum::<u64>();
            }
            if sad > best.2 {
                best = (x, y, sad);
            }
        }
    }
    (best.0, best.1)
}

fn run() -> Result<String, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        return Err("usage: compare OUT.png SIZE A.ppm B.ppm [C.ppm ...]".into());
    }
    let size: usize = args[1]
        .parse()
        .map_err(|_| format!("SIZE: '{}' is not a number", args[1]))?;
    let images = args[2..]
        .iter()
        .map(|p| read_ppm(Path::new(p)))
        .collect::<Result<Vec<_>, _>>()?;
    let (w, h) = (images[0].width, images[0].height);
    if images.iter().any(|i| i.width != w || i.height != h) {
        return Err("all images must have the same size".into());
    }
    if size == 0 || size > w.min(h) {
        return Err(format!("SIZE must be 1..={}", w.min(h)));
    }
    let (x0, y0) = most_different(&images[0], &images[1], size);
    let gap = 8;
    let out_w = images.len() * size + (images.len() - 1) * gap;
    let mut out = vec![255u8; out_w * size * 3];
    for (k, img) in images.iter().enumerate() {
        let ox = k * (size + gap);
        for row in 0..size {
            let src = ((y0 + row) * w + x0) * 3;
            let dst = (row * out_w + ox) * 3;
            out[dst..dst + size * 3].copy_from_slice(&img.data[src..src + size * 3]);
        }
    }
    let png = image::RgbImage::from_raw(out_w as u32, size as u32, out).ok_or("buffer size")?;
    png.save(&args[0]).map_err(|e| format!("{}: {e}", args[0]))?;
    Ok(format!(
        "wrote {} ({} panels, crop {size}x{size} at ({x0}, {y0}))",
        args[0],
        images.len()
    ))
}

fn main() {
    match run() {
        Ok(msg) => println!("{msg}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
