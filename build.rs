// Compiles the vendored ONNX protobuf schema (proto/onnx.proto) into Rust types with
// protox + prost-build, so no `protoc` is needed at build time.
fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let fds = protox::compile(["onnx.proto"], ["proto"]).expect("proto/onnx.proto must compile");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("prost-build must generate the ONNX types");
}
