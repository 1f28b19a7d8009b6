// Bad input gets a clear element error and the process lives on: missing, corrupt or lying
// model directories, unsupported or huge caps, bad property combinations, and a missing ONNX
// Runtime library (in a child process, since the library is loaded once per process).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use gst::prelude::*;

const KA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/known-answer");

fn scratch(name: &str) -> ScratchDir {
    ScratchDir::new(&format!("test-{name}"))
}

fn copy_ka(name: &str) -> ScratchDir {
    model_copy(KA, &format!("test-{name}"))
}

fn run_with_model(dir: &Path) -> Result<(), String> {
    run_pipeline(&format!(
        "videotestsrc num-buffers=2 ! video/x-raw,width=64,height=48 ! classsr model=\"{}\" device=cpu ! fakesink",
        dir.display()
    ))
}

#[test]
fn missing_or_unreadable_model_directory_names_the_path() {
    let err = run_with_model(Path::new("/nonexistent/model-dir")).unwrap_err();
    assert!(
        err.contains("/nonexistent/model-dir") && err.contains("manifest.json"),
        "{err}"
    );
    // a file where the directory should be, and a manifest that cannot be read (a directory:
    // unreadable even as root, unlike a file without read permission)
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let err = run_with_model(Path::new(file)).unwrap_err();
    assert!(err.contains(file) && err.contains("not a directory"), "{err}");
    let dir = copy_ka("manifest-is-a-directory");
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    std::fs::create_dir(dir.join("manifest.json")).unwrap();
    let err = run_with_model(&dir).unwrap_err();
    assert!(err.contains("cannot read") && err.contains("manifest.json"), "{err}");
}

#[test]
fn corrupt_manifest_is_reported() {
    let dir = copy_ka("corrupt-manifest");
    std::fs::write(dir.join("manifest.json"), b"{ not json").unwrap();
    let err = run_with_model(&dir).unwrap_err();
    assert!(err.contains("not a valid manifest"), "{err}");

    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    let err = run_with_model(&dir).unwrap_err();
    assert!(err.contains("cannot read") && err.contains("manifest.json"), "{err}");
}

#[test]
fn truncated_onnx_is_reported() {
    let dir = copy_ka("truncated");
    let bytes = std::fs::read(dir.join("branch2.onnx")).unwrap();
    std::fs::write(dir.join("branch2.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    let err = run_with_model(&dir).unwrap_err();
    assert!(
        err.contains("branch2.onnx") && err.contains("not a valid ONNX model"),
        "{err}"
    );
}

#[test]
fn manifest_that_lies_about_shapes_is_reported() {
    let dir = copy_ka("lying");
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    std::fs::write(dir.join("manifest.json"), text.replace("\"scale\": 4", "\"scale\": 2")).unwrap();
    let err = run_with_model(&dir).unwrap_err();
    assert!(err.contains("returns shape") && err.contains("scale 2"), "{err}");

    let dir = copy_ka("wrong-names");
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    std::fs::write(
        dir.join("manifest.json"),
        text.replacen("\"output\": \"sr\"", "\"output\": \"hr\"", 1),
    )
    .unwrap();
    let err = run_with_model(&dir).unwrap_err();
    assert!(err.contains("'hr'"), "{err}");
}

#[test]
fn broken_weights_are_reported_at_load() {
    // A NaN in a weight (a corrupt or overflowed export) would make black tiles or send every
    // tile to branch3 without a word: refused when the model loads, naming the graph.
    for file in ["classifier.onnx", "branch2.onnx"] {
        let dir = copy_ka(&format!("nan-{}", file.trim_end_matches(".onnx")));
        edit_graph(&dir, file, |m| {
            let g = m.graph.as_mut().unwrap();
            let raw = |t: &gstclasssr::onnx::proto::TensorProto| t.raw_data.as_ref().map_or(0, |r| r.len());
            let w = g
                .initializer
                .iter_mut()
                .find(|t| t.data_type == Some(1) && (raw(t) >= 4 || !t.float_data.is_empty()))
                .expect("a float weight");
            match w.raw_data.as_mut().filter(|r| r.len() >= 4) {
                Some(r) => r[..4].copy_from_slice(&f32::NAN.to_le_bytes()),
                None => w.float_data[0] = f32::NAN,
            }
        });
        let err = run_with_model(&dir).unwrap_err();
        assert!(
            err.contains(file) && err.contains("NaN or infinite values"),
            "{file}: {err}"
        );
    }
}

#[test]
fn a_weight_float16_cannot_hold_is_refused_with_precision_fp16() {
    // precision=fp16 stores the branches' weights in float16: one beyond its range would turn
    // infinite, so the load is refused naming the graph, the weight and the setting; fp32 runs.
    let dir = copy_ka("fp16-range");
    edit_graph(&dir, "branch2.onnx", |m| {
        let g = m.graph.as_mut().unwrap();
        let w = g
            .initializer
            .iter_mut()
            .find(|t| t.data_type == Some(1))
            .expect("a float weight");
        match w.raw_data.as_mut().filter(|r| r.len() >= 4) {
            Some(r) => r[..4].copy_from_slice(&1e6f32.to_le_bytes()),
            None => w.float_data[0] = 1e6,
        }
    });
    let run = |precision: &str| {
        run_pipeline(&format!(
            "videotestsrc num-buffers=1 ! video/x-raw,width=64,height=48 ! classsr model=\"{}\" device=cpu \
             precision={precision} ! fakesink",
            dir.display()
        ))
    };
    run("fp32").unwrap();
    let err = run("fp16").unwrap_err();
    assert!(
        err.contains("branch2.onnx") && err.contains("precision=fp16") && err.contains("float16's range"),
        "{err}"
    );
}

/// Rewrites `file` of the model in `dir` by `f`.
fn edit_graph(dir: &Path, file: &str, f: impl FnOnce(&mut gstclasssr::onnx::proto::ModelProto)) {
    use prost::Message;
    let path = dir.join(file);
    let mut m = gstclasssr::onnx::proto::ModelProto::decode(&std::fs::read(&path).unwrap()[..]).unwrap();
    f(&mut m);
    std::fs::write(&path, m.encode_to_vec()).unwrap();
}

/// The tensor type (element type and shape) of the graph's first input.
fn input_type(m: &mut gstclasssr::onnx::proto::ModelProto) -> &mut gstclasssr::onnx::proto::type_proto::Tensor {
    use gstclasssr::onnx::proto::type_proto;
    let input = &mut m.graph.as_mut().unwrap().input[0];
    let Some(type_proto::Value::TensorType(t)) = input.r#type.as_mut().unwrap().value.as_mut() else {
        panic!("a tensor input")
    };
    t
}

/// Sets axis `axis` of the graph's first input to `value`.
fn fix_input_axis(m: &mut gstclasssr::onnx::proto::ModelProto, axis: usize, value: i64) {
    use gstclasssr::onnx::proto::tensor_shape_proto::dimension::Value;
    input_type(m).shape.as_mut().unwrap().dim[axis].value = Some(Value::DimValue(value));
}

#[test]
fn graphs_the_engine_cannot_feed_are_reported_at_load() {
    // A fixed batch (PyTorch's export without dynamic axes): refused when the model loads,
    // not on the first frame that has two tiles of a class.
    let dir = copy_ka("fixed-batch");
    edit_graph(&dir, "branch2.onnx", |m| fix_input_axis(m, 0, 1));
    let err = run_with_model(&dir).unwrap_err();
    assert!(
        err.contains("branch2.onnx") && err.contains("fixed batch of 1") && err.contains("dynamic_axes"),
        "{err}"
    );
    // Fixed 32x32 tiles: fine at tile-size 32, a clear error at any other.
    let dir = copy_ka("fixed-tile");
    edit_graph(&dir, "classifier.onnx", |m| {
        fix_input_axis(m, 2, 32);
        fix_input_axis(m, 3, 32);
    });
    run_with_model(&dir).unwrap();
    let err = run_pipeline(&format!(
        "videotestsrc num-buffers=1 ! video/x-raw,width=64,height=48 ! classsr model=\"{}\" tile-size=16 ! fakesink",
        dir.display()
    ))
    .unwrap_err();
    assert!(
        err.contains("takes only 32x32 tiles") && err.contains("tile-size=32"),
        "{err}"
    );
    // ... and set while playing it is refused with a warning, as a tiling that cannot be:
    // the frames go on at 32.
    let mut h = harness(&[("model", dir.to_str().unwrap()), ("device", "cpu")]);
    let bus = bus_of(&h);
    let img = picture(64, 48, 3);
    let first = run_one(&mut h, &img, gst_video::VideoFormat::Rgb);
    h.element().unwrap().set_property("tile-size", 16u32);
    assert_eq!(run_one(&mut h, &img, gst_video::VideoFormat::Rgb), first);
    let (w, e) = warnings_and_errors(&bus);
    assert!(w.len() == 1 && w[0].contains("takes only 32x32 tiles"), "{w:?}");
    assert!(e.is_empty(), "{e:?}");
    // Graphs fixed to a tile size the engine does not cut frames into: refused at load.
    let dir = copy_ka("fixed-tile-300");
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let text = text.replace("\"tile_size\": 32", "\"tile_size\": 300");
    std::fs::write(dir.join("manifest.json"), text).unwrap();
    edit_graph(&dir, "classifier.onnx", |m| {
        fix_input_axis(m, 2, 300);
        fix_input_axis(m, 3, 300);
    });
    let err = run_with_model(&dir).unwrap_err();
    assert!(
        err.contains("takes only 300x300 tiles") && err.contains("outside the tile sides 8..256"),
        "{err}"
    );
    // An input declared without a shape has nothing to check: the dry run decides, and this
    // one runs.
    let dir = copy_ka("no-input-shape");
    edit_graph(&dir, "classifier.onnx", |m| input_type(m).shape = None);
    run_with_model(&dir).unwrap();
    // Weights in a separate file (ONNX external data) are named as such.
    let dir = copy_ka("external-data");
    edit_graph(&dir, "branch1.onnx", |m| {
        use gstclasssr::onnx::proto::tensor_proto::DataLocation;
        use gstclasssr::onnx::proto::StringStringEntryProto;
        let t = &mut m.graph.as_mut().unwrap().initializer[0];
        t.raw_data = None;
        t.float_data.clear();
        t.data_location = Some(DataLocation::External as i32);
        t.external_data = vec![StringStringEntryProto {
            key: Some("location".into()),
            value: Some("branch1.data".into()),
        }];
    });
    let err = run_with_model(&dir).unwrap_err();
    assert!(err.contains("branch1.onnx") && err.contains("external data"), "{err}");
    // A value range the merge cannot scale to, and MAC counts that cannot be.
    for (from, to, what) in [
        (
            "\"value_range\": [\n    0.0,\n    1.0\n  ]",
            "\"value_range\": [0.0, 1e-35]",
            "value_range",
        ),
        (
            "\"macs_per_tile\": ",
            "\"macs_per_tile\": 18446744073709551615",
            "MACs per",
        ),
        // (a graph named as the manifest would be overwritten by it when the model is saved)
        (
            "\"file\": \"branch1.onnx\"",
            "\"file\": \"manifest.json\"",
            "named manifest.json",
        ),
    ] {
        let dir = copy_ka("bad-numbers");
        let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
        assert!(text.contains(from), "{text}");
        let text = match what {
            "MACs per" => {
                // the first count replaced by u64::MAX
                let at = text.find(from).unwrap() + from.len();
                let end = at + text[at..].find(|c: char| !c.is_ascii_digit()).unwrap();
                format!("{}{}{}", &text[..at - from.len()], to, &text[end..])
            }
            _ => text.replacen(from, to, 1),
        };
        std::fs::write(dir.join("manifest.json"), text).unwrap();
        let err = run_with_model(&dir).unwrap_err();
        assert!(err.contains("manifest.json") && err.contains(what), "{err}");
    }
}

/// One frame of videotestsrc with `caps` through classsr (known-answer model) with `props`.
fn one_frame(caps: &str, props: &str) -> Result<(), String> {
    run_pipeline(&format!(
        "videotestsrc num-buffers=1 ! video/x-raw,{caps} ! classsr model={KA} {props} ! fakesink"
    ))
}

#[test]
fn unsupported_caps_do_not_negotiate() {
    let err = one_frame("format=I420,width=64,height=48", "").unwrap_err();
    assert!(err.to_lowercase().contains("negotiat") || err.contains("link"), "{err}");
    // Interlaced frames would have their fields mixed by the tiles: progressive only.
    let err = one_frame("format=RGB,width=64,height=48,interlace-mode=interleaved", "").unwrap_err();
    assert!(err.contains("interleaved"), "{err}");
}

#[test]
fn huge_frames_get_a_clear_error() {
    // Over the side limit, or within it but over the pixel limit: the caps say so (they hold
    // both), so linking fails naming the caps…
    let err = one_frame("format=RGB,width=5000,height=16", "").unwrap_err();
    assert!(err.contains("width=(int)5000"), "{err}");
    let err = one_frame("format=RGB,width=4000,height=2400", "").unwrap_err();
    assert!(err.contains("width=(int)4000, height=(int)2400"), "{err}");
    // …and a videoscale in front adapts to them.
    one_frame("format=RGB,width=5000,height=16 ! videoscale", "").unwrap();
}

/// The size a videoscale in front of classsr negotiates for a `w`x`h` source (the frame is
/// dropped before classsr: negotiation only).
fn videoscale_picks(w: usize, h: usize) -> (i32, i32) {
    init();
    let p = gst::parse::launch(&format!(
        "videotestsrc num-buffers=1 ! video/x-raw,format=RGB,width={w},height={h} ! videoscale \
         ! classsr name=c model={KA} mode=bicubic ! fakesink"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = p.by_name("c").unwrap().static_pad("sink").unwrap();
    // the frame is dropped here: taken and dropped by the probe, which says it handled it
    // (returning Drop printed "gst_mini_object_unref: assertion 'mini_object != NULL'
    // failed" criticals)
    sink.add_probe(gst::PadProbeType::BUFFER, |_, info| {
        info.data.take();
        gst::PadProbeReturn::Handled
    });
    p.set_state(gst::State::Playing).unwrap();
    let bus = p.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("the stream ends");
    assert_eq!(msg.type_(), gst::MessageType::Eos, "{msg:?}");
    let caps = sink.current_caps().expect("negotiated");
    p.set_state(gst::State::Null).unwrap();
    let s = caps.structure(0).unwrap();
    (s.get("width").unwrap(), s.get("height").unwrap())
}

#[test]
fn a_videoscale_in_front_keeps_4k_uhd_and_fits_larger_sources() {
    // Sizes the element takes pass through; DCI 4K is fitted to 3840 wide (videoscale keeps
    // the height and the display aspect through the pixel aspect ratio), not squeezed to a
    // narrow band, as it would be if the caps' first structure were one.
    assert_eq!(videoscale_picks(1920, 1080), (1920, 1080));
    assert_eq!(videoscale_picks(3840, 2160), (3840, 2160));
    assert_eq!(videoscale_picks(4096, 2160), (3840, 2160));
}

#[test]
fn overlap_above_half_a_tile_is_an_element_error() {
    let err = one_frame("width=64,height=48", "tile-size=16 overlap=9").unwrap_err();
    assert!(
        err.contains("overlap 9 is more than half of tile-size 16; use at most 8"),
        "{err}"
    );
    // The process (and GStreamer) carry on: a good pipeline still runs.
    one_frame("width=64,height=48", "tile-size=16 overlap=8").unwrap();
}

/// target/<profile>, where cargo puts libgstclasssr.so and the binaries.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn missing_onnx_runtime_is_an_element_error_not_a_crash() {
    let plugin_dir = target_dir();
    assert!(
        plugin_dir.join("libgstclasssr.so").exists(),
        "cdylib at {}",
        plugin_dir.display()
    );
    let registry_dir = scratch("registry");
    let registry = registry_dir.join("registry.bin");
    let out = Command::new("gst-launch-1.0")
        .args(["videotestsrc", "num-buffers=1", "!", "classsr", "!", "fakesink"])
        .env("GST_PLUGIN_PATH", &plugin_dir)
        .env("GST_REGISTRY", &registry)
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.31.1")
        .output()
        .expect("gst-launch-1.0 runs");
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        matches!(out.status.code(), Some(c) if c != 0),
        "clean failure exit, not a signal: {text}"
    );
    assert!(
        text.contains("ONNX Runtime library not found at '/nonexistent/libonnxruntime.so.1.31.1'"),
        "{text}"
    );
    assert!(
        text.contains("scripts/setup.sh") && text.contains("ORT_DYLIB_PATH"),
        "{text}"
    );

    let bogus_dir = scratch("bogus-ort");
    let bogus = bogus_dir.join("libonnxruntime.so.1.31.1");
    std::fs::write(&bogus, b"not a library").unwrap();
    // The CLI says the same for a file that is not a shared library.
    let img_dir = scratch("cli-img");
    let img = img_dir.join("in.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([1, 2, 3]))
        .save(&img)
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_classsr"))
        .arg("upscale")
        .arg(&img)
        .arg(img.with_file_name("out.png"))
        .env("ORT_DYLIB_PATH", &bogus)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("cannot load ONNX Runtime from") && text.contains(&bogus.display().to_string()),
        "{text}"
    );
}

#[test]
fn cuda_without_a_gpu_fails_clearly_and_auto_falls_back_to_cpu() {
    let cuda = run_pipeline(&format!(
        "videotestsrc num-buffers=1 ! video/x-raw,width=64,height=48 ! classsr model={KA} device=cuda ! fakesink"
    ));
    // (on a machine where the CUDA provider does register, auto must pick it)
    let expect = match cuda {
        Err(err) => {
            // (no provider library here: named with what it needs; a provider that registers
            // on a machine without a usable GPU: the session's own reason)
            assert!(
                err.contains("CUDA execution provider")
                    && (err.contains("libcublasLt.so.13") || err.contains("could not make a session")),
                "{err}"
            );
            "cpu"
        }
        Ok(()) => "cuda:0",
    };
    let mut h = harness(&[("model", KA), ("device", "auto")]);
    let img = picture(40, 30, 1);
    run_one(&mut h, &img, gst_video::VideoFormat::Rgb);
    assert_eq!(h.element().unwrap().property::<String>("active-device"), expect);
}
