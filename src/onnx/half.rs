// Half precision (the element's `precision=fp16`): a branch graph rewritten so that its float
// weights are stored, and its arithmetic done, in IEEE float16, with a Cast to float16 after each
// float input and back to float before each float output. The graph keeps its interface (f32
// in, f32 out), so the engine and the frame graphs use it unchanged. GPUs run float16
// convolutions on their tensor cores; ONNX Runtime's CPU runs them through casts to float.

use std::collections::HashSet;

use prost::Message;

use super::builder::{attribute, Attr};
use super::graphs::{float_tensor, float_values};
use super::proto::attribute_proto::AttributeType;
use super::proto::{AttributeProto, ModelProto, TensorProto};
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

/// `t` (a FLOAT tensor) as FLOAT16 (None for other tensors), or an error naming a value beyond
/// float16's range (±65504), which would become infinite.
fn to_half(t: &TensorProto) -> Result<Option<TensorProto>, String> {
    let Some(values) = float_values(t) else {
        return Ok(None);
    };
    let mut raw = Vec::with_capacity(2 * values.len());
    for &v in &values {
        let h = f16_bits(v);
        if v.is_finite() && h & 0x7fff == 0x7c00 {
            let name = t.name.as_deref().unwrap_or("a constant");
            return Err(format!("'{name}' holds {v}, beyond float16's range (±65504)"));
        }
        raw.extend_from_slice(&h.to_le_bytes());
    }
    Ok(Some(TensorProto {
        data_type: Some(FLOAT16),
        raw_data: Some(raw),
        float_data: Vec::new(),
        ..t.clone()
    }))
}

/// The `value` attribute of a Constant or ConstantOfShape: `values` of shape `dims` in float16.
fn half_value(dims: Vec<i64>, values: &[f32]) -> Result<AttributeProto, String> {
    Ok(AttributeProto {
        name: Some("value".into()),
        r#type: Some(AttributeType::Tensor as i32),
        t: to_half(&float_tensor("value", dims, values))?,
        ..Default::default()
    })
}

/// Operator inputs that stay float whatever the graph computes in: (operator, input index).
const FLOAT_ONLY: [(&str, usize); 3] = [("Resize", 1), ("Resize", 2), ("Upsample", 1)];

/// The serialised model computing in float16 (see the top of this file), or why it cannot be
/// rewritten. Float initializers, the float constants of Constant and ConstantOfShape nodes and
/// the Casts to float become float16, except what feeds an input that must stay float (Resize's
/// roi and scales); shape annotations of intermediate values are dropped (ONNX Runtime infers
/// them again). Initializers listed as graph inputs (which a caller may feed) stay float, and
/// are cast where the graph starts. Graphs with subgraphs (If, Loop, Scan) are refused.
pub fn half_precision(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut model = ModelProto::decode(bytes).map_err(|e| format!("not an ONNX model: {e}"))?;
    let graph = model.graph.as_mut().ok_or("the model has no graph")?;
    if graph
        .node
        .iter()
        .any(|n| n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty()))
    {
        return Err("it has subgraphs (If, Loop or Scan), which are not rewritten".into());
    }
    let is_float = |v: &super::proto::ValueInfoProto| {
        v.r#type
            .as_ref()
            .and_then(|t| t.value.as_ref())
            .is_some_and(|t| matches!(t, super::proto::type_proto::Value::TensorType(t) if t.elem_type == Some(FLOAT)))
    };
    let float_names = |values: &[super::proto::ValueInfoProto]| -> Vec<String> {
        values
            .iter()
            .filter(|v| is_float(v))
            .filter_map(|v| v.name.clone())
            .collect()
    };
    let (inputs, outputs) = (float_names(&graph.input), float_names(&graph.output));
    if let Some(both) = inputs.iter().find(|i| outputs.contains(i)) {
        return Err(format!("'{both}' is both an input and an output"));
    }
    let half_name = |n: &str| format!("{n}.fp16");
    // the names the rewrite adds must be new
    let taken: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().chain(&n.output))
        .chain(graph.initializer.iter().filter_map(|t| t.name.as_ref()))
        .map(String::as_str)
        .collect();
    if let Some(n) = inputs
        .iter()
        .chain(&outputs)
        .find(|n| taken.contains(half_name(n).as_str()))
    {
        return Err(format!("it already has a value named '{}'", half_name(n)));
    }
    let keep_float: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| {
            FLOAT_ONLY
                .iter()
                .filter(|(op, _)| n.op_type.as_deref() == Some(*op))
                .filter_map(|(_, k)| n.input.get(*k).cloned())
        })
        .collect();
    let fed: HashSet<String> = graph.input.iter().filter_map(|v| v.name.clone()).collect();
    for t in graph.initializer.iter_mut() {
        let name = t.name.clone().unwrap_or_default();
        if !fed.contains(&name) && !keep_float.contains(&name) {
            if let Some(h) = to_half(t)? {
                *t = h;
            }
        }
    }
    for n in graph.node.iter_mut() {
        let float_out = n.output.iter().any(|o| keep_float.contains(o));
        for i in n.input.iter_mut().chain(n.output.iter_mut()) {
            if inputs.contains(i) || outputs.contains(i) {
                *i = half_name(i);
            }
        }
        if float_out {
            continue;
        }
        match n.op_type.as_deref() {
            Some("Constant" | "ConstantOfShape") => {
                // (ConstantOfShape without a value makes float zeros)
                if n.op_type.as_deref() == Some("ConstantOfShape")
                    && !n.attribute.iter().any(|a| a.name.as_deref() == Some("value"))
                {
                    n.attribute.push(half_value(vec![1], &[0.0])?);
                }
                for a in n.attribute.iter_mut() {
                    let values = match a.name.as_deref() {
                        Some("value_float") => a.f.map(|f| (vec![], vec![f])),
                        Some("value_floats") => Some((vec![a.floats.len() as i64], a.floats.clone())),
                        _ => None,
                    };
                    if let Some((dims, values)) = values {
                        *a = half_value(dims, &values)?;
                    } else if let Some(h) = a.t.as_ref().map(to_half).transpose()?.flatten() {
                        a.t = Some(h);
                    }
                }
            }
            Some("Cast") => {
                for a in n.attribute.iter_mut() {
                    if a.name.as_deref() == Some("to") && a.i == Some(FLOAT.into()) {
                        a.i = Some(FLOAT16.into());
                    }
                }
            }
            _ => {}
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
