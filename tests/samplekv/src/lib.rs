//! samplekv (placeholder until built).
