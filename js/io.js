// Browser I/O the wasm `Tagger` imports (bundled by wasm-bindgen as a snippet).
// Each function catches: private mode, sandboxed frames and disabled cookies
// make these APIs throw, and a throw must never reach the wasm.
export function readCookie() {
  try {
    return typeof document === 'undefined' ? '' : String(document.cookie);
  } catch {
    return '';
  }
}

// The stored text ('' when none), or undefined when storage is missing or throws.
export function storageGet(key) {
  try {
    const v = localStorage.getItem(key);
    return v == null ? '' : v;
  } catch {
    return undefined;
  }
}

// Writes (or removes, for '') the stored text; false when storage is missing or throws.
export function storageSet(key, value) {
  try {
    if (value) localStorage.setItem(key, value);
    else localStorage.removeItem(key);
    return true;
  } catch {
    return false;
  }
}
