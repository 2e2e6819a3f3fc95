//! The memory plan: how large each buffer the engine allocates may be under a byte ceiling.
//!
//! Every heap buffer of a session is sized here, before anything is allocated:
//!
//! - activations of a batch of prompt tokens, `batch_tokens × width × 4` bytes for the widest
//!   of hidden, query, key/value and feed-forward widths;
//! - key/value pages of `page_positions × kv_dim` values of the cache type (4 or 2 bytes),
//!   one pair per layer and page;
//! - the page tables and the token history, which grow with the context;
//! - logits for the last position and the sampler's candidate list, `vocab × 4` bytes each.
//!
//! The batch and page sizes are the largest that fit the ceiling, capped so that small
//! models do not allocate far more than they use. A buffer that does not fit even at one
//! token or one position is an error that names it with its size.

use super::config::ModelConfig;
use super::{EngineError, KvType};

/// Maximum prompt tokens processed together; a larger batch saves little once the weights are
/// read once per batch rather than once per token.
pub const MAX_BATCH_TOKENS: usize = 64;

/// Maximum positions in one key/value page.
pub const MAX_PAGE_POSITIONS: usize = 256;

const F32_BYTES: u64 = 4;

/// Buffer sizes chosen for one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MemoryPlan {
    /// Largest single allocation allowed, in bytes.
    pub ceiling: u64,
    /// Positions the session holds: prompt plus generated tokens.
    pub context: usize,
    /// Prompt tokens processed per forward pass.
    pub batch_tokens: usize,
    /// Positions per key/value page.
    pub page_positions: usize,
    /// Bytes of the largest buffer in the plan.
    pub largest_buffer: u64,
}

impl MemoryPlan {
    /// Sizes the buffers of a session of `context` positions under `ceiling` bytes.
    ///
    /// # Errors
    ///
    /// Fails when `context` exceeds the model's `max_position_embeddings`, or when a buffer
    /// does not fit the ceiling even at its smallest (one token, one position).
    pub fn new(
        config: &ModelConfig,
        ceiling: u64,
        context: usize,
        kv_type: KvType,
    ) -> Result<MemoryPlan, EngineError> {
        if context > config.max_position_embeddings {
            return Err(EngineError::ContextFull {
                requested: context,
                capacity: config.max_position_embeddings,
            });
        }
        let context = context.max(1);
        let fits = |what: &str, bytes: u64| {
            if bytes <= ceiling {
                Ok(bytes)
            } else {
                Err(EngineError::CeilingTooSmall {
                    what: what.to_string(),
                    bytes,
                    ceiling,
                })
            }
        };
        let vocab = config.vocab_size as u64;
        let mut largest = fits(
            "the logits of one position (vocab_size × 4 bytes)",
            vocab * F32_BYTES,
        )?;

        let width = [
            config.hidden_size,
            config.q_dim(),
            config.kv_dim(),
            config.intermediate_size,
        ]
        .into_iter()
        .max()
        .expect("four widths") as u64;
        let token_bytes = fits("the activations of one token", width * F32_BYTES)?;
        let batch_tokens = (ceiling / token_bytes).min(MAX_BATCH_TOKENS as u64).max(1) as usize;
        largest = largest.max(batch_tokens as u64 * token_bytes);

        let position_bytes = fits(
            "one position of a key/value page (kv_dim × the cache type's bytes)",
            config.kv_dim() as u64 * kv_type.bytes(),
        )?;
        let page_positions = (ceiling / position_bytes)
            .min(MAX_PAGE_POSITIONS as u64)
            .min(context as u64)
            .max(1) as usize;
        largest = largest.max(page_positions as u64 * position_bytes);

        let pages = context.div_ceil(page_positions) as u64;
        let table_bytes = pages * std::mem::size_of::<Vec<f32>>() as u64;
        largest = largest.max(fits("the key/value page table of one layer", table_bytes)?);
        let history_bytes = context as u64 * std::mem::size_of::<u32>() as u64;
        largest = largest.max(fits("the token history", history_bytes)?);

        Ok(MemoryPlan {
            ceiling,
            context,
            batch_tokens,
            page_positions,
            largest_buffer: largest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> ModelConfig {
        let json = serde_json::json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 300, "max_position_embeddings": 4096,
        });
        ModelConfig::parse(Path::new("config.json"), json.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn small_ceiling_gives_small_batches_and_pages() {
        let plan = MemoryPlan::new(&config(), 1536, 100, KvType::F32).unwrap();
        assert_eq!(plan.batch_tokens, 3);
        assert_eq!(plan.page_positions, 12);
        assert!(plan.largest_buffer <= 1536);
    }

    #[test]
    fn large_ceiling_is_capped() {
        let plan = MemoryPlan::new(&config(), 1 << 30, 1000, KvType::F32).unwrap();
        assert_eq!(plan.batch_tokens, MAX_BATCH_TOKENS);
        assert_eq!(plan.page_positions, MAX_PAGE_POSITIONS);
    }

    #[test]
    fn logits_over_ceiling_is_an_error_with_the_size() {
        let message = MemoryPlan::new(&config(), 1000, 10, KvType::F32)
            .unwrap_err()
            .to_string();
        assert!(message.contains("1200 bytes"), "{message}");
        assert!(message.contains("1000"), "{message}");
    }

    #[test]
    fn context_beyond_the_model_is_rejected() {
        assert!(MemoryPlan::new(&config(), 1 << 20, 5000, KvType::F32).is_err());
    }

    #[test]
    fn f16_cache_pages_hold_twice_the_positions() {
        let f32_plan = MemoryPlan::new(&config(), 1536, 100, KvType::F32).unwrap();
        let f16_plan = MemoryPlan::new(&config(), 1536, 100, KvType::F16).unwrap();
        assert_eq!(f16_plan.page_positions, 2 * f32_plan.page_positions);
    }
}
