// `classsr eval` on the paper's protocol: its PSNR matches an independent numpy computation
// (scripts/psnr_check.py) to 0.01 dB, and its JSON carries the table's numbers.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A fresh scratch folder `name` (removed when dropped) with an empty `hr` folder in it:
/// (folder, hr).
fn scratch(name: &str) -> (ScratchDir, PathBuf) {
    let dir = ScratchDir::new(name);
    let hr = dir.join("hr");
    std::fs::create_dir_all(&hr).unwrap();
    (dir, hr)
}

/// Saves `img` as RGB in the format its file name says.
fn save_rgb(img: &Rgba, path: &Path) {
    let rgb: Vec<u8> = img.px.iter().flat_map(|p| [p[0], p[1], p[2]]).collect();
    image::RgbImage::from_raw(img.width as u32, img.height as u32, rgb)
        .unwrap()
        .save(path)
        .unwrap();
}

#[test]
fn eval_psnr_matches_an_independent_computation() {
    let (dir, hr) = scratch("eval");
    // the originals also as PPM (for numpy, which reads no PNG), outside the HR folder
    let originals = dir.join("originals");
    std::fs::create_dir_all(&originals).unwrap();
    for (i, (w, h)) in [(130usize, 98usize), (97, 61)].into_iter().enumerate() {
        let img = picture(w, h, i as u64 + 3);
        save_rgb(&img, &hr.join(format!("img{i}.png")));
        let mut ppm = format!("P6\n{w} {h}\n255\n").into_bytes();
        ppm.extend(img.px.iter().flat_map(|p| [p[0], p[1], p[2]]));
        std::fs::write(originals.join(format!("img{i}.ppm")), ppm).unwrap();
    }
    let save = dir.join("sr");
    let doc = eval_json(&[
        "--hr",
        hr.to_str().unwrap(),
        "--modes",
        "bicubic,classsr,branch1",
        "--device",
        "cpu",
        "--model",
        concat!(env!("CARGO_MANIFEST_DIR"), "/models/known-answer"),
        "--save",
        save.to_str().unwrap(),
    ]);
    let images: Vec<String> = serde_json::from_value(doc["images"].clone()).unwrap();
    assert_eq!(images, ["img0.png", "img1.png"]);

    // numpy on eval's own HR crops (scripts/psnr_check.py) and, so that a crop or alignment
    // bug eval's saved HR would share cannot agree with itself, on the originals cropped here
    let check = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/psnr_check.py"))
        .arg(&save)
        .arg("4")
        .output()
        .expect("python3 with numpy (scripts/setup.sh installs it)");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let from_originals = Command::new("python3")
        .args(["-c", PSNR_FROM_ORIGINALS])
        .arg(&originals)
        .arg(&save)
        .arg("4")
        .output()
        .unwrap();
    assert!(
        from_originals.status.success(),
        "{}",
        String::from_utf8_lossy(&from_originals.stderr)
    );
    for (numpy, text) in [(&check, "eval's HR"), (&from_originals, "the originals")] {
        compare_psnr(&doc, &images, &String::from_utf8_lossy(&numpy.stdout), text);
    }
    for r in doc["results"].as_array().unwrap() {
        let mode = r["mode"].as_str().unwrap();
        let per: Vec<f64> = serde_json::from_value(r["per_image_psnr"].clone()).unwrap();
        let mean = per.iter().sum::<f64>() / per.len() as f64;
        assert!((r["psnr"].as_f64().unwrap() - mean).abs() < 1e-9);
        let ssim = r["ssim"].as_f64().unwrap();
        assert!(ssim > 0.5 && ssim <= 1.0, "{mode}: SSIM {ssim}");
    }
    // nearest (branch1) is worse than bicubic on a smooth picture; the MAC accounting says so too
    let res = doc["results"].as_array().unwrap();
    assert!(res[2]["psnr"].as_f64().unwrap() < res[0]["psnr"].as_f64().unwrap());
    assert!(res[2]["macs_percent"].as_f64().unwrap() < 10.0);
}

/// RGB PSNR with numpy of every `NAME_MODE.ppm` in the folder argv[2] (`classsr eval
/// --save`) against the original argv[1]/NAME.ppm, cropped here to a multiple of the scale
/// argv[3] from the top left, a scale-pixel border shaved: one `NAME MODE PSNR` line each.
const PSNR_FROM_ORIGINALS: &str = r#"
import pathlib, re, sys
import numpy as np

def read_ppm(path):
    data = pathlib.Path(path).read_bytes()
    m = re.match(rb"P6\s+(\d+)\s+(\d+)\s+255\s", data)
    w, h = int(m.group(1)), int(m.group(2))
    return np.frombuffer(data[m.end():m.end() + w * h * 3], dtype=np.uint8).reshape(h, w, 3)

originals, saved, s = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
for orig in sorted(originals.glob("*.ppm")):
    hr = read_ppm(orig).astype(np.float64)
    hr = hr[: hr.shape[0] // s * s, : hr.shape[1] // s * s]
    for sr_path in sorted(saved.glob(orig.stem + "_*.ppm")):
        mode = sr_path.stem[len(orig.stem) + 1:]
        if mode == "hr":
            continue
        sr = read_ppm(sr_path).astype(np.float64)
        assert sr.shape == hr.shape, (sr_path.name, sr.shape, hr.shape)
        d = (sr - hr)[s:-s, s:-s]
        mse = np.mean(d * d)
        print(orig.stem, mode, float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse))
"#;

/// Asserts that every image's PSNR in `classsr eval`'s JSON `doc` matches numpy's `text`
/// (lines `NAME MODE PSNR`, computed from `what`) to 0.01 dB.
fn compare_psnr(doc: &serde_json::Value, images: &[String], text: &str, what: &str) {
    let mut compared = 0;
    for r in doc["results"].as_array().unwrap() {
        let mode = r["mode"].as_str().unwrap();
        let per: Vec<f64> = serde_json::from_value(r["per_image_psnr"].clone()).unwrap();
        for (k, name) in images.iter().enumerate() {
            let stem = name.trim_end_matches(".png");
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{stem} {mode} ")))
                .unwrap_or_else(|| panic!("numpy ({what}) result for {stem} {mode}: {text}"));
            let numpy: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(
                (numpy - per[k]).abs() < 0.01,
                "{stem} {mode}: classsr eval {} vs numpy on {what} {numpy}",
                per[k]
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 6, "numpy on {what}");
}

/// A band-limited "photograph" of hard shapes: discs and a ring, supersampled 4x4 and averaged,
/// over a smooth gradient — edges a trained net should render sharper than bicubic.
fn shapes(w: usize, h: usize) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0f32; 3];
            for sy in 0..4 {
                for sx in 0..4 {
                    let fx = x as f32 + (sx as f32 + 0.5) / 4.0;
                    let fy = y as f32 + (sy as f32 + 0.5) / 4.0;
                    let mut c = [60.0 + 100.0 * fx / w as f32, 80.0 + 60.0 * fy / h as f32, 150.0];
                    for (cx, cy, r, col) in [
                        (50.0, 60.0, 30.0, [230.0, 220.0, 40.0]),
                        (150.0, 90.0, 45.0, [20.0, 40.0, 60.0]),
                        (90.0, 150.0, 22.0, [200.0, 60.0, 50.0]),
                    ] {
                        let d = ((fx - cx).powi(2) + (fy - cy).powi(2)).sqrt();
                        if d < r || (d > r + 6.0 && d < r + 9.0) {
                            c = col;
                        }
                    }
                    for k in 0..3 {
                        acc[k] += c[k] / 16.0;
                    }
                }
            }
            rgb.extend(acc.map(|v| v.round().clamp(0.0, 255.0) as u8));
        }
    }
    rgb
}

/// A scratch folder `name` holding shapes.png, a `shapes` drawing of w×h.
fn drawing(name: &str, w: usize, h: usize) -> ScratchDir {
    let dir = ScratchDir::new(name);
    image::RgbImage::from_raw(w as u32, h as u32, shapes(w, h))
        .unwrap()
        .save(dir.join("shapes.png"))
        .unwrap();
    dir
}

#[test]
fn embedded_default_is_trained_and_sharper_than_bicubic() {
    let dir = drawing("default", 208, 200);
    let out = Command::new(env!("CARGO_BIN_EXE_classsr"))
        .args([
            "eval",
            "--hr",
            dir.to_str().unwrap(),
            "--modes",
            "bicubic,original,classsr,branch2",
            "--json",
        ])
        .args(["--device", "cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["provenance"], "trained", "{doc}");
    assert_eq!(doc["device"], "cpu", "where it ran is said: {doc}");
    let psnr = |k: usize| doc["results"][k]["psnr"].as_f64().unwrap();
    let (bicubic, original, classsr, branch2) = (psnr(0), psnr(1), psnr(2), psnr(3));
    println!("bicubic {bicubic:.3}, original {original:.3}, classsr {classsr:.3}, branch2 {branch2:.3} dB");
    // The default mode and a branch trained on all of its class beat bicubic clearly on this
    // clean drawing (measured +0.50 and +0.55 dB). `original` (branch3, fine-tuned on the
    // hardest third of the photographs' tiles) is not asserted: it is specialised to
    // photographic texture and sits within 0.05 dB of bicubic on synthetic edges.
    assert!(
        classsr > bicubic + 0.15,
        "classsr {classsr:.3} dB vs bicubic {bicubic:.3} dB"
    );
    assert!(
        branch2 > bicubic + 0.15,
        "branch2 {branch2:.3} dB vs bicubic {bicubic:.3} dB"
    );
}

/// Runs `classsr eval --json` with `args`, which must succeed; its JSON document.
fn eval_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_classsr"))
        .args(["eval", "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs the `classsr` binary; (success, stderr).
fn classsr(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_classsr")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn the_command_line_never_loses_a_file_and_names_what_it_skips() {
    let (dir, hr) = scratch("cli");
    save_rgb(&picture(40, 32, 1), &hr.join("a.png"));
    save_rgb(&picture(40, 32, 2), &hr.join("a.jpg"));
    save_rgb(&picture(17, 17, 3), &hr.join("tiny.png"));
    let ka = concat!(env!("CARGO_MANIFEST_DIR"), "/models/known-answer");
    let p = |name: &str| dir.join(name).display().to_string();
    let input = hr.join("a.png").display().to_string();
    // The input is never the output.
    let (ok, err) = classsr(&["upscale", &input, &input, "--model", ka]);
    assert!(!ok && err.contains("is the input"), "{err}");
    assert_eq!(image::open(&input).unwrap().width(), 40);
    // A name without an image format fails before anything is written.
    let (ok, err) = classsr(&["upscale", &input, &p("out.foo"), "--model", ka]);
    assert!(!ok && err.contains("end its name in .png or .jpg"), "{err}");
    assert!(!dir.join("out.foo").exists());
    // An existing file is replaced only by a whole new one.
    std::fs::write(dir.join("out.png"), b"keep").unwrap();
    let (ok, err) = classsr(&["upscale", &input, &p("out.png"), "--model", ka, "--device", "cpu"]);
    assert!(ok, "{err}");
    assert_eq!(image::open(dir.join("out.png")).unwrap().width(), 160);
    // Options of the other command, and values out of range, are refused.
    let (ok, err) = classsr(&["upscale", &input, &p("o.png"), "--modes", "bicubic"]);
    assert!(!ok && err.contains("option of `classsr eval`"), "{err}");
    let (ok, err) = classsr(&["upscale", &input, &p("o.png"), "--tile", "100000"]);
    assert!(!ok && err.contains("8..=256"), "{err}");
    let (ok, err) = classsr(&["upscale", &input, &p("o.png"), "--bias", "nan"]);
    assert!(!ok && err.contains("finite"), "{err}");
    // An image over the size limit is refused before the work (a flat 4100x8 PNG: a few
    // hundred bytes, a 16 times larger output).
    let wide = hr.with_file_name("wide.png");
    image::RgbImage::new(4100, 8).save(&wide).unwrap();
    let (ok, err) = classsr(&["upscale", wide.to_str().unwrap(), &p("w.png"), "--model", ka]);
    assert!(!ok && err.contains("4100x8 is too large"), "{err}");
    // ... by the size in its header, before its pixels are decoded: a PNG whose header says
    // 20000x20000 but whose pixel data is a 1x1 image's is refused for its size, not as a
    // broken file (decoding would fail on the missing rows).
    let mut png = Vec::new();
    image::RgbImage::new(1, 1)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    // IHDR: length (4), "IHDR" (4), width (4), height (4), 5 more bytes, CRC (4)
    assert_eq!(&png[12..16], b"IHDR");
    png[16..20].copy_from_slice(&20000u32.to_be_bytes());
    png[20..24].copy_from_slice(&20000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let huge = hr.with_file_name("huge.png");
    std::fs::write(&huge, &png).unwrap();
    let (ok, err) = classsr(&["upscale", huge.to_str().unwrap(), &p("h.png"), "--model", ka]);
    assert!(!ok && err.contains("20000x20000 is too large"), "{err}");
    // One of 256 bytes fails before the work (the input is not read: it is not an image).
    let too_long = format!("{}.png", "n".repeat(252));
    let (ok, err) = classsr(&["upscale", &p("not-an-image.png"), &p(&too_long), "--model", ka]);
    assert!(!ok && err.contains("longer than 255 bytes"), "{err}");
    // An output name of 255 bytes (the most a file system takes) is written.
    let long = format!("{}.png", "n".repeat(251));
    let (ok, err) = classsr(&["upscale", &input, &p(&long), "--model", ka, "--device", "cpu"]);
    assert!(ok, "{err}");
    assert_eq!(image::open(dir.join(&long)).unwrap().width(), 160);
    // A folder that cannot be written to fails before the input is even read (/proc takes no
    // new files, even from root; the input is not an image, which the work would say).
    std::fs::write(dir.join("not-an-image.png"), b"text").unwrap();
    let (ok, err) = classsr(&[
        "upscale",
        &p("not-an-image.png"),
        "/proc/classsr-out.png",
        "--model",
        ka,
    ]);
    assert!(!ok && err.contains("cannot write '/proc/classsr-out.png'"), "{err}");
    // A JPEG cut short gets a warning (its decoder fills the rest with grey; some encoders
    // leave the end marker out of whole files, so it is not refused); whole, with the bytes a
    // camera may add after its end, it gets none.
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x * y) % 256) as u8])
    }))
    .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
    .unwrap();
    assert!(gstclasssr::eval::jpeg_complete(&jpeg));
    for cut in [jpeg.len() - 2, jpeg.len() / 2, 700] {
        assert!(!gstclasssr::eval::jpeg_complete(&jpeg[..cut]), "cut at {cut}");
    }
    // fill bytes (0xff) before a restart marker inside the scan, and before the end marker
    let scan = [
        0xff, 0xd8, 0xff, 0xda, 0x00, 0x02, 0x12, 0xff, 0xff, 0xd0, 0x34, 0xff, 0x00, 0x56,
    ];
    assert!(gstclasssr::eval::jpeg_complete(
        &[&scan[..], &[0xff, 0xff, 0xd9]].concat()
    ));
    assert!(!gstclasssr::eval::jpeg_complete(&scan));
    std::fs::write(dir.join("cut.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    let (ok, err) = classsr(&[
        "upscale",
        &p("cut.jpg"),
        &p("cut.png"),
        "--model",
        ka,
        "--device",
        "cpu",
    ]);
    assert!(ok && err.contains("ends before its JPEG end marker"), "{err}");
    // eval (as the trainer) skips it, by name: it would score the grey; and an image with
    // transparent pixels (it would score the colour stored under them), while one whose
    // alpha is opaque everywhere is scored as RGB.
    let cut_hr = dir.join("cut-hr");
    std::fs::create_dir(&cut_hr).unwrap();
    std::fs::copy(dir.join("cut.jpg"), cut_hr.join("cut.jpg")).unwrap();
    std::fs::copy(hr.join("a.png"), cut_hr.join("a.png")).unwrap();
    let mut rgba = image::RgbaImage::from_fn(40, 32, |x, y| image::Rgba([(x * 6) as u8, (y * 7) as u8, 90, 255]));
    rgba.save(cut_hr.join("opaque.png")).unwrap();
    rgba.put_pixel(3, 5, image::Rgba([0, 0, 0, 254]));
    rgba.save(cut_hr.join("clear.png")).unwrap();
    // (16-bit grey with alpha, opaque: its alpha is 65535)
    image::ImageBuffer::from_pixel(40, 32, image::LumaA([30000u16, u16::MAX]))
        .save(cut_hr.join("grey16.png"))
        .unwrap();
    let cut_hr = cut_hr.to_str().unwrap();
    let (ok, err) = classsr(&["eval", "--hr", cut_hr, "--model", ka, "--modes", "bicubic"]);
    assert!(ok && err.contains("cut.jpg") && err.contains("end marker"), "{err}");
    assert!(
        err.contains("clear.png") && err.contains("1 transparent or translucent pixels of 1280"),
        "{err}"
    );
    let doc = eval_json(&["--hr", cut_hr, "--model", ka, "--modes", "bicubic"]);
    let scored: Vec<String> = serde_json::from_value(doc["images"].clone()).unwrap();
    assert_eq!(scored, ["a.png", "grey16.png", "opaque.png"]);
    let mut padded = jpeg.clone();
    padded.extend_from_slice(&[0; 16]);
    std::fs::write(dir.join("padded.jpg"), &padded).unwrap();
    let (ok, err) = classsr(&[
        "upscale",
        &p("padded.jpg"),
        &p("padded.png"),
        "--model",
        ka,
        "--device",
        "cpu",
    ]);
    assert!(ok && !err.contains("end marker"), "{err}");
    // A name that is not UTF-8 is a usage error that says so, not a panic.
    {
        use std::os::unix::ffi::OsStrExt;
        let latin1 = dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9.png"));
        let out = Command::new(env!("CARGO_BIN_EXE_classsr"))
            .arg("upscale")
            .arg(&latin1)
            .arg(p("o.png"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("is not valid UTF-8") && !err.contains("panicked"), "{err}");
    }
    // After `--`, -h is a file name, not a request for help.
    let (ok, err) = classsr(&["upscale", "--", "-h", &p("h.png")]);
    assert!(!ok && err.contains("-h") && !err.contains("usage"), "{err}");
    // eval skips, by name, an image too small to score, and --save keeps two images that
    // share a stem apart.
    let hr_dir = hr.to_str().unwrap();
    let save_to = |dir: &str| {
        classsr(&[
            "eval", "--hr", hr_dir, "--model", ka, "--modes", "bicubic", "--save", dir,
        ])
    };
    let (ok, err) = save_to(&p("sr"));
    assert!(ok && err.contains("tiny.png") && err.contains("too small"), "{err}");
    for name in ["a.png_bicubic.ppm", "a.jpg_bicubic.ppm", "a.png_hr.ppm", "a.jpg_hr.ppm"] {
        assert!(dir.join("sr").join(name).exists(), "{name}");
    }
    // ... also where a whole name meets another's stem (a.png and a.png.png).
    save_rgb(&picture(40, 32, 4), &hr.join("a.png.png"));
    let sr2 = p("sr2");
    let (ok, err) = save_to(&sr2);
    assert!(ok, "{err}");
    let saved: std::collections::BTreeSet<String> = std::fs::read_dir(&sr2)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("_hr.ppm"))
        .collect();
    assert_eq!(saved.len(), 3, "one HR file per image: {saved:?}");
}

#[test]
fn upscale_reads_images_as_viewers_show_them_and_writes_where_it_can() {
    let dir = ScratchDir::new("cli-files");
    let ka = concat!(env!("CARGO_MANIFEST_DIR"), "/models/known-answer");
    let p = |name: &str| dir.join(name).display().to_string();
    // A photograph stored sideways (EXIF orientation 6: turn 90° clockwise) is upscaled
    // upright: 48x40 stored, 40x48 shown, 160x192 out.
    std::fs::write(dir.join("side.jpg"), jpeg_with_orientation(&picture(48, 40, 5), 6)).unwrap();
    let (ok, err) = classsr(&["upscale", &p("side.jpg"), &p("up.png"), "--model", ka]);
    assert!(ok, "{err}");
    let up = image::open(dir.join("up.png")).unwrap();
    assert_eq!((up.width(), up.height()), (160, 192));
    // A file is read by its content, not its name.
    save_rgb(&picture(40, 32, 6), &dir.join("png-inside.jpg").with_extension("png"));
    std::fs::rename(dir.join("png-inside.png"), dir.join("png-inside.jpg")).unwrap();
    let (ok, err) = classsr(&["upscale", &p("png-inside.jpg"), &p("o.png"), "--model", ka]);
    assert!(ok, "{err}");
    // A missing folder, or an output that is a folder, is named before any work; so is a
    // --save folder that is a file.
    let (ok, err) = classsr(&["upscale", &p("png-inside.jpg"), &p("no/such/o.png"), "--model", ka]);
    assert!(!ok && err.contains("does not exist"), "{err}");
    std::fs::create_dir(dir.join("d.png")).unwrap();
    let (ok, err) = classsr(&["upscale", &p("png-inside.jpg"), &p("d.png"), "--model", ka]);
    assert!(!ok && err.contains("it is a folder"), "{err}");
    let (ok, err) = classsr(&["eval", "--hr", &p("."), "--model", ka, "--save", &p("side.jpg")]);
    assert!(!ok && err.contains("is a file, not a folder"), "{err}");
    // ... and a name ending in '/', and a file where the output's folder should be.
    let (ok, err) = classsr(&["upscale", &p("side.jpg"), &format!("{}/", p("new.png")), "--model", ka]);
    assert!(!ok && err.contains("without a '/' at the end"), "{err}");
    assert!(!dir.join("new.png").exists());
    let (ok, err) = classsr(&["upscale", &p("side.jpg"), &p("side.jpg/o.png"), "--model", ka]);
    assert!(!ok && err.contains("side.jpg' is a file, not a folder"), "{err}");
    // Usage errors exit 2 (no command, an unknown one, bad arguments); failed work exits 1.
    let code = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_classsr"))
            .args(args)
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(code(&[]), Some(2));
    assert_eq!(code(&["upsale"]), Some(2));
    assert_eq!(code(&["upscale", &p("side.jpg")]), Some(2));
    assert_eq!(
        code(&["upscale", &p("missing.png"), &p("o2.png"), "--model", ka]),
        Some(1)
    );
    assert_eq!(code(&["upscale", "--help"]), Some(0));
    // an overlap over half the model's tile side (no --tile) is a usage error too
    let over = [
        "upscale",
        &p("side.jpg"),
        &p("o3.png"),
        "--model",
        ka,
        "--overlap",
        "17",
    ];
    let (ok, err) = classsr(&over);
    assert!(
        !ok && err.contains("--overlap 17") && err.contains("at most 16"),
        "{err}"
    );
    assert_eq!(code(&over), Some(2));
    // so is a model's tile size the engine does not cut frames into, without --tile
    let big = model_copy(ka, "eval-tile-300");
    let manifest = big.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"tile_size\": 32", "\"tile_size\": 300")).unwrap();
    let args = ["upscale", &p("side.jpg"), &p("o4.png"), "--model", big.as_str()];
    let (ok, err) = classsr(&args);
    assert!(
        !ok && err.contains("tile_size 300 is outside 8..256: pass --tile N"),
        "{err}"
    );
    assert_eq!(code(&args), Some(2));
    // A replaced file keeps its permissions.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("o.png"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, err) = classsr(&["upscale", &p("side.jpg"), &p("o.png"), "--model", ka]);
    assert!(ok, "{err}");
    let mode = std::fs::metadata(dir.join("o.png")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        image::open(dir.join("o.png")).unwrap().width(),
        160,
        "and holds the new image"
    );
    // More than two files, and single-dash options, are named as such.
    let (ok, err) = classsr(&["upscale", &p("side.jpg"), &p("a.png"), &p("b.png")]);
    assert!(!ok && err.contains("not 3"), "{err}");
    let (ok, err) = classsr(&["upscale", &p("side.jpg"), &p("a.png"), "-x"]);
    assert!(!ok && err.contains("unknown option '-x'"), "{err}");
    // ... unless after `--`, where they are file names.
    std::fs::copy(dir.join("side.jpg"), dir.join("-in.jpg")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_classsr"))
        .current_dir(&*dir)
        .args(["upscale", "--model", ka, "--", "-in.jpg", "-out.png"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.join("-out.png").exists());
    // The input's colour profile (ICC) goes with the upscaled pixels, into PNG and JPEG alike
    // (a made-up profile of an RGB colour space: only its bytes are compared).
    let mut icc: Vec<u8> = (0..300u32).map(|k| (k * 7 % 251) as u8).collect();
    icc[16..20].copy_from_slice(b"RGB ");
    let tagged = |name: &str, icc: &[u8], gray: bool| {
        use image::ImageEncoder;
        let mut png = Vec::new();
        let mut enc = image::codecs::png::PngEncoder::new(&mut png);
        enc.set_icc_profile(icc.to_vec()).unwrap();
        let rgb: Vec<u8> = picture(40, 32, 7).px.iter().flat_map(|p| [p[0], p[1], p[2]]).collect();
        if gray {
            let luma: Vec<u8> = rgb.chunks(3).map(|p| p[1]).collect();
            enc.write_image(&luma, 40, 32, image::ExtendedColorType::L8).unwrap();
        } else {
            enc.write_image(&rgb, 40, 32, image::ExtendedColorType::Rgb8).unwrap();
        }
        std::fs::write(dir.join(name), png).unwrap();
    };
    tagged("tagged.png", &icc, false);
    let profile_of = |name: &str| {
        use image::ImageDecoder;
        let mut d = image::ImageReader::open(dir.join(name))
            .unwrap()
            .with_guessed_format()
            .unwrap()
            .into_decoder()
            .unwrap();
        d.icc_profile().unwrap()
    };
    assert_eq!(profile_of("tagged.png").as_ref(), Some(&icc));
    for out in ["tagged-up.png", "tagged-up.jpg"] {
        let (ok, err) = classsr(&["upscale", &p("tagged.png"), &p(out), "--model", ka]);
        assert!(ok, "{err}");
        assert_eq!(profile_of(out).as_ref(), Some(&icc), "{out}");
    }
    let (ok, err) = classsr(&["upscale", &p("png-inside.jpg"), &p("untagged.png"), "--model", ka]);
    assert!(ok, "{err}");
    assert_eq!(profile_of("untagged.png"), None, "no profile made up");
    // A grey image's profile (of the GRAY colour space) does not fit the RGB pixels the
    // upscale writes: it is left out, with a note.
    let mut gray_icc = icc.clone();
    gray_icc[16..20].copy_from_slice(b"GRAY");
    tagged("gray.png", &gray_icc, true);
    assert_eq!(profile_of("gray.png").as_ref(), Some(&gray_icc));
    let (ok, err) = classsr(&["upscale", &p("gray.png"), &p("gray-up.png"), "--model", ka]);
    assert!(ok && err.contains("profile is for GRAY"), "{err}");
    assert_eq!(profile_of("gray-up.png"), None);
}

#[test]
fn eval_caps_the_psnr_of_exact_images_and_counts_only_the_classifier_for_classmap() {
    let (_dir, hr) = scratch("eval-exact");
    // bicubic reproduces a flat image exactly
    save_rgb(&Rgba::new(40, 40, |_, _| [120, 80, 40, 255]), &hr.join("flat.png"));
    let ka = concat!(env!("CARGO_MANIFEST_DIR"), "/models/known-answer");
    let doc = eval_json(&[
        "--hr",
        hr.to_str().unwrap(),
        "--model",
        ka,
        "--modes",
        "bicubic,classmap",
    ]);
    let r = &doc["results"];
    assert_eq!(r[0]["psnr"].as_f64(), Some(100.0), "{}", r[0]);
    let m = gstclasssr::manifest::ModelSet::load(ka).unwrap().manifest;
    let want = 100.0 * m.classifier.paper_flops_per_tile as f64 / m.branches[2].paper_flops_per_tile as f64;
    let got = r[1]["paper_flops_percent"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-9, "classmap: {got} vs the classifier's {want}");
}

#[test]
fn precision_and_onnx_runtime_profiles_from_the_command_line() {
    // --precision fp16 scores within 0.02 dB of fp32 (the trained default, on a drawing), and
    // an unknown precision is a usage error.
    let dir = drawing("precision", 128, 96);
    let hr = dir.to_str().unwrap();
    let scored = ["--hr", hr, "--modes", "classsr", "--device", "cpu"];
    let psnr = |precision: &str| {
        let doc = eval_json(&[&scored[..], &["--precision", precision]].concat());
        doc["results"][0]["psnr"].as_f64().unwrap()
    };
    let (full, half) = (psnr("fp32"), psnr("fp16"));
    println!("classsr fp32 {full:.4} dB, fp16 {half:.4} dB");
    assert!((full - half).abs() <= 0.02, "fp32 {full:.4} dB, fp16 {half:.4} dB");
    let (ok, err) = classsr(&["eval", "--hr", hr, "--precision", "fp8"]);
    assert!(!ok && err.contains("unknown precision 'fp8'"), "{err}");

    // CLASSSR_ORT_PROFILE: a profile per session, which scripts/ort_profile.py reads.
    let prefix = dir.join("profile").join("p");
    std::fs::create_dir_all(prefix.parent().unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_classsr"))
        .arg("eval")
        .args(scored)
        .args(["--threads", "1"])
        .env(gstclasssr::runtime::PROFILE_ENV, &prefix)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let profiles = std::fs::read_dir(prefix.parent().unwrap()).unwrap().count();
    assert!(profiles >= 4, "classifier and three branches (one worker): {profiles}");
    let summary = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ort_profile.py"))
        .arg(&prefix)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&summary.stdout);
    assert!(summary.status.success(), "{}", String::from_utf8_lossy(&summary.stderr));
    assert!(text.contains("classifier: ") && text.contains("branch: "), "{text}");
    assert!(text.contains(" Conv ") && text.contains(" CPU "), "{text}");
}

/// CRC-32 (IEEE, as PNG's chunks use it).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
