// Adam (β = 0.9, 0.99) over a net's flat parameters with a cosine learning-rate schedule; its
// moments can be saved and restored so an interrupted stage resumes where it stopped.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};

use super::net::Net;
use crate::onnx::{Tensor as OnnxTensor, Weights};

pub const BETA1: f64 = 0.9;
pub const BETA2: f64 = 0.99;
const EPS: f64 = 1e-8;

/// Cosine annealing from `max` to `min` over `total` steps.
pub fn cosine_lr(step: usize, total: usize, max: f64, min: f64) -> f64 {
    let t = (step as f64 / total.max(1) as f64).min(1.0);
    min + 0.5 * (max - min) * (1.0 + (std::f64::consts::PI * t).cos())
}

pub struct Adam<B: AutodiffBackend> {
    pub step: u64,
    m: Vec<Tensor<B::InnerBackend, 1>>,
    v: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> Adam<B> {
    pub fn new(net: &Net<B>) -> Self {
        let zeros = |p: &Tensor<B, 1>| Tensor::<B::InnerBackend, 1>::zeros(p.dims(), &p.device());
        Adam {
            step: 0,
            m: net.params.iter().map(zeros).collect(),
            v: net.params.iter().map(zeros).collect(),
        }
    }

    /// One update of every parameter that has a gradient; parameters stay trainable.
    pub fn update(&mut self, net: &mut Net<B>, grads: &B::Gradients, lr: f64) {
        self.step += 1;
        let c1 = 1.0 - BETA1.powi(self.step as i32);
        let c2 = 1.0 - BETA2.powi(self.step as i32);
        for i in 0..net.params.len() {
            let Some(g) = net.params[i].grad(grads) else { continue };
            self.m[i] = self.m[i].clone().mul_scalar(BETA1) + g.clone().mul_scalar(1.0 - BETA1);
            self.v[i] = self.v[i].clone().mul_scalar(BETA2) + (g.clone() * g).mul_scalar(1.0 - BETA2);
            let denom = self.v[i].clone().div_scalar(c2).sqrt().add_scalar(EPS);
            let delta = self.m[i].clone().div_scalar(c1).div(denom).mul_scalar(lr);
            let w = net.params[i].clone().inner() - delta;
            net.params[i] = Tensor::from_inner(w).require_grad();
        }
    }

    /// The moments as named tensors (prefixed `m/` and `v/`).
    pub fn state(&self, net: &Net<B>) -> Weights {
        let mut w = Weights::new();
        for (i, name) in net.names().iter().enumerate() {
            for (prefix, t) in [("m", &self.m[i]), ("v", &self.v[i])] {
                let data = t.to_data().convert::<f32>().to_vec::<f32>().expect("f32");
                w.insert(
                    format!("{prefix}/{name}"),
                    OnnxTensor {
                        shape: vec![data.len()],
                        data,
                    },
                );
            }
        }
        w
    }

    pub fn restore(net: &Net<B>, state: &Weights, step: u64) -> Result<Self, String> {
        let mut a = Self::new(net);
        a.step = step;
        for (i, name) in net.names().iter().enumerate() {
            let device = net.params[i].device();
            let get = |prefix: &str| -> Result<Tensor<B::InnerBackend, 1>, String> {
                let t = state
                    .get(&format!("{prefix}/{name}"))
                    .ok_or_else(|| format!("checkpoint lacks {prefix}/{name}"))?;
                let want = net.params[i].dims()[0];
                if t.data.len() != want {
                    return Err(format!(
                        "checkpoint's {prefix}/{name} holds {} values; the parameter has {want}",
                        t.data.len()
                    ));
                }
                Ok(Tensor::from_data(
                    TensorData::new(t.data.clone(), [t.data.len()]),
                    &device,
                ))
            };
            a.m[i] = get("m")?;
            a.v[i] = get("v")?;
        }
        Ok(a)
    }
}
