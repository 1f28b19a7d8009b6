// The `classsr` command line, on the same engine as the element:
//
//   classsr upscale IN OUT [--model DIR] [--mode M] [--device D] [--precision P] [--tile N]
//                          [--overlap N] [--max-batch N] [--threads N] [--bias B]
//   classsr eval --hr DIR [--model DIR] [--modes classsr,original,bicubic,...] [--json] [--save DIR]

use std::process::ExitCode;

use gstclasssr::engine::tiling::{check_tiling, TILE_SIDES};
use gstclasssr::engine::{Engine, FrameConfig, Image, ImageMut, Mode, Model, PixelLayout};
use gstclasssr::files::write_bytes_atomically;
use gstclasssr::manifest::ModelSet;
use gstclasssr::runtime::{DeviceRequest, Precision, SessionConfig};

const USAGE: &str =
    "usage: classsr eval --hr DIR [--model DIR] [--modes classsr,original,bicubic,branch1,branch2,branch3,classmap] \
[--json] [--save DIR] [--device auto|cpu|cuda] [--precision fp32|fp16] [--tile N] [--overlap N] [--max-batch N] [--threads N] [--bias B]
       classsr upscale IN OUT [--model DIR] [--mode classsr|original|bicubic|branch1|branch2|branch3|classmap] \
[--device auto|cpu|cuda] [--precision fp32|fp16] [--tile N] [--overlap N] [--max-batch N] [--threads N] [--bias B]
       --tile N: LR tile side (default: the model's, 32 for the embedded one); --overlap N: LR pixels shared by \
neighbouring tiles (default 4, at most half a tile); --precision fp16: the branches in float16 (for CUDA; default fp32)";

/// The modes, for error messages.
const MODES: &str = "classsr, original, bicubic, branch1, branch2, branch3 or classmap";
/// Thread count limit (the element's; tile sides: TILE_SIDES).
const MAX_THREADS: usize = 64;
/// Quality of JPEG output (0-100).
const JPEG_QUALITY: u8 = 95;

struct Args {
    input: String,
    output: String,
    model: String,
    hr: String,
    modes: Vec<Mode>,
    json: bool,
    save: String,
    frame: FrameConfig,
    session: SessionConfig,
}

/// The options of `cmd` (upscale or eval); an option of the other command is an error.
fn parse(cmd: &str, args: &[String]) -> Result<Args, String> {
    let mut pos = Vec::new();
    let mut a = Args {
        input: String::new(),
        output: String::new(),
        model: String::new(),
        hr: String::new(),
        modes: vec![Mode::Bicubic, Mode::Original, Mode::ClassSR],
        json: false,
        save: String::new(),
        frame: FrameConfig::default(),
        session: SessionConfig {
            device: DeviceRequest::Auto,
            device_id: 0,
            precision: Precision::Fp32,
            threads: 0,
        },
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--" {
            // everything after it is a file name, also one that starts with '-'
            pos.extend(it.by_ref().cloned());
            break;
        }
        let only = |c: &str| {
            if cmd == c {
                Ok(())
            } else {
                Err(format!("{arg} is an option of `classsr {c}`, not of `classsr {cmd}`"))
            }
        };
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        let num = |name: &str, v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{name}: '{v}' is not a whole number"))
        };
        match arg.as_str() {
            "--model" => a.model = value("--model")?,
            "--hr" => {
                only("eval")?;
                a.hr = value("--hr")?
            }
            "--save" => {
                only("eval")?;
                a.save = value("--save")?
            }
            "--json" => {
                only("eval")?;
                a.json = true
            }
            "--modes" => {
                only("eval")?;
                a.modes = value("--modes")?
                    .split(',')
                    .map(|m| Mode::parse(m).ok_or_else(|| format!("unknown mode '{m}' (modes: {MODES})")))
                    .collect::<Result<_, _>>()?
            }
            "--mode" => {
                only("upscale")?;
                let v = value("--mode")?;
                a.frame.mode = Mode::parse(&v).ok_or_else(|| format!("unknown mode '{v}' (modes: {MODES})"))?;
            }
            "--device" => {
                a.session.device = match value("--device")?.as_str() {
                    "auto" => DeviceRequest::Auto,
                    "cpu" => DeviceRequest::Cpu,
                    "cuda" => DeviceRequest::Cuda,
                    v => return Err(format!("unknown device '{v}' (auto, cpu or cuda)")),
                }
            }
            "--precision" => {
                a.session.precision = match value("--precision")?.as_str() {
                    "fp32" => Precision::Fp32,
                    "fp16" => Precision::Fp16,
                    v => return Err(format!("unknown precision '{v}' (fp32 or fp16)")),
                }
            }
            "--tile" => {
                a.frame.tile = num("--tile", value("--tile")?)?;
                if !TILE_SIDES.contains(&a.frame.tile) {
                    return Err(format!(
                        "--tile {}: the tile side must be in {}..={} (without --tile: the model's, 32 for the embedded one)",
                        a.frame.tile,
                        TILE_SIDES.start(),
                        TILE_SIDES.end()
                    ));
                }
            }
            "--overlap" => a.frame.overlap = num("--overlap", value("--overlap")?)?,
            "--max-batch" => a.frame.max_batch = num("--max-batch", value("--max-batch")?)?,
            "--threads" => {
                a.session.threads = num("--threads", value("--threads")?)?;
                if a.session.threads > MAX_THREADS {
                    return Err(format!(
                        "--threads {}: at most {MAX_THREADS} (0 = one per core)",
                        a.session.threads
                    ));
                }
            }
            "--bias" => {
                let v = value("--bias")?;
                a.frame.bias = v
                    .parse::<f32>()
                    .ok()
                    .filter(|b| b.is_finite())
                    .ok_or_else(|| format!("--bias: '{v}' is not a finite number"))?;
            }
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(format!(
                    "unknown option '{s}' (a file whose name starts with '-' goes after `--`)\n{USAGE}"
                ))
            }
            s => pos.push(s.to_string()),
        }
    }
    let quoted = |v: &[String]| v.iter().map(|f| format!("'{f}'")).collect::<Vec<_>>().join(", ");
    match (cmd, pos.as_slice()) {
        ("upscale", [i, o]) => {
            a.input = i.clone();
            a.output = o.clone();
            Ok(a)
        }
        ("upscale", [] | [_]) => Err(format!("upscale needs an input and an output file\n{USAGE}")),
        ("upscale", more) => Err(format!(
            "upscale takes one input and one output file, not {} ({})",
            more.len(),
            quoted(more)
        )),
        (_, []) if !a.hr.is_empty() => Ok(a),
        (_, []) => Err(format!("eval needs --hr DIR\n{USAGE}")),
        (_, extra) => Err(format!(
            "eval takes no file arguments ({}): point --hr at a folder of images",
            quoted(extra)
        )),
    }
}

/// The names `eval --save` files images under (NAME_MODE.ppm): the name without its extension,
/// the whole name where two images share one (a.png and a.jpg), and a number added where
/// even that meets another image's name (a.png beside a.png.png).
fn save_names(names: &[&str]) -> Vec<String> {
    let stem = |n: &str| n.rsplit_once('.').map_or(n.to_string(), |(s, _)| s.to_string());
    let mut out: Vec<String> = names
        .iter()
        .map(|n| {
            let s = stem(n);
            if names.iter().filter(|m| stem(m) == s).count() > 1 {
                n.to_string()
            } else {
                s
            }
        })
        .collect();
    for k in 0..out.len() {
        if out.iter().filter(|o| **o == out[k]).count() > 1 {
            out[k] = format!("{}_{}", out[k], k + 1);
        }
    }
    out
}

/// Writes interleaved RGB as a binary PPM (readable by any tool, numpy included).
fn write_ppm(path: &std::path::Path, w: usize, h: usize, rgb: &[u8]) -> Result<(), String> {
    let mut bytes = format!("P6\n{w} {h}\n255\n").into_bytes();
    bytes.extend_from_slice(rgb);
    write_bytes_atomically(path, &bytes).map_err(|e| format!("cannot write '{}': {e}", path.display()))
}

fn eval(a: &Args) -> Result<String, String> {
    use gstclasssr::eval::{evaluate_with, EvalImage, ModeResult};
    // (checked before the images are read, which takes a while for a large folder)
    let save_dir = (!a.save.is_empty()).then(|| std::path::PathBuf::from(&a.save));
    if let Some(d) = save_dir.as_ref().filter(|d| d.exists() && !d.is_dir()) {
        return Err(format!("--save '{}' is a file, not a folder", d.display()));
    }
    let set = ModelSet::load(&a.model).map_err(|e| e.to_string())?;
    let scale = set.manifest.scale as usize;
    let files = gstclasssr::eval::list_images(std::path::Path::new(&a.hr))?;
    let images: Vec<EvalImage> = files
        .iter()
        .filter_map(|p| {
            EvalImage::load(p, scale)
                .map_err(|e| eprintln!("warning: skipping: {e}"))
                .ok()
        })
        .collect();
    if images.is_empty() {
        return Err(format!("no usable PNG/JPEG images in '{}'", a.hr));
    }
    let model = Model::load(&set, &a.session).map_err(|e| e.to_string())?;
    note_fallback(&model);
    let manifest = model.manifest.clone();
    let device = model.device;
    let mut engine = Engine::new(model);
    if let Some(d) = &save_dir {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create '{}': {e}", d.display()))?;
    }
    let names = save_names(&images.iter().map(|i| i.name.as_str()).collect::<Vec<_>>());
    let stem = |img: &EvalImage| {
        let k = images
            .iter()
            .position(|i| std::ptr::eq(i, img))
            .expect("one of the images");
        names[k].clone()
    };
    let mut results = Vec::new();
    for &mode in &a.modes {
        let mut saved = Ok(());
        let mut save = |img: &EvalImage, rgb: &[u8]| {
            if let (Some(d), Ok(())) = (&save_dir, &saved) {
                saved = write_ppm(
                    &d.join(format!("{}_{}.ppm", stem(img), mode.name())),
                    img.width,
                    img.height,
                    rgb,
                );
            }
        };
        results.push(evaluate_with(&mut engine, &images, mode, &a.frame, true, &mut save).map_err(|e| e.to_string())?);
        saved?;
    }
    if let Some(d) = &save_dir {
        for img in &images {
            write_ppm(&d.join(format!("{}_hr.ppm", stem(img))), img.width, img.height, &img.hr)?;
        }
    }
    let paper_o = manifest.branches[2].paper_flops_per_tile as f64;
    let paper_pct = |r: &ModeResult| -> f64 {
        if r.tiles.iter().sum::<usize>() == 0 {
            return 0.0;
        }
        // classsr runs the classifier and the branches, classmap only the classifier
        let classifier = if matches!(r.mode.as_str(), "classsr" | "classmap") {
            manifest.classifier.paper_flops_per_tile as f64
        } else {
            0.0
        };
        let sh = r.shares();
        let branches = if r.mode == "classmap" {
            0.0
        } else {
            (0..3)
                .map(|j| sh[j] * manifest.branches[j].paper_flops_per_tile as f64)
                .sum::<f64>()
        };
        100.0 * (branches + classifier) / paper_o
    };
    if a.json {
        let v: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "mode": r.mode, "psnr": r.psnr, "ssim": r.ssim, "per_image_psnr": r.per_image,
                    "tiles": r.tiles, "shares": r.shares(), "macs": r.macs, "original_macs": r.original_macs,
                    "macs_percent": r.macs_percent(), "paper_flops_percent": paper_pct(r), "seconds": r.seconds,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "model": set.origin, "family": manifest.family, "provenance": manifest.provenance.kind,
            "device": device.to_string(), "qos_bias_step": manifest.qos_step(),
            "images": images.iter().map(|i| i.name.clone()).collect::<Vec<_>>(), "results": v,
        });
        return Ok(serde_json::to_string_pretty(&doc).expect("json"));
    }
    let mut t = format!(
        "{} images of {}, model {} ({}, {}) on {device}; PSNR on RGB and SSIM on Y, {scale}-pixel border shaved\n\n",
        images.len(),
        a.hr,
        set.origin,
        manifest.family,
        manifest.provenance.kind
    );
    t += "| mode | PSNR (dB) | SSIM | MACs % of original | paper FLOPs % | tiles class1/2/3 | time (s) |\n";
    t += "|---|---|---|---|---|---|---|\n";
    for r in &results {
        let sh = r.shares();
        let (macs, paper) = if r.mode == "bicubic" {
            ("0".to_string(), "0".to_string())
        } else {
            (format!("{:.1}", r.macs_percent()), format!("{:.1}", paper_pct(r)))
        };
        t += &format!(
            "| {} | {:.3} | {:.4} | {macs} | {paper} | {:.0}% / {:.0}% / {:.0}% | {:.2} |\n",
            r.mode,
            r.psnr,
            r.ssim,
            100.0 * sh[0],
            100.0 * sh[1],
            100.0 * sh[2],
            r.seconds
        );
    }
    Ok(t)
}

fn upscale(a: &Args) -> Result<String, String> {
    let format = image::ImageFormat::from_path(&a.output)
        .ok()
        .filter(|f| f.writing_enabled())
        .ok_or_else(|| format!("cannot write '{}': end its name in .png or .jpg", a.output))?;
    // never write over the input
    let output = std::fs::canonicalize(&a.output).ok();
    if output.is_some() && output == std::fs::canonicalize(&a.input).ok() {
        return Err(format!("'{}' is the input: write the result to another file", a.output));
    }
    let out_path = std::path::Path::new(&a.output);
    if a.output.ends_with(std::path::is_separator) {
        return Err(format!(
            "cannot write '{}': name an image file, without a '/' at the end",
            a.output
        ));
    }
    let folder = match out_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    if folder.exists() && !folder.is_dir() {
        return Err(format!(
            "cannot write '{}': '{}' is a file, not a folder",
            a.output,
            folder.display()
        ));
    }
    if !folder.is_dir() {
        return Err(format!(
            "cannot write '{}': the folder '{}' does not exist (create it first)",
            a.output,
            folder.display()
        ));
    }
    if out_path.is_dir() {
        return Err(format!(
            "cannot write '{}': it is a folder; name an image file (e.g. '{}')",
            a.output,
            out_path.join("out.png").display()
        ));
    }
    // (the colour profile goes with the pixels: without it a wide-gamut photograph would be
    // shown with other colours)
    // (a folder this user cannot write to fails now, not after the work)
    gstclasssr::files::check_writable(out_path).map_err(|e| format!("cannot write '{}': {e}", a.output))?;
    let set = ModelSet::load(&a.model).map_err(|e| e.to_string())?;
    // the size from the file's header, before the pixels are decoded, the model's sessions
    // made and the output (16 times larger) allocated
    let (img, _, profile) = gstclasssr::eval::read_image_checked(std::path::Path::new(&a.input), false, |w, h| {
        Engine::check_frame_size(w as usize, h as usize, set.manifest.scale as usize)
            .map_err(|e| format!("{}: {e}", a.input))
    })?;
    // (the pixels are written as RGB: a profile of another colour space, a grey image's or a
    // CMYK JPEG's, would make viewers show other colours or refuse the file)
    let profile = profile.filter(|icc| match icc.get(16..20) {
        Some(b"RGB ") => true,
        space => {
            let space = space.map(|s| String::from_utf8_lossy(s).trim_end().to_string());
            eprintln!(
                "note: the input's colour profile is for {}, not RGB: '{}' is written without it",
                space.as_deref().unwrap_or("an unknown colour space"),
                a.output
            );
            false
        }
    });
    // (JPEG keeps no alpha: the colour stored under transparency is what it shows, so the
    // image is upscaled as RGB, without the engine's fill of transparent pixels)
    let has_alpha = img.color().has_alpha();
    if has_alpha && format == image::ImageFormat::Jpeg {
        eprintln!("note: JPEG has no alpha channel: '{}' is written without it", a.output);
    }
    let has_alpha = has_alpha && format != image::ImageFormat::Jpeg;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (data, layout) = if has_alpha {
        (img.to_rgba8().into_raw(), PixelLayout::Rgba)
    } else {
        (img.to_rgb8().into_raw(), PixelLayout::Rgb)
    };
    let model = Model::load(&set, &a.session).map_err(|e| e.to_string())?;
    note_fallback(&model);
    let device = model.device;
    let mut engine = Engine::new(model);
    let s = engine.scale();
    let bpp = layout.bytes_per_pixel();
    let mut out = vec![0u8; w * s * h * s * bpp];
    let input = Image {
        data: &data,
        width: w,
        height: h,
        stride: w * bpp,
        layout,
    };
    let mut output = ImageMut {
        data: &mut out,
        width: w * s,
        height: h * s,
        stride: w * s * bpp,
        layout,
    };
    let stats = engine
        .process(&a.frame, &input, &mut output)
        .map_err(|e| e.to_string())?;
    let (ow, oh) = ((w * s) as u32, (h * s) as u32);
    let result = if has_alpha {
        image::DynamicImage::ImageRgba8(image::RgbaImage::from_raw(ow, oh, out).expect("buffer size matches"))
    } else {
        image::DynamicImage::ImageRgb8(image::RgbImage::from_raw(ow, oh, out).expect("buffer size matches"))
    };
    // encoded in memory first: a format that cannot take the image fails before any file
    let mut bytes = std::io::Cursor::new(Vec::new());
    let profile = profile.as_deref();
    let encoded = if format == image::ImageFormat::Jpeg {
        // quality 95: the encoder's default (75) blurs away detail the upscale just made
        let jpeg = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY);
        encode(&result, jpeg, profile)
    } else {
        encode(&result, image::codecs::png::PngEncoder::new(&mut bytes), profile)
    };
    encoded.map_err(|e| format!("cannot write '{}' as {format:?}: {e}", a.output))?;
    write_bytes_atomically(out_path, bytes.get_ref()).map_err(|e| format!("cannot write '{}': {e}", a.output))?;
    let total: usize = stats.tiles.iter().sum();
    Ok(format!(
        "{} ({w}x{h}) -> {} ({ow}x{oh}) mode={} on {device}: tiles per branch {}/{}/{} of {total}, {:.1}% of original MACs, {:.2} s",
        a.input,
        a.output,
        a.frame.mode.name(),
        stats.tiles[0],
        stats.tiles[1],
        stats.tiles[2],
        100.0 * stats.macs as f64 / stats.original_macs.max(1) as f64,
        stats.seconds
    ))
}

/// The tile side in use (`--tile`'s, or without it the model's, which may be one the engine
/// does not cut frames into) and the overlap against it (a model that does not load is left to
/// the work to report).
fn check_tile_and_overlap(a: &Args) -> Result<(), String> {
    let (t, whose) = match a.frame.tile {
        0 => match ModelSet::load(&a.model) {
            Ok(set) => {
                let t = set.manifest.tile_size as usize;
                if !TILE_SIDES.contains(&t) {
                    return Err(format!(
                        "the model's tile_size {t} is outside {}..{}: pass --tile N",
                        TILE_SIDES.start(),
                        TILE_SIDES.end()
                    ));
                }
                (t, format!("the model's {t}; --tile N sets another"))
            }
            Err(_) => return Ok(()),
        },
        t => (t, format!("--tile {t}")),
    };
    check_tiling(t, a.frame.overlap).map_err(|_| {
        format!(
            "--overlap {}: at most half of the tile side ({whose}), so at most {}",
            a.frame.overlap,
            t / 2
        )
    })
}

/// A subcommand: its work on parsed arguments, giving the line to print.
type Subcommand = fn(&Args) -> Result<String, String>;

/// Prints `text` on stdout: success, or (stdout closed or full) a failure said on stderr — but
/// not for a reader that stopped early (`| head`), which wanted no more.
fn print_out(text: &str) -> ExitCode {
    use std::io::Write;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the output: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // usage errors (no or unknown command, bad arguments) exit 2, failures of the work 1
    let usage = |e: String| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    let args = match gstclasssr::utf8_args() {
        Ok(args) => args,
        Err(e) => return usage(e),
    };
    let (cmd, run): (&str, Subcommand) = match args.first().map(String::as_str) {
        // (an argument after `--` is a file name, even one called -h)
        Some("upscale" | "eval")
            if args[1..]
                .iter()
                .take_while(|a| *a != "--")
                .any(|a| a == "-h" || a == "--help") =>
        {
            return print_out(USAGE);
        }
        Some("upscale") => ("upscale", upscale),
        Some("eval") => ("eval", eval),
        Some("-h") | Some("--help") => return print_out(USAGE),
        None => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        Some(other) => return usage(format!("unknown command '{other}'\n{USAGE}")),
    };
    let parsed = match parse(cmd, &args[1..]) {
        Ok(a) => a,
        Err(e) => return usage(e),
    };
    if let Err(e) = check_tile_and_overlap(&parsed) {
        return usage(e);
    }
    match run(&parsed) {
        Ok(msg) => print_out(&msg),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Says when `--device auto` fell back to the CPU, and why (no CUDA here, or a GPU that could
/// not take the model).
fn note_fallback(model: &Model) {
    if let Some(why) = &model.fallback {
        // (its first sentence: the rest, what CUDA needs, is for --device cuda to say)
        let first = why.split(". ").next().unwrap_or(why);
        eprintln!(
            "note: running on the CPU, not CUDA: {first} (--device cuda says more, --device cpu skips the check)"
        );
    }
}

/// Encodes `img` with `encoder`, keeping the colour `profile` (ICC) of the input if it has one.
fn encode(
    img: &image::DynamicImage,
    mut encoder: impl image::ImageEncoder,
    profile: Option<&[u8]>,
) -> image::ImageResult<()> {
    if let Some(icc) = profile {
        if encoder.set_icc_profile(icc.to_vec()).is_err() {
            eprintln!("note: the output format cannot keep the input's colour profile");
        }
    }
    img.write_with_encoder(encoder)
}
