//! Browser facade (wasm32).
