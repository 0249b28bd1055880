//! idtag ties the anonymous marketing-tracking cookie a visitor carries (Adobe
//! Marketo Engage's Munchkin `_mkto_trk`) to the known person at signup and login.
//!
//! Layers (one crate):
//! - **core** (every target, pure, no I/O, time passed in): [`cookie`], [`munchkin`],
//!   [`identity`], [`tag_token`], [`wire`], [`clock`], [`tag_queue`].
//! - **browser** (wasm32 only): the `#[wasm_bindgen]` `Tagger` facade.
//! - **server** (native, feature `server`): Marketo REST client, association
//!   pipeline, stores, HTTP endpoint, metrics.
//! - **emulator** (native, feature `emulator`): a local Marketo-compatible REST server.

/// Items compiled only for native targets.
macro_rules! if_native {
    ($($item:item)*) => {$(
        #[cfg(not(target_arch = "wasm32"))]
        $item
    )*}
}

/// Items compiled only for the browser (wasm32).
macro_rules! if_wasm {
    ($($item:item)*) => {$(
        #[cfg(target_arch = "wasm32")]
        $item
    )*}
}

pub mod clock;
pub mod cookie;
pub mod identity;
pub mod marketo;
pub mod munchkin;
pub mod tag_queue;
pub mod tag_token;
pub mod wire;

if_wasm! {
    pub mod browser;
}

if_native! {
    #[cfg(feature = "server")]
    pub mod server;

    #[cfg(feature = "emulator")]
    pub mod emulator;
}

#[cfg(all(test, target_arch = "wasm32"))]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);
