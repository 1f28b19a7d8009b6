// The ClassSR training losses: L1, Class-Loss (pushes each tile's class probabilities towards
// one-hot) and Average-Loss (keeps the three classes equally used over a batch).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Mean absolute error.
pub fn l1<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, 1> {
    (a - b).abs().mean()
}

/// mean_i [2 − Σ_{j<k} |p_ij − p_ik|] for probabilities p [n, 3]: 0 when every row is one-hot,
/// 2 when every row is uniform.
pub fn class_loss<B: Backend>(p: Tensor<B, 2>) -> Tensor<B, 1> {
    let col = |j: usize| p.clone().narrow(1, j, 1);
    let pairwise = (col(0) - col(1)).abs() + (col(0) - col(2)).abs() + (col(1) - col(2)).abs();
    pairwise.neg().add_scalar(2.0).mean()
}

/// Σ_j |Σ_i p_ij − n/3| / (4n/3) for probabilities p [n, 3]: 0 when the batch is split evenly
/// between the classes, 1 when it all goes to one class.
pub fn average_loss<B: Backend>(p: Tensor<B, 2>) -> Tensor<B, 1> {
    let n = p.dims()[0] as f64;
    let per_class: Tensor<B, 2> = p.sum_dim(0); // [1, 3]
    per_class.sub_scalar(n / 3.0).abs().sum().div_scalar(4.0 * n / 3.0)
}

/// Loss weights (L1, Class-Loss, Average-Loss) of the official code.
pub const WEIGHTS: (f64, f64, f64) = (1000.0, 0.5, 3.0);
