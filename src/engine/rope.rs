//! Rotary position embedding in the Hugging Face layout.
//!
//! Checkpoints in Hugging Face order (GGUF imports included, whose q/k rows are un-permuted
//! on import) rotate the pair `(x[i], x[i + d/2])` of each head by `position × inv_freq[i]`,
//! the "rotate half" convention, with `inv_freq[i] = theta^(-2i/d)`. Scaling adjusts the
//! frequencies as transformers' `ROPE_INIT_FUNCTIONS` do (transformers 4.4x):
//!
//! - `linear`: every frequency divided by `factor`.
//! - `llama3`: wavelengths `2π / f` shorter than `original / high_freq_factor` are kept,
//!   those longer than `original / low_freq_factor` are divided by `factor`, and those in
//!   between are interpolated with `s = (original / wavelength - low) / (high - low)` as
//!   `(1 - s) · f / factor + s · f`.
//!
//! GGUF files made by llama.cpp store llama3 scaling not in the metadata but as a tensor,
//! `rope_freqs.weight`, of one divisor per frequency. When the configuration has no scaling
//! and the tensor is present, each frequency is divided by its divisor, as llama.cpp does.
//!
//! Angles are computed in `f32` from `position as f32 × inv_freq`, as transformers does.

use super::config::{ModelConfig, RopeScaling};

/// The rotary frequencies of one head.
#[derive(Clone, Debug)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// Computes the frequencies for a configuration, each divided by its entry of `divisors`
    /// when given (`head_dim / 2` values, from a `rope_freqs.weight` tensor).
    pub fn new(config: &ModelConfig, divisors: Option<&[f32]>) -> Rope {
        let half = config.head_dim / 2;
        let dim = config.head_dim as f64;
        let inv_freq = (0..half)
            .map(|i| {
                let base = 1.0 / config.rope_theta.powf(2.0 * i as f64 / dim);
                let divisor = divisors.map_or(1.0, |d| f64::from(d[i]));
                (scale_frequency(base, config.rope_scaling) / divisor) as f32
            })
            .collect();
        Rope { inv_freq }
    }

    /// Half the head width: the number of rotated pairs.
    pub fn pairs(&self) -> usize {
        self.inv_freq.len()
    }

    /// Fills `cos` and `sin` (each [`Rope::pairs`] long) with the rotation for `position`.
    pub fn angles(&self, position: usize, cos: &mut [f32], sin: &mut [f32]) {
        for ((frequency, c), s) in self.inv_freq.iter().zip(cos.iter_mut()).zip(sin) {
            let angle = position as f32 * frequency;
            *c = angle.cos();
            *s = angle.sin();
        }
    }

    /// Rotates every head in `values` (heads laid end to end) by precomputed angles.
    pub fn rotate(values: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
        let half = head_dim / 2;
        for head in values.chunks_exact_mut(head_dim) {
            let (first, second) = head.split_at_mut(half);
            for i in 0..half {
                let (x0, x1) = (first[i], second[i]);
                first[i] = x0 * cos[i] - x1 * sin[i];
                second[i] = x1 * cos[i] + x0 * sin[i];
            }
        }
    }
}

fn scale_frequency(frequency: f64, scaling: RopeScaling) -> f64 {
    match scaling {
        RopeScaling::None => frequency,
        RopeScaling::Linear { factor } => frequency / factor,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: original,
        } => {
            let wavelength = 2.0 * std::f64::consts::PI / frequency;
            if wavelength < original / high_freq_factor {
                frequency
            } else if wavelength > original / low_freq_factor {
                frequency / factor
            } else {
                let smooth = (original / wavelength - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * frequency / factor + smooth * frequency
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_keeps_high_scales_low_and_blends_middle() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let high = 2.0 * std::f64::consts::PI / 100.0;
        assert_eq!(scale_frequency(high, scaling), high);
        let low = 2.0 * std::f64::consts::PI / 100_000.0;
        assert_eq!(scale_frequency(low, scaling), low / 8.0);
        let middle = 2.0 * std::f64::consts::PI / 4096.0;
        let blended = scale_frequency(middle, scaling);
        assert!(blended < middle);
        assert!(blended > middle / 8.0);
    }

    #[test]
    fn divisors_reproduce_llama3_scaling() {
        let scaling = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let json = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 256,
            "intermediate_size": 512, "num_hidden_layers": 1, "num_attention_heads": 4,
            "num_key_value_heads": 4, "vocab_size": 300, "rope_theta": 500000.0,
            "max_position_embeddings": 4096}"#;
        let mut config =
            ModelConfig::parse(std::path::Path::new("config.json"), json.as_bytes()).unwrap();
        assert_eq!(config.head_dim, 64);
        let plain = Rope::new(&config, None);
        // The divisors llama.cpp's converter stores: unscaled over scaled frequency.
        let divisors: Vec<f32> = (0..32)
            .map(|i| {
                let base = 1.0 / 500_000f64.powf(2.0 * i as f64 / 64.0);
                (base / scale_frequency(base, scaling)) as f32
            })
            .collect();
        let from_tensor = Rope::new(&config, Some(&divisors));
        config.rope_scaling = scaling;
        let from_config = Rope::new(&config, None);
        assert_ne!(plain.inv_freq, from_config.inv_freq);
        for (a, b) in from_tensor.inv_freq.iter().zip(&from_config.inv_freq) {
            assert!((a - b).abs() <= 1e-6 * b.abs(), "{a} vs {b}");
        }
    }

    #[test]
    fn rotation_at_position_zero_is_identity() {
        let mut values = [1.0f32, 2.0, 3.0, 4.0];
        Rope::rotate(&mut values, 4, &[1.0, 1.0], &[0.0, 0.0]);
        assert_eq!(values, [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn rotation_pairs_first_and_second_half() {
        let mut values = [1.0f32, 0.0, 0.0, 0.0];
        Rope::rotate(&mut values, 4, &[0.0, 1.0], &[1.0, 0.0]);
        assert_eq!(values, [0.0, 0.0, 1.0, 0.0]);
    }
}
