// Shared helpers of the integration tests: GStreamer/plugin set-up, building and reading raw
// video buffers of any supported format, test images, and independent reference upscalers.
#![allow(dead_code)]

use std::sync::Once;

use gst::prelude::*;
use gst_video::prelude::*;

pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("GStreamer initialises");
        gstclasssr::plugin_register_static().expect("classsr plugin registers");
    });
}

/// An RGBA image in memory (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Rgba {
    pub width: usize,
    pub height: usize,
    pub px: Vec<[u8; 4]>,
}

impl Rgba {
    pub fn new(width: usize, height: usize, f: impl Fn(usize, usize) -> [u8; 4]) -> Rgba {
        let px = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x, y)))
            .map(|(x, y)| f(x, y))
            .collect();
        Rgba { width, height, px }
    }

    pub fn at(&self, x: usize, y: usize) -> [u8; 4] {
        self.px[y * self.width + x]
    }
}

/// A deterministic pseudo-random generator (xorshift) for test content.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A photo-like test picture: smooth gradients, a few hard edges and some texture.
pub fn picture(width: usize, height: usize, seed: u64) -> Rgba {
    let mut rng = Rng(seed | 1);
    let noise: Vec<u8> = (0..width * height).map(|_| rng.below(40) as u8).collect();
    Rgba::new(width, height, |x, y| {
        let fx = x as f32 / width.max(1) as f32;
        let fy = y as f32 / height.max(1) as f32;
        let edge = if (x / 9 + y / 13) % 3 == 0 { 60.0 } else { 0.0 };
        let tex = if x > width / 2 {
            noise[y * width + x] as f32
        } else {
            0.0
        };
        let r = (40.0 + 150.0 * fx + edge + tex).min(255.0) as u8;
        let g = (30.0 + 180.0 * fy + tex * 0.5).min(255.0) as u8;
        let b = (200.0 - 120.0 * fx * fy + edge * 0.5).clamp(0.0, 255.0) as u8;
        let a = (255.0 * (0.3 + 0.7 * fx)).min(255.0) as u8;
        [r, g, b, a]
    })
}

pub fn video_info(format: gst_video::VideoFormat, width: usize, height: usize) -> gst_video::VideoInfo {
    gst_video::VideoInfo::builder(format, width as u32, height as u32)
        .fps(gst::Fraction::new(30, 1))
        .build()
        .expect("valid video info")
}

/// Writes `img` into a new buffer of `format` (alpha kept where the format has it).
pub fn to_buffer(img: &Rgba, format: gst_video::VideoFormat) -> gst::Buffer {
    let info = video_info(format, img.width, img.height);
    let mut buf = gst::Buffer::with_size(info.size()).unwrap();
    {
        let bufref = buf.get_mut().unwrap();
        let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(bufref, &info).unwrap();
        let stride = frame.plane_stride()[0] as usize;
        let (offs, bpp) = offsets(format);
        let data = frame.plane_data_mut(0).unwrap();
        for y in 0..img.height {
            for x in 0..img.width {
                let p = img.at(x, y);
                let o = y * stride + x * bpp;
                for c in 0..4 {
                    if let Some(off) = offs[c] {
                        data[o + off] = p[c];
                    }
                }
            }
        }
    }
    buf
}

/// Reads a buffer of `format` into RGBA (alpha 255 where the format has none).
pub fn from_buffer(buf: &gst::BufferRef, format: gst_video::VideoFormat, width: usize, height: usize) -> Rgba {
    let info = video_info(format, width, height);
    assert_eq!(
        buf.size(),
        info.size(),
        "output buffer size for {width}x{height} {format:?}"
    );
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buf, &info).unwrap();
    let stride = frame.plane_stride()[0] as usize;
    let (offs, bpp) = offsets(format);
    let data = frame.plane_data(0).unwrap();
    Rgba::new(width, height, |x, y| {
        let o = y * stride + x * bpp;
        let mut p = [255u8; 4];
        for c in 0..4 {
            if let Some(off) = offs[c] {
                p[c] = data[o + off];
            }
        }
        p
    })
}

/// Byte offsets of R, G, B, A in a pixel of `format`, and bytes per pixel.
fn offsets(format: gst_video::VideoFormat) -> ([Option<usize>; 4], usize) {
    use gst_video::VideoFormat as F;
    match format {
        F::Rgb => ([Some(0), Some(1), Some(2), None], 3),
        F::Bgr => ([Some(2), Some(1), Some(0), None], 3),
        F::Rgbx => ([Some(0), Some(1), Some(2), None], 4),
        F::Bgrx => ([Some(2), Some(1), Some(0), None], 4),
        F::Xrgb => ([Some(1), Some(2), Some(3), None], 4),
        F::Xbgr => ([Some(3), Some(2), Some(1), None], 4),
        F::Rgba => ([Some(0), Some(1), Some(2), Some(3)], 4),
        F::Bgra => ([Some(2), Some(1), Some(0), Some(3)], 4),
        f => panic!("format {f:?} not used in tests"),
    }
}

pub const FORMATS: [gst_video::VideoFormat; 8] = [
    gst_video::VideoFormat::Rgb,
    gst_video::VideoFormat::Bgr,
    gst_video::VideoFormat::Rgbx,
    gst_video::VideoFormat::Bgrx,
    gst_video::VideoFormat::Xrgb,
    gst_video::VideoFormat::Xbgr,
    gst_video::VideoFormat::Rgba,
    gst_video::VideoFormat::Bgra,
];

/// Keys cubic kernel, a = -0.5 (written independently of the crate's).
fn keys(t: f64) -> f64 {
    let t = t.abs();
    if t < 1.0 {
        1.5 * t * t * t - 2.5 * t * t + 1.0
    } else if t < 2.0 {
        -0.5 * t * t * t + 2.5 * t * t - 4.0 * t + 2.0
    } else {
        0.0
    }
}

/// Reference ×s upscale of channel `c`, half-pixel centres, clamped edges, computed per output
/// pixel directly from the definition.
pub fn reference_upscale(img: &Rgba, s: usize, cubic: bool) -> Rgba {
    let (w, h) = (img.width, img.height);
    let clamp = |v: i64, n: usize| v.clamp(0, n as i64 - 1) as usize;
    Rgba::new(w * s, h * s, |ox, oy| {
        let sx = (ox as f64 + 0.5) / s as f64 - 0.5;
        let sy = (oy as f64 + 0.5) / s as f64 - 0.5;
        let mut p = [0u8; 4];
        if !cubic {
            let at = img.at(ox / s, oy / s);
            p[..3].copy_from_slice(&at[..3]);
        } else {
            let (ix, iy) = (sx.floor() as i64, sy.floor() as i64);
            for (c, out) in p.iter_mut().enumerate().take(3) {
                let mut acc = 0.0;
                for my in -1..=2 {
                    for mx in -1..=2 {
                        let wgt = keys(sx - (ix + mx) as f64) * keys(sy - (iy + my) as f64);
                        acc += wgt * img.at(clamp(ix + mx, w), clamp(iy + my, h))[c] as f64;
                    }
                }
                *out = acc.round().clamp(0.0, 255.0) as u8;
            }
        }
        p[3] = 255;
        p
    })
}

/// Largest per-channel difference over RGB (and alpha when `alpha`).
pub fn max_diff(a: &Rgba, b: &Rgba, alpha: bool) -> u8 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let n = if alpha { 4 } else { 3 };
    a.px.iter()
        .zip(&b.px)
        .map(|(p, q)| (0..n).map(|c| p[c].abs_diff(q[c])).max().unwrap())
        .max()
        .unwrap_or(0)
}

/// PSNR in dB over RGB.
pub fn psnr(a: &Rgba, b: &Rgba) -> f64 {
    let mut se = 0.0;
    for (p, q) in a.px.iter().zip(&b.px) {
        for c in 0..3 {
            let d = p[c] as f64 - q[c] as f64;
            se += d * d;
        }
    }
    let mse = se / (3 * a.px.len()) as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// A Harness around a `classsr` made with the given string properties.
pub fn harness(props: &[(&str, &str)]) -> gst_check::Harness {
    init();
    let mut b = gst::ElementFactory::make("classsr");
    for (k, v) in props {
        b = b.property_from_str(k, v);
    }
    let element = b.build().expect("classsr element");
    gst_check::Harness::with_element(&element, Some("sink"), Some("src"))
}

pub fn caps_str(format: gst_video::VideoFormat, w: usize, h: usize) -> String {
    format!(
        "video/x-raw,format={},width={w},height={h},framerate=30/1",
        format.to_str()
    )
}

/// Pushes `img` through a harness (caps set for it) and returns the upscaled image.
pub fn run_one(h: &mut gst_check::Harness, img: &Rgba, format: gst_video::VideoFormat) -> Rgba {
    h.set_src_caps_str(&caps_str(format, img.width, img.height));
    h.push(to_buffer(img, format)).expect("push succeeds");
    let out = h.pull().expect("an output buffer");
    let caps = h.sinkpad().unwrap().current_caps().expect("output caps");
    let info = gst_video::VideoInfo::from_caps(&caps).unwrap();
    from_buffer(&out, format, info.width() as usize, info.height() as usize)
}

/// Upscales `img` as RGB through a fresh element with `props`.
pub fn upscale(img: &Rgba, props: &[(&str, &str)]) -> Rgba {
    let mut h = harness(props);
    run_one(&mut h, img, gst_video::VideoFormat::Rgb)
}

/// Runs a gst-launch style pipeline description to EOS or error; returns the error text if any.
pub fn run_pipeline(desc: &str) -> Result<(), String> {
    init();
    let pipeline = gst::parse::launch(desc).map_err(|e| e.to_string())?;
    let bus = pipeline.bus().unwrap();
    if pipeline.set_state(gst::State::Playing).is_err() {
        // The error message is on the bus.
    }
    let mut result = Ok(());
    for msg in bus.iter_timed(gst::ClockTime::from_seconds(120)) {
        match msg.view() {
            gst::MessageView::Eos(_) => break,
            gst::MessageView::Error(e) => {
                result = Err(format!(
                    "{} ({})",
                    e.error(),
                    e.debug().map(|d| d.to_string()).unwrap_or_default()
                ));
                break;
            }
            _ => {}
        }
    }
    pipeline.set_state(gst::State::Null).unwrap();
    result
}

/// Three vertical zones for routing tests: flat (std ≈ 0), mild noise (std ≈ 8 LSB) and strong
/// noise (std ≈ 58 LSB): the variance classifier sends them to branch 1, 2 and 3.
pub fn zones(width: usize, height: usize) -> Rgba {
    let mut rng = Rng(1234);
    let noise: Vec<u8> = (0..width * height).map(|_| rng.below(200) as u8).collect();
    Rgba::new(width, height, |x, y| {
        let n = noise[y * width + x];
        match 3 * x / width {
            0 => [90, 100, 110, 255],
            1 => [100 + n % 28, 100 + n % 28, 100, 255],
            _ => [n, 255 - n, n / 2, 255],
        }
    })
}

/// A directory under the system's temporary one, emptied when made and removed when dropped
/// (also when the test fails).
pub struct ScratchDir(pub std::path::PathBuf);

impl ScratchDir {
    /// A fresh folder named for `name`, the process and a counter, so that tests running at
    /// once in one process never share one (a shared one was removed under a test that was
    /// still using it).
    pub fn new(name: &str) -> ScratchDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("classsr-{name}-{}-{k}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for ScratchDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `w`×`h` frame (w > 256) for the known-answer model's three classes: flat (branch1) but
/// for strong noise (branch3) right of column 256 and, with `mild`, a mildly noisy strip at
/// columns 192..256 (branch2); `seed` seeds the noise.
pub fn three_classes(w: usize, h: usize, mild: bool, seed: u64) -> Rgba {
    let mut rng = Rng(seed);
    let noise: Vec<u8> = (0..w * h).map(|_| rng.below(200) as u8).collect();
    Rgba::new(w, h, |x, y| {
        let n = noise[y * w + x];
        match x {
            192..256 if mild => [100 + n % 28, 100 + n % 28, 100, 255],
            0..256 => [90, 100, 110, 255],
            _ => [n, 255 - n, n / 2, 255],
        }
    })
}

/// A bus set on `h`'s element (messages posted from then on).
/// The texts of the warning and of the error messages on `bus` so far (other messages are
/// dropped).
pub fn warnings_and_errors(bus: &gst::Bus) -> (Vec<String>, Vec<String>) {
    let (mut warnings, mut errors) = (Vec::new(), Vec::new());
    while let Some(m) = bus.pop() {
        match m.view() {
            gst::MessageView::Warning(w) => warnings.push(w.error().to_string()),
            gst::MessageView::Error(e) => errors.push(e.error().to_string()),
            _ => {}
        }
    }
    (warnings, errors)
}

pub fn bus_of(h: &gst_check::Harness) -> gst::Bus {
    let bus = gst::Bus::new();
    h.element().unwrap().set_bus(Some(&bus));
    bus
}

/// The classsr-stats structures posted so far (a filtered pop: other messages are dropped).
pub fn stats(bus: &gst::Bus) -> Vec<gst::Structure> {
    std::iter::from_fn(|| bus.pop_filtered(&[gst::MessageType::Element]))
        .filter_map(|m| m.structure().map(|s| s.to_owned()))
        .filter(|s| s.name() == "classsr-stats")
        .collect()
}

/// A JPEG of `img` with an EXIF orientation tag (`orientation`, 1..=8) in an APP1 segment.
pub fn jpeg_with_orientation(img: &Rgba, orientation: u8) -> Vec<u8> {
    let rgb: Vec<u8> = img.px.iter().flat_map(|p| [p[0], p[1], p[2]]).collect();
    let mut jpeg = Vec::new();
    image::RgbImage::from_raw(img.width as u32, img.height as u32, rgb)
        .unwrap()
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    // TIFF header (little-endian, IFD at 8), one IFD entry: 0x0112 SHORT 1 = orientation
    let mut tiff = b"II\x2a\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00".to_vec();
    tiff.extend_from_slice(&[orientation, 0, 0, 0, 0, 0, 0, 0]);
    let mut app1 = b"Exif\x00\x00".to_vec();
    app1.extend_from_slice(&tiff);
    let len = (app1.len() + 2) as u16;
    let mut out = jpeg[..2].to_vec(); // SOI
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// The texts of the warning messages on `bus` so far (other messages are dropped).
pub fn warnings(bus: &gst::Bus) -> Vec<String> {
    warnings_and_errors(bus).0
}

/// One ONNX node, named for its output.
fn onnx_node(
    op: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<gstclasssr::onnx::proto::AttributeProto>,
) -> gstclasssr::onnx::proto::NodeProto {
    gstclasssr::onnx::proto::NodeProto {
        op_type: Some(op.into()),
        name: Some(output.into()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

/// `graph` with the nodes `front(input, graph)` put before its own: they read the graph's
/// input and end in `fed`, which the graph's own nodes read instead of the input.
fn in_front(
    graph: &[u8],
    fed: &str,
    front: impl FnOnce(&str, &mut gstclasssr::onnx::proto::GraphProto) -> Vec<gstclasssr::onnx::proto::NodeProto>,
) -> Vec<u8> {
    use prost::Message;
    let mut model = gstclasssr::onnx::proto::ModelProto::decode(graph).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let input = graph.input[0].name.clone().unwrap();
    for node in &mut graph.node {
        for i in node.input.iter_mut().filter(|i| **i == input) {
            *i = fed.into();
        }
    }
    let nodes = front(&input, graph);
    for (k, n) in nodes.into_iter().enumerate() {
        graph.node.insert(k, n);
    }
    model.encode_to_vec()
}

/// `graph` (a branch: one NCHW input) made to fail at run time on more than two tiles, as a
/// graph with a batch baked into its operators does: its input goes through Add with a
/// constant of batch 2 (which broadcasts only from a batch of 1 or 2) and is sliced back to
/// the input's batch. It passes the load-time checks (any declared batch, a dry run on two
/// tiles) and fails half-way through a frame.
pub fn fails_above_two_tiles(graph: &[u8]) -> Vec<u8> {
    use gstclasssr::onnx::proto::attribute_proto::AttributeType;
    use gstclasssr::onnx::proto::{tensor_proto::DataType, AttributeProto, TensorProto};
    in_front(graph, "lr.sliced", |input, graph| {
        graph.initializer.push(TensorProto {
            name: Some("zeros.batch2".into()),
            dims: vec![2, 1, 1, 1],
            data_type: Some(DataType::Float as i32),
            float_data: vec![0.0; 2],
            ..Default::default()
        });
        graph.initializer.push(TensorProto {
            name: Some("zero".into()),
            dims: vec![1],
            data_type: Some(DataType::Int64 as i32),
            int64_data: vec![0],
            ..Default::default()
        });
        let int = |name: &str, v: i64| AttributeProto {
            name: Some(name.into()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(v),
            ..Default::default()
        };
        vec![
            onnx_node("Add", &[input, "zeros.batch2"], "lr.batch2", vec![]),
            onnx_node("Shape", &[input], "lr.batch", vec![int("start", 0), int("end", 1)]),
            onnx_node("Slice", &["lr.batch2", "zero", "lr.batch", "zero"], "lr.sliced", vec![]),
        ]
    })
}

/// A scratch copy (`name`) of the model directory `model`, to change without touching it.
pub fn model_copy(model: &str, name: &str) -> ScratchDir {
    let dir = ScratchDir::new(name);
    for f in std::fs::read_dir(model).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    dir
}

/// `graph` (a branch) made to look at the whole tile: its input gets the tile's mean added
/// (GlobalAveragePool), so a run on part of a tile gives other values than the whole tile.
pub fn looks_at_the_whole_tile(graph: &[u8]) -> Vec<u8> {
    in_front(graph, "lr.global", |input, _| {
        vec![
            onnx_node("GlobalAveragePool", &[input], "lr.mean", vec![]),
            onnx_node("Add", &[input, "lr.mean"], "lr.global", vec![]),
        ]
    })
}
