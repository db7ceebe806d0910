//! Key choice: YCSB's zipfian distribution (Gray et al., "Quickly
//! Generating Billion-Record Synthetic Databases", SIGMOD 1994), with the
//! item's rank scrambled by a hash as YCSB's default `zipfian` request
//! distribution does, so the popular keys are spread over the key space
//! instead of all sitting at its start (which would favour whichever system
//! caches the first pages of a table).

use rand::Rng;

/// YCSB's default skew.
pub const THETA_DEFAULT: f64 = 0.99;

/// Ranks `0..items`, rank `r` drawn with probability proportional to
/// `1 / (r + 1)^theta`.
#[derive(Debug, Clone)]
pub struct Zipf {
    items: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
    /// `1 + 0.5^theta`: the cumulative weight of ranks 0 and 1 over zeta(2)'s
    /// first term.
    half_pow_theta: f64,
}

impl Zipf {
    /// A generator over `items` ranks; `items` ≥ 1 and 0 < `theta` < 1.
    pub fn new(items: u64, theta: f64) -> Zipf {
        assert!(items >= 1, "zipfian over no items");
        assert!(theta > 0.0 && theta < 1.0, "theta {theta} outside (0, 1)");
        let zeta_n = zeta(items, theta);
        let zeta_2 = zeta(2.min(items), theta);
        let alpha = 1.0 / (1.0 - theta);
        let eta = if items > 1 {
            (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n)
        } else {
            0.0
        };
        Zipf {
            items,
            theta,
            alpha,
            zeta_n,
            eta,
            half_pow_theta: 1.0 + 0.5f64.powf(theta),
        }
    }

    /// A rank: 0 is the most popular.
    pub fn rank<R: Rng>(&self, rng: &mut R) -> u64 {
        let u: f64 = rng.gen();
        let uz = u * self.zeta_n;
        if uz < 1.0 || self.items == 1 {
            return 0;
        }
        if uz < self.half_pow_theta {
            return 1;
        }
        let r = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.items - 1)
    }

    /// An item: a rank scrambled over `0..items` (YCSB's
    /// `ScrambledZipfianGenerator` does the same with FNV-1a).
    pub fn item<R: Rng>(&self, rng: &mut R) -> u64 {
        fnv1a64(self.rank(rng)) % self.items
    }

    pub fn theta(&self) -> f64 {
        self.theta
    }
}

/// `sum_{i=1..n} 1 / i^theta`.
fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// FNV-1a over the value's eight little-endian bytes.
fn fnv1a64(v: u64) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    v.to_le_bytes()
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn ranks_follow_the_zipfian_weights() {
        let n = 1000;
        let z = Zipf::new(n, THETA_DEFAULT);
        let mut rng = StdRng::seed_from_u64(7);
        let draws = 200_000;
        let mut counts = vec![0u64; n as usize];
        for _ in 0..draws {
            let r = z.rank(&mut rng);
            assert!(r < n);
            counts[r as usize] += 1;
        }
        // P(rank r) = 1 / ((r + 1)^theta * zeta(n)): exact for ranks 0 and 1;
        // the rest come from Gray's closed form, an approximation (YCSB's
        // too: rank 2 draws about 18 % more than its weight here).
        let zn = zeta(n, THETA_DEFAULT);
        for r in 0..2u64 {
            let want = draws as f64 / ((r + 1) as f64).powf(THETA_DEFAULT) / zn;
            let got = counts[r as usize] as f64;
            assert!(
                (got - want).abs() / want < 0.05,
                "rank {r}: {got} draws, want about {want:.0}"
            );
        }
        // Skewed: the top 1 % of ranks take far more than 1 % of draws.
        let top: u64 = counts[..10].iter().sum();
        assert!(top as f64 / draws as f64 > 0.3, "top 10 ranks: {top}");
    }

    #[test]
    fn scrambled_items_stay_in_range_and_spread() {
        let n = 100_000;
        let z = Zipf::new(n, THETA_DEFAULT);
        let mut rng = StdRng::seed_from_u64(1);
        let mut low_half = 0;
        for _ in 0..10_000 {
            let i = z.item(&mut rng);
            assert!(i < n);
            if i < n / 2 {
                low_half += 1;
            }
        }
        // The hot items are not all at the start of the key space.
        assert!(
            (2_000..8_000).contains(&low_half),
            "{low_half} in the low half"
        );
    }

    #[test]
    fn one_item() {
        let z = Zipf::new(1, THETA_DEFAULT);
        let mut rng = StdRng::seed_from_u64(3);
        assert!((0..100).all(|_| z.item(&mut rng) == 0));
    }
}
