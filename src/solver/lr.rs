//! Learning-rate policies (Caffe's `lr_policy`).

use crate::{bail, Result};
use crema_proto::caffe::SolverParameter;

/// A parsed learning-rate policy.
#[derive(Debug, Clone, PartialEq)]
pub enum LrPolicy {
    Fixed,
    Step { gamma: f32, stepsize: i32 },
    Exp { gamma: f32 },
    Inv { gamma: f32, power: f32 },
    MultiStep { gamma: f32, steps: Vec<i32> },
    Poly { power: f32, max_iter: i32 },
    Sigmoid { gamma: f32, stepsize: i32 },
}

impl LrPolicy {
    /// Reads the policy and checks its parameters.
    pub fn from_solver(p: &SolverParameter) -> Result<Self> {
        let policy = p.lr_policy();
        Ok(match policy {
            "fixed" | "" => LrPolicy::Fixed,
            "step" => {
                if p.stepsize() <= 0 {
                    bail!("lr_policy \"step\" needs a positive stepsize");
                }
                LrPolicy::Step { gamma: p.gamma(), stepsize: p.stepsize() }
            }
            "exp" => LrPolicy::Exp { gamma: p.gamma() },
            "inv" => LrPolicy::Inv { gamma: p.gamma(), power: p.power() },
            "multistep" => {
                if p.stepvalue.windows(2).any(|w| w[1] <= w[0]) {
                    bail!("lr_policy \"multistep\" needs increasing stepvalue entries, got {:?}", p.stepvalue);
                }
                LrPolicy::MultiStep { gamma: p.gamma(), steps: p.stepvalue.clone() }
            }
            "poly" => LrPolicy::Poly { power: p.power(), max_iter: p.max_iter() },
            "sigmoid" => {
                if p.stepsize() <= 0 {
                    bail!("lr_policy \"sigmoid\" needs a positive stepsize");
                }
                LrPolicy::Sigmoid { gamma: p.gamma(), stepsize: p.stepsize() }
            }
            other => bail!(
                "unknown lr_policy \"{other}\"; use fixed, step, exp, inv, multistep, poly or sigmoid"
            ),
        })
    }

    /// The rate at iteration `iter`; `current_step` is multistep's position (advanced here).
    pub fn rate(&self, base_lr: f32, iter: i32, current_step: &mut i32) -> f32 {
        let it = iter as f64;
        let base = base_lr as f64;
        let r = match self {
            LrPolicy::Fixed => base,
            LrPolicy::Step { gamma, stepsize } => {
                *current_step = iter / stepsize;
                base * (*gamma as f64).powi(*current_step)
            }
            LrPolicy::Exp { gamma } => base * (*gamma as f64).powf(it),
            LrPolicy::Inv { gamma, power } => {
                base * (1.0 + *gamma as f64 * it).powf(-(*power as f64))
            }
            LrPolicy::MultiStep { gamma, steps } => {
                while (*current_step as usize) < steps.len()
                    && iter >= steps[*current_step as usize]
                {
                    *current_step += 1;
                    tracing::info!("MultiStep Status: Iteration {iter}, step = {current_step}");
                }
                base * (*gamma as f64).powi(*current_step)
            }
            LrPolicy::Poly { power, max_iter } => {
                let frac = 1.0 - it / (*max_iter).max(1) as f64;
                base * frac.max(0.0).powf(*power as f64)
            }
            LrPolicy::Sigmoid { gamma, stepsize } => {
                base / (1.0 + (-(*gamma as f64) * (it - *stepsize as f64)).exp())
            }
        };
        r as f32
    }
}

/// An lr_policy with crema's two extensions (SolverParameter fields `warmup` and `min_lr`, not in
/// Caffe): rate(i) = max(min_lr, policy(i)) · ((i + 1) / warmup while i < warmup, else 1).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub policy: LrPolicy,
    /// Iterations of linear warm-up (0: none).
    pub warmup: i32,
    /// Floor under the policy's rate (0: none).
    pub min_lr: f32,
}

impl Schedule {
    /// Reads lr_policy, warmup and min_lr and checks them.
    pub fn from_solver(p: &SolverParameter) -> Result<Self> {
        let policy = LrPolicy::from_solver(p)?;
        if p.warmup() < 0 {
            bail!(
                "warmup must be 0 or a number of iterations, got {}",
                p.warmup()
            );
        }
        if p.min_lr().is_nan() || p.min_lr() < 0.0 {
            bail!("min_lr must be 0 or positive, got {}", p.min_lr());
        }
        if p.warmup() > 0 {
            tracing::info!(
                "crema extension: linear learning-rate warm-up over the first {} iterations",
                p.warmup()
            );
        }
        if p.min_lr() > 0.0 {
            tracing::info!(
                "crema extension: learning rate floored at min_lr = {}",
                fmt_g(p.min_lr())
            );
        }
        Ok(Schedule {
            policy,
            warmup: p.warmup(),
            min_lr: p.min_lr(),
        })
    }

    /// The rate at iteration `iter`; `current_step` is multistep's position (advanced here).
    pub fn rate(&self, base_lr: f32, iter: i32, current_step: &mut i32) -> f32 {
        let mut r = (self.policy.rate(base_lr, iter, current_step) as f64).max(self.min_lr as f64);
        if iter < self.warmup {
            r *= (iter as f64 + 1.0) / self.warmup as f64;
        }
        r as f32
    }
}

/// Formats a float like C++ streams do by default (6 significant digits, %g), as Caffe's logs.
pub fn fmt_g(v: f32) -> String {
    let v = v as f64;
    if v == 0.0 {
        return "0".to_string();
    }
    if !v.is_finite() {
        return if v.is_nan() {
            "nan".into()
        } else if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let exp = v.abs().log10().floor() as i32;
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if !(-5..6).contains(&exp) {
        let s = format!("{:.5e}", v);
        // Rust prints 1.23450e-5; C++ prints 1.2345e-05.
        let (mant, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        format!(
            "{}e{}{:02}",
            trim(mant.to_string()),
            if e < 0 { '-' } else { '+' },
            e.abs()
        )
    } else {
        let decimals = (5 - exp).max(0) as usize;
        trim(format!("{:.*}", decimals, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g_format_matches_cpp_streams() {
        assert_eq!(fmt_g(0.9914), "0.9914");
        assert_eq!(fmt_g(0.99140006), "0.9914");
        assert_eq!(fmt_g(1.234_567), "1.23457");
        assert_eq!(fmt_g(0.01), "0.01");
        assert_eq!(fmt_g(1e-5), "1e-05");
        assert_eq!(fmt_g(123456.0), "123456");
        assert_eq!(fmt_g(1234567.0), "1.23457e+06");
        assert_eq!(fmt_g(0.000123), "0.000123");
    }

    fn solver(text: &str) -> SolverParameter {
        crema_proto::parse_text(text, "test", "caffe.SolverParameter").unwrap()
    }

    #[test]
    fn warmup_ramps_linearly_then_hands_over_to_the_policy() {
        let s = Schedule::from_solver(&solver(
            "base_lr: 0.1 lr_policy: \"step\" gamma: 0.5 stepsize: 6 warmup: 4",
        ))
        .unwrap();
        let mut cur = 0;
        let rates: Vec<f32> = (0..8).map(|i| s.rate(0.1, i, &mut cur)).collect();
        let want = [0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.05, 0.05];
        for (i, (r, w)) in rates.iter().zip(want).enumerate() {
            assert!(
                (r - w).abs() < 1e-7,
                "iteration {i}: {r} vs {w} ({rates:?})"
            );
        }
        // Without the extension fields the schedule is the plain policy.
        let plain =
            Schedule::from_solver(&solver("base_lr: 0.1 lr_policy: \"exp\" gamma: 0.5")).unwrap();
        assert_eq!((plain.warmup, plain.min_lr), (0, 0.0));
        assert_eq!(plain.rate(0.1, 0, &mut cur), 0.1);
        assert!((plain.rate(0.1, 3, &mut cur) - 0.0125).abs() < 1e-9);
    }

    #[test]
    fn min_lr_floors_the_policy_and_warmup_scales_the_floored_rate() {
        let s = Schedule::from_solver(&solver(
            "base_lr: 1 lr_policy: \"exp\" gamma: 0.5 min_lr: 0.2 warmup: 2",
        ))
        .unwrap();
        let mut cur = 0;
        // exp: 1, 0.5, 0.25, 0.125 -> floored 0.2; iterations 0 and 1 warm up by 1/2 and 2/2.
        let rates: Vec<f32> = (0..5).map(|i| s.rate(1.0, i, &mut cur)).collect();
        let want = [0.5, 0.5, 0.25, 0.2, 0.2];
        for (i, (r, w)) in rates.iter().zip(want).enumerate() {
            assert!(
                (r - w).abs() < 1e-7,
                "iteration {i}: {r} vs {w} ({rates:?})"
            );
        }
        // poly reaches 0 at max_iter; the floor holds it at min_lr.
        let poly = Schedule::from_solver(&solver(
            "base_lr: 0.1 lr_policy: \"poly\" power: 1 max_iter: 10 min_lr: 0.001",
        ))
        .unwrap();
        assert!((poly.rate(0.1, 10, &mut cur) - 0.001).abs() < 1e-9);
        assert!((poly.rate(0.1, 5, &mut cur) - 0.05).abs() < 1e-8);
    }

    #[test]
    fn bad_extension_values_are_refused() {
        let e = Schedule::from_solver(&solver("base_lr: 0.1 warmup: -5")).unwrap_err();
        assert!(e.to_string().contains("warmup must be"), "{e}");
        let e = Schedule::from_solver(&solver("base_lr: 0.1 min_lr: -0.5")).unwrap_err();
        assert!(e.to_string().contains("min_lr must be"), "{e}");
    }

    #[test]
    fn policies_follow_caffe_formulas() {
        let mut s = 0;
        let inv = LrPolicy::Inv {
            gamma: 1e-4,
            power: 0.75,
        };
        let r = inv.rate(0.01, 100, &mut s);
        assert!((r - 0.01 * (1.0f32 + 1e-4 * 100.0).powf(-0.75)).abs() < 1e-9);
        let step = LrPolicy::Step {
            gamma: 0.1,
            stepsize: 10,
        };
        assert!((step.rate(1.0, 25, &mut s) - 0.01).abs() < 1e-7);
        let mut cur = 0;
        let ms = LrPolicy::MultiStep {
            gamma: 0.5,
            steps: vec![5, 10],
        };
        assert_eq!(ms.rate(1.0, 4, &mut cur), 1.0);
        assert_eq!(ms.rate(1.0, 5, &mut cur), 0.5);
        assert_eq!(ms.rate(1.0, 12, &mut cur), 0.25);
        let poly = LrPolicy::Poly {
            power: 1.0,
            max_iter: 100,
        };
        assert!((poly.rate(1.0, 50, &mut s) - 0.5).abs() < 1e-7);
        let sig = LrPolicy::Sigmoid {
            gamma: 1.0,
            stepsize: 10,
        };
        assert!((sig.rate(1.0, 10, &mut s) - 0.5).abs() < 1e-7);
        let exp = LrPolicy::Exp { gamma: 0.5 };
        assert!((exp.rate(1.0, 2, &mut s) - 0.25).abs() < 1e-7);
    }
}
