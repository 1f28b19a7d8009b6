// Caps arithmetic of the element: width and height times the scale going downstream, divided
// going upstream (sizes that don't divide are dropped); everything else passes through.

use gst::glib;

/// Maps one width/height value (int, int range or list); None when nothing fits.
fn map_dim(v: &glib::SendValue, scale: i32, downstream: bool) -> Option<glib::SendValue> {
    use glib::value::ToSendValue;
    if let Ok(x) = v.get::<i32>() {
        return if downstream {
            x.checked_mul(scale).map(|y| y.to_send_value())
        } else if x % scale == 0 {
            Some((x / scale).to_send_value())
        } else {
            None
        };
    }
    if let Ok(r) = v.get::<gst::IntRange<i32>>() {
        let (min, max, step, s) = (
            i64::from(r.min()),
            i64::from(r.max()),
            i64::from(r.step().max(1)),
            i64::from(scale),
        );
        // A stepped range holds the multiples of its step (GStreamer's rule).
        let (lo, hi, step) = if downstream && step == 1 {
            (min * s, max * s, 1)
        } else if downstream {
            // (the last multiple of the new step that an i32 holds)
            let step = step * s;
            (min * s, (max * s).min(i64::from(i32::MAX)) / step * step, step)
        } else {
            // the sizes whose multiple by the scale the range holds: multiples of lcm(step, s)
            let l = step / gcd(step, s) * s;
            (-(-min).div_euclid(l) * l / s, max.div_euclid(l) * l / s, l / s)
        };
        let clamp = |x: i64| x.clamp(0, i64::from(i32::MAX)) as i32;
        let (lo, hi, step) = (clamp(lo), clamp(hi), clamp(step));
        return match lo.cmp(&hi) {
            std::cmp::Ordering::Less if step > 1 => Some(gst::IntRange::with_step(lo, hi, step).to_send_value()),
            std::cmp::Ordering::Less => Some(gst::IntRange::new(lo, hi).to_send_value()),
            std::cmp::Ordering::Equal => Some(lo.to_send_value()),
            std::cmp::Ordering::Greater => None,
        };
    }
    if let Ok(list) = v.get::<gst::List>() {
        let mapped: Vec<glib::SendValue> = list.iter().filter_map(|x| map_dim(x, scale, downstream)).collect();
        return match mapped.len() {
            0 => None,
            1 => mapped.into_iter().next(),
            _ => Some(gst::List::from_values(mapped).to_send_value()),
        };
    }
    None
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Caps on the other side of the element for `caps` on the `direction` pad.
pub fn transform(caps: &gst::Caps, direction: gst::PadDirection, scale: u32) -> gst::Caps {
    let downstream = direction == gst::PadDirection::Sink;
    let scale = scale as i32;
    let mut out = gst::Caps::new_empty();
    {
        let out = out.get_mut().expect("new caps are writable");
        'next: for (s, features) in caps.iter_with_features() {
            let mut st = s.to_owned();
            for field in ["width", "height"] {
                if let Ok(v) = s.value(field) {
                    match map_dim(v, scale, downstream) {
                        Some(m) => st.set_value(field, m),
                        None => continue 'next,
                    }
                }
            }
            out.append_structure_full(st, Some(features.to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gst::prelude::GstValueExt;

    fn width(caps: &str, direction: gst::PadDirection) -> String {
        gst::init().unwrap();
        let out = transform(&caps.parse().unwrap(), direction, 4);
        out.structure(0).map_or("none".into(), |s| {
            s.value("width").unwrap().serialize().unwrap().to_string()
        })
    }

    #[test]
    fn stepped_ranges_keep_a_step() {
        use gst::PadDirection::{Sink, Src};
        // plain ranges as before
        assert_eq!(width("video/x-raw,width=[10,101]", Sink), "[ 40, 404 ]");
        assert_eq!(width("video/x-raw,width=[10,101]", Src), "[ 3, 25 ]");
        // downstream: 4 times the sizes and the step
        assert_eq!(width("video/x-raw,width=[16,64,8]", Sink), "[ 64, 256, 32 ]");
        // upstream: the sizes whose 4x the range holds (multiples of lcm(step, 4))
        assert_eq!(width("video/x-raw,width=[240,272,16]", Src), "[ 60, 68, 4 ]");
        assert_eq!(width("video/x-raw,width=[6,60,6]", Src), "[ 3, 15, 3 ]");
        assert_eq!(width("video/x-raw,width=[6,18,6]", Src), "3");
        assert_eq!(width("video/x-raw,width=[2,6,2]", Src), "1");
        assert_eq!(width("video/x-raw,width=[6,10,2]", Src), "2");
        assert_eq!(
            width("video/x-raw,width=[2,2147483646,2]", Sink),
            "[ 8, 2147483640, 8 ]"
        );
        // nothing fits: the structure is dropped
        assert_eq!(width("video/x-raw,width=[5,7]", Src), "none");
    }
}
