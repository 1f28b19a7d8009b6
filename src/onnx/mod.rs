// ONNX writing, shared by the runtime (known-answer models) and the trainer (export):
// the generated protobuf types, a graph builder, the project's architectures, the graphs
// that move a frame's pixels to and from tiles, and the rewrites made before loading a graph
// (PReLU forms, phase planes, half precision).

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

mod builder;
pub mod frame_graphs;
mod graphs;
pub mod half;
pub mod phase_output;
pub mod rewrite;

pub use builder::{to_bytes, Attr, Dim, GraphBuilder, OPSET};
pub use graphs::{
    build, build_bytes, read_arch_weights, read_weights, resampler_weight, uses_external_data, Arch, Kernel, Tensor,
    Weights, BRANCH_OUTPUT, CLASSIFIER_OUTPUT, INPUT,
};
