// ONNX writing, shared by the runtime (known-answer models) and the trainer (export):
// the generated protobuf types, a graph builder, and the project's architectures.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

mod builder;
mod graphs;

pub use builder::{to_bytes, Attr, Dim, GraphBuilder, OPSET};
pub use graphs::{
    build, build_bytes, resampler_weight, Arch, Kernel, Tensor, Weights, BRANCH_OUTPUT, CLASSIFIER_OUTPUT, INPUT,
};
