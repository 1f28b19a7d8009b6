// classsr-train: ClassSR's staged training in burn (Candle on CPU, CUDA behind a feature),
// exporting the four ONNX graphs through the project's own writer.

pub mod checkpoint;
pub mod data;
pub mod losses;
pub mod net;
pub mod optim;
pub mod pipeline;
pub mod report;
pub mod rng;

/// The CPU training backend.
// Candle is deprecated upstream in burn 0.21 but is the fastest CPU training backend measured
// here (0.20 s per Adam step of FSRCNN-56 at batch 16, against 1.93 s for NdArray).
#[allow(deprecated)]
pub type CpuBackend = burn::backend::Autodiff<burn::backend::Candle>;
/// burn's Flex CPU backend (multi-threaded, SIMD).
pub type FlexBackend = burn::backend::Autodiff<burn::backend::Flex>;
#[cfg(feature = "cuda")]
/// The CUDA training backend.
pub type CudaBackend = burn::backend::Autodiff<burn::backend::Cuda>;

/// Indices of `v` from its largest value to its smallest (ties: lower index first; NaN ranks
/// as equal to anything).
pub(crate) fn descending_order<T: PartialOrd>(v: &[T]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| {
        v[b].partial_cmp(&v[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    order
}
