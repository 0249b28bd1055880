//! Local Marketo-compatible REST server (native).
