// A 5,000-frame soak through videotestsrc ! classsr ! appsink with resident memory sampled.
// Its own test binary, so no other test's allocations share the process it measures; the
// appsink holds at most two frames, so a backlog behind a slow reader (a loaded machine) is
// not counted as the element's memory.

mod common;

use common::*;
use gst::prelude::*;

const KA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/known-answer");

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

#[test]
fn soak_5000_frames_without_memory_growth() {
    init();
    let p = gst::parse::launch(&format!(
        "videotestsrc num-buffers=5000 pattern=ball ! video/x-raw,format=RGB,width=64,height=48 \
         ! classsr model={KA} device=cpu cache=class ! appsink name=s sync=false max-buffers=2"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = p.by_name("s").unwrap().downcast::<gst_app::AppSink>().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let (mut n, mut warm) = (0, 0);
    let mut peak_after_warmup = 0;
    while let Ok(s) = sink.pull_sample() {
        assert_eq!(s.buffer().unwrap().size(), 256 * 192 * 3);
        n += 1;
        if n == 500 {
            warm = rss_kib();
        }
        if n > 500 && n % 250 == 0 {
            peak_after_warmup = peak_after_warmup.max(rss_kib());
        }
    }
    p.set_state(gst::State::Null).unwrap();
    assert_eq!(n, 5000);
    let growth = peak_after_warmup as f64 / warm as f64 - 1.0;
    println!(
        "RSS after warm-up {warm} KiB, peak later {peak_after_warmup} KiB ({:.1}% growth)",
        growth * 100.0
    );
    assert!(growth < 0.05, "resident memory grew {:.1}%", growth * 100.0);
}
