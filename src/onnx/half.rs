// Half precision (the element's `precision=fp16`): a branch graph rewritten so that its float
// weights are stored, and its arithmetic done, in IEEE float16, with a Cast to float16 after each
// float input and back to float before each float output. The graph keeps its interface (f32
// in, f32 out), so the engine and the frame graphs use it unchanged. GPUs run float16
// convolutions on their tensor cores; ONNX Runtime's CPU runs them through casts to float.

use prost::Message;

use super::builder::{attribute, Attr};
use super::graphs::float_values;
use super::proto::{ModelProto, TensorProto};
use super::rewrite::node;

/// ONNX element types.
const FLOAT: i32 = 1;
const FLOAT16: i32 = 10;

/// The nearest float16 to `x` (ties to even), as its bits: overflow gives infinity, NaN
/// stays NaN, small values become subnormal or zero.
pub fn f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let round = |v: u32, rem: u32, half: u32| v + u32::from(rem > half || (rem == half && v & 1 == 1));
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        // subnormal: the mantissa with its implicit 1, shifted to units of 2^-24
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        return sign | round(m >> shift, m & ((1 << shift) - 1), 1 << (shift - 1)) as u16;
    }
    // a carry out of the mantissa steps the exponent (up to infinity), as it should
    sign | round(((e as u32) << 10) | (man >> 13), man & 0x1fff, 0x1000) as u16
}

/// `t` (a FLOAT tensor) as FLOAT16, or None for other tensors.
fn to_half(t: &TensorProto) -> Option<TensorProto> {
    let values = float_values(t)?;
    Some(TensorProto {
        data_type: Some(FLOAT16),
        raw_data: Some(values.iter().flat_map(|&v| f16_bits(v).to_le_bytes()).collect()),
        float_data: Vec::new(),
        ..t.clone()
    })
}

/// The serialised model computing in float16 (see the top of this file), or why it cannot be
/// rewritten. Float initializers and the float tensors of Constant nodes become float16; shape
/// annotations of intermediate values are dropped (ONNX Runtime infers them again).
pub fn half_precision(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut model = ModelProto::decode(bytes).map_err(|e| format!("not an ONNX model: {e}"))?;
    let graph = model.graph.as_mut().ok_or("the model has no graph")?;
    let is_float = |v: &super::proto::ValueInfoProto| {
        v.r#type
            .as_ref()
            .and_then(|t| t.value.as_ref())
            .is_some_and(|t| matches!(t, super::proto::type_proto::Value::TensorType(t) if t.elem_type == Some(FLOAT)))
    };
    let inputs: Vec<String> = graph
        .input
        .iter()
        .filter(|v| is_float(v))
        .filter_map(|v| v.name.clone())
        .collect();
    let outputs: Vec<String> = graph
        .output
        .iter()
        .filter(|v| is_float(v))
        .filter_map(|v| v.name.clone())
        .collect();
    if let Some(both) = inputs.iter().find(|i| outputs.contains(i)) {
        return Err(format!("'{both}' is both an input and an output"));
    }
    let fed: Vec<String> = graph.input.iter().filter_map(|v| v.name.clone()).collect();
    for t in graph.initializer.iter_mut() {
        let constant = t.name.as_ref().is_some_and(|n| !fed.contains(n));
        if let Some(h) = constant.then(|| to_half(t)).flatten() {
            *t = h;
        }
    }
    let half_name = |n: &str| format!("{n}.fp16");
    for n in graph.node.iter_mut() {
        for i in n.input.iter_mut().chain(n.output.iter_mut()) {
            if inputs.contains(i) || outputs.contains(i) {
                *i = half_name(i);
            }
        }
        if n.op_type.as_deref() == Some("Constant") {
            for a in n.attribute.iter_mut() {
                if let Some(h) = a.t.as_ref().and_then(to_half) {
                    a.t = Some(h);
                }
            }
        }
    }
    let cast = |from: String, to: String, elem: i32| super::proto::NodeProto {
        attribute: vec![attribute("to", &Attr::Int(elem.into()))],
        ..node("Cast", format!("{to}.cast"), vec![from], to)
    };
    let mut nodes: Vec<_> = inputs.iter().map(|i| cast(i.clone(), half_name(i), FLOAT16)).collect();
    nodes.append(&mut graph.node);
    nodes.extend(outputs.iter().map(|o| cast(half_name(o), o.clone(), FLOAT)));
    graph.node = nodes;
    graph.value_info.clear();
    Ok(model.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::f16_bits;

    #[test]
    fn rounds_to_the_nearest_half() {
        let cases = [
            (0.0, 0x0000),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (-2.0, 0xc000),
            (0.1, 0x2e66),
            (1.0 / 3.0, 0x3555),
            (65504.0, 0x7bff),
            (65520.0, 0x7c00), // halfway to the next power: rounds up to infinity
            (1e9, 0x7c00),
            (f32::NEG_INFINITY, 0xfc00),
            (6.103_515_6e-5, 0x0400), // smallest normal
            (5.960_464_5e-8, 0x0001), // smallest subnormal
            (2.980_232_2e-8, 0x0000), // half of it: ties to even (zero)
            (4.470_348_4e-8, 0x0001), // three quarters of it
            (1e-10, 0x0000),
            (1.000_488_3, 0x3c00), // 1 + 2^-11: a tie, to even
            (1.001_464_8, 0x3c02), // 1 + 3·2^-11: a tie, to even (up)
        ];
        for (x, want) in cases {
            assert_eq!(f16_bits(x), want, "{x}");
        }
        assert_eq!(f16_bits(f32::NAN) & 0x7c00, 0x7c00);
        assert_ne!(f16_bits(f32::NAN) & 0x3ff, 0);
    }
}
