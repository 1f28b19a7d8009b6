// Rewrites of PRelu applied to every graph before ONNX Runtime loads it, giving the same values
// faster (PReLU sits after every convolution of FSRCNN, and ONNX Runtime's CPU PRelu is a slow
// broadcasting kernel). A constant slope a is written in one of two forms:
// * `Max`, for any device: Max(x, a·x) when every a ≤ 1 (Min(x, a·x) when every a ≥ 1): for
//   x > 0 the larger (smaller) of the two is x, for x < 0 it is a·x, the very product PRelu
//   computes, so the outputs are bit-identical.
// * `ReluSum`, for the CPU: (1 − a)·Relu(x) + a·x, the per-channel products written as
//   BatchNormalization with only a scale. ONNX Runtime's CPU layout optimiser keeps Relu,
//   BatchNormalization and Add in its blocked (NCHWc) layout, turns the products into depthwise
//   1×1 convolutions and fuses the sum into the second, while around every Max it must reorder
//   both operands back to NCHW. For x ≤ 0 it is a·x exactly; for x > 0 it is x within a few
//   roundings, so it is used only for slopes in [−1, 1] (within 3 ulp of x) and for activations
//   known to be NCHW (the output of a 2-D convolution: BatchNormalization scales axis 1, PRelu's
//   [C, 1, 1] slope the third axis from the right). An infinite x > 0 would become NaN where a
//   ≤ 0, which the merge bounds as it bounds any broken output. One slope for all channels
//   becomes LeakyRelu (bit-identical), which the optimiser fuses into the convolution before it.

use std::collections::{HashMap, HashSet};

use prost::Message;

use super::builder::{attribute, Attr};
use super::graphs::{float_tensor, float_values};
use super::proto::{GraphProto, ModelProto, NodeProto, TensorProto};

/// A node of the default domain with one output.
pub(super) fn node(op: &str, name: String, input: Vec<String>, output: String) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name),
        input,
        output: vec![output],
        ..Default::default()
    }
}

/// The graph's constant initializers by name: initializers that are also graph inputs can be
/// fed at run time, so they are left out.
pub(super) fn constants(graph: &GraphProto) -> HashMap<String, &TensorProto> {
    let fed: HashSet<&str> = graph.input.iter().filter_map(|i| i.name.as_deref()).collect();
    graph
        .initializer
        .iter()
        .filter(|t| t.name.as_deref().is_some_and(|n| !fed.contains(n)))
        .filter_map(|t| Some((t.name.clone()?, t)))
        .collect()
}

/// How [`prelu`] writes a constant-slope PRelu (see the top of this file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreluForm {
    /// Max(x, a·x) (or Min): bit-identical, for any execution provider.
    Max,
    /// (1 − a)·Relu(x) + a·x through BatchNormalization: faster on ONNX Runtime's CPU.
    ReluSum,
}

/// A BatchNormalization node `{out}` computing the constant `scale`·`x` alone: its mean
/// `{at}.zeros`, variance `{at}.ones` and epsilon 0, so no other rounding.
fn scale_by(at: &str, x: &str, scale: String, out: String) -> NodeProto {
    let (zeros, ones) = (format!("{at}.zeros"), format!("{at}.ones"));
    NodeProto {
        attribute: vec![attribute("epsilon", &Attr::Float(0.0))],
        ..node(
            "BatchNormalization",
            out.clone(),
            vec![x.to_string(), scale, zeros.clone(), zeros, ones],
            out,
        )
    }
}

/// The serialised model with its constant-slope PRelu nodes written in `form`, or None when
/// there is nothing to rewrite (or the bytes are not a model: ONNX Runtime will say so).
/// `ReluSum` applies to single slopes and to per-channel slopes of shape [C, 1, 1] in [−1, 1]
/// after a 2-D convolution; other PRelu nodes take the Max form (or stay as they are).
pub fn prelu(bytes: &[u8], form: PreluForm) -> Option<Vec<u8>> {
    let mut model = ModelProto::decode(bytes).ok()?;
    let graph = model.graph.as_mut()?;
    let slopes: HashMap<String, (Vec<i64>, Vec<f32>)> = constants(graph)
        .into_iter()
        .filter_map(|(name, t)| Some((name, (t.dims.clone(), float_values(t)?))))
        .collect();
    // activations known to be NCHW: outputs of convolutions with a 4-D constant weight
    let nchw: HashSet<String> = graph
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("Conv") && n.output.len() == 1)
        .filter(|n| {
            n.input
                .get(1)
                .and_then(|w| slopes.get(w))
                .is_some_and(|(d, _)| d.len() == 4)
        })
        .map(|n| n.output[0].clone())
        .collect();
    // every tensor name in the graph: a rewrite whose new names would meet one is not made
    // (the node stays PRelu) rather than giving a graph ONNX Runtime refuses
    let taken: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().chain(&n.output).cloned())
        .chain(graph.initializer.iter().filter_map(|t| t.name.clone()))
        .chain(graph.input.iter().chain(&graph.output).filter_map(|v| v.name.clone()))
        .collect();
    let mut added: Vec<TensorProto> = Vec::new();
    let mut changed = false;
    let mut nodes = Vec::with_capacity(graph.node.len() + 16);
    for n in std::mem::take(&mut graph.node) {
        let is_prelu = n.op_type.as_deref() == Some("PRelu")
            && n.domain.as_deref().unwrap_or("").is_empty()
            && n.input.len() == 2
            && n.output.len() == 1;
        // (a slope held outside the model, e.g. as external data, reads as no values)
        let slope = is_prelu.then(|| slopes.get(&n.input[1])).flatten();
        let Some((dims, a)) = slope.filter(|(d, a)| !a.is_empty() && a.len() as i64 == d.iter().product::<i64>())
        else {
            nodes.push(n);
            continue;
        };
        let (x, y) = (n.input[0].clone(), n.output[0].clone());
        // new names from the output's, which is unique in the graph (node names need not be)
        let name = y.clone();
        let per_channel = matches!(dims.as_slice(), [c, 1, 1] if *c > 1)
            && nchw.contains(&x)
            && a.iter().all(|v| (-1.0..=1.0).contains(v));
        // the nodes and constants that replace this PRelu
        let mut new_nodes = Vec::new();
        let mut new_consts = Vec::new();
        match form {
            PreluForm::ReluSum if a.len() == 1 => {
                new_nodes.push(NodeProto {
                    attribute: vec![attribute("alpha", &Attr::Float(a[0]))],
                    ..node("LeakyRelu", format!("{name}.leaky"), vec![x], y.clone())
                });
            }
            PreluForm::ReluSum if per_channel => {
                let c = a.len() as i64;
                let t = |suffix: &str| format!("{name}.{suffix}");
                let one_minus: Vec<f32> = a.iter().map(|v| 1.0 - v).collect();
                new_consts.push(float_tensor(&t("kept"), vec![c], &one_minus));
                new_consts.push(float_tensor(&t("slope"), vec![c], a));
                new_consts.push(float_tensor(&t("zeros"), vec![c], &vec![0.0; a.len()]));
                new_consts.push(float_tensor(&t("ones"), vec![c], &vec![1.0; a.len()]));
                new_nodes.push(node("Relu", t("relu"), vec![x.clone()], t("relu")));
                new_nodes.push(scale_by(&name, &t("relu"), t("kept"), t("kept_part")));
                new_nodes.push(scale_by(&name, &x, t("slope"), t("slope_part")));
                new_nodes.push(node("Add", t("sum"), vec![t("kept_part"), t("slope_part")], y.clone()));
            }
            _ => {
                let op = if a.iter().all(|&v| v <= 1.0) {
                    "Max"
                } else if a.iter().all(|&v| v >= 1.0) {
                    "Min"
                } else {
                    // slopes on both sides of 1: left as PRelu
                    nodes.push(n);
                    continue;
                };
                let scaled = format!("{y}.prelu_scaled");
                new_nodes.push(node(
                    "Mul",
                    format!("{name}.mul"),
                    vec![x.clone(), n.input[1].clone()],
                    scaled.clone(),
                ));
                new_nodes.push(node(
                    op,
                    format!("{name}.{}", op.to_lowercase()),
                    vec![x, scaled],
                    y.clone(),
                ));
            }
        }
        // the tensors the rewrite adds (its last node writes the PRelu's own output)
        let clash = new_consts
            .iter()
            .filter_map(|t| t.name.as_ref())
            .chain(new_nodes.iter().flat_map(|m| &m.output).filter(|o| **o != y))
            .any(|t| taken.contains(t));
        if clash {
            nodes.push(n);
            continue;
        }
        nodes.extend(new_nodes);
        added.extend(new_consts);
        changed = true;
    }
    graph.node = nodes;
    graph.initializer.extend(added);
    changed.then(|| model.encode_to_vec())
}
