//! Providers: which upstream serves a path, its credential, and the
//! provider-specific shapes of request bodies, usage and errors.

pub mod anthropic;
pub mod body;
pub mod errors;
pub mod openai;
