//! Deterministic test rows for comparing fast paths with their scalar references.
//!
//! The rows cover the inputs where SIMD code most easily diverges: exact rounding ties, zeros
//! of both signs, subnormals, values whose scale becomes subnormal, magnitudes near and beyond
//! f16's range, single outliers and constant blocks.

/// A small xorshift generator, so tests need no extra dependency and rerun identically.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator started from `seed` (any value but zero works).
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// Returns the next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Returns a uniform value in `[0, 1)`.
    pub(crate) fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Returns a standard normal value (Box–Muller).
    pub(crate) fn normal(&mut self) -> f32 {
        let u1 = (self.uniform() as f64).max(1e-12);
        let u2 = self.uniform() as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

/// Returns named rows whose lengths are multiples of `block` values.
pub(crate) fn test_rows(block: usize) -> Vec<(String, Vec<f32>)> {
    let len = block * 8;
    let mut rng = Rng::new(0x5eed_1234_abcd_0001);
    let mut rows = Vec::new();

    for scale in [1.0f32, 1e-3, 0.02, 7.0] {
        for _ in 0..20 {
            let row = (0..len).map(|_| rng.normal() * scale).collect();
            rows.push((format!("normal × {scale}"), row));
        }
    }
    for _ in 0..10 {
        let row = (0..len).map(|_| rng.uniform() * 4.0 - 1.0).collect();
        rows.push(("uniform".to_string(), row));
        let row = (0..len).map(|_| rng.uniform()).collect();
        rows.push(("positive uniform".to_string(), row));
    }
    for _ in 0..10 {
        let row = (0..len)
            .map(|_| (rng.next_u64() % 33) as f32 * 0.5 - 8.0)
            .collect();
        rows.push(("halves and integers".to_string(), row));
    }
    rows.push(("zeros".to_string(), vec![0.0; len]));
    rows.push(("negative zeros".to_string(), vec![-0.0; len]));
    for _ in 0..10 {
        let row = (0..len)
            .map(|_| match rng.next_u64() % 4 {
                0 => 0.0,
                1 => -0.0,
                2 => rng.normal(),
                _ => rng.uniform(),
            })
            .collect();
        rows.push(("signed zeros mixed in".to_string(), row));
        let row = (0..len)
            .map(|_| if rng.next_u64() % 2 == 0 { 0.0 } else { -0.0 })
            .collect();
        rows.push(("zeros of both signs".to_string(), row));
    }
    for _ in 0..10 {
        let row = (0..len)
            .map(|_| f32::from_bits((rng.next_u64() as u32) & 0x807f_ffff))
            .collect();
        rows.push(("subnormals".to_string(), row));
    }
    for magnitude in [1e-38f32, 1e-37, 3e-37, 1e-36, 1e-35] {
        for _ in 0..4 {
            let row = (0..len).map(|_| rng.normal() * magnitude).collect();
            rows.push((format!("tiny normals × {magnitude}"), row));
        }
    }
    for magnitude in [6e4f32, 1e6, 1e30] {
        for _ in 0..4 {
            let row = (0..len).map(|_| rng.normal() * magnitude).collect();
            rows.push((format!("large × {magnitude}"), row));
        }
    }
    for _ in 0..10 {
        let mut row: Vec<f32> = (0..len).map(|_| rng.normal() * 0.05).collect();
        let at = (rng.next_u64() as usize) % len;
        row[at] = 40.0 * if rng.next_u64() % 2 == 0 { 1.0 } else { -1.0 };
        rows.push(("one outlier".to_string(), row));
    }
    for value in [1.0f32, -2.5, 1e-30, 65504.0] {
        rows.push((format!("constant {value}"), vec![value; len]));
    }
    rows
}
