//! Test distributions shared by the policy's unit tests.

use super::grid::FlipDist;

pub(super) fn lognormal_cdf(median: f64, sigma: f64) -> impl Fn(f64) -> f64 {
    move |a: f64| {
        if a <= 0.0 {
            0.0
        } else {
            0.5 * erfc(-(a / median).ln() / (sigma * std::f64::consts::SQRT_2))
        }
    }
}

fn erfc(x: f64) -> f64 {
    // Numerical Recipes' erfc, accurate to 1.2e-7: plenty for a test distribution.
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.26551223
            + t * (1.00002368
                + t * (0.37409196
                    + t * (0.09678418
                        + t * (-0.18628806
                            + t * (0.27886807
                                + t * (-1.13520398
                                    + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

pub(super) fn mix_a(n: usize) -> FlipDist {
    let ln = lognormal_cdf(45.0, 0.8);
    FlipDist::from_cdf(n, |a| {
        0.6 * ln(a.clamp(0.0, 550.0)) * f64::from(u8::from(a >= 5.0))
            + 0.1 * ((a - 60.0) / 120.0).clamp(0.0, 1.0)
    })
}
