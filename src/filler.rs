//! Caffe's weight fillers, drawing from the crate's seeded generator.

use crate::rng;
use crate::{bail, Result};
use crema_proto::caffe::filler_parameter::VarianceNorm;
use crema_proto::caffe::FillerParameter;
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// Values for a blob of `shape` as the filler describes (host memory).
pub fn fill(param: &FillerParameter, shape: &[usize]) -> Result<Vec<f32>> {
    let n: usize = shape.iter().product();
    let num = shape.first().copied().unwrap_or(1).max(1);
    let fan_in = n / num;
    let fan_out = if shape.len() > 1 {
        n / shape[1].max(1)
    } else {
        n
    };
    let fan = |norm: VarianceNorm| -> f32 {
        match norm {
            VarianceNorm::FanIn => fan_in as f32,
            VarianceNorm::FanOut => fan_out as f32,
            VarianceNorm::Average => (fan_in + fan_out) as f32 / 2.0,
        }
    };
    let v = match param.r#type() {
        "constant" => vec![param.value(); n],
        "uniform" => uniform(n, param.min(), param.max())?,
        "gaussian" => {
            let mut v = gaussian(n, param.mean(), param.std())?;
            let sparse = param.sparse();
            if sparse >= 0 {
                // Each output keeps on average `sparse` non-zero inputs.
                let p = sparse as f64 / num as f64;
                rng::with(|r| {
                    for x in v.iter_mut() {
                        if !r.gen_bool(p.clamp(0.0, 1.0)) {
                            *x = 0.0;
                        }
                    }
                });
            }
            v
        }
        "positive_unitball" => {
            let mut v = uniform(n, 0.0, 1.0)?;
            let dim = n / num;
            for row in v.chunks_mut(dim.max(1)) {
                let s: f32 = row.iter().sum();
                row.iter_mut().for_each(|x| *x /= s);
            }
            v
        }
        "xavier" => {
            let scale = (3.0 / fan(param.variance_norm())).sqrt();
            uniform(n, -scale, scale)?
        }
        "msra" => {
            let std = (2.0 / fan(param.variance_norm())).sqrt();
            gaussian(n, 0.0, std)?
        }
        "bilinear" => {
            if shape.len() != 4 || shape[2] != shape[3] {
                bail!("bilinear filler needs a 4-D blob with square kernels, got shape {shape:?}");
            }
            let k = shape[3];
            let f = (k as f32 / 2.0).ceil();
            let c = (2.0 * f - 1.0 - (f % 2.0)) / (2.0 * f);
            (0..n)
                .map(|i| {
                    let x = (i % k) as f32;
                    let y = ((i / k) % k) as f32;
                    (1.0 - (x / f - c).abs()) * (1.0 - (y / f - c).abs())
                })
                .collect()
        }
        other => bail!(
            "unknown filler type `{other}`; use constant, uniform, gaussian, positive_unitball, xavier, msra or bilinear"
        ),
    };
    Ok(v)
}

fn uniform(n: usize, lo: f32, hi: f32) -> Result<Vec<f32>> {
    if lo > hi {
        bail!("uniform filler needs min <= max, got min {lo} max {hi}");
    }
    Ok(rng::with(|r| {
        (0..n)
            .map(|_| if lo == hi { lo } else { r.gen_range(lo..hi) })
            .collect()
    }))
}

fn gaussian(n: usize, mean: f32, std: f32) -> Result<Vec<f32>> {
    let d = match Normal::new(mean, std) {
        Ok(d) => d,
        Err(_) => bail!("gaussian filler needs std >= 0, got {std}"),
    };
    Ok(rng::with(|r| (0..n).map(|_| d.sample(r)).collect()))
}
