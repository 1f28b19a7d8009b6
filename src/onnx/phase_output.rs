// A load-time rewrite of a ×s branch graph to output its HR tile as s² phase planes per colour
// ([N, C·s², h, w], channel c·s² + ry·s + rx holding HR pixels (s·y + ry, s·x + rx), the
// layout DepthToSpace CRD reads), so that the engine interleaves them while merging the tile
// instead of ONNX Runtime shuffling every HR pixel once more. Recognised, from the output back:
// Identity; DepthToSpace(s, CRD), whose input already is the phases (the bicubic skip and the
// known-answer resamplers end so); Add of two phase-able tensors; ConvTranspose whose output is
// exactly s times its input (FSRCNN's k9 s4 p3 op1), which becomes the equivalent ordinary
// convolution to s² phases (a 3×3 one for FSRCNN) — the same products summed in another order,
// so equal to ~1e-6, and on the CPU much faster than ConvTranspose's scatter (col2im).

use std::collections::{HashMap, HashSet};

use prost::Message;

use super::builder::{attribute, Attr};
use super::graphs::{float_tensor, float_values};
use super::proto::{GraphProto, ModelProto, NodeProto, TensorProto};
use super::rewrite::{constants, node};

fn ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    n.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .map(|a| a.ints.clone())
}

fn int(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.i)
}

fn text(n: &NodeProto, name: &str) -> Option<String> {
    n.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.s.as_ref())
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

/// The phase convolution equivalent to a ConvTranspose with weight `w` ([Cin, Cout, K, K]),
/// per-axis begin pads `pb` and stride `s`, whose output is s times its input:
/// out[s·j + r] = Σ_d x[j + d]·W[r + pb − s·d] over the d that index the kernel. Returns the
/// weight [Cout·s², Cin, ky, kx], the pads (begin y, x, end y, x) and the kernel size.
fn phase_weight(w: &[f32], dims: [usize; 4], pb: [i64; 2], s: usize) -> Option<(Vec<f32>, [i64; 4], [usize; 2])> {
    let [cin, cout, kh, kw] = dims;
    let si = s as i64;
    // per axis, the range of input offsets d any phase uses
    // 0 ≤ r + p − s·d < k  ⇔  ceil((r + p − k + 1) / s) ≤ d ≤ floor((r + p) / s)
    let range = |k: usize, p: i64| -> (i64, i64) {
        let lo = (0..si).map(|r| -(k as i64 - 1 - r - p).div_euclid(si)).min();
        let hi = (0..si).map(|r| (r + p).div_euclid(si)).max();
        (lo.unwrap_or(0), hi.unwrap_or(0))
    };
    let (dy0, dy1) = range(kh, pb[0]);
    let (dx0, dx1) = range(kw, pb[1]);
    if dy0 > 0 || dx0 > 0 || dy1 < 0 || dx1 < 0 {
        return None;
    }
    let (ky, kx) = ((dy1 - dy0 + 1) as usize, (dx1 - dx0 + 1) as usize);
    let mut out = vec![0f32; cout * s * s * cin * ky * kx];
    for c in 0..cout {
        for ry in 0..s {
            for rx in 0..s {
                let oc = c * s * s + ry * s + rx;
                for (ty, dy) in (dy0..=dy1).enumerate() {
                    let k_y = ry as i64 + pb[0] - si * dy;
                    if !(0..kh as i64).contains(&k_y) {
                        continue;
                    }
                    for (tx, dx) in (dx0..=dx1).enumerate() {
                        let k_x = rx as i64 + pb[1] - si * dx;
                        if !(0..kw as i64).contains(&k_x) {
                            continue;
                        }
                        for ci in 0..cin {
                            out[((oc * cin + ci) * ky + ty) * kx + tx] =
                                w[((ci * cout + c) * kh + k_y as usize) * kw + k_x as usize];
                        }
                    }
                }
            }
        }
    }
    Some((out, [-dy0, -dx0, dy1, dx1], [ky, kx]))
}

struct Rewriter<'g> {
    producer: HashMap<String, NodeProto>,
    constants: HashMap<String, &'g TensorProto>,
    scale: usize,
    added: Vec<NodeProto>,
    weights: Vec<TensorProto>,
    /// Tensors already given as phases (a tensor reached twice gets one set of nodes).
    done: HashMap<String, String>,
}

/// Recursion limit of the walk back from the output (the recognised tails are a few nodes).
const MAX_DEPTH: usize = 64;

impl Rewriter<'_> {
    /// The name of a tensor holding `name` as phase planes, adding the nodes that make it.
    fn phases(&mut self, name: &str, depth: usize) -> Option<String> {
        if let Some(done) = self.done.get(name) {
            return Some(done.clone());
        }
        let found = self.make_phases(name, depth)?;
        self.done.insert(name.to_string(), found.clone());
        Some(found)
    }

    fn make_phases(&mut self, name: &str, depth: usize) -> Option<String> {
        let n = self.producer.get(name)?.clone();
        if depth > MAX_DEPTH || !matches!(n.domain.as_deref().unwrap_or(""), "" | "ai.onnx") {
            return None;
        }
        let s = self.scale as i64;
        match n.op_type.as_deref()? {
            "Identity" => self.phases(n.input.first()?, depth + 1),
            "DepthToSpace" => (int(&n, "blocksize") == Some(s) && text(&n, "mode").as_deref() == Some("CRD"))
                .then(|| n.input.first().cloned())
                .flatten(),
            "Add" if n.input.len() == 2 => {
                let a = self.phases(&n.input[0], depth + 1)?;
                let b = self.phases(&n.input[1], depth + 1)?;
                let out = format!("{name}.phases");
                self.added.push(node("Add", out.clone(), vec![a, b], out.clone()));
                Some(out)
            }
            "ConvTranspose" => self.conv_transpose(&n, name),
            _ => None,
        }
    }

    fn conv_transpose(&mut self, n: &NodeProto, name: &str) -> Option<String> {
        let s = self.scale as i64;
        let w = self.constants.get(n.input.get(1)?)?;
        let dims: [usize; 4] = w.dims.iter().map(|&d| d as usize).collect::<Vec<_>>().try_into().ok()?;
        let values = float_values(w)?;
        if values.len() != dims.iter().product::<usize>()
            || int(n, "group").unwrap_or(1) != 1
            || ints(n, "strides")? != [s, s]
            || ints(n, "dilations").is_some_and(|d| d.iter().any(|&v| v != 1))
            || text(n, "auto_pad").is_some_and(|a| a != "NOTSET")
            || ints(n, "output_shape").is_some()
        {
            return None;
        }
        let pads = ints(n, "pads").unwrap_or(vec![0; 4]);
        let op = ints(n, "output_padding").unwrap_or(vec![0; 2]);
        let k = [dims[2] as i64, dims[3] as i64];
        // the output is exactly s times the input on both axes
        if pads.len() != 4 || op.len() != 2 || (0..2).any(|a| k[a] - pads[a] - pads[a + 2] + op[a] != s) {
            return None;
        }
        let (weight, conv_pads, [ky, kx]) = phase_weight(&values, dims, [pads[0], pads[1]], self.scale)?;
        let out = format!("{name}.phases");
        let wname = format!("{out}.weight");
        let cout = dims[1] * self.scale * self.scale;
        let wdims = vec![cout as i64, dims[0] as i64, ky as i64, kx as i64];
        self.weights.push(float_tensor(&wname, wdims, &weight));
        let mut input = vec![n.input[0].clone(), wname];
        if let Some(b) = n.input.get(2).filter(|b| !b.is_empty()) {
            let bias = float_values(self.constants.get(b)?)?;
            if bias.len() != dims[1] {
                return None;
            }
            let per_phase: Vec<f32> = bias
                .iter()
                .flat_map(|&v| std::iter::repeat_n(v, (s * s) as usize))
                .collect();
            let bname = format!("{out}.bias");
            self.weights.push(float_tensor(&bname, vec![cout as i64], &per_phase));
            input.push(bname);
        }
        self.added.push(NodeProto {
            attribute: vec![
                attribute("kernel_shape", &Attr::Ints(&[ky as i64, kx as i64])),
                attribute("pads", &Attr::Ints(&conv_pads)),
            ],
            ..node("Conv", out.clone(), input, out.clone())
        });
        Some(out)
    }
}

/// Drops the nodes and initializers nothing uses any more (initializers that are also graph
/// inputs stay: they are part of the graph's interface).
fn prune(graph: &mut GraphProto) {
    let producer: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(k, n)| n.output.iter().map(move |o| (o.as_str(), k)))
        .collect();
    let mut needed: HashSet<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
    let mut todo: Vec<String> = needed.iter().cloned().collect();
    let mut keep = vec![false; graph.node.len()];
    while let Some(t) = todo.pop() {
        let Some(&k) = producer.get(t.as_str()) else {
            continue;
        };
        if !keep[k] {
            keep[k] = true;
            for i in &graph.node[k].input {
                if needed.insert(i.clone()) {
                    todo.push(i.clone());
                }
            }
        }
    }
    let mut k = 0;
    graph.node.retain(|_| {
        k += 1;
        keep[k - 1]
    });
    let inputs: HashSet<String> = graph.input.iter().filter_map(|i| i.name.clone()).collect();
    graph.initializer.retain(|t| {
        t.name
            .as_ref()
            .is_some_and(|n| needed.contains(n) || inputs.contains(n))
    });
    graph
        .value_info
        .retain(|v| v.name.as_ref().is_some_and(|n| needed.contains(n)));
}

/// The serialised ×`scale` branch with its output `output` given as phase planes (see the top
/// of this file), or None when the graph does not end in a form recognised here.
pub fn phase_output(bytes: &[u8], output: &str, scale: usize) -> Option<Vec<u8>> {
    let mut model = ModelProto::decode(bytes).ok()?;
    let graph = model.graph.as_mut()?;
    // the output's HR values must not be used inside the graph too
    if graph.node.iter().any(|n| n.input.iter().any(|i| i == output)) {
        return None;
    }
    let mut rw = Rewriter {
        producer: HashMap::new(),
        constants: constants(graph),
        scale,
        added: Vec::new(),
        weights: Vec::new(),
        done: HashMap::new(),
    };
    for n in &graph.node {
        for o in &n.output {
            rw.producer.insert(o.clone(), n.clone());
        }
    }
    let phases = rw.phases(output, 0)?;
    let (added, weights) = (rw.added, rw.weights);
    // The old producer of the output goes; an Identity names the phases instead.
    graph.node.retain(|n| !n.output.iter().any(|o| o == output));
    graph.node.extend(added);
    graph.node.push(node(
        "Identity",
        format!("{output}.phases_identity"),
        vec![phases],
        output.into(),
    ));
    graph.initializer.extend(weights);
    // The declared output shape was the HR one: keep the element type, drop the shape.
    graph.value_info.retain(|v| v.name.as_deref() != Some(output));
    for o in graph.output.iter_mut().filter(|o| o.name.as_deref() == Some(output)) {
        if let Some(super::proto::type_proto::Value::TensorType(t)) = o.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            t.shape = None;
        }
    }
    prune(graph);
    Some(model.encode_to_vec())
}
