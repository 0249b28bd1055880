//! Marketo client, association pipeline, stores and HTTP endpoint (native).
