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
        let (lo, hi) = if downstream {
            (r.min().saturating_mul(scale), r.max().saturating_mul(scale))
        } else {
            ((r.min() + scale - 1) / scale, r.max() / scale)
        };
        return match lo.cmp(&hi) {
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
