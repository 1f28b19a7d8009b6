// Reliability: two elements in one pipeline and two pipelines at once, hundreds of random frame sizes and
// formats through the Harness, and property changes from another thread while playing.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use gst::prelude::*;

const KA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/known-answer");

#[test]
fn two_elements_in_one_pipeline_and_two_pipelines_at_once() {
    init();
    let chained = format!(
        "videotestsrc num-buffers=3 ! video/x-raw,format=RGB,width=16,height=12 ! classsr model={KA} mode=branch1 \
         ! classsr model={KA} mode=branch3 ! video/x-raw,width=256,height=192 ! fakesink"
    );
    let threads: Vec<_> = (0..2)
        .map(|k| {
            let d = if k == 0 {
                chained.clone()
            } else {
                format!("videotestsrc num-buffers=20 ! video/x-raw,width=96,height=64 ! classsr model={KA} ! fakesink")
            };
            std::thread::spawn(move || run_pipeline(&d))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
}

#[test]
fn random_sizes_formats_and_contents_never_panic() {
    let mut rng = Rng(2024);
    let mut h = harness(&[("model", KA), ("device", "cpu")]);
    for round in 0..200 {
        let w = 1 + rng.below(300) as usize;
        let hgt = 1 + rng.below(300) as usize;
        let format = FORMATS[rng.below(FORMATS.len() as u64) as usize];
        let seed = rng.next();
        let img = if round % 3 == 0 {
            picture(w, hgt, seed)
        } else {
            let mut r = Rng(seed | 1);
            let px: Vec<[u8; 4]> = (0..w * hgt)
                .map(|_| r.next().to_le_bytes()[..4].try_into().unwrap())
                .collect();
            Rgba {
                width: w,
                height: hgt,
                px,
            }
        };
        if round % 7 == 0 {
            let mode = [
                "classsr", "original", "bicubic", "branch1", "branch2", "branch3", "classmap",
            ][round % 7];
            h.element().unwrap().set_property_from_str("mode", mode);
        }
        let out = run_one(&mut h, &img, format);
        assert_eq!(
            (out.width, out.height),
            (w * 4, hgt * 4),
            "round {round}: {w}x{hgt} {format:?}"
        );
    }
}

#[test]
fn property_changes_from_another_thread_while_playing() {
    init();
    let p = gst::parse::launch(&format!(
        "videotestsrc num-buffers=150 pattern=ball ! video/x-raw,format=RGB,width=80,height=60 \
         ! classsr name=c model={KA} device=cpu ! appsink name=s sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let c = p.by_name("c").unwrap();
    let sink = p.by_name("s").unwrap().downcast::<gst_app::AppSink>().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let changer = std::thread::spawn(move || {
        let mut i = 0u32;
        while !d2.load(Ordering::SeqCst) {
            let mode = [
                "classsr", "original", "bicubic", "branch1", "branch2", "branch3", "classmap",
            ][(i % 7) as usize];
            c.set_property_from_str("mode", mode);
            c.set_property_from_str("cache", ["off", "class", "full"][(i % 3) as usize]);
            c.set_property("tile-size", [32u32, 16, 24][(i % 3) as usize]);
            c.set_property("overlap", [4u32, 2, 8][(i % 3) as usize]);
            c.set_property("bias", (i % 5) as f32 * 0.1 - 0.2);
            c.set_property("max-batch", 1 + i % 9);
            i += 1;
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        i
    });
    p.set_state(gst::State::Playing).unwrap();
    let mut n = 0;
    while let Ok(s) = sink.pull_sample() {
        assert_eq!(s.buffer().unwrap().size(), 320 * 240 * 3);
        n += 1;
    }
    done.store(true, Ordering::SeqCst);
    let changes = changer.join().unwrap();
    let err = p.bus().unwrap().pop_filtered(&[gst::MessageType::Error]);
    p.set_state(gst::State::Null).unwrap();
    assert!(err.is_none(), "{err:?}");
    assert_eq!(n, 150);
    assert!(changes > 10, "properties changed {changes} times while playing");
}
