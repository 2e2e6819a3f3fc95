//! shardkit rewrites large model checkpoints into small chunks described by a manifest,
//! quantizes them with GGML block formats, and runs Llama-family models from that layout so
//! that no single memory allocation exceeds a ceiling the user sets.
//!
//! The library is organised by stage: [`source`] opens every input kind behind one interface,
//! [`manifest`] defines the chunked layout, [`plan`] decides which bytes go in which chunk,
//! [`reshard`] writes chunked folders, [`verify`] checks them, and [`export`] writes standard
//! files back out. The library never prints; the `shardkit` binary does.

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod alloc;
pub mod dtype;
pub mod engine;
pub mod export;
pub mod gguf;
pub mod inspect;
pub mod manifest;
pub mod output;
pub mod plan;
pub mod quant;
pub mod quantize;
pub mod reshard;
pub mod safetensors;
pub mod size;
pub mod source;
pub mod synth;
pub mod verify;
