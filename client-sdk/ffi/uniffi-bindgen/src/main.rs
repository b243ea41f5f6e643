//! `uniffi-bindgen`: generates the Kotlin, Swift and Python sources of
//! `longlink-ffi` from its built library (`scripts/bindings.sh`). The same
//! version as the library's `uniffi`, as the generator requires.

fn main() {
    uniffi::uniffi_bindgen_main()
}
