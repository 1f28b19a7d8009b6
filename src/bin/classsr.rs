// The `classsr` command line: upscale PNG/JPEG images with the same engine as the element.
//
//   classsr upscale IN OUT [--model DIR] [--mode M] [--device D] [--tile N] [--overlap N]
//                          [--max-batch N] [--threads N] [--bias B]

use std::process::ExitCode;

use gstclasssr::engine::{Engine, FrameConfig, Image, ImageMut, Mode, Model, PixelLayout};
use gstclasssr::manifest::ModelSet;
use gstclasssr::runtime::{DeviceRequest, SessionConfig};

const USAGE: &str =
    "usage: classsr upscale IN OUT [--model DIR] [--mode classsr|original|bicubic|branch1|branch2|branch3] \
[--device auto|cpu|cuda] [--tile N] [--overlap N] [--max-batch N] [--threads N] [--bias B]";

struct Args {
    input: String,
    output: String,
    model: String,
    frame: FrameConfig,
    session: SessionConfig,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut pos = Vec::new();
    let mut a = Args {
        input: String::new(),
        output: String::new(),
        model: String::new(),
        frame: FrameConfig::default(),
        session: SessionConfig {
            device: DeviceRequest::Auto,
            device_id: 0,
            threads: 0,
        },
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        let num = |name: &str, v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{name}: '{v}' is not a whole number"))
        };
        match arg.as_str() {
            "--model" => a.model = value("--model")?,
            "--mode" => {
                let v = value("--mode")?;
                a.frame.mode = Mode::parse(&v).ok_or_else(|| format!("unknown mode '{v}'"))?;
            }
            "--device" => {
                a.session.device = match value("--device")?.as_str() {
                    "auto" => DeviceRequest::Auto,
                    "cpu" => DeviceRequest::Cpu,
                    "cuda" => DeviceRequest::Cuda,
                    v => return Err(format!("unknown device '{v}' (auto, cpu or cuda)")),
                }
            }
            "--tile" => a.frame.tile = num("--tile", value("--tile")?)?,
            "--overlap" => a.frame.overlap = num("--overlap", value("--overlap")?)?,
            "--max-batch" => a.frame.max_batch = num("--max-batch", value("--max-batch")?)?,
            "--threads" => a.session.threads = num("--threads", value("--threads")?)?,
            "--bias" => {
                let v = value("--bias")?;
                a.frame.bias = v.parse().map_err(|_| format!("--bias: '{v}' is not a number"))?;
            }
            s if s.starts_with("--") => return Err(format!("unknown option '{s}'")),
            s => pos.push(s.to_string()),
        }
    }
    match pos.as_slice() {
        [i, o] => {
            a.input = i.clone();
            a.output = o.clone();
            Ok(a)
        }
        _ => Err("upscale needs an input and an output file".into()),
    }
}

fn upscale(a: &Args) -> Result<String, String> {
    let img = image::open(&a.input).map_err(|e| format!("cannot read '{}': {e}", a.input))?;
    let has_alpha = img.color().has_alpha();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (data, layout) = if has_alpha {
        (img.to_rgba8().into_raw(), PixelLayout::Rgba)
    } else {
        (img.to_rgb8().into_raw(), PixelLayout::Rgb)
    };
    let set = ModelSet::load(&a.model).map_err(|e| e.to_string())?;
    let model = Model::load(&set, &a.session).map_err(|e| e.to_string())?;
    if let Some(why) = &model.fallback {
        eprintln!("note: using the CPU: {why}");
    }
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
    let saved = if has_alpha {
        image::RgbaImage::from_raw(ow, oh, out).map(|i| i.save(&a.output))
    } else {
        image::RgbImage::from_raw(ow, oh, out).map(|i| i.save(&a.output))
    };
    saved
        .expect("buffer size matches")
        .map_err(|e| format!("cannot write '{}': {e}", a.output))?;
    let total: usize = stats.tiles.iter().sum();
    Ok(format!(
        "{} ({w}x{h}) -> {} ({ow}x{oh}) mode={} on {device}: tiles per branch {:?} of {total}, {:.1}% of original MACs, {:.2} s",
        a.input,
        a.output,
        a.frame.mode.name(),
        stats.tiles,
        100.0 * stats.macs as f64 / stats.original_macs.max(1) as f64,
        stats.seconds
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("upscale") => parse(&args[1..]).and_then(|a| upscale(&a)),
        Some("-h") | Some("--help") | None => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown command '{other}'\n{USAGE}")),
    };
    match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
