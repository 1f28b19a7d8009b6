// A small graph builder over the generated ONNX protobuf types: named inputs and outputs,
// f32 initializers, nodes with attributes, and serialisation to a ModelProto.

use prost::Message;

use super::proto::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

/// The ONNX opset every graph of this project is written for.
pub const OPSET: i64 = 17;
/// ONNX IR version matching [`OPSET`].
const IR_VERSION: i64 = 8;

/// One dimension of a graph input or output.
#[derive(Debug, Clone, Copy)]
pub enum Dim<'a> {
    Fixed(i64),
    Symbolic(&'a str),
}

/// An attribute value of a node.
pub enum Attr<'a> {
    Int(i64),
    Ints(&'a [i64]),
    Float(f32),
    Str(&'a str),
}

/// The node attribute `name` = `value`.
pub(crate) fn attribute(name: &str, value: &Attr) -> AttributeProto {
    let mut a = AttributeProto {
        name: Some(name.to_string()),
        ..Default::default()
    };
    match value {
        Attr::Int(v) => {
            a.i = Some(*v);
            a.r#type = Some(AttributeType::Int as i32);
        }
        Attr::Ints(v) => {
            a.ints = v.to_vec();
            a.r#type = Some(AttributeType::Ints as i32);
        }
        Attr::Float(v) => {
            a.f = Some(*v);
            a.r#type = Some(AttributeType::Float as i32);
        }
        Attr::Str(v) => {
            a.s = Some(v.as_bytes().to_vec());
            a.r#type = Some(AttributeType::String as i32);
        }
    }
    a
}

/// Builds one ONNX graph node by node.
pub struct GraphBuilder {
    graph: GraphProto,
    counter: usize,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            graph: GraphProto {
                name: Some(name.to_string()),
                ..Default::default()
            },
            counter: 0,
        }
    }

    fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| tensor_shape_proto::Dimension {
                denotation: None,
                value: Some(match d {
                    Dim::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                    Dim::Symbolic(s) => tensor_shape_proto::dimension::Value::DimParam(s.to_string()),
                }),
            })
            .collect();
        ValueInfoProto {
            name: Some(name.to_string()),
            r#type: Some(TypeProto {
                denotation: None,
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(elem as i32),
                    shape: Some(TensorShapeProto { dim }),
                })),
            }),
            ..Default::default()
        }
    }

    /// Declares an f32 graph input.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        self.typed_input(name, DataType::Float, dims)
    }

    /// Declares a graph input of element type `elem`.
    pub fn typed_input(&mut self, name: &str, elem: DataType, dims: &[Dim]) -> String {
        self.graph.input.push(Self::value_info(name, elem, dims));
        name.to_string()
    }

    /// Declares an f32 graph output produced by the node output `from` (an Identity renames it).
    pub fn output(&mut self, name: &str, from: &str, dims: &[Dim]) {
        self.typed_output(name, DataType::Float, from, dims);
    }

    /// Declares a graph output of element type `elem` produced by the node output `from`.
    pub fn typed_output(&mut self, name: &str, elem: DataType, from: &str, dims: &[Dim]) {
        if from != name {
            self.node("Identity", &[from], &[name], &[]);
        }
        self.graph.output.push(Self::value_info(name, elem, dims));
    }

    /// Adds an f32 initializer (a constant weight) and returns its name.
    pub fn weight(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "initializer {name}: shape {shape:?} does not match {} values",
            data.len()
        );
        self.initializer(
            name,
            shape,
            DataType::Float,
            data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }

    fn initializer(&mut self, name: &str, shape: &[usize], elem: DataType, raw: Vec<u8>) -> String {
        self.graph.initializer.push(TensorProto {
            name: Some(name.to_string()),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: Some(elem as i32),
            raw_data: Some(raw),
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds a u8 initializer and returns its name.
    pub fn bytes(&mut self, name: &str, shape: &[usize], data: &[u8]) -> String {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "initializer {name}");
        self.initializer(name, shape, DataType::Uint8, data.to_vec())
    }

    /// Adds an i64 initializer of any shape and returns its name.
    pub fn int64_tensor(&mut self, name: &str, shape: &[usize], data: &[i64]) -> String {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "initializer {name}");
        self.initializer(
            name,
            shape,
            DataType::Int64,
            data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }

    /// Adds an i64 initializer (shapes, pads, axes) and returns its name.
    pub fn int64s(&mut self, name: &str, data: &[i64]) -> String {
        self.int64_tensor(name, &[data.len()], data)
    }

    /// Adds a node and returns the name of its first output.
    pub fn node(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        self.counter += 1;
        let attribute = attrs.iter().map(|(name, value)| attribute(name, value)).collect();
        self.graph.node.push(NodeProto {
            op_type: Some(op.to_string()),
            name: Some(format!("{op}_{}", self.counter)),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute,
            ..Default::default()
        });
        outputs[0].to_string()
    }

    /// Adds a single-output node whose output gets a fresh name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = format!("t{}_{}", self.counter + 1, op.to_lowercase());
        self.node(op, inputs, &[&out], attrs)
    }

    /// 2-D convolution with square kernel `k`, stride `s`, symmetric padding `p`.
    pub fn conv(&mut self, x: &str, w: &str, b: &str, k: i64, s: i64, p: i64) -> String {
        self.op(
            "Conv",
            &[x, w, b],
            &[
                ("kernel_shape", Attr::Ints(&[k, k])),
                ("strides", Attr::Ints(&[s, s])),
                ("pads", Attr::Ints(&[p, p, p, p])),
            ],
        )
    }

    /// 2-D transposed convolution (square kernel, stride, padding, output padding, groups).
    #[allow(clippy::too_many_arguments)]
    pub fn conv_transpose(
        &mut self,
        x: &str,
        w: &str,
        b: Option<&str>,
        k: i64,
        s: i64,
        p: i64,
        out_pad: i64,
        group: i64,
    ) -> String {
        let mut inputs = vec![x, w];
        if let Some(b) = b {
            inputs.push(b);
        }
        self.op(
            "ConvTranspose",
            &inputs,
            &[
                ("kernel_shape", Attr::Ints(&[k, k])),
                ("strides", Attr::Ints(&[s, s])),
                ("pads", Attr::Ints(&[p, p, p, p])),
                ("output_padding", Attr::Ints(&[out_pad, out_pad])),
                ("group", Attr::Int(group)),
            ],
        )
    }

    pub fn leaky_relu(&mut self, x: &str, alpha: f32) -> String {
        self.op("LeakyRelu", &[x], &[("alpha", Attr::Float(alpha))])
    }

    /// Finishes the graph into a model for [`OPSET`] with the given metadata.
    pub fn finish(self, doc: &str, metadata: &[(&str, &str)]) -> ModelProto {
        ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(OPSET),
            }],
            producer_name: Some("gst-classsr".to_string()),
            producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            doc_string: Some(doc.to_string()),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some(k.to_string()),
                    value: Some(v.to_string()),
                })
                .collect(),
            graph: Some(self.graph),
            ..Default::default()
        }
    }
}

/// Serialises a model to the bytes of an .onnx file.
pub fn to_bytes(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}
