//! Choosing the next token from logits: greedy, or temperature, top-k and top-p sampling,
//! with an optional repetition penalty, driven by a seeded generator.
//!
//! The order of steps is transformers' (`RepetitionPenaltyLogitsProcessor`, then temperature,
//! top-k, top-p): the penalty divides a positive logit by `repeat_penalty` and multiplies a
//! negative one by it, once for each distinct token in the history (prompt and generated).
//! Temperature 0 means greedy: the highest logit wins and ties go to the lowest id.
//!
//! The generator is SplitMix64 (Steele, Lea and Flood, 2014): the same seed gives the same
//! tokens on every platform, and it needs no dependency.

/// Sampling settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct SamplingOptions {
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probabilities reach `top_p`; 1 keeps
    /// all.
    pub top_p: f32,
    /// Penalty for tokens already in the history; 1 disables it.
    pub repeat_penalty: f32,
    /// Seed of the generator.
    pub seed: u64,
}

/// A deterministic 64-bit generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// Creates a generator from a seed.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)` with 24 random bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Picks tokens; its buffers are allocated once for the vocabulary.
pub struct Sampler {
    options: SamplingOptions,
    rng: SplitMix64,
    candidates: Vec<u32>,
    seen: Vec<u64>,
}

impl Sampler {
    /// Creates a sampler for a vocabulary of `vocab` tokens.
    pub fn new(options: SamplingOptions, vocab: usize) -> Sampler {
        Sampler {
            options,
            rng: SplitMix64::new(options.seed),
            candidates: Vec::with_capacity(vocab),
            seen: vec![0; vocab.div_ceil(64)],
        }
    }

    /// The settings.
    pub fn options(&self) -> &SamplingOptions {
        &self.options
    }

    /// Chooses the next token. `logits` is modified by the penalty and temperature.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        if self.options.repeat_penalty != 1.0 {
            self.apply_repeat_penalty(logits, history);
        }
        if self.options.temperature <= 0.0 {
            return argmax(logits);
        }
        let inverse_temperature = 1.0 / self.options.temperature;
        logits.iter_mut().for_each(|l| *l *= inverse_temperature);
        self.candidates.clear();
        self.candidates.extend(0..logits.len() as u32);
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        let top_k = self.options.top_k;
        if top_k > 0 && top_k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(top_k - 1, by_logit);
            self.candidates.truncate(top_k);
        }
        self.candidates.sort_unstable_by(by_logit);
        let max = logits[self.candidates[0] as usize];
        // Unnormalised probabilities overwrite the logits of the candidates.
        let mut total = 0f32;
        for &id in &self.candidates {
            let p = (logits[id as usize] - max).exp();
            logits[id as usize] = p;
            total += p;
        }
        let keep = self.top_p_prefix(logits, total);
        let kept_total: f32 = self.candidates[..keep]
            .iter()
            .map(|&id| logits[id as usize])
            .sum();
        let mut target = self.rng.next_f32() * kept_total;
        for &id in &self.candidates[..keep] {
            target -= logits[id as usize];
            if target < 0.0 {
                return id;
            }
        }
        self.candidates[keep - 1]
    }

    /// The number of leading candidates whose probability mass reaches `top_p`.
    fn top_p_prefix(&self, probabilities: &[f32], total: f32) -> usize {
        if self.options.top_p >= 1.0 {
            return self.candidates.len();
        }
        let threshold = self.options.top_p * total;
        let mut cumulative = 0f32;
        for (index, &id) in self.candidates.iter().enumerate() {
            cumulative += probabilities[id as usize];
            if cumulative >= threshold {
                return index + 1;
            }
        }
        self.candidates.len()
    }

    fn apply_repeat_penalty(&mut self, logits: &mut [f32], history: &[u32]) {
        self.seen.fill(0);
        let penalty = self.options.repeat_penalty;
        for &id in history {
            let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
            if id as usize >= logits.len() || self.seen[word] & bit != 0 {
                continue;
            }
            self.seen[word] |= bit;
            let logit = &mut logits[id as usize];
            *logit = if *logit > 0.0 {
                *logit / penalty
            } else {
                *logit * penalty
            };
        }
    }
}

/// The index of the largest value; the first one on ties.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (index, value) in values.iter().enumerate() {
        if *value > values[best] {
            best = index;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> SamplingOptions {
        SamplingOptions {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repeat_penalty: 1.0,
            seed: 7,
        }
    }

    #[test]
    fn temperature_zero_is_argmax_with_first_tie() {
        let mut sampler = Sampler::new(
            SamplingOptions {
                temperature: 0.0,
                ..options()
            },
            4,
        );
        assert_eq!(sampler.sample(&mut [1.0, 3.0, 3.0, 2.0], &[]), 1);
    }

    #[test]
    fn top_k_one_always_picks_the_best() {
        let mut sampler = Sampler::new(
            SamplingOptions {
                top_k: 1,
                ..options()
            },
            5,
        );
        for _ in 0..20 {
            assert_eq!(sampler.sample(&mut [0.1, 0.5, 2.0, 1.9, -1.0], &[]), 2);
        }
    }

    #[test]
    fn top_p_drops_the_unlikely_tail() {
        let mut sampler = Sampler::new(
            SamplingOptions {
                top_p: 0.5,
                ..options()
            },
            3,
        );
        for _ in 0..50 {
            assert_eq!(sampler.sample(&mut [5.0, 0.0, 0.0], &[]), 0);
        }
    }

    #[test]
    fn same_seed_gives_same_tokens() {
        let run = || {
            let mut sampler = Sampler::new(options(), 8);
            (0..32)
                .map(|_| sampler.sample(&mut [0.0; 8], &[]))
                .collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        assert!(first.iter().any(|&id| id != first[0]));
    }

    #[test]
    fn repeat_penalty_applies_once_per_distinct_token() {
        let mut sampler = Sampler::new(
            SamplingOptions {
                temperature: 0.0,
                repeat_penalty: 2.0,
                ..options()
            },
            3,
        );
        let mut logits = [4.0, -1.0, 3.0];
        assert_eq!(sampler.sample(&mut logits, &[0, 0, 1]), 2);
        assert_eq!(logits, [2.0, -2.0, 3.0]);
    }
}
