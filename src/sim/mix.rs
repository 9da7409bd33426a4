//! Flip mixes: how the payments of a kind end, their draws and their distribution on the
//! grid.

use crate::payment::State;
use crate::policy::{FlipDist, Grid};

/// One part of a flip mix.
#[derive(Debug, Clone, PartialEq)]
pub enum Component {
    /// A share flipping at a log-normal age (seconds), optionally clipped to a range.
    LogNormal {
        share: f64,
        median_s: f64,
        sigma: f64,
        clip: Option<(f64, f64)>,
        state: State,
    },
    /// A share flipping at a uniform age (seconds).
    Uniform {
        share: f64,
        lo_s: f64,
        hi_s: f64,
        state: State,
    },
}

/// How the payments of a kind end: the rest of the shares never flip.
#[derive(Debug, Clone, PartialEq)]
pub enum Mix {
    Parametric(Vec<Component>),
    /// A distribution on a grid of `unit_ms` cells (e.g. the daemon's learnt one).
    Empirical {
        dist: FlipDist,
        unit_ms: i64,
    },
}

impl Mix {
    /// Mix A (UPI-like): 60% approved at log-normal(45 s, 0.8) clipped to 5–550 s, 10%
    /// declined at uniform 60–180 s, 30% never flip.
    pub fn a() -> Self {
        Mix::Parametric(vec![
            Component::LogNormal {
                share: 0.6,
                median_s: 45.0,
                sigma: 0.8,
                clip: Some((5.0, 550.0)),
                state: State::Succeeded,
            },
            Component::Uniform {
                share: 0.1,
                lo_s: 60.0,
                hi_s: 180.0,
                state: State::Failed,
            },
        ])
    }

    /// Mix B (slow): 40% approved at log-normal(180 s, 0.6), 10% declined at uniform
    /// 30–600 s, 50% never flip.
    pub fn b() -> Self {
        Mix::Parametric(vec![
            Component::LogNormal {
                share: 0.4,
                median_s: 180.0,
                sigma: 0.6,
                clip: None,
                state: State::Succeeded,
            },
            Component::Uniform {
                share: 0.1,
                lo_s: 30.0,
                hi_s: 600.0,
                state: State::Failed,
            },
        ])
    }

    /// A mix by name: `A` or `B`.
    pub fn named(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "A" => Some(Self::a()),
            "B" => Some(Self::b()),
            _ => None,
        }
    }

    /// Draws one payment's flip: its age in ms (scaled by `scale`: 1.0 for real
    /// seconds) and the state it ends in; `None` when it never flips.
    pub fn draw(&self, rng: &mut fastrand::Rng, scale: f64) -> Option<(i64, State)> {
        match self {
            Mix::Parametric(parts) => {
                let mut u = rng.f64();
                for part in parts {
                    let share = match part {
                        Component::LogNormal { share, .. } | Component::Uniform { share, .. } => {
                            *share
                        }
                    };
                    if u >= share {
                        u -= share;
                        continue;
                    }
                    let (secs, state) = match part {
                        Component::LogNormal {
                            median_s,
                            sigma,
                            clip,
                            state,
                            ..
                        } => {
                            let z = normal(rng);
                            let mut a = median_s * (sigma * z).exp();
                            if let Some((lo, hi)) = clip {
                                a = a.clamp(*lo, *hi);
                            }
                            (a, *state)
                        }
                        Component::Uniform {
                            lo_s, hi_s, state, ..
                        } => (lo_s + (hi_s - lo_s) * rng.f64(), *state),
                    };
                    return Some(((secs * 1000.0 * scale) as i64, state));
                }
                None
            }
            Mix::Empirical { dist, unit_ms } => {
                let u = rng.f64();
                let n = dist.cells();
                let cell = (1..=n).find(|&a| 1.0 - dist.survival(a) >= u)?;
                let ms = ((cell as f64 - rng.f64()) * *unit_ms as f64 * scale) as i64;
                Some((ms.max(1), State::Succeeded))
            }
        }
    }
}

impl Mix {
    /// The mix's flip-age distribution on `grid` (ages scaled by `scale`).
    pub fn dist(&self, grid: &Grid, scale: f64) -> FlipDist {
        match self {
            Mix::Empirical { dist, .. } => dist.clone(),
            Mix::Parametric(parts) => {
                let secs_per_cell = grid.unit_ms() as f64 / 1000.0 / scale;
                FlipDist::from_cdf(grid.cells(), |cell| {
                    let a = cell * secs_per_cell;
                    parts
                        .iter()
                        .map(|part| match part {
                            Component::LogNormal {
                                share,
                                median_s,
                                sigma,
                                clip,
                                ..
                            } => {
                                let (lo, hi) = clip.unwrap_or((0.0, f64::INFINITY));
                                let c = if a < lo {
                                    0.0
                                } else if a >= hi {
                                    1.0
                                } else {
                                    0.5 * erfc(
                                        -(a / median_s).ln() / (sigma * std::f64::consts::SQRT_2),
                                    )
                                };
                                share * c
                            }
                            Component::Uniform {
                                share, lo_s, hi_s, ..
                            } => share * ((a - lo_s) / (hi_s - lo_s)).clamp(0.0, 1.0),
                        })
                        .sum()
                })
            }
        }
    }
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, error < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = rng.f64().max(1e-12);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
